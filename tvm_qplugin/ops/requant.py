"""Requantization in TE, the twin of :func:`tvm_qplugin.quant.requantize_ref`, and the
elementwise ``requantize`` op (rescale + clamp: standalone ReLU/Clip, concat alignment)."""
from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx

from ..quant import requantize_ref
from .registry import IntegerOp, register_op


def i64(v) -> tirx.PrimExpr:
    return tirx.const(int(v), "int64") if isinstance(v, (int, np.integer)) else v.astype("int64")


def round_shift(v: tirx.PrimExpr, shift) -> tirx.PrimExpr:
    """``(v + ((1 << shift) >> 1)) >> shift`` in int64: round half up (see quant/dyadic.py)."""
    s = i64(shift)
    one = tirx.const(1, "int64")
    return (v + ((one << s) >> one)) >> s


def clamp_cast(v: tirx.PrimExpr, qmin: int, qmax: int, dtype: str) -> tirx.PrimExpr:
    return tirx.max(tirx.min(v, i64(qmax)), i64(qmin)).astype(dtype)


def requant(acc: tirx.PrimExpr, multiplier, shift, qmin: int, qmax: int, dtype: str) -> tirx.PrimExpr:
    """``clamp((acc * multiplier + round) >> shift)``; operands may be ints or PrimExprs."""
    return clamp_cast(round_shift(i64(acc) * i64(multiplier), shift), qmin, qmax, dtype)


@register_op
class Requantize(IntegerOp):
    """``y = clamp((x * multiplier + r) >> shift)`` elementwise, per-tensor (b, c).

    x : any integer dtype. multiplier : int32 value. shift : [0, 62]. out_dtype : int8/uint8/int16/int32.
    """

    name = "requantize"

    def compute(self, x, *, multiplier, shift, qmin, qmax, out_dtype):
        return te.compute(x.shape, lambda *i: requant(x(*i), multiplier, shift, qmin, qmax, out_dtype), name="y")

    def reference(self, x, *, multiplier, shift, qmin, qmax, out_dtype):
        return requantize_ref(x, multiplier, shift, qmin, qmax, out_dtype)


def broadcast_index(shape, out_shape, idx):
    """Index into a tensor of ``shape`` broadcast (NumPy rules) to ``out_shape``."""
    off = len(out_shape) - len(shape)
    return [0 if int(d) == 1 and int(out_shape[off + k]) != 1 else idx[off + k] for k, d in enumerate(shape)]


def broadcast_shape(a, b) -> tuple[int, ...]:
    return tuple(np.broadcast_shapes(tuple(int(d) for d in a), tuple(int(d) for d in b)))


@register_op
class AddRequant(IntegerOp):
    """Residual add with both inputs rescaled dyadically onto the output scale, one rounding:

    ``y = clamp((a * ma + b * mb + r) >> shift)``; a, b : int8/uint8/int16/int32, NumPy broadcasting.
    """

    name = "add_requant"

    def compute(self, a, b, *, ma, mb, shift, qmin, qmax, out_dtype):
        shape = broadcast_shape(a.shape, b.shape)

        def f(*i):
            va = i64(a(*broadcast_index(a.shape, shape, i))) * i64(ma)
            vb = i64(b(*broadcast_index(b.shape, shape, i))) * i64(mb)
            return clamp_cast(round_shift(va + vb, shift), qmin, qmax, out_dtype)

        return te.compute(shape, f, name="y")

    def reference(self, a, b, *, ma, mb, shift, qmin, qmax, out_dtype):
        acc = a.astype(np.int64) * np.int64(ma) + b.astype(np.int64) * np.int64(mb)
        return requantize_ref(acc, 1, shift, qmin, qmax, out_dtype)


@register_op
class Quantize(IntegerOp):
    """Entry boundary: float32 -> integer, ``floor(x * (1/scale) + 0.5)`` saturated."""

    name = "quantize"
    integer_only = False

    def compute(self, x, *, inv_scale, qmin, qmax, out_dtype):
        def f(*i):
            v = tirx.floor(x(*i) * tirx.const(inv_scale, "float32") + tirx.const(0.5, "float32"))
            return tirx.max(tirx.min(v, tirx.const(qmax, "float32")), tirx.const(qmin, "float32")).astype(out_dtype)

        return te.compute(x.shape, f, name="y")

    def reference(self, x, *, inv_scale, qmin, qmax, out_dtype):
        v = np.floor(x.astype(np.float32) * np.float32(inv_scale) + np.float32(0.5))
        return np.clip(v, qmin, qmax).astype(out_dtype)


@register_op
class Dequantize(IntegerOp):
    """Exit boundary: integer -> float32, ``x * scale``."""

    name = "dequantize"
    integer_only = False

    def compute(self, x, *, scale):
        return te.compute(x.shape, lambda *i: x(*i).astype("float32") * tirx.const(scale, "float32"), name="y")

    def reference(self, x, *, scale):
        return (x.astype(np.float32) * np.float32(scale)).astype(np.float32)


_ = tvm  # the TE expressions above build on tvm.tirx


@register_op
class MaskFill(IntegerOp):
    """``y = where(keep, x, fill)`` with NumPy broadcasting of ``keep`` (bool) against ``x``.

    The integer form of adding an attention mask of 0 / -inf: masked scores become ``fill``
    (the dtype minimum), which the integer softmax maps to exactly 0.
    """

    name = "mask_fill"

    def compute(self, x, keep, *, fill):
        shape = tuple(int(d) for d in x.shape)
        return te.compute(shape, lambda *i: tirx.if_then_else(keep(*broadcast_index(keep.shape, shape, i)), x(*i),
                                                              tirx.const(fill, x.dtype)), name="y")

    def reference(self, x, keep, *, fill):
        return np.where(keep, x, x.dtype.type(fill)).astype(x.dtype)
