"""Integer activations and gates: table lookup, piecewise-linear ReLU family, activation products.

* ``lut`` -- any unary function of an 8-bit tensor (Sigmoid, Tanh, SiLU/Swish, HardSigmoid,
  HardSwish, ...). An int8/uint8 input takes only 256 values, so the exact (correctly rounded)
  output for each is a 256-entry table computed at compile time from the input and output
  scales; at run time the kernel is one integer gather, the fastest form on a microcontroller
  too (no multiply). Wider inputs are narrowed to 8 bits by the rule first.
* ``prelu_requant`` -- LeakyReLU / PRelu: two dyadic multipliers (positive side, per-channel
  negative side) sharing one shift, one rounding. Exact for any input dtype.
* ``mul_requant`` -- activation x activation (squeeze-excite scales, SiLU's ``x * sigmoid(x)``,
  attention / GLU gates): the product in int64 and one dyadic requantization.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..quant import qrange, requantize_ref
from .registry import IntegerOp, register_op
from .requant import broadcast_index, broadcast_shape, clamp_cast, i64, requant, round_shift


@register_op
class Lut(IntegerOp):
    """``y = table[x - qmin(x.dtype)]`` elementwise.

    x : int8 / uint8, any shape. table : (256,) of the output dtype (int8 / uint8 / int16), entry
    ``k`` is the output for input ``qmin + k``.
    """

    name = "lut"

    def compute(self, x, table):
        offset = -qrange(str(x.dtype))[0]
        return te.compute(x.shape, lambda *i: table[x(*i).astype("int32") + offset], name="y")

    def reference(self, x, table):
        offset = -qrange(str(x.dtype))[0]
        return table[x.astype(np.int64) + offset]


@register_op
class PReluRequant(IntegerOp):
    """``y = clamp((x * (x >= 0 ? pos : neg[c]) + r) >> shift)``: LeakyReLU (one ``neg``) and
    PRelu (``neg`` per channel along ``axis``).

    x : int8 / uint8 / int16 / int32. neg : (C,) or (1,) int64 multipliers (signed: a negative
    slope is allowed). pos : int multiplier of the identity side. shift : [0, 62].
    """

    name = "prelu_requant"

    def compute(self, x, neg, *, pos, shift, axis, qmin, qmax, out_dtype):
        per_channel = int(neg.shape[0]) > 1

        def f(*i):
            v = i64(x(*i))
            m = tirx.if_then_else(v >= tirx.const(0, "int64"), i64(pos), i64(neg[i[axis] if per_channel else 0]))
            return clamp_cast(round_shift(v * m, shift), qmin, qmax, out_dtype)

        return te.compute(x.shape, f, name="y")

    def reference(self, x, neg, *, pos, shift, axis, qmin, qmax, out_dtype):
        shape = [1] * x.ndim
        shape[axis] = neg.shape[0]
        m = np.where(x >= 0, np.int64(pos), neg.astype(np.int64).reshape(shape))
        return requantize_ref(x.astype(np.int64) * m, 1, shift, qmin, qmax, out_dtype)


@register_op
class MulRequant(IntegerOp):
    """``y = clamp((a * b * multiplier + r) >> shift)`` with NumPy broadcasting.

    a, b : int8 / uint8 / int16 (the int64 product of two 16-bit values and a 31-bit multiplier
    stays below 2^63). multiplier : int32 value. shift : [0, 62].
    """

    name = "mul_requant"

    def compute(self, a, b, *, multiplier, shift, qmin, qmax, out_dtype):
        shape = broadcast_shape(a.shape, b.shape)

        def f(*i):
            prod = i64(a(*broadcast_index(a.shape, shape, i))) * i64(b(*broadcast_index(b.shape, shape, i)))
            return requant(prod, multiplier, shift, qmin, qmax, out_dtype)

        return te.compute(shape, f, name="y")

    def reference(self, a, b, *, multiplier, shift, qmin, qmax, out_dtype):
        return requantize_ref(a.astype(np.int64) * b.astype(np.int64), multiplier, shift, qmin, qmax, out_dtype)


def _np_isqrt_exact(v: np.ndarray) -> np.ndarray:
    """``floor(sqrt(v))`` for int64 ``0 <= v < 2**56``: a float64 estimate (within 1 there) fixed
    up with integer comparisons -- independent of the kernels' Newton isqrt (ops/int_core.py)."""
    v = np.asarray(v, np.int64)
    k = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    k = k - (k * k > v)
    return k + ((k + 1) * (k + 1) <= v)


@register_op
class SqrtRequant(IntegerOp):
    """``y = min((isqrt((max(x, 0) * multiplier << 2) >> shift) + 1) >> 1, qmax)``: the square root
    of a wide non-negative tensor (a magnitude ``sqrt(re**2 + im**2)``, an RMS), rounded to the
    output scale, with no table and no division.

    With ``x`` at scale ``s_in`` and ``y`` at ``s_out``, ``multiplier * 2**-shift ~ s_in / s_out**2``
    and ``X = x s_in / s_out**2``: ``u = isqrt(floor(4 X)) = floor(2 sqrt(X))`` and
    ``(u + 1) >> 1 = floor(sqrt(X) + 1/2)``, sqrt(X) rounded half up. The 8-bit case is ``lut``
    (exact and cheaper); this op keeps a 16/32-bit input's resolution, which a table cannot.

    x : int16 / int32 / uint8 / int8 (negatives read as 0). multiplier : int, with
    ``4 * max(x) * multiplier < 2**63`` and the shifted value below ``2**56`` (the rule checks).
    """

    name = "sqrt_requant"

    def compute(self, x, *, multiplier, shift, qmax, out_dtype):
        from .int_core import stage, te_isqrt_newton

        v4 = stage(x, lambda *i: (tirx.max(i64(x(*i)), i64(0)) * i64(multiplier * 4)) >> i64(shift), "sqrt_v4")
        safe = stage(v4, lambda *i: tirx.max(v4(*i), i64(1)), "sqrt_safe")
        u = te_isqrt_newton(safe, "sqrt_u")
        return te.compute(x.shape, lambda *i: tirx.min(
            tirx.if_then_else(v4(*i) > i64(0), (u(*i) + i64(1)) >> i64(1), i64(0)), i64(qmax)).astype(out_dtype),
            name="y")

    def reference(self, x, *, multiplier, shift, qmax, out_dtype):
        v4 = (np.maximum(x.astype(np.int64), 0) * np.int64(multiplier * 4)) >> np.int64(shift)
        return np.minimum((_np_isqrt_exact(v4) + 1) >> 1, qmax).astype(out_dtype)
