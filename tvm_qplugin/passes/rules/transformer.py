"""Transformer-encoder rules: raw integer inputs (token ids, masks), embedding lookup, attention
mask, scalar rescales (the 1/sqrt(d) of attention)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tvm import relax

from ...ops import const
from ...quant import QType
from ..graph import Binding, dtype_of
from .base import IntegerRule, QValue, register_rule

if TYPE_CHECKING:
    from ..integerize import IntegerizeContext

_MASK_NEGATIVE = -1e4  # below this, a "where(keep, 0, c)" constant is an attention mask


def _is_int(expr) -> bool:
    try:
        return not dtype_of(expr).startswith("float")
    except (AttributeError, TypeError):
        return True


def _tensor_args(b: Binding) -> list:
    return [a for a in b.args if isinstance(a, (relax.Var, relax.Tuple)) or _has_ty(a)]


def _has_ty(a) -> bool:
    try:
        a.ty.shape  # noqa: B018
        return True
    except (AttributeError, TypeError):
        return False


@register_rule
class QRawInteger(IntegerRule):
    """Ops on tensors that are integer or bool in the float model already (token ids, attention
    masks): re-emitted unchanged, they are integer arithmetic by construction."""

    ops = ("relax.less", "relax.greater", "relax.equal", "relax.not_equal", "relax.add", "relax.subtract",
           "relax.where", "relax.astype", "relax.gather_nd", "relax.logical_and", "relax.logical_or",
           "relax.logical_not", "relax.take", "relax.reshape", "relax.expand_dims", "relax.broadcast_to",
           "relax.squeeze", "relax.permute_dims")

    def check(self, ctx, b):
        if not _is_int(b.var):
            return "float result"
        if not all(_is_int(a) for a in b.args if _has_ty(a)):
            return "float operand"
        return None

    def rewrite(self, ctx: IntegerizeContext, b: Binding):
        args = [ctx.values[a].expr if isinstance(a, relax.Var) and a in ctx.values else a for a in b.args]
        return QValue(ctx.emit_relax(relax.Call(b.value.op, args, b.attrs, b.value.ty_args)), None, kind="raw")


@register_rule
class QEmbedding(IntegerRule):
    """take(float table, ids): the table quantized symmetric per tensor, gathered as integers. It is
    int16: a vocabulary's rows differ in norm by orders of magnitude, and at int8 the embedding
    alone costs MiniLM 27 dB SQNR before the first layer."""

    ops = ("relax.take",)

    def check(self, ctx, b):
        if ctx.const(b.args[0]) is None or not _is_int(b.args[1]):
            return "not an embedding lookup (constant table, integer indices)"
        return None

    def rewrite(self, ctx, b):
        table = ctx.const(b.args[0])
        qt = QType.for_range(-float(np.abs(table).max()), float(np.abs(table).max()), nonneg=False, bits=16)
        ids = ctx.values[b.args[1]].expr if b.args[1] in ctx.values else b.args[1]
        y = ctx.emit_relax(relax.op.take(const(qt.quantize(table)), ids, axis=int(b.attrs.axis), mode="clip"))
        return QValue(y, qt)


@register_rule
class QMaskBias(IntegerRule):
    """where(keep, 0.0, -huge) from a raw bool: the additive attention mask, kept as the bool."""

    ops = ("relax.where",)

    def check(self, ctx, b):
        cond, t, f = b.args
        tv, fv = ctx.const(t), ctx.const(f)
        if _is_int(b.var) or not _is_int(cond) or tv is None or fv is None:
            return "not an attention-mask select"
        if np.any(tv != 0) or np.any(fv > _MASK_NEGATIVE):
            return "select between values other than 0 and -inf (only attention masks are supported)"
        return None

    def rewrite(self, ctx, b):
        return QValue(ctx.values[b.args[0]].expr, None, kind="mask")


@register_rule
class QMaskedAdd(IntegerRule):
    """scores + mask -> mask_fill(scores, keep, qmin): masked positions get the dtype minimum."""

    ops = ("relax.add",)

    def check(self, ctx, b):
        kinds = [ctx.graph.producer(a).op_name if ctx.graph.producer(a) is not None else "" for a in b.args]
        if "relax.where" not in kinds or _is_int(b.var):
            return "no attention-mask operand"
        return None

    def rewrite(self, ctx, b):
        a, m = (ctx.q(x) for x in b.args)
        if a.kind == "mask":
            a, m = m, a
        y = ctx.emit("mask_fill", [a.expr, m.expr], fill=a.qtype.qmin)
        return QValue(y, a.qtype, a.nonneg)


@register_rule
class QScalarScale(IntegerRule):
    """x * c or x / c with a positive scalar constant: the same integers at scale ``s * c``
    (the attention 1/sqrt(d) costs nothing)."""

    ops = ("relax.multiply", "relax.divide")

    def check(self, ctx, b):
        if _is_int(b.var):
            return "integer result"
        consts = [ctx.const(a) for a in b.args]
        c = consts[1] if consts[1] is not None else (consts[0] if b.op_name == "relax.multiply" else None)
        if c is None or c.size != 1 or not float(c.reshape(-1)[0]) > 0:
            return "not a positive scalar constant factor"
        return None

    def rewrite(self, ctx, b):
        consts = [ctx.const(a) for a in b.args]
        idx = 1 if consts[1] is not None else 0
        c = float(consts[idx].reshape(-1)[0])
        x = ctx.q(b.args[1 - idx])
        factor = c if b.op_name == "relax.multiply" else 1.0 / c
        qt = QType(x.qtype.dtype, x.qtype.scale * factor, x.qtype.levels)
        return QValue(x.expr, qt, x.nonneg)
