"""The integer core of the nonlinear ops: exponentials, reciprocals and square roots, each as
an int64 TE expression beside its NumPy twin (ops/nonlinear.py builds softmax, GELU and
LayerNorm from them).

Kept apart from the ops because the pairs are what must agree bit for bit: a change to one
twin sits next to the other. Constants come from :mod:`tvm_qplugin.quant.nonlinear_consts`;
the reciprocal and isqrt are exact after their fix-up (see ops/nonlinear.py's module docstring
for the variants that use them).
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..quant import round_shift_ref
from ..quant import nonlinear_consts as nc
from .requant import round_shift

# ----------------------------------------------------------------------------------- TE helpers


def i64(v) -> tirx.PrimExpr:
    return tirx.const(int(v), "int64")


def indicator(cond):
    return tirx.if_then_else(cond, i64(1), i64(0))


def stage(like: te.Tensor, fn, name: str) -> te.Tensor:
    """One int64 stage shaped like ``like``. Iterations are stages, not nested ``Let`` s:
    TVM's CompactBufferAllocation expands Let chains exponentially."""
    return te.compute(like.shape, lambda *i: fn(*i).astype("int64"), name=name)


def te_bitlen(v, bits: int):
    """Bit length of ``0 <= v < 2**bits`` as a sum of comparisons (no loop, no division)."""
    out = indicator(v >= i64(1))
    for j in range(1, bits):
        out = out + indicator(v >= i64(1 << j))
    return out


def te_pre(d, k: int):
    if k < 0:
        return d << i64(-k)
    return round_shift(d, k) if k > 0 else d


def te_pre_bounded(v, k: int, dtype: str):
    """``te_pre`` of an element of a ``dtype`` row entering LayerNorm / L2 normalisation, an int32
    one clamped to ``+-LN_MAX_ABS`` (the bound their sums of squares are sized for)."""
    v = te_pre(v.astype("int64"), k)
    if dtype == "int32":
        v = tirx.max(tirx.min(v, i64(nc.LN_MAX_ABS)), i64(-nc.LN_MAX_ABS))
    return v


def te_shiftexp(d, se: nc.ShiftExpConsts, division_free: bool):
    """ShiftExp of ``d <= 0`` (already pre-shifted), int64 expression."""
    ip = d + (d >> i64(1)) - (d >> i64(4))
    if se.poly == 2:
        ip = ip + (d >> i64(8)) + (d >> i64(10))
    ip = tirx.max(ip, i64(se.ip_min))
    q = ((i64(0) - ip) * i64(se.div.m)) >> i64(se.div.s) if division_free else tirx.floordiv(ip, i64(se.i0))
    r = ip - q * i64(se.i0)
    base = (r >> i64(1)) - i64(se.i0)
    if se.poly == 2:
        base = base + ((r * (r - i64(se.i0)) * i64(se.quad_m)) >> i64(se.quad_s))
    return (base << i64(se.n)) >> q


def te_ibert_exp(d, ce: nc.IBertExpConsts):
    """I-BERT i-exp of ``d <= 0`` (pre-shifted), int64 expression."""
    xc = tirx.max(d, i64(ce.q_clamp * ce.x0))
    q = tirx.floordiv(xc, i64(ce.x0))
    r = xc - q * i64(ce.x0)
    return ((r * (r + i64(ce.b)) + i64(ce.c)) << i64(ce.n)) >> (q + i64(ce.z_shift))


def te_newton_q30(s: te.Tensor, name: str) -> tuple[te.Tensor, te.Tensor]:
    """``(e, y)``: ``e = bitlen(s)`` and the Q30 Newton reciprocal ``y ~ 2**(29+e) / s`` of the
    normalised ``d = s << (31 - e)`` (``y0 = 24/17 - 8/17 u``, RECIP_ITERS steps)."""
    e = stage(s, lambda *i: te_bitlen(s(*i), 31), f"{name}_clz")
    d = stage(s, lambda *i: s(*i) << (i64(31) - e(*i)), f"{name}_norm")
    y = stage(s, lambda *i: i64(nc.RECIP_C1) - ((i64(nc.RECIP_C2) * d(*i)) >> i64(30)), f"{name}_y0")
    for it in range(nc.RECIP_ITERS):
        y = stage(s, lambda *i, y=y: (y(*i) * (i64(1 << 31) - ((d(*i) * y(*i)) >> i64(30)))) >> i64(30), f"{name}_y{it + 1}")
    return e, y


