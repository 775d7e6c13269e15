"""Shift/add rules (ShiftAddViT), taken only when ``IntegerizeConfig.shiftadd`` asks for them
(passes/shiftadd.py decides which layer gets which primitive):

* :class:`QShiftDense` -- matmul with a constant 2-D weight -> ``shift_dense_requant``: 4-bit
  power-of-two weight codes, packed two per byte, per-channel dyadic requantization;
* :class:`QAddAttention` -- ``softmax(Q Kᵀ [* c]) V`` -> ``add_attention`` (ops/shiftadd.py).
  The rule sits on the final ``matmul(P, V)``; the bindings before it in the chain (``Q Kᵀ``,
  the scale, the softmax) are deferred by :class:`QAddAttentionInterior` (they return None:
  the chain end computes them), so no score matrix is ever built.

These rules go to the front of their ops' rule lists: when the plan selects a binding they must
win over the int8 rules (QDense, QMatMulAct, QScalarScale, QSoftmax); when it does not, their
``check`` refuses and the int8 rules take the binding as before.

An attention mask (``scores + where(keep, 0, -inf)``) becomes the kernel's key mask when it does
not vary over queries (padding masks); a per-query mask (causal) has no linear-order form: that
attention stays softmax attention, and the report says which primitive each attention got.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ...ops import const
from ...ops.shiftadd import shift_acc_bound
from ...quant.pow2 import decode, pack_nibbles, shift_quantize, weight_sqnr_db
from ..graph import Binding, shape_of
from .base import RULES, IntegerRule, LayerInfo, QValue
from .linear import _finish, _fused, bias_correction


def register_first(cls: type[IntegerRule]) -> type[IntegerRule]:
    """Like ``register_rule``, but ahead of the rules already registered for the same ops."""
    for op in cls.ops:
        RULES.setdefault(op, []).insert(0, cls())
    return cls


def _plan(ctx):
    return ctx.config.shiftadd


# --- shift linears ---------------------------------------------------------------------------

def _dense_weight(ctx, b: Binding) -> np.ndarray | None:
    if b.op_name != "relax.matmul":
        return None
    w = ctx.const(b.args[1])
    return w if w is not None and w.ndim == 2 and ctx.const(b.args[0]) is None else None


def _is_last_dense(ctx, b: Binding) -> bool:
    cache = ctx.__dict__.setdefault("_shiftadd_last_dense", {})
    if "name" not in cache:
        dense = [x.name for x in ctx.graph.bindings if _dense_weight(ctx, x) is not None]
        cache["name"] = dense[-1] if dense else None
    return cache["name"] == b.name


@register_first
class QShiftDense(IntegerRule):
    """matmul(x, W) [+ b] [-> relu/clip] -> shift_dense_requant(x_q, codes(W), b_q): W per output
    channel ``sign * scale_j * 2^(e - 1)`` (quant/pow2.py), the accumulation shifts and adds."""

    ops = ("relax.matmul",)

    def check(self, ctx, b):
        plan = _plan(ctx)
        w = _dense_weight(ctx, b)
        if plan is None or w is None:
            return "not a shift linear (no --attention shiftadd / --shift-linears, or not a constant 2-D weight)"
        codes, scale = shift_quantize(w.T)
        sqnr = weight_sqnr_db(w.T, decode(codes) * scale[:, None])
        if plan.linear_choice(b.name, sqnr, _is_last_dense(ctx, b)) != "shift":
            return f"the plan keeps {b.name} int8 (weight SQNR as shifts {sqnr:.1f} dB)"
        return None

    def rewrite(self, ctx, b):
        w = ctx.const(b.args[1]).T  # (N, K)
        k = w.shape[1]
        x = ctx.q(b.args[0])
        if shift_acc_bound(x.qtype.dtype, k) >= 2**31:
            x = ctx.narrow(x)  # int16 x long K: int32 could overflow; 8 bits keep the kernel multiply-free in int32
        codes, w_scale = shift_quantize(w)
        w_int = decode(codes)
        corr = bias_correction(ctx, b.args[0], w, w_int, w_scale) if ctx.config.bias_correction else None
        ep, out_qt, mult, shift, bias, qmin, qmax = _fused(ctx, b, x, w_int, w_scale, -1, corr)
        y = ctx.emit("shift_dense_requant", [x.expr, const(pack_nibbles(codes)), const(bias), const(mult), const(shift)],
                     qmin=qmin, qmax=qmax, out_dtype=out_qt.dtype)
        rows = int(np.prod(shape_of(b.var)[:-1]))
        sqnr = weight_sqnr_db(w, w_int * w_scale[:, None])
        ctx.layers.append(LayerInfo(b.name, "dense", 4, int(np.iinfo(x.qtype.dtype).bits), rows * w.shape[0] * k,
                                    var=y, primitive="shift", weight_sqnr_db=sqnr))
        return _finish(ctx, b, ep, y, out_qt)


# --- add attention ---------------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionChain:
    """``pv = matmul(softmax([mask +] [scale *] (qk = matmul(Q, Kᵀ))), V)``: bindings and operands.
    ``key_mask``: the float graph's bool tensor (..., 1, N) saying which keys take part, or None."""

    qk: Binding
    interior: tuple[Binding, ...]  # qk, the optional scale and mask add, the softmax
    pv: Binding
    key_mask: object = None

    @property
    def q(self):
        return self.qk.args[0]

    @property
    def kt(self):
        return self.qk.args[1]

    @property
    def v(self):
        return self.pv.args[1]


