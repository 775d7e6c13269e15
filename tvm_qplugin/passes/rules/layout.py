"""Layout ops pass integers through unchanged (same scale); concat aligns its inputs first."""
from __future__ import annotations

from tvm import relax

from .base import IntegerRule, QValue, register_rule


@register_rule
class QLayout(IntegerRule):
    """reshape / flatten / permute_dims / squeeze / expand_dims: the same Relax op on integers."""

    ops = ("relax.reshape", "relax.flatten", "relax.permute_dims", "relax.squeeze", "relax.expand_dims")

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        call = relax.Call(b.value.op, [x.expr, *b.args[1:]], b.attrs, b.value.ty_args)
        return QValue(ctx.emit_relax(call), x.qtype, x.nonneg)


@register_rule
class QConcat(IntegerRule):
    """concat: every input requantized onto the calibrated output type, then concatenated. The
    output is as wide as the integerizer makes an accumulating op's (16 bits signed, 24 as a graph
    output) when any input is wider than 8 bits: a detector's heads concatenated into its logits
    would otherwise lose the heads' resolution at the last step."""

    ops = ("relax.concat",)

    def rewrite(self, ctx, b):
        fields = b.args[0].fields
        xs = [ctx.q(f) for f in fields]
        nonneg = all(x.nonneg for x in xs)
        wide = any(x.qtype.dtype not in ("int8", "uint8") for x in xs)
        out_qt = ctx.out_qtype(b.var, nonneg, wide_ok=wide)
        aligned = [ctx.requantize(x, out_qt) for x in xs]
        y = ctx.emit_relax(relax.op.concat(aligned, axis=int(b.attrs.axis)))
        return QValue(y, out_qt, nonneg)