def te_fix_up(s: te.Tensor, num, est, name: str) -> te.Tensor:
    """``floor(num / s)`` from an estimate within +-NEWTON_CORRECTION of it: exact integer steps."""
    def fix(*i):
        rem, out = num(*i) - est(*i) * s(*i), est(*i)
        for j in range(1, nc.NEWTON_CORRECTION + 1):
            out = out + indicator(rem >= i64(j) * s(*i)) - indicator(rem < i64(1 - j) * s(*i))
        return out
    return stage(s, fix, name)


def te_recip(s: te.Tensor, name: str) -> te.Tensor:
    """``floor((2**31 - 1) / s)`` for int64 ``1 <= s < 2**31``: Q30 Newton + exact fix-up."""
    e, y = te_newton_q30(s, name)
    r0 = stage(s, lambda *i: (i64(nc.INT32_MAX) * y(*i)) >> (i64(29) + e(*i)), f"{name}_r0")
    return te_fix_up(s, lambda *i: i64(nc.INT32_MAX), r0, name)


def te_recip_norm(s: te.Tensor, division_free: bool, name: str) -> tuple[te.Tensor, te.Tensor]:
    """``(f, e)`` with ``e = bitlen(s)`` and ``f = floor(2**(30+e) / s)`` in ``(2**30, 2**31]`` for int64
    ``1 <= s < 2**31``: a 31-bit reciprocal whatever the size of ``s`` (softmax's row sum).
    division-free: ``2 y`` from the Q30 Newton of :func:`te_recip` is within +-2 of it; fixed up exactly."""
    if not division_free:
        e = stage(s, lambda *i: te_bitlen(s(*i), 31), f"{name}_bitlen")
        return stage(s, lambda *i: tirx.floordiv(i64(1) << (i64(30) + e(*i)), s(*i)), name), e
    e, y = te_newton_q30(s, name)
    return te_fix_up(s, lambda *i: i64(1) << (i64(30) + e(*i)), lambda *i: y(*i) << i64(1), name), e


def te_isqrt_newton(v: te.Tensor, name: str) -> te.Tensor:
    """``isqrt(v)`` for int64 ``1 <= v < 2**56``: Q30 reciprocal-sqrt Newton + exact fix-up."""
    t = stage(v, lambda *i: i64(31) - ((te_bitlen(v(*i), 62) + i64(1)) >> i64(1)), f"{name}_clz")
    y = stage(v, lambda *i: (v(*i) << (t(*i) + t(*i))) >> i64(30), f"{name}_norm")
    x = stage(v, lambda *i: i64(nc.RSQRT_A) - ((i64(nc.RSQRT_B) * y(*i)) >> i64(30)), f"{name}_x0")
    for it in range(nc.RSQRT_ITERS):
        x = stage(v, lambda *i, x=x: (x(*i) * (i64(3 << 30) - ((y(*i) * ((x(*i) * x(*i)) >> i64(30))) >> i64(30))))
                   >> i64(31), f"{name}_x{it + 1}")
    k0 = stage(v, lambda *i: ((y(*i) * x(*i)) >> i64(30)) >> t(*i), f"{name}_k0")

    def fix(*i):
        k, out = k0(*i), k0(*i)
        for j in range(1, nc.NEWTON_CORRECTION + 1):
            out = out + indicator((k + i64(j)) * (k + i64(j)) <= v(*i)) - indicator((k - i64(j - 1)) * (k - i64(j - 1)) > v(*i))
        return out
    return stage(v, fix, name)


def te_isqrt_div(v: te.Tensor, iters: int, keep_min: bool, name: str) -> te.Tensor:
    """Integer Newton ``k <- (k + v // k) >> 1`` from ``2**ceil(bitlen(v)/2) >= sqrt(v)``."""
    k = stage(v, lambda *i: i64(1) << ((te_bitlen(v(*i), 62) + i64(1)) >> i64(1)), f"{name}_k0")
    for it in range(iters):
        def step(*i, k=k):
            nxt = (k(*i) + tirx.floordiv(v(*i), k(*i))) >> i64(1)
            return tirx.min(k(*i), nxt) if keep_min else nxt
        k = stage(v, step, f"{name}_k{it + 1}")
    return k


def row_shape(x):
    lead = tuple(int(d) for d in x.shape[:-1])
    return lead, int(x.shape[-1])


# -------------------------------------------------------------------------------- NumPy helpers


