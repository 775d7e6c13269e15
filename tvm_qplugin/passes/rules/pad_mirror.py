"""Pad modes reflect and edge -> ``pad_mirror`` (passes/pad.py turns the importer's TOPI mirror /
replicate pad kernels into ``R.nn.pad`` first): an index map, same integers, same scale."""
from __future__ import annotations

from ..graph import shape_of
from .base import IntegerRule, QValue, register_rule

_MODES = {"reflect": "reflect", "replicate": "edge"}   # R.nn.pad's pad_mode -> the op's (ONNX / NumPy) mode


@register_rule
class QPadMirror(IntegerRule):
    """nn.pad in mode reflect / replicate (ONNX edge) -> pad_mirror. Reflect widths must be at most
    the axis size - 1 (ONNX Runtime refuses wider ones too)."""

    ops = ("relax.nn.pad",)

    def check(self, ctx, b):
        mode = _MODES.get(str(b.attrs.pad_mode))
        if mode is None:
            return f"Pad mode {str(b.attrs.pad_mode)!r} (reflect / edge: QPadMirror)"
        widths = [int(v) for v in b.attrs.pad_width]
        shape = shape_of(b.args[0])
        if mode == "reflect" and any(max(widths[2 * i], widths[2 * i + 1]) > n - 1 for i, n in enumerate(shape)):
            return f"Pad mode 'reflect' with widths {widths} beyond the axis sizes - 1 of {shape}"
        return None

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        widths = [int(v) for v in b.attrs.pad_width]
        y = ctx.emit("pad_mirror", [x.expr], before=widths[0::2], after=widths[1::2], mode=_MODES[str(b.attrs.pad_mode)])
        return QValue(y, x.qtype, x.nonneg)
