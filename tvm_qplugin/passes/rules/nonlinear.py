"""Integer-only transformer non-linears and activation x activation matmul (I-ViT / I-BERT /
division-free, chosen by ``IntegerizeConfig.scheme``: quant/scheme.py). Shift constants and output scales
come from each layer's own calibrated range (issue: not fixed per model)."""
from __future__ import annotations

import numpy as np

from ...errors import UnsupportedOpError
from ...ops import const
from ...ops.matmul import acc_bound
from ...ops.nonlinear import layernorm_int_args
from ...quant import QType, dyadic
from ...quant import nonlinear_consts as nc
from ...quant import paper_consts as pc
from ...quant.accumulator import accumulator_for
from ..graph import shape_of
from .base import IntegerRule, QValue, register_rule


def _max_abs(qt: QType) -> int:
    return max(abs(qt.qmin), qt.qmax)


def paper_input(ctx, x: QValue, slot: int) -> QValue:
    """A paper variant's kernel input: ``x`` requantized down to the paper's width (the variant
    row's ``in_bits[slot]``: 0 softmax, 1 GELU, 2 LayerNorm) when it is wider."""
    bits = ctx.config.scheme.kind.in_bits[slot]
    if bits and np.iinfo(x.qtype.dtype).bits > bits:
        return ctx.narrow(x, signed=True, bits=bits)
    return x


def emit_paper_checked(ctx, b, op: str, args, **params):
    """``ctx.emit`` where building the kernel may find the paper's int32 overflowing for this
    layer (quant/paper_consts.py): that is refused, naming the node, not a crash."""
    try:
        return ctx.emit(op, args, **params)
    except pc.PaperOverflow as err:
        why = f"{err}; --nonlinear {ctx.config.scheme.variant} cannot run this layer, the default --nonlinear can"
        raise UnsupportedOpError(f"{b.name}: {b.op_name.removeprefix('relax.')}: {why}",
                                 ((b.name, b.op_name, why),)) from None


def softmax_n(ctx, x: QValue, b, row: int) -> int:
    """The softmax shift: the paper's fixed one, or chosen from the calibrated input range."""
    scheme = ctx.config.scheme
    if scheme.kind.paper:
        return pc.IVIT_SHIFTMAX_N if scheme.kind.paper == "ivit" else pc.IBERT_EXP_N
    lo, hi = ctx.ranges[b.args[0]]
    return nc.choose_softmax_n(x.qtype.scale, max(hi - lo, 1e-6), row, scheme.variant)


@register_rule
class QMatMulAct(IntegerRule):
    """matmul(a, b) of two activations (QK^T, attention x V) -> matmul_requant with one per-tensor
    dyadic requantization. Operands keep their width: the accumulator is int32 when the dtypes
    (or a softmax row-sum bound) prove it safe, int64 otherwise -- narrowing int16 Q/K to int8
    instead would cost the attention scores most of their precision."""

    ops = ("relax.matmul",)

    def check(self, ctx, b):
        if ctx.const(b.args[0]) is not None or ctx.const(b.args[1]) is not None:
            return "a constant operand (dense rule)"
        return None

    def rewrite(self, ctx, b):
        k = shape_of(b.args[0])[-1]
        x, y = ctx.q(b.args[0]), ctx.q(b.args[1])
        acc_bits, mantissa = accumulator_for(acc_bound(x.qtype.dtype, y.qtype.dtype, k, x.row_sum))
        nonneg = x.nonneg and y.nonneg
        out_qt = ctx.out_qtype(b.var, nonneg)
        d = dyadic(x.qtype.scale * y.qtype.scale / out_qt.scale, mantissa_bits=mantissa)
        extra = {"acc_bits": 64} if acc_bits == 64 else {}
        if x.row_sum is not None:
            extra["a_row_sum"] = x.row_sum
        out = ctx.emit("matmul_requant", [x.expr, y.expr], multiplier=d.multiplier, shift=d.shift, qmin=out_qt.qmin,
                       qmax=out_qt.qmax, out_dtype=out_qt.dtype, **extra)
        return QValue(out, out_qt, nonneg)


