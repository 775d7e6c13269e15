"""ReduceSum on any axes, Softmax over any axis (the last-axis kernel between two transposes)."""
from __future__ import annotations

from tvm import relax

from ...quant import QType, dyadic
from ..graph import dtype_of, shape_of
from .base import IntegerRule, QValue, register_rule
from .nonlinear import emit_paper_checked, paper_input, softmax_n


@register_rule
class QSum(IntegerRule):
    """sum over axes (ReduceSum) -> sum_requant: the int32 sum, requantized by ``s_in / s_out``
    (QMean's kernel with N = 1)."""

    ops = ("relax.sum",)

    def check(self, ctx, b):
        return None if dtype_of(b.var).startswith("float") else "integer sum"

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        shape = shape_of(b.args[0])
        axes = list(range(len(shape))) if b.attrs.axis is None else [int(v) % len(shape) for v in b.attrs.axis]
        out_qt = ctx.out_qtype(b.var, x.nonneg)
        d = dyadic(x.qtype.scale / out_qt.scale)
        y = ctx.emit("sum_requant", [x.expr], axes=axes, keepdims=bool(b.attrs.keepdims), multiplier=d.multiplier,
                     shift=d.shift, qmin=out_qt.qmin, qmax=out_qt.qmax, out_dtype=out_qt.dtype)
        return QValue(y, out_qt, x.nonneg)


@register_rule
class QSoftmaxAnyAxis(IntegerRule):
    """softmax over a non-last axis -> permute_dims (axis last), softmax_int, permute_dims back.
    The integer softmax and its constants are exactly QSoftmax's (rules/nonlinear.py)."""

    ops = ("relax.nn.softmax",)

    def check(self, ctx, b):
        axis = int(b.attrs.axis)
        return None if axis not in (-1, len(shape_of(b.var)) - 1) else "last axis (QSoftmax)"

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        if x.qtype.dtype not in ("int8", "int16", "int32"):
            x = ctx.narrow(x, signed=True)
        x = paper_input(ctx, x, 0)
        shape = shape_of(b.var)
        axis = int(b.attrs.axis) % len(shape)
        perm = [a for a in range(len(shape)) if a != axis] + [axis]
        inverse = [perm.index(a) for a in range(len(shape))]
        scheme = ctx.config.scheme
        n = softmax_n(ctx, x, b, shape[axis])
        out_qt = QType(scheme.softmax.dtype, scheme.softmax.scale)
        moved = ctx.emit_relax(relax.op.permute_dims(x.expr, perm))
        y = emit_paper_checked(ctx, b, "softmax_int", [moved], in_scale=x.qtype.scale, n=n, variant=scheme.variant,
                               exp_poly=scheme.shiftexp_poly, out_dtype=out_qt.dtype)
        return QValue(ctx.emit_relax(relax.op.permute_dims(y, inverse)), out_qt, nonneg=True)
