"""Sigmoid / Tanh / Sqrt (table lookup), LeakyReLU / PRelu (two dyadic slopes), activation x activation Mul.

HardSigmoid and HardSwish need no rule of their own: the ONNX importer writes them as
``clip(alpha * x + beta, 0, 1)`` and ``x * clip(x + 3, 0, 6) / 6``, whose pieces are integerized
exactly by the scalar-scale, add, clip rules and :class:`QMul` below; SiLU / Swish
(``x * sigmoid(x)``) is :class:`QLookup` then :class:`QMul`.
"""
from __future__ import annotations

import numpy as np

from ...ops import const
from ...quant import dyadic, qrange
from ..graph import const_value, dtype_of, shape_of
from .base import IntegerRule, QValue, register_rule

# real-valued functions tabulated by QLookup, and whether their output is >= 0
LOOKUP_FUNCTIONS = {
    "relax.sigmoid": (lambda v: 1.0 / (1.0 + np.exp(-v)), True),
    "relax.tanh": (np.tanh, False),
}


def _sqrt(v):
    return np.sqrt(np.maximum(v, 0.0))  # a magnitude sqrt(re**2 + im**2) or an RMS: never below 0


def lookup_table(fn, in_dtype: str, in_scale: float, out_qt) -> np.ndarray:
    """The 256-entry table of ``fn`` from an 8-bit input type to ``out_qt``: entry ``k`` is
    ``round_half_up(fn(s_in * (qmin + k)) / s_out)``, saturated. Exact (correctly rounded in float64)
    for every input the tensor can hold, computed at compile time."""
    lo, hi = qrange(in_dtype)
    real = fn(np.arange(lo, hi + 1, dtype=np.float64) * in_scale)
    q = np.floor(real / out_qt.scale + 0.5)
    return np.clip(q, out_qt.qmin, out_qt.qmax).astype(out_qt.dtype)


@register_rule
class QLookup(IntegerRule):
    """sigmoid / tanh -> lut: a 256-entry table on the 8-bit input (a wider input is requantized
    to int8 over its range first). Chosen over an integer exponential (the I-ViT softmax's): for
    8-bit inputs the table is exact, one load per element, no multiply -- the fastest form on a
    microcontroller and on the host alike."""

    ops = tuple(LOOKUP_FUNCTIONS)

    def check(self, ctx, b):
        return None if dtype_of(b.var).startswith("float") else "integer input"

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        if x.qtype.dtype not in ("int8", "uint8"):
            x = ctx.narrow(x)
        fn, nonneg = LOOKUP_FUNCTIONS[b.op_name]
        out_qt = ctx.out_qtype(b.var, nonneg, wide_ok=False)
        table = lookup_table(fn, x.qtype.dtype, x.qtype.scale, out_qt)
        y = ctx.emit("lut", [x.expr, const(table)])
        return QValue(y, out_qt, nonneg)


SQRT_MULTIPLIER_BITS = 22  # 4 * max|x| * m < 2**55 for any int32 input


def sqrt_dyadic(ratio: float) -> tuple[int, int] | None:
    """``(multiplier, shift)`` of ``sqrt_requant`` for ``X = x * ratio`` (``multiplier * 2**-shift``
    ~ ratio with :data:`SQRT_MULTIPLIER_BITS` bits); None when that would need a negative shift."""
    shift = SQRT_MULTIPLIER_BITS - 1 - int(np.floor(np.log2(ratio)))
    return None if shift < 0 else (int(round(ratio * 2.0**shift)), shift)