@register_rule
class QSoftmax(IntegerRule):
    """softmax over the last axis -> softmax_int (Shiftmax / i-exp / division-free); output int16
    at 2**-15 (``softmax_bits=8``: uint8 at 2**-8). N is chosen from this layer's calibrated input
    range; the paper variants fix N and their output format and take an int8 input."""

    ops = ("relax.nn.softmax",)

    def check(self, ctx, b):
        axis = int(b.attrs.axis)
        return None if axis in (-1, len(shape_of(b.var)) - 1) else f"softmax over axis {axis} (last axis supported)"

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        if x.qtype.dtype not in ("int8", "int16", "int32"):
            x = ctx.narrow(x, signed=True)
        x = paper_input(ctx, x, 0)
        row = shape_of(b.var)[-1]
        scheme = ctx.config.scheme
        n = softmax_n(ctx, x, b, row)
        out_qt = QType(scheme.softmax.dtype, scheme.softmax.scale)
        y = emit_paper_checked(ctx, b, "softmax_int", [x.expr], in_scale=x.qtype.scale, n=n, variant=scheme.variant,
                               exp_poly=scheme.shiftexp_poly, out_dtype=out_qt.dtype)
        # each output rounds half up from a row summing to 1.0: sum <= 1.0 + row / 2 LSB
        return QValue(y, out_qt, nonneg=True, row_sum=round(1.0 / out_qt.scale) + (row + 1) // 2)


@register_rule
class QGelu(IntegerRule):
    """gelu / gelu_tanh (fused by passes/patterns.py) -> gelu_int (ShiftGELU / i-GELU / division-free).
    ShiftGELU's sigmoid argument follows the scheme's ``gelu`` form; both GELU forms map to
    the same integer op (erf- and tanh-GELU differ by < 5e-4, below int16 output noise)."""

    ops = ("relax.nn.gelu", "relax.nn.gelu_tanh")

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        if x.qtype.dtype not in ("int8", "int16"):
            x = ctx.narrow(x, signed=True, bits=16)
        x = paper_input(ctx, x, 1)
        # int16 out: the FFN's largest activations are few but carry the signal; the next dense
        # accumulates int16 x int8 in int64 when int32 could overflow (rules/linear.py)
        out_qt = ctx.out_qtype(b.var, nonneg=False, wide_ok=True)
        scheme = ctx.config.scheme
        variant, approx = scheme.variant, scheme.gelu
        extra = {"approx": approx}
        if scheme.kind.exp == "shift" and not scheme.kind.paper:  # ShiftExp's N and refinement (the papers fix N)
            extra.update(n=nc.choose_gelu_n(x.qtype.scale, variant, approx), exp_poly=scheme.exp_poly)
        y = emit_paper_checked(ctx, b, "gelu_int", [x.expr], in_scale=x.qtype.scale, out_scale=out_qt.scale,
                               qmin=out_qt.qmin, qmax=out_qt.qmax, out_dtype=out_qt.dtype, variant=variant, **extra)
        return QValue(y, out_qt)


@register_rule
class QLayerNorm(IntegerRule):
    """layer_norm over the last axis -> layernorm_int (I-LayerNorm; integer sqrt; affine folded per
    channel). The output feeds residual adds, so it is kept at the residual width."""

    ops = ("relax.nn.layer_norm",)

    def check(self, ctx, b):
        axes = [int(a) for a in b.attrs.axes]
        if axes not in ([-1], [len(shape_of(b.var)) - 1]):
            return f"layer_norm over axes {axes} (last axis supported)"
        if ctx.const(b.args[1]) is None or ctx.const(b.args[2]) is None:
            return "gamma/beta are not constants"
        return None

    def rewrite(self, ctx, b):
        x = paper_input(ctx, ctx.q(b.args[0]), 2)
        c = shape_of(b.var)[-1]
        out_qt = ctx.out_qtype(b.var, nonneg=False)
        mult, bias, params = layernorm_int_args(
            ctx.const(b.args[1]).reshape(-1), ctx.const(b.args[2]).reshape(-1), in_scale=x.qtype.scale,
            out_scale=out_qt.scale, eps=float(b.attrs.epsilon), in_dtype=x.qtype.dtype, c=c, qmin=out_qt.qmin,
            qmax=out_qt.qmax, out_dtype=out_qt.dtype, variant=ctx.config.scheme.variant, max_abs=_max_abs(x.qtype))
        y = emit_paper_checked(ctx, b, "layernorm_int", [x.expr, const(mult), const(bias)], **params)
        return QValue(y, out_qt)
