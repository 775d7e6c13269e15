"""Pattern fusion for transformer encoders: decomposed GELU and LayerNorm back into one op.

Exporters write GELU as ``x * 0.5 * (1 + erf(x / sqrt(2)))`` (five ops) or the tanh form, and
LayerNorm either natively or as ReduceMean/Sub/Pow/Sqrt/Div. The integer rules want one op each
(one calibrated input scale, one integer kernel), so these passes restore ``R.nn.gelu`` /
``R.nn.gelu_tanh`` / ``R.nn.layer_norm``. Each matcher walks single-use chains from an anchor
(``erf``, ``tanh`` or ``mean``) and only fires when every constant is the one the formula needs.
"""
from __future__ import annotations

import math

import numpy as np
from tvm import relax

from .graph import Binding, Graph, const_value
from .rewriter import FunctionRewriter, function_pass


def _scalar(expr) -> float | None:
    c = const_value(expr)
    return float(c.reshape(-1)[0]) if c is not None and c.size == 1 else None


def _split_scalar(b: Binding):
    """(tensor operand, scalar constant) of a binary op with one scalar constant, else None."""
    if len(b.args) != 2:
        return None
    a0, a1 = b.args
    s1, s0 = _scalar(a1), _scalar(a0)
    if s1 is not None and s0 is None:
        return a0, s1
    if s0 is not None and s1 is None:
        return a1, s0
    return None


def _close(v, want, tol=1e-4) -> bool:
    return v is not None and abs(v - want) <= tol * max(1.0, abs(want))


def _chain(g: Graph, start: relax.Var, limit: int = 6) -> list[Binding]:
    out, v = [], start
    for _ in range(limit):
        u = g.sole_user(v)
        if u is None:
            break
        out.append(u)
        v = u.var
    return out


def _match_erf_gelu(g: Graph, erf: Binding):
    """x*0.5*(1+erf(x/sqrt2)) in any association -> (x, final binding, consumed bindings)."""
    pre = g.producer(erf.args[0])
    if pre is None:
        return None
    split = _split_scalar(pre)
    if split is None:
        return None
    x, c = split
    if not ((pre.op_name == "relax.divide" and _close(c, math.sqrt(2))) or
            (pre.op_name == "relax.multiply" and _close(c, 1 / math.sqrt(2)))):
        return None
    seen_one = seen_half = seen_x = False
    consumed = [pre, erf]
    for b in _chain(g, erf.var):
        sp = _split_scalar(b)
        if b.op_name == "relax.add" and sp is not None and _close(sp[1], 1.0) and not seen_one:
            seen_one = True
        elif b.op_name == "relax.multiply" and sp is not None and _close(sp[1], 0.5) and not seen_half:
            seen_half = True
        elif b.op_name == "relax.multiply" and sp is None and any(a.same_as(x) for a in b.args) and not seen_x:
            seen_x = True
        else:
            break
        consumed.append(b)
        if seen_one and seen_half and seen_x:
            return x, b, consumed
    # 0.5 may multiply x before the product: (x*0.5) * (1+erf)
    return None


def _fuse_gelu(rw: FunctionRewriter):
    g = rw.graph
    final: dict[relax.Var, relax.Expr] = {}
    for b in g.bindings:
        if b.op_name == "relax.erf":
            m = _match_erf_gelu(g, b)
            if m is not None:
                x, last, _ = m
                final[last.var] = x

    def rewrite(b: Binding):
        if b.var in final:
            return relax.op.nn.gelu(rw.arg(final[b.var]))
        return None

    return rewrite


FuseGELU = function_pass(_fuse_gelu, "FuseGELU")


def _match_layer_norm(g: Graph, mean: Binding):
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) [* gamma + beta] over the last axis."""
    attrs = mean.attrs
    if attrs.axis is None or [int(a) for a in attrs.axis] not in ([-1], [len(mean.args[0].ty.shape) - 1]):
        return None
    x = mean.args[0]
    subs = [u for u in g.users.get(mean.var, []) if u.op_name == "relax.subtract" and u.args[0].same_as(x)]
    if len(subs) != 1:
        return None
    d = subs[0]
    users = g.users.get(d.var, [])
    sq = next((u for u in users if (u.op_name == "relax.power" and _close(_scalar(u.args[1]), 2.0)) or
               (u.op_name == "relax.multiply" and u.args[0].same_as(d.var) and u.args[1].same_as(d.var))), None)
    div = next((u for u in users if u.op_name == "relax.divide" and u.args[0].same_as(d.var)), None)
    if sq is None or div is None:
        return None
    var_mean = g.sole_user(sq.var)
    add_eps = g.sole_user(var_mean.var) if var_mean is not None and var_mean.op_name == "relax.mean" else None
    sqrt = g.sole_user(add_eps.var) if add_eps is not None and add_eps.op_name == "relax.add" else None
    if sqrt is None or sqrt.op_name != "relax.sqrt" or not div.args[1].same_as(sqrt.var):
        return None
    eps = _scalar(add_eps.args[1])
    c = int(x.ty.shape[-1])
    gamma, beta, last = np.ones(c, np.float32), np.zeros(c, np.float32), div
    nxt = g.sole_user(div.var)
    if nxt is not None and nxt.op_name == "relax.multiply" and const_value(nxt.args[1]) is not None:
        gamma, last = const_value(nxt.args[1]).reshape(-1).astype(np.float32) * np.ones(c, np.float32), nxt
        nxt = g.sole_user(nxt.var)
    if nxt is not None and nxt.op_name == "relax.add" and const_value(nxt.args[1]) is not None:
        beta, last = const_value(nxt.args[1]).reshape(-1).astype(np.float32) * np.ones(c, np.float32), nxt
    return x, last, gamma, beta, eps


def _fuse_layer_norm(rw: FunctionRewriter):
    from ..ops import const

    g = rw.graph
    final = {}
    for b in g.bindings:
        if b.op_name == "relax.mean":
            m = _match_layer_norm(g, b)
            if m is not None:
                final[m[1].var] = m

    def rewrite(b: Binding):
        if b.var not in final:
            return None
        x, _, gamma, beta, eps = final[b.var]
        return relax.op.nn.layer_norm(rw.arg(x), const(gamma), const(beta), axes=[-1], epsilon=eps)

    return rewrite


FuseLayerNorm = function_pass(_fuse_layer_norm, "FuseLayerNorm")
