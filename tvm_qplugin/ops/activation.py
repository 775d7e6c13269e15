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
