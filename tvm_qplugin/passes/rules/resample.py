"""Resize (nearest), Slice and constant Pad on integers: data movement, same scale."""
from __future__ import annotations

import numpy as np

from ...ops import const
from ..graph import shape_of
from .base import IntegerRule, QValue, register_rule

COORDINATE_MODES = ("half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel", "tf_half_pixel_for_nn")
ROUNDING_METHODS = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


def nearest_indices(in_size: int, out_size: int, mode: str, rounding: str) -> np.ndarray:
    """Source index of each output position, as TVM's float model computes it (topi/image/resize.py:
    float32 coordinates, a 1e-5 epsilon under floor/ceil), clamped into ``[0, in_size)``.

    Computed once here, in float, at compile time; the kernel only reads the resulting integers.
    """
    f32 = np.float32
    x = np.arange(out_size, dtype=f32)
    scale = f32(in_size) / f32(out_size)
    if mode == "half_pixel":
        src = (x + f32(0.5)) * scale - f32(0.5)
    elif mode == "align_corners":
        src = (f32(in_size - 1) / f32(max(out_size - 1, 1))) * x
    elif mode == "asymmetric":
        src = scale * x
    elif mode == "pytorch_half_pixel":
        src = (x + f32(0.5)) * scale - f32(0.5) if out_size > 1 else np.zeros_like(x)
    else:  # tf_half_pixel_for_nn
        src = (x + f32(0.5)) * scale
    src = src.astype(f32)
    idx = {"round_prefer_floor": lambda v: np.ceil(v - f32(0.5)), "round_prefer_ceil": lambda v: np.floor(v + f32(0.5)),
           "floor": lambda v: np.floor(v + f32(1e-5)), "ceil": lambda v: np.ceil(v - f32(1e-5))}[rounding](src)
    return np.clip(idx, 0, in_size - 1).astype(np.int32)


@register_rule
class QResizeNearest(IntegerRule):
    """resize2d (nearest, NCHW) -> resize_nearest with per-axis index vectors: the integers move
    unchanged (same scale). Bilinear / cubic are refused with the attribute named."""

    ops = ("relax.image.resize2d",)

    def check(self, ctx, b):
        a = b.attrs
        if str(a.method) != "nearest_neighbor":
            return f"Resize mode {str(a.method)!r} (only nearest has an integer lowering)"
        if str(a.layout) != "NCHW":
            return f"Resize layout {a.layout} (NCHW supported)"
        if str(a.coordinate_transformation_mode) not in COORDINATE_MODES:
            return f"Resize coordinate_transformation_mode {str(a.coordinate_transformation_mode)!r}"
        if str(a.rounding_method) not in ROUNDING_METHODS:
            return f"Resize nearest_mode {str(a.rounding_method)!r} (supported: {', '.join(ROUNDING_METHODS)})"
        return None

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        a = b.attrs
        (_, _, h, w), (_, _, oh, ow) = shape_of(b.args[0]), shape_of(b.var)
        mode, rounding = str(a.coordinate_transformation_mode), str(a.rounding_method)
        rows, cols = nearest_indices(h, oh, mode, rounding), nearest_indices(w, ow, mode, rounding)
        y = ctx.emit("resize_nearest", [x.expr, const(rows), const(cols)])
        return QValue(y, x.qtype, x.nonneg)


def _ints(expr) -> list[int]:
    return [int(f.value) for f in expr.fields]


@register_rule
class QStridedSlice(IntegerRule):
    """strided_slice (ONNX Slice, any axes and steps) -> strided_slice on integers, same scale."""

    ops = ("relax.strided_slice",)

    def check(self, ctx, b):
        try:
            [_ints(a) for a in b.args[1:5]]
        except (AttributeError, TypeError, ValueError):
            return "Slice with non-constant starts / ends / axes / steps (export with static shapes)"
        return None

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        shape = shape_of(b.args[0])
        axes, begins, ends = (_ints(a) for a in b.args[1:4])
        steps = (_ints(b.args[4]) if len(b.args) > 4 else []) or [1] * len(axes)   # strides are optional
        begin, stride = [0] * len(shape), [1] * len(shape)
        for ax, bg, en, st in zip(axes, begins, ends, steps):
            ax %= len(shape)
            begin[ax], _, stride[ax] = slice(bg, en, st).indices(shape[ax])  # NumPy's clamping == ONNX Slice's
        y = ctx.emit("strided_slice", [x.expr], begin=begin, stride=stride, out_shape=list(shape_of(b.var)))
        return QValue(y, x.qtype, x.nonneg)


@register_rule
class QPadConstant(IntegerRule):
    """nn.pad (constant mode; passes/pad.py turns the importer's TOPI pad kernel into it) ->
    pad_constant with the value quantized on the input's scale (0 stays exactly 0)."""

    ops = ("relax.nn.pad",)

    def check(self, ctx, b):
        mode = str(b.attrs.pad_mode)
        return None if mode == "constant" else f"Pad mode {mode!r} (constant supported)"

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        widths = [int(v) for v in b.attrs.pad_width]
        value = float(b.attrs.pad_value)
        q = int(np.clip(np.floor(value / x.qtype.scale + 0.5), x.qtype.qmin, x.qtype.qmax))
        y = ctx.emit("pad_constant", [x.expr], before=widths[0::2], after=widths[1::2], value=q)
        return QValue(y, x.qtype, x.nonneg and q >= 0)
