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
    """concat: every input requantized onto the calibrated output type, then concatenated. A
    concat that is a graph output, of any input wider than 8 bits, keeps 24 bits: a detector's
    heads concatenated into its logits would otherwise lose their resolution at the last step.
    Inside the graph it stays 8-bit (calibrated with clipping; a wide concat feeding a conv would
    be narrowed over its full range for the accumulator, which measured worse on PP-OCRv5)."""

    ops = ("relax.concat",)

    def rewrite(self, ctx, b):
        fields = b.args[0].fields
        xs = [ctx.q(f) for f in fields]
        nonneg = all(x.nonneg for x in xs)
        wide = ctx.is_output(b.var) and any(x.qtype.dtype not in ("int8", "uint8") for x in xs)
        out_qt = ctx.out_qtype(b.var, nonneg, wide_ok=wide)
        aligned = [ctx.requantize(x, out_qt) for x in xs]
        y = ctx.emit_relax(relax.op.concat(aligned, axis=int(b.attrs.axis)))
        return QValue(y, out_qt, nonneg)
