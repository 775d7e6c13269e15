"""Resize (nearest / bilinear), Slice, constant Pad and the zero insertion of ConvTranspose on integers."""
from __future__ import annotations

import numpy as np

from ...ops import const
from ...quant import dyadic
from ..graph import shape_of
from .base import IntegerRule, QValue, register_rule

COORDINATE_MODES = ("half_pixel", "align_corners", "asymmetric", "pytorch_half_pixel", "tf_half_pixel_for_nn")
ROUNDING_METHODS = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil")


BILINEAR_WEIGHT_BITS = 10   # per axis: the two taps' weights sum to 2**10


def source_coordinates(in_size: int, out_size: int, mode: str) -> np.ndarray:
    """Float32 source coordinate of each output position, as topi/image/resize.py ``get_inx``."""
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
    return src.astype(f32)


def nearest_indices(in_size: int, out_size: int, mode: str, rounding: str) -> np.ndarray:
    """Source index of each output position, as TVM's float model computes it (topi/image/resize.py:
    float32 coordinates, a 1e-5 epsilon under floor/ceil), clamped into ``[0, in_size)``.

    Computed once here, in float, at compile time; the kernel only reads the resulting integers.
    """
    f32 = np.float32
    src = source_coordinates(in_size, out_size, mode)
    idx = {"round_prefer_floor": lambda v: np.ceil(v - f32(0.5)), "round_prefer_ceil": lambda v: np.floor(v + f32(0.5)),
           "floor": lambda v: np.floor(v + f32(1e-5)), "ceil": lambda v: np.ceil(v - f32(1e-5))}[rounding](src)
    return np.clip(idx, 0, in_size - 1).astype(np.int32)


def bilinear_taps(in_size: int, out_size: int, mode: str) -> tuple[np.ndarray, np.ndarray]:
    """``(indices, weights)``, each (out_size, 2): the two source taps of every output position
    (clamped into the image, as topi's ``get_2d_pixel``) and their weights in units of
    ``2**-BILINEAR_WEIGHT_BITS``, summing to ``2**BILINEAR_WEIGHT_BITS`` (exact for the dyadic
    fractions of power-of-two scale factors, within 2**-11 otherwise)."""
    src = source_coordinates(in_size, out_size, mode)
    i0 = np.floor(src)
    one = 1 << BILINEAR_WEIGHT_BITS
    w1 = np.floor((src - i0).astype(np.float64) * one + 0.5).astype(np.int64)
    idx = np.clip(np.stack([i0, i0 + 1], axis=1), 0, in_size - 1).astype(np.int32)
    return idx, np.stack([one - w1, w1], axis=1).astype(np.int32)


def _layout_or_mode_refused(a) -> str | None:
    """Why a resize2d's layout or coordinate mode has no integer lowering (both resize rules)."""
    if str(a.layout) != "NCHW":
        return f"Resize layout {a.layout} (NCHW supported)"
    if str(a.coordinate_transformation_mode) not in COORDINATE_MODES:
        return f"Resize coordinate_transformation_mode {str(a.coordinate_transformation_mode)!r}"
    return None


@register_rule
class QResizeNearest(IntegerRule):
    """resize2d (nearest, NCHW) -> resize_nearest with per-axis index vectors: the integers move
    unchanged (same scale). Linear is QResizeBilinear's; cubic is refused with the mode named."""

    ops = ("relax.image.resize2d",)

    def check(self, ctx, b):
        a = b.attrs
        if str(a.method) != "nearest_neighbor":
            return f"Resize mode {str(a.method)!r} (not nearest)"
        refused = _layout_or_mode_refused(a)
        if refused:
            return refused
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


@register_rule
class QResizeBilinear(IntegerRule):
    """resize2d (linear, NCHW) -> resize_bilinear: two taps per axis with integer weights
    (``2**-10`` units), the int64 sum of four products, one rounding back to the input's own type
    (a convex combination stays in its range). Cubic is refused with the mode named."""

    ops = ("relax.image.resize2d",)

    def check(self, ctx, b):
        a = b.attrs
        if str(a.method) != "linear":
            return f"Resize mode {str(a.method)!r} (only nearest and linear have an integer lowering)"
        return _layout_or_mode_refused(a)

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        if x.qtype.dtype == "int32":
            x = ctx.narrow(x, signed=True, bits=16)
        (_, _, h, w), (_, _, oh, ow) = shape_of(b.args[0]), shape_of(b.var)
        mode = str(b.attrs.coordinate_transformation_mode)
        rows, rw = bilinear_taps(h, oh, mode)
        cols, cw = bilinear_taps(w, ow, mode)
        # |acc| < 2**(16 + 2 * bits): the multiplier's mantissa keeps acc * b inside int64
        acc_bits = 16 + 2 * BILINEAR_WEIGHT_BITS
        d = dyadic(2.0 ** (-2 * BILINEAR_WEIGHT_BITS), mantissa_bits=62 - 1 - acc_bits)
        y = ctx.emit("resize_bilinear", [x.expr, const(rows), const(rw), const(cols), const(cw)],
                     multiplier=d.multiplier, shift=d.shift, qmin=x.qtype.qmin, qmax=x.qtype.qmax,
                     out_dtype=x.qtype.dtype)
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


@register_rule
class QZeroInsert(IntegerRule):
    """conv2d_transpose that only inserts zeros (what passes/conv_transpose.py leaves of a
    ConvTranspose before its conv2d) -> zero_insert: same integers, same scale, 0 is exact."""

    ops = ("relax.nn.conv2d_transpose",)

    def check(self, ctx, b):
        from ..conv_transpose import is_zero_insert

        return None if is_zero_insert(b) else ("ConvTranspose with a padding larger than dilation * (kernel - 1) "
                                               "or non-NCHW/IOHW layout")

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        y = ctx.emit("zero_insert", [x.expr], strides=[int(v) for v in b.attrs.strides])
        return QValue(y, x.qtype, x.nonneg)