def np_pre(d, k: int):
    return d << -k if k < 0 else (round_shift_ref(d, k) if k > 0 else d)


def np_bitlen(v):
    n, t = np.zeros_like(v), v.copy()
    while np.any(t > 0):
        n += t > 0
        t >>= 1
    return n


def np_newton_q30(s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """NumPy twin of :func:`te_newton_q30`: ``(e, y)``."""
    e = np_bitlen(s)
    d = s << (31 - e)
    y = nc.RECIP_C1 - ((nc.RECIP_C2 * d) >> 30)
    for _ in range(nc.RECIP_ITERS):
        y = (y * ((1 << 31) - ((d * y) >> 30))) >> 30
    return e, y


def np_fix_up(s, num, est):
    """NumPy twin of :func:`te_fix_up`."""
    rem = num - est * s
    return est + sum((rem >= j * s).astype(np.int64) - (rem < (1 - j) * s) for j in range(1, nc.NEWTON_CORRECTION + 1))


def np_recip(s, correct: bool = True):
    """NumPy twin of :func:`te_recip`; equals ``(2**31 - 1) // s`` on ``[1, 2**31)``.

    ``correct=False`` returns the Newton estimate before the fix-up: it lies in
    ``[floor - 2, floor]`` for every s (checked exhaustively over all 2**31 - 1 values).
    """
    s = np.asarray(s, dtype=np.int64)
    e, y = np_newton_q30(s)
    r = (nc.INT32_MAX * y) >> (29 + e)
    return np_fix_up(s, nc.INT32_MAX, r) if correct else r


def np_recip_norm(s, division_free: bool = True, correct: bool = True):
    """NumPy twin of :func:`te_recip_norm`: ``(floor(2**(30+e) / s), e)``, ``e = bitlen(s)``.

    ``correct=False`` (division-free): the Newton estimate ``2 y`` before the fix-up, within +-2.
    """
    s = np.asarray(s, dtype=np.int64)
    if not division_free:
        e = np_bitlen(s)
        return (np.int64(1) << (30 + e)) // s, e
    e, y = np_newton_q30(s)
    f0 = y << 1
    return (np_fix_up(s, np.int64(1) << (30 + e), f0) if correct else f0), e


def np_isqrt(v, correct: bool = True):
    """NumPy twin of :func:`te_isqrt_newton`; equals ``math.isqrt`` on ``[1, 2**56)``.

    ``correct=False``: the Newton estimate, within +-1 of isqrt below 2**56 (LayerNorm keeps
    V < 2**51), up to +5 near 2**62; the +-2 fix-up makes it exact.
    """
    v = np.asarray(v, dtype=np.int64)
    t = 31 - ((np_bitlen(v) + 1) >> 1)
    y = (v << (2 * t)) >> 30
    x = nc.RSQRT_A - ((nc.RSQRT_B * y) >> 30)
    for _ in range(nc.RSQRT_ITERS):
        x = (x * ((3 << 30) - ((y * ((x * x) >> 30)) >> 30))) >> 31
    k = ((y * x) >> 30) >> t
    if not correct:
        return k
    return k + sum(((k + j) ** 2 <= v).astype(np.int64) - ((k - j + 1) ** 2 > v) for j in range(1, nc.NEWTON_CORRECTION + 1))


def np_shiftexp(d, se: nc.ShiftExpConsts, division_free: bool):
    ip = d + (d >> 1) - (d >> 4)
    if se.poly == 2:
        ip = ip + (d >> 8) + (d >> 10)
    ip = np.maximum(ip, se.ip_min)
    q = ((-ip) * se.div.m) >> se.div.s if division_free else np.floor_divide(ip, se.i0)
    r = ip - q * se.i0
    base = (r >> 1) - se.i0
    if se.poly == 2:
        base = base + ((r * (r - se.i0) * se.quad_m) >> se.quad_s)
    return (base << se.n) >> q


def np_ibert_exp(d, ce: nc.IBertExpConsts):
    xc = np.maximum(d, ce.q_clamp * ce.x0)
    q = np.floor_divide(xc, ce.x0)
    r = xc - q * ce.x0
    return ((r * (r + ce.b) + ce.c) << ce.n) >> (q + ce.z_shift)


def check_int_dtype(x, what, allowed=("int8", "int16", "int32")):
    if str(x.dtype) not in allowed:
        raise ValueError(f"{what}: input dtype {x.dtype} not in {allowed}")
