"""LogSoftmax on any axis -> log_softmax_int (ops/log_softmax.py), the axis moved last and back as
QSoftmaxAnyAxis does; the exponential and its shift ``n`` are the softmax's (same variant)."""
from __future__ import annotations

import math

from tvm import relax

from ...ops import const
from ...ops.log_softmax import LOG2_FRAC_BITS, log2_table
from ...quant import dyadic_pair
from ...quant import nonlinear_consts as nc
from ..graph import shape_of
from .base import IntegerRule, QValue, register_rule


@register_rule
class QLogSoftmax(IntegerRule):
    """log_softmax(x, axis) -> log_softmax_int over the last axis. The input is int8 / int16 (wider
    ones narrowed to int16: ``A ma`` must fit int64); the output is the wide signed type of its
    calibrated range (log-probabilities are <= 0, often far below)."""

    ops = ("relax.nn.log_softmax",)

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        if x.qtype.dtype not in ("int8", "int16"):
            x = ctx.narrow(x, signed=True, bits=16)
        shape = shape_of(b.var)
        axis = int(b.attrs.axis) % len(shape)
        lo, hi = ctx.ranges[b.args[0]]
        scheme = ctx.config.scheme
        n = nc.choose_softmax_n(x.qtype.scale, max(hi - lo, 1e-6), shape[axis], scheme.variant)
        out_qt = ctx.out_qtype(b.var, nonneg=False)
        ma, mb, shift = dyadic_pair(x.qtype.scale / out_qt.scale, math.log(2.0) / 2**LOG2_FRAC_BITS / out_qt.scale)
        perm = [a for a in range(len(shape)) if a != axis] + [axis]
        moved = x.expr if axis == len(shape) - 1 else ctx.emit_relax(relax.op.permute_dims(x.expr, perm))
        y = ctx.emit("log_softmax_int", [moved, const(log2_table())], in_scale=x.qtype.scale, n=n,
                     variant=scheme.variant, exp_poly=scheme.shiftexp_poly, ma=ma, mb=mb, shift=shift,
                     qmin=out_qt.qmin, qmax=out_qt.qmax, out_dtype=out_qt.dtype)
        if axis != len(shape) - 1:
            y = ctx.emit_relax(relax.op.permute_dims(y, [perm.index(a) for a in range(len(shape))]))
        return QValue(y, out_qt)
