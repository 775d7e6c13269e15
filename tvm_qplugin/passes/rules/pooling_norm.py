"""Sentence-embedding heads as exporters write them: masked mean pooling and L2 normalisation.

sentence-transformers (and optimum's export of its models) write the head as float graph
fragments, which the importer keeps as such::

    mf = astype(broadcast_to(expand_dims(mask)))         # the 0/1 mask as float
    pooled = sum(h * mf, axis=1) / clip(sum(mf, axis=1), 1e-9, inf)
    y = pooled / broadcast_to(clip(sqrt(sum(pooled * pooled, axis=-1, keepdims)), 1e-12, inf))

Each fragment is matched whole at its final ``divide`` (the anchor) and becomes one integer op
(ops/pooling_norm.py): ``masked_mean_requant`` (the count's reciprocal is a compile-time table:
the count is an integer in ``[0, T]``) and ``l2_normalize_int``. The fragment's other bindings
are *deferred*: their rule emits nothing (``rewrite`` returns None) and the anchor reads the
fragment's inputs itself. A fragment whose inner values are read outside it is not matched, and
its ops are refused as before (a float ``sqrt``, a division by a tensor).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from tvm import relax

from ...ops import const
from ...ops.pooling_norm import L2_OUT_DTYPE, L2_OUT_FRAC_BITS, masked_mean_table
from ...quant import QType
from ...quant import nonlinear_consts as nc
from ..graph import Binding, Graph, const_value, dtype_of, shape_of
from .base import RULES, IntegerRule, QValue, register_rule

_EPS_MAX = 1e-6   # the clip under a norm / count is an epsilon (F.normalize 1e-12, the count's 1e-9)


@dataclass(frozen=True)
class Fragment:
    """A matched head: its anchor (the final divide), its inputs and the bindings it fuses."""

    kind: str                    # "masked_mean" | "l2_normalize"
    anchor: relax.Var
    x: relax.Expr                # hidden states (B, T, D) / the vector to normalise (..., D)
    mask: relax.Expr | None      # raw integer (B, T) mask of masked_mean
    members: frozenset           # deferred bindings' vars (the anchor excluded)


def _is_float(e) -> bool:
    return dtype_of(e).startswith("float")


def _producer(graph: Graph, e, op: str) -> Binding | None:
    b = graph.producer(e)
    return b if b is not None and b.op_name == op else None


def _axes(b: Binding, rank: int) -> list[int] | None:
    return None if b.attrs.axis is None else sorted(int(a) % rank for a in b.attrs.axis)


def _epsilon_clip(graph: Graph, e, members: list) -> relax.Expr:
    """Below an optional ``clip(v, eps, +inf)`` with a tiny eps (added to ``members``)."""
    b = _producer(graph, e, "relax.clip")
    if b is not None and 0.0 < float(b.args[1].value) <= _EPS_MAX and float(b.args[2].value) >= 1e30:
        members.append(b.var)
        return b.args[0]
    return e


def _peel_mask(graph: Graph, e, members: list) -> relax.Expr | None:
    """The raw integer (B, T) tensor under ``astype`` / ``broadcast_to`` / ``expand_dims`` (last
    axis) bindings, which are added to ``members``; None unless exactly that chain with one
    int-to-float ``astype``."""
    casts = 0
    while True:
        b = graph.producer(e)
        if b is None or b.op_name not in ("relax.astype", "relax.broadcast_to", "relax.expand_dims"):
            break
        if b.op_name == "relax.expand_dims" and [int(a) % len(shape_of(b.var)) for a in b.attrs.axis] != [len(shape_of(b.var)) - 1]:
            return None
        if b.op_name == "relax.astype":
            if not (_is_float(b.var) and not _is_float(b.args[0])):
                return None
            casts += 1
        members.append(b.var)
        e = b.args[0]
    return e if casts == 1 and not _is_float(e) and len(shape_of(e)) == 2 else None


def match_masked_mean(graph: Graph, b: Binding) -> Fragment | None:
    """``sum(h * mf, 1) / clip(sum(mf, 1), eps)`` with ``mf`` the float of a (B, T) integer mask."""
    if b.op_name != "relax.divide" or len(shape_of(b.var)) != 2:
        return None
    members: list = []
    num = _producer(graph, b.args[0], "relax.sum")
    cnt = _producer(graph, _epsilon_clip(graph, b.args[1], members), "relax.sum")
    if num is None or cnt is None or _axes(num, 3) != [1] or _axes(cnt, 3) != [1] or num.attrs.keepdims:
        return None
    prod = _producer(graph, num.args[0], "relax.multiply")
    if prod is None or len(shape_of(prod.var)) != 3:
        return None
    for h, mf in (prod.args, prod.args[::-1]):
        if mf.same_as(cnt.args[0]) and _is_float(h) and shape_of(h) == shape_of(prod.var):
            break
    else:
        return None
    mask = _peel_mask(graph, mf, members)
    if mask is None or shape_of(mask) != shape_of(h)[:2]:
        return None
    members += [num.var, cnt.var, prod.var]
    return Fragment("masked_mean", b.var, h, mask, frozenset(members))


def match_l2_normalize(graph: Graph, b: Binding) -> Fragment | None:
    """``x / broadcast(clip(sqrt(sum(x * x, -1, keepdims)), eps))`` (torch ``F.normalize``, ONNX ReduceL2)."""
    if b.op_name != "relax.divide":
        return None
    x, den = b.args
    if not isinstance(x, relax.Var) or not _is_float(x) or shape_of(b.var) != shape_of(x):
        return None
    members: list = []
    bc = _producer(graph, den, "relax.broadcast_to")
    if bc is not None:
        members.append(bc.var)
        den = bc.args[0]
    sqrt = _producer(graph, _epsilon_clip(graph, den, members), "relax.sqrt")
    ssq = None if sqrt is None else _producer(graph, sqrt.args[0], "relax.sum")
    rank = len(shape_of(x))
    if ssq is None or _axes(ssq, rank) != [rank - 1] or not ssq.attrs.keepdims:
        return None
    sq = graph.producer(ssq.args[0])
    exponent = const_value(sq.args[1]) if sq is not None and sq.op_name == "relax.power" else None
    squares = sq is not None and sq.args[0].same_as(x) and (
        (sq.op_name == "relax.multiply" and sq.args[1].same_as(x)) or (exponent is not None and np.all(exponent == 2)))
    if not squares:
        return None
    members += [sqrt.var, ssq.var, sq.var]
    return Fragment("l2_normalize", b.var, x, None, frozenset(members))


def fragments(ctx) -> dict:
    """Every matched head of the graph, by anchor and by member var. Computed once per integerize
    context and kept on it (``ctx._heads``): every rule of a head asks, for each binding."""
    found = getattr(ctx, "_heads", None)
    if found is None:
        found = {}
        graph = ctx.graph
        for b in graph.bindings:
            frag = match_masked_mean(graph, b) or match_l2_normalize(graph, b)
            inside = frag.members | {frag.anchor} if frag else set()
            if frag and all(m not in graph.outputs and {u.var for u in graph.users.get(m, [])} <= inside
                            for m in frag.members):
                found[frag.anchor] = frag
                found.update((m, frag) for m in frag.members)
        ctx._heads = found
    return found


class QDeferredHeadOp(IntegerRule):
    """A binding inside a matched head (see the module docstring): nothing emitted here, its
    anchor computes the whole head. Checked before every other rule of the op."""

    ops = ("relax.astype", "relax.broadcast_to", "relax.expand_dims", "relax.multiply", "relax.sum", "relax.clip",
           "relax.sqrt", "relax.power")

    def check(self, ctx, b):
        frag = fragments(ctx).get(b.var)
        return None if frag is not None and frag.anchor is not b.var else "not inside a pooling / L2-normalisation head"

    def rewrite(self, ctx, b):
        return None


for _op in QDeferredHeadOp.ops:  # first: the generic rules of these ops would take the bindings otherwise
    RULES.setdefault(_op, []).insert(0, QDeferredHeadOp())


def _anchor(ctx, b, kind: str) -> Fragment | None:
    frag = fragments(ctx).get(b.var)
    return frag if frag is not None and frag.kind == kind and frag.anchor is b.var else None


@register_rule
class QMaskedMean(IntegerRule):
    """Masked mean pooling -> masked_mean_requant: the int64 sum of the kept tokens times the
    reciprocal of their count (a (T+1)-entry table of dyadic mantissas, one shared shift), one
    rounding. The output is the wide (int16) residual type of the pooled range."""

    ops = ("relax.divide",)

    def check(self, ctx, b):
        return None if _anchor(ctx, b, "masked_mean") else "not a masked mean pooling"

    def rewrite(self, ctx, b):
        frag = _anchor(ctx, b, "masked_mean")
        h = ctx.q(frag.x)
        if h.qtype.dtype == "int32":
            h = ctx.narrow(h, bits=16)
        out_qt = ctx.out_qtype(b.var, h.nonneg)
        t = shape_of(frag.x)[1]
        table, shift = masked_mean_table(h.qtype.scale / out_qt.scale, t, h.qtype.dtype)
        y = ctx.emit("masked_mean_requant", [h.expr, ctx.values[frag.mask].expr, const(table)], shift=shift,
                     qmin=out_qt.qmin, qmax=out_qt.qmax, out_dtype=out_qt.dtype)
        return QValue(y, out_qt, h.nonneg)


@register_rule
class QL2Normalize(IntegerRule):
    """L2 normalisation over the last axis -> l2_normalize_int (division-free isqrt and
    reciprocal): int16 at 2**-15, whatever the input's scale."""

    ops = ("relax.divide",)

    def check(self, ctx, b):
        return None if _anchor(ctx, b, "l2_normalize") else "not an L2 normalisation"

    def rewrite(self, ctx, b):
        frag = _anchor(ctx, b, "l2_normalize")
        x = ctx.q(frag.x)
        if x.qtype.dtype not in ("int8", "int16", "int32"):
            x = ctx.narrow(x, signed=True, bits=16)
        pre = nc.layernorm_pre_shift(x.qtype.dtype, max(abs(x.qtype.qmin), x.qtype.qmax))
        y = ctx.emit("l2_normalize_int", [x.expr], pre_shift=pre)
        return QValue(y, QType(L2_OUT_DTYPE, 2.0**-L2_OUT_FRAC_BITS))