def _key_mask(ctx, where: Binding):
    """The (..., 1, N) key mask behind an attention-mask select ``where(keep, 0, -inf)``: ``keep``
    itself when it does not vary over queries, or the query-independent operand of
    ``logical_and(all-true constant, key mask)`` (the form of Hugging Face BERT exports); None
    when the mask varies per query (a causal mask has no linear-order form)."""
    cond = where.args[0]
    if shape_of(cond)[-2] == 1:
        return cond
    p = ctx.graph.producer(cond)
    if p is None or p.op_name != "relax.logical_and":
        return None
    consts = [ctx.const(a) for a in p.args]
    for a, c, other in ((p.args[0], consts[0], consts[1]), (p.args[1], consts[1], consts[0])):
        if c is None and other is not None and bool(np.all(other)) and shape_of(a)[-2] == 1:
            return a
    return None


def _chain_from_pv(ctx, pv: Binding) -> AttentionChain | None:
    g = ctx.graph
    if pv.op_name != "relax.matmul" or ctx.const(pv.args[0]) is not None or ctx.const(pv.args[1]) is not None:
        return None
    sm = g.producer(pv.args[0])
    if sm is None or sm.op_name != "relax.nn.softmax" or int(sm.attrs.axis) not in (-1, len(shape_of(sm.var)) - 1):
        return None
    chain = [sm]
    key_mask = None
    cur = g.producer(sm.args[0])
    if cur is not None and cur.op_name == "relax.add":
        makers = [g.producer(a) for a in cur.args]
        where = next((m for m in makers if m is not None and m.op_name == "relax.where"), None)
        if where is None:
            return None
        key_mask = _key_mask(ctx, where)
        if key_mask is None:
            return None
        chain.append(cur)
        cur = makers[1] if where is makers[0] else makers[0]
    if cur is not None and cur.op_name in ("relax.multiply", "relax.divide"):
        c = [ctx.const(a) for a in cur.args]
        if not any(x is not None and x.size == 1 and float(x.reshape(-1)[0]) > 0 for x in c):
            return None
        chain.append(cur)
        cur = g.producer(cur.args[0] if c[0] is None else cur.args[1])
    if cur is None or cur.op_name != "relax.matmul" or any(ctx.const(a) is not None for a in cur.args):
        return None
    chain.append(cur)
    if any(g.sole_user(x.var) is None for x in chain):  # a score or probability used elsewhere
        return None
    q_shape, kt_shape, v_shape = shape_of(cur.args[0]), shape_of(cur.args[1]), shape_of(pv.args[1])
    n, d = q_shape[-2:]
    if kt_shape[-2:] != (d, n) or v_shape[-2] != n or not (q_shape[:-2] == kt_shape[:-2] == v_shape[:-2]):
        return None
    if key_mask is not None and len(shape_of(key_mask)) != len(q_shape):
        return None
    return AttentionChain(cur, tuple(reversed(chain)), pv, key_mask)


def _chains(ctx) -> dict[str, AttentionChain]:
    """Binding name -> its attention chain, for every member of every chain (cached per graph)."""
    found = ctx.__dict__.get("_shiftadd_chains")
    if found is None:
        found = {}
        for b in ctx.graph.bindings:
            chain = _chain_from_pv(ctx, b)
            if chain is not None:
                for member in (*chain.interior, chain.pv):
                    found[member.name] = chain
        ctx._shiftadd_chains = found
    return found


def _attention_on(ctx) -> bool:
    plan = _plan(ctx)
    return plan is not None and plan.attention


@register_first
class QAddAttentionInterior(IntegerRule):
    """``Q Kᵀ``, its scale, the mask add and the softmax of an add-attention chain: deferred to the
    chain end."""

    ops = ("relax.matmul", "relax.multiply", "relax.divide", "relax.add", "relax.nn.softmax")

    def check(self, ctx, b):
        chain = _chains(ctx).get(b.name) if _attention_on(ctx) else None
        if chain is None or chain.pv.name == b.name:
            return "not inside an add-attention chain (--attention shiftadd)"
        return None

    def rewrite(self, ctx, b):
        return None


@register_first
class QAddAttention(IntegerRule):
    """``softmax(Q Kᵀ [* c]) V`` -> add_attention(Q, Kᵀ, V): output at V's scale and dtype."""

    ops = ("relax.matmul",)

    def check(self, ctx, b):
        chain = _chains(ctx).get(b.name) if _attention_on(ctx) else None
        if chain is None or chain.pv.name != b.name:
            return "not the end of an add-attention chain (--attention shiftadd)"
        return None

    def rewrite(self, ctx, b):
        chain = _chains(ctx)[b.name]
        q, kt, v = ctx.q(chain.q), ctx.q(chain.kt), ctx.q(chain.v)
        q, kt = (ctx.narrow(t, signed=True, bits=16) if t.qtype.dtype not in ("int8", "uint8", "int16") else t
                 for t in (q, kt))
        if v.qtype.dtype not in ("int8", "uint8", "int16"):
            v = ctx.narrow(v, signed=None, bits=16)
        keep = [] if chain.key_mask is None else [ctx.values[chain.key_mask].expr]
        y = ctx.emit("add_attention", [q.expr, kt.expr, v.expr, *keep], qmin=v.qtype.qmin, qmax=v.qtype.qmax,
                     out_dtype=v.qtype.dtype)
        # macs 0: the kernel multiplies nothing (its 2 N d dv additions are what it costs)
        ctx.layers.append(LayerInfo(b.name, "attention", None, int(np.iinfo(v.qtype.dtype).bits), 0, var=y,
                                    primitive="add-attention"))
        return QValue(y, v.qtype, v.nonneg)