@register_rule
class QSqrt(IntegerRule):
    """sqrt -> lut on an 8-bit input (exact, one load), else sqrt_requant: an integer square root on
    the input's full 16/32-bit resolution (a table would first narrow it to 256 levels: on a power
    spectrum, whose dynamic range the square doubles, that loses most of the quiet bins)."""

    ops = ("relax.sqrt",)

    def check(self, ctx, b):
        return None if dtype_of(b.var).startswith("float") else "integer input"

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        out_qt = ctx.out_qtype(b.var, True, wide_ok=False)
        if x.qtype.dtype not in ("int8", "uint8"):
            ratio = x.qtype.scale / out_qt.scale**2  # X = x * ratio, y = round(sqrt(X))
            dyadic_sqrt = sqrt_dyadic(ratio)
            if dyadic_sqrt is not None and 4 * x.qtype.qmax * ratio < 2.0**55:
                multiplier, shift = dyadic_sqrt
                y = ctx.emit("sqrt_requant", [x.expr], multiplier=multiplier, shift=shift, qmax=out_qt.qmax,
                             out_dtype=out_qt.dtype)
                return QValue(y, out_qt, True)
            x = ctx.narrow(x, signed=False)  # an output scale this coarse needs no more than 8 bits
        table = lookup_table(_sqrt, x.qtype.dtype, x.qtype.scale, out_qt)
        y = ctx.emit("lut", [x.expr, const(table)])
        return QValue(y, out_qt, True)


@register_rule
class QPRelu(IntegerRule):
    """leakyrelu / prelu -> prelu_requant: ``x * (x >= 0 ? 1 : alpha_c)`` rescaled to the output
    scale, both slopes dyadic on one shift (exact piecewise-linear, any input width)."""

    ops = ("relax.nn.leakyrelu", "relax.nn.prelu")

    def check(self, ctx, b):
        if b.op_name == "relax.nn.prelu" and const_value(b.args[1]) is None:
            return "PRelu slope is not a constant"
        return None

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        shape = shape_of(b.args[0])
        if b.op_name == "relax.nn.leakyrelu":
            slopes, axis = np.array([float(b.attrs.alpha)]), 0
        else:
            slopes, axis = const_value(b.args[1]).astype(np.float64).reshape(-1), int(b.attrs.axis) % len(shape)
        nonneg = x.nonneg  # x >= 0 takes the identity slope only
        out_qt = ctx.out_qtype(b.var, nonneg)
        ratio = x.qtype.scale / out_qt.scale
        top = dyadic(max(ratio, float(np.abs(slopes).max()) * ratio))
        pos = round(ratio * 2.0 ** top.shift)
        neg = np.array([round(a * ratio * 2.0 ** top.shift) for a in slopes], dtype=np.int64)
        y = ctx.emit("prelu_requant", [x.expr, const(neg)], pos=pos, shift=top.shift, axis=axis,
                     qmin=out_qt.qmin, qmax=out_qt.qmax, out_dtype=out_qt.dtype)
        return QValue(y, out_qt, nonneg)


@register_rule
class QMul(IntegerRule):
    """a * b of two activations (squeeze-excite scale, SiLU's ``x * sigmoid(x)``, HardSwish, gates),
    or of an activation and a constant tensor -> mul_requant: the exact int64 product and one
    dyadic requantization by ``s_a * s_b / s_out``. 32-bit operands are narrowed to 16 bits first
    so that the product times a 31-bit multiplier stays inside int64."""

    ops = ("relax.multiply",)

    def check(self, ctx, b):
        if not dtype_of(b.var).startswith("float"):
            return "integer multiply"
        if all(const_value(a) is not None for a in b.args):
            return "both operands constant (FoldConstant should have removed it)"
        return None

    def rewrite(self, ctx, b):
        a, c = (self._operand(ctx, e) for e in b.args)
        nonneg = a.nonneg and c.nonneg
        out_qt = ctx.out_qtype(b.var, nonneg)
        d = dyadic(a.qtype.scale * c.qtype.scale / out_qt.scale)
        y = ctx.emit("mul_requant", [a.expr, c.expr], multiplier=d.multiplier, shift=d.shift, qmin=out_qt.qmin,
                     qmax=out_qt.qmax, out_dtype=out_qt.dtype)
        return QValue(y, out_qt, nonneg)

    @staticmethod
    def _operand(ctx, e) -> QValue:
        c = const_value(e)
        if c is None:
            x = ctx.q(e)
            return ctx.narrow(x, signed=True, bits=16) if x.qtype.dtype == "int32" else x
        from ...quant import QType

        amax = float(np.abs(c).max())
        qt = QType.for_range(-amax, amax, nonneg=bool((c >= 0).all()), bits=8)
        return QValue(const(qt.quantize(c)), qt, bool((c >= 0).all()))
