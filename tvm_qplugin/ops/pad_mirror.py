"""Pad with the border's own values: ONNX Pad modes ``reflect`` and ``edge`` (``constant`` is
``pad_constant`` in ops/resample.py).

Both are pure index maps -- every output element is one input element, same integer, same scale --
so the integer op is exact for any dtype. Per axis, with ``j = i - before`` and ``n`` the input
size: ``edge`` reads ``clamp(j, 0, n - 1)``; ``reflect`` reads ``|j|`` mirrored once more at the far
end, ``2 (n - 1) - |j|`` when ``|j| >= n`` (valid for widths <= n - 1, which the rule checks: ONNX
Runtime refuses wider reflect pads too).
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from .registry import IntegerOp, register_op

PAD_MIRROR_MODES = ("reflect", "edge")


def _source(k, before: int, n: int, mode: str):
    j = k - before
    if mode == "edge":
        return tirx.min(tirx.max(j, 0), n - 1)
    j = tirx.abs(j)
    return tirx.if_then_else(j >= n, 2 * (n - 1) - j, j)


@register_op
class PadMirror(IntegerOp):
    """``y = pad(x, before, after)`` in ``mode`` ``"reflect"`` or ``"edge"``.

    x : any integer dtype. before, after : one int >= 0 per axis (reflect: <= size - 1).
    """

    name = "pad_mirror"

    def compute(self, x, *, before, after, mode):
        if mode not in PAD_MIRROR_MODES:
            raise ValueError(f"pad_mirror: mode {mode!r} not in {PAD_MIRROR_MODES}")
        dims = [int(d) for d in x.shape]
        if mode == "reflect" and any(max(b, a) > d - 1 for b, a, d in zip(before, after, dims)):
            raise ValueError(f"pad_mirror: reflect widths {before}/{after} exceed size - 1 of {dims}")
        shape = [d + b + a for d, b, a in zip(dims, before, after)]
        return te.compute(shape, lambda *i: x(*[_source(k, b, d, mode) for k, b, d in zip(i, before, dims)]), name="y")

    def reference(self, x, *, before, after, mode):
        return np.pad(x, list(zip(before, after)), mode=mode)
