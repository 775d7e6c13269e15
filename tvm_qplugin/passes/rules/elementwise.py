"""Residual add, standalone ReLU/Clip."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from ...ops import const
from ...quant import QType, dyadic_pair
from ..graph import Binding, dtype_of
from .base import IntegerRule, QValue, activation_bounds, clamp_bounds, register_rule

if TYPE_CHECKING:
    from ..integerize import IntegerizeContext


@register_rule
class QAdd(IntegerRule):
    """add(a, b) [-> relu/clip] -> add_requant: each input on its own dyadic multiplier, one shared
    shift, one rounding (ops/requant.py). A constant operand is quantized to int16 first."""

    ops = ("relax.add",)

    def check(self, ctx, b):
        if ctx.const(b.args[0]) is not None and ctx.const(b.args[1]) is not None:
            return "both operands constant (FoldConstant should have removed it)"
        if not dtype_of(b.var).startswith("float"):
            return "integer add (raw integer rule)"
        if any(ctx.graph.producer(a) is not None and ctx.graph.producer(a).op_name == "relax.where" for a in b.args):
            return "attention-mask add (masked-add rule)"
        return None

    def rewrite(self, ctx, b):
        a, c = (self._operand(ctx, e) for e in b.args)
        ep = ctx.epilogue(b.var, None, allow_bias=False)
        nonneg = ep.nonneg or (a.nonneg and c.nonneg)
        out_qt = ctx.out_qtype(ep.var, nonneg)
        ma, mb, shift = dyadic_pair(a.qtype.scale / out_qt.scale, c.qtype.scale / out_qt.scale)
        qmin, qmax = clamp_bounds(out_qt, ep.lo, ep.hi)
        y = ctx.emit("add_requant", [a.expr, c.expr], ma=ma, mb=mb, shift=shift, qmin=qmin, qmax=qmax,
                     out_dtype=out_qt.dtype)
        qv = QValue(y, out_qt, nonneg)
        if ep.var is not b.var:
            ctx.values[ep.var] = qv
        return qv

    @staticmethod
    def _operand(ctx: IntegerizeContext, e) -> QValue:
        c = ctx.const(e)
        if c is None:
            return ctx.q(e)
        qt = QType.for_range(-np.abs(c).max(), np.abs(c).max(), nonneg=False, bits=16)
        return QValue(const(qt.quantize(c)), qt)


@register_rule
class QActivation(IntegerRule):
    """Standalone relu/clip (not fused into the op before it): clamp in the integer domain,
    requantized onto the calibrated output range."""

    ops = ("relax.nn.relu", "relax.clip", "relax.nn.relu6")

    def rewrite(self, ctx, b: Binding):
        x = ctx.q(b.args[0])
        lo, hi = activation_bounds(b)
        nonneg = lo >= 0
        out_qt = ctx.out_qtype(b.var, nonneg, wide_ok=False)
        qmin, qmax = clamp_bounds(out_qt, lo, hi)
        from ...quant import dyadic

        d = dyadic(x.qtype.scale / out_qt.scale)
        y = ctx.emit("requantize", [x.expr], multiplier=d.multiplier, shift=d.shift, qmin=qmin, qmax=qmax,
                     out_dtype=out_qt.dtype)
        return QValue(y, out_qt, nonneg)
