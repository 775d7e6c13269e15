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


def _match_gelu_tail(g: Graph, act: Binding, x: relax.Var):
    """``0.5 * x * (1 + act)`` after ``act`` (erf or tanh), in any association, including
    ``(x * 0.5) * (1 + act)`` as torch exports the tanh form -> (final binding, consumed) or None."""
    seen_one = seen_half = seen_x = False
    consumed = []
    for b in _chain(g, act.var):
        sp = _split_scalar(b)
        other = None
        if b.op_name == "relax.multiply" and sp is None:
            prev = consumed[-1].var if consumed else act.var
            other = b.args[1] if b.args[0].same_as(prev) else b.args[0]
        if b.op_name == "relax.add" and sp is not None and _close(sp[1], 1.0) and not seen_one:
            seen_one = True
        elif b.op_name == "relax.multiply" and sp is not None and _close(sp[1], 0.5) and not seen_half:
            seen_half = True
        elif other is not None and other.same_as(x) and not seen_x:
            seen_x = True
        elif other is not None and not seen_x and not seen_half and _is_half_of(g, other, x):
            seen_x = seen_half = True
            consumed.append(g.producer(other))
        else:
            break
        consumed.append(b)
        if seen_one and seen_half and seen_x:
            return b, consumed
    return None


def _is_half_of(g: Graph, v, x) -> bool:
    """``v`` is ``x * 0.5`` (or ``x / 2``) used only by the GELU product."""
    p = g.producer(v)
    if p is None or len(g.users.get(p.var, [])) != 1:
        return False
    sp = _split_scalar(p)
    return sp is not None and sp[0].same_as(x) and (
        (p.op_name == "relax.multiply" and _close(sp[1], 0.5)) or (p.op_name == "relax.divide" and _close(sp[1], 2.0)))


def _match_erf_gelu(g: Graph, erf: Binding):
    """x*0.5*(1+erf(x/sqrt2)) in any association -> (x, final binding)."""
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
    tail = _match_gelu_tail(g, erf, x)
    return None if tail is None else (x, tail[0])


def _is_cube_of(g: Graph, v) -> relax.Var | None:
    """``x`` when ``v`` is ``x ** 3``, ``x * (x * x)`` or ``(x * x) * x``."""
    p = g.producer(v)
    if p is None:
        return None
    if p.op_name == "relax.power" and _close(_scalar(p.args[1]), 3.0):
        return p.args[0]
    if p.op_name != "relax.multiply" or _split_scalar(p) is not None:
        return None
    for sq, x in ((p.args[0], p.args[1]), (p.args[1], p.args[0])):
        q = g.producer(sq)
        if q is not None and q.op_name == "relax.multiply" and q.args[0].same_as(x) and q.args[1].same_as(x):
            return x
        if q is not None and q.op_name == "relax.power" and _close(_scalar(q.args[1]), 2.0) and q.args[0].same_as(x):
            return x
    return None


def _scaled(g: Graph, v, c: float):
    """``t`` when ``v`` is ``t * c`` (either operand order), else None."""
    p = g.producer(v)
    sp = _split_scalar(p) if p is not None and p.op_name == "relax.multiply" else None
    return sp[0] if sp is not None and _close(sp[1], c) else None


def _tanh_gelu_input(g: Graph, arg) -> relax.Var | None:
    """``x`` when ``arg`` is ``sqrt(2/pi) (x + 0.044715 x**3)`` (torch) or
    ``sqrt(2/pi) x + 0.044715 sqrt(2/pi) x**3`` (ONNX Runtime's FastGelu expansion)."""
    c1 = math.sqrt(2 / math.pi)
    inner = _scaled(g, arg, c1)
    if inner is not None:
        p = g.producer(inner)
        if p is None or p.op_name != "relax.add" or _split_scalar(p) is not None:
            return None
        for x, t in ((p.args[0], p.args[1]), (p.args[1], p.args[0])):
            cube = _scaled(g, t, 0.044715)
            if cube is not None and (cx := _is_cube_of(g, cube)) is not None and cx.same_as(x):
                return x
        return None
    p = g.producer(arg)
    if p is None or p.op_name != "relax.add" or _split_scalar(p) is not None:
        return None
    for lin, t in ((p.args[0], p.args[1]), (p.args[1], p.args[0])):
        x, cube = _scaled(g, lin, c1), _scaled(g, t, 0.044715 * c1)
        if x is not None and cube is not None and (cx := _is_cube_of(g, cube)) is not None and cx.same_as(x):
            return x
    return None


def _match_tanh_gelu(g: Graph, tanh: Binding):
    """0.5*x*(1+tanh(sqrt(2/pi)*(x + 0.044715 x**3))) -> (x, final binding)."""
    x = _tanh_gelu_input(g, tanh.args[0])
    if x is None:
        return None
    tail = _match_gelu_tail(g, tanh, x)
    return None if tail is None else (x, tail[0])


def _fuse_gelu(rw: FunctionRewriter):
    g = rw.graph
    final: dict[relax.Var, tuple[relax.Expr, str]] = {}
    for b in g.bindings:
        m = None
        if b.op_name == "relax.erf":
            m, kind = _match_erf_gelu(g, b), "erf"
        elif b.op_name == "relax.tanh":
            m, kind = _match_tanh_gelu(g, b), "tanh"
        if m is not None:
            final[m[1].var] = (m[0], kind)

    def rewrite(b: Binding):
        if b.var in final:
            x, kind = final[b.var]
            return (relax.op.nn.gelu if kind == "erf" else relax.op.nn.gelu_tanh)(rw.arg(x))
        return None

    return rewrite


FuseGELU = function_pass(_fuse_gelu, "FuseGELU")


def _over_last_axis(mean: Binding) -> bool:
    axis = mean.attrs.axis
    return axis is not None and [int(a) for a in axis] in ([-1], [len(mean.args[0].ty.shape) - 1])


def _match_layer_norm(g: Graph, mean: Binding):
    """(x - mean(x)) / sqrt(mean((x - mean(x))^2) + eps) [* gamma + beta] over the last axis."""
    if not _over_last_axis(mean):
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
    if var_mean is None or var_mean.op_name != "relax.mean" or not _over_last_axis(var_mean):
        return None  # a variance over another axis is not a layer norm
    add_eps = g.sole_user(var_mean.var)
    sqrt = g.sole_user(add_eps.var) if add_eps is not None and add_eps.op_name == "relax.add" else None
    if sqrt is None or sqrt.op_name != "relax.sqrt" or not div.args[1].same_as(sqrt.var):
        return None
    eps_arg = add_eps.args[0] if add_eps.args[1].same_as(var_mean.var) else add_eps.args[1]  # eps + var too
    eps = _scalar(eps_arg)
    if eps is None:
        return None
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
