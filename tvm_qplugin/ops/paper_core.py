"""The published integer non-linears (``ivit-paper`` / ``ibert-paper``), each as a TE kernel beside
its NumPy twin: I-ViT's Shiftmax, ShiftGELU and I-LayerNorm, I-BERT's i-exp softmax, i-GELU and
LayerNorm. Which published version each step follows, and why, is in quant/paper_consts.py;
the ops of ops/nonlinear.py call these when the variant row says ``paper``.

All data arithmetic is int64 holding the papers' int32 / uint32 values: the constants functions
refuse the shapes and scales where the papers' own int32 would overflow, so int64 never sees a
value the paper could not hold -- except ShiftGELU's ``exp(-row max)`` of a row whose maximum is
negative, a data case no compile-time check can exclude: its int32 shift overflows in the TVM
benchmark (undefined), and here the sum ``E1 + E2`` saturates at 2**31 - 1 as the PyTorch
version clamps it.

GELU and LayerNorm end in the project's requantization (``round_shift`` half up of a dyadic,
quant/dyadic.py) from the paper's output scale to the layer's: the papers leave that step to
the next layer. Twins share no code with the kernels, only constants.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..quant import dyadic, round_shift_ref
from ..quant import paper_consts as pc
from .int_core import i64, indicator, row_shape, stage
from .requant import clamp_cast, requant, round_shift

# ------------------------------------------------------------------------------- shared steps


def te_round_half_even_div(s, d: int):
    """``round(s / d)`` ties to even (``torch.round`` of an exact mean), ``d > 0`` constant."""
    q = tirx.floordiv(s, i64(d))
    twice = (s - q * i64(d)) * i64(2)
    return q + indicator(twice > i64(d)) + indicator((twice == i64(d)) & ((q & i64(1)) == i64(1)))


def np_round_half_even_div(s, d: int):
    q, rem = np.divmod(s, d)
    return q + (2 * rem > d) + ((2 * rem == d) & (q % 2 == 1))


def te_ivit_shiftexp(d, se: pc.ShiftExpPaper):
    """``(base, q)`` of the benchmark's ``shift_exp``: ``E = base << (n - q)``; ``q`` truncates."""
    ip = tirx.max(d + (d >> i64(1)) - (d >> i64(4)), i64(se.n * se.x0))
    q = tirx.truncdiv(ip, i64(se.x0))
    return ((ip - q * i64(se.x0)) >> i64(1)) - i64(se.x0), q


def np_ivit_shiftexp(d, se: pc.ShiftExpPaper):
    ip = np.maximum(d + (d >> 1) - (d >> 4), se.n * se.x0)
    q = np.sign(ip) * np.sign(se.x0) * (np.abs(ip) // -se.x0)  # C division
    return ((ip - q * se.x0) >> 1) - se.x0, q


def _row_max(x, lead, length, name):
    k = te.reduce_axis((0, length), f"{name}_k")
    return te.compute(lead, lambda *i: te.max(x(*i, k).astype("int64"), axis=k), name=name)


# ------------------------------------------------------------------------------------ softmax


def te_ivit_shiftmax(x, in_scale: float):
    lead, length = row_shape(x)
    se = pc.ivit_shiftmax_consts(in_scale, length)
    mx = _row_max(x, lead, length, "row_max")

    def exp_fn(*i):
        base, q = te_ivit_shiftexp(x(*i).astype("int64") - mx(*i[:-1]), se)
        return base << (i64(se.n) - q)
    e = stage(x, exp_fn, "shift_exp")
    k = te.reduce_axis((0, length), "k")
    total = te.compute(lead, lambda *i: te.sum(e(*i, k), axis=k), name="exp_sum")
    f = stage(total, lambda *i: tirx.floordiv(i64(pc.INT32_MAX), total(*i)), "factor")
    return te.compute(x.shape, lambda *i: ((f(*i[:-1]) * e(*i)) >> i64(pc.IVIT_OUT_SHIFT)).astype("int8"), name="y")


def np_ivit_shiftmax(x, in_scale: float):
    se = pc.ivit_shiftmax_consts(in_scale, x.shape[-1])
    xv = x.astype(np.int64)
    base, q = np_ivit_shiftexp(xv - xv.max(axis=-1, keepdims=True), se)
    e = base << (se.n - q)
    f = pc.INT32_MAX // e.sum(axis=-1, keepdims=True)
    return ((f * e) >> pc.IVIT_OUT_SHIFT).astype(np.int8)


def te_ibert_softmax(x, in_scale: float):
    lead, length = row_shape(x)
    ce = pc.ibert_softmax_consts(in_scale, length)
    mx = _row_max(x, lead, length, "row_max")
    top = 2**(pc.IBERT_EXP_BITS - 1) - 1

    def exp16(*i):
        xc = tirx.max(x(*i).astype("int64") - mx(*i[:-1]), i64(ce.n * ce.x0))
        q = tirx.floordiv(xc, i64(ce.x0))
        r = xc - q * i64(ce.x0)
        v = (r * (r + i64(ce.b)) + i64(ce.c)) * i64(ce.m)   # exp << (30 - q), times m ...
        t = i64(ce.e - ce.n) + q                            # ... over 2**e: one shift
        fl = v >> t
        rem, half = v - (fl << t), i64(1) << (t - i64(1))
        up = indicator((rem > half) | ((rem == half) & ((fl & i64(1)) == i64(1))))
        return tirx.min(fl + up, i64(top))
    e = stage(x, exp16, "exp16")
    k = te.reduce_axis((0, length), "k")
    total = te.compute(lead, lambda *i: te.sum(e(*i, k), axis=k), name="exp_sum")
    f = stage(total, lambda *i: tirx.floordiv(i64(1 << 32), total(*i)), "factor")
    return te.compute(x.shape, lambda *i: ((e(*i) * f(*i[:-1])) >> i64(32 - pc.IBERT_OUT_BITS)).astype("uint8"),
                      name="y")


def np_ibert_softmax(x, in_scale: float):
    ce = pc.ibert_softmax_consts(in_scale, x.shape[-1])
    xv = x.astype(np.int64)
    e = np_ibert_exp16(xv - xv.max(axis=-1, keepdims=True), ce)
    f = (1 << 32) // e.sum(axis=-1, keepdims=True)
    return ((e * f) >> (32 - pc.IBERT_OUT_BITS)).astype(np.uint8)


def np_ibert_exp16(d, ce: pc.IBertExpPaper):
    """i-exp of ``d = x - rowmax <= 0`` requantized to 16 bits (rounded half to even)."""
    xc = np.maximum(d, ce.n * ce.x0)
    q = xc // ce.x0
    r = xc - q * ce.x0
    v = (r * (r + ce.b) + ce.c) * ce.m
    t = ce.e - ce.n + q
    fl = v >> t
    rem, half = v - (fl << t), np.int64(1) << (t - 1)
    return np.minimum(fl + ((rem > half) | ((rem == half) & (fl % 2 == 1))), 2**(pc.IBERT_EXP_BITS - 1) - 1)


# --------------------------------------------------------------------------------------- GELU


def paper_gelu_out(paper: str, in_scale: float, out_scale: float):
    """The output requantization (dyadic of paper scale / layer scale) and the paper's constants.
    i-GELU's ``x (y + one)`` reaches ~2**33 on int16 inputs: the multiplier's mantissa is cut so
    the product stays inside int64."""
    if paper == "ivit":
        return dyadic(in_scale * 2.0**-pc.IVIT_OUT_FRAC / out_scale), pc.ivit_shiftgelu_consts(in_scale)
    g = pc.ibert_gelu_consts(in_scale)
    acc_max = 2**15 * ((max(g.b * g.b, -g.c) >> g.n) + 1 + abs(g.one))
    return dyadic(in_scale * g.sig_scale / 2.0 / out_scale, mantissa_bits=min(31, 62 - acc_max.bit_length())), g


def te_ivit_gelu_acc(x, se: pc.ShiftExpPaper):
    """``x * sigmoid`` at ``in_scale * 2**-7`` (int32 values)."""
    lead, length = row_shape(x)
    mx = _row_max(x, lead, length, "row_max")

    def e1_fn(*i):
        base, q = te_ivit_shiftexp(x(*i).astype("int64") - mx(*i[:-1]), se)
        return base << (i64(se.n) - q)

    def e2_fn(*i):
        base, q = te_ivit_shiftexp(i64(0) - mx(*i), se)
        return base << tirx.min(i64(se.n) - q, i64(pc.IVIT_GELU_SHIFT_CAP))
    e1 = stage(x, e1_fn, "shift_exp_x")
    e2 = stage(mx, e2_fn, "shift_exp_neg_max")

    def sig(*i):
        f = tirx.floordiv(i64(pc.INT32_MAX), tirx.min(e1(*i) + e2(*i[:-1]), i64(pc.INT32_MAX)))
        return (f * e1(*i)) >> i64(pc.IVIT_OUT_SHIFT)
    return lambda *i: x(*i).astype("int64") * sig(*i)


def np_ivit_gelu_acc(xv, se: pc.ShiftExpPaper):
    mx = xv.max(axis=-1, keepdims=True)
    base, q = np_ivit_shiftexp(xv - mx, se)
    e1 = base << (se.n - q)
    base2, q2 = np_ivit_shiftexp(-mx, se)
    e2 = base2 << np.minimum(se.n - q2, pc.IVIT_GELU_SHIFT_CAP)
    f = pc.INT32_MAX // np.minimum(e1 + e2, pc.INT32_MAX)
    return xv * ((f * e1) >> pc.IVIT_OUT_SHIFT)


def te_ibert_gelu_acc(x, g: pc.IBertGeluPaper):
    def acc(*i):
        xs = x(*i).astype("int64")
        a = tirx.min(tirx.abs(xs), i64(-g.b)) + i64(g.b)
        sgn = indicator(xs > i64(0)) - indicator(xs < i64(0))
        return xs * (((sgn * (a * a + i64(g.c))) >> i64(g.n)) + i64(g.one))
    return acc


def np_ibert_gelu_acc(xv, g: pc.IBertGeluPaper):
    a = np.minimum(np.abs(xv), -g.b) + g.b
    return xv * (((np.sign(xv) * (a * a + g.c)) >> g.n) + g.one)


def te_paper_gelu(x, paper, in_scale, out_scale, qmin, qmax, out_dtype):
    out, consts = paper_gelu_out(paper, in_scale, out_scale)
    acc = te_ivit_gelu_acc(x, consts) if paper == "ivit" else te_ibert_gelu_acc(x, consts)
    return te.compute(x.shape, lambda *i: requant(acc(*i), out.multiplier, out.shift, qmin, qmax, out_dtype), name="y")


def np_paper_gelu(x, paper, in_scale, out_scale, qmin, qmax, out_dtype):
    out, consts = paper_gelu_out(paper, in_scale, out_scale)
    xv = x.astype(np.int64)
    acc = np_ivit_gelu_acc(xv, consts) if paper == "ivit" else np_ibert_gelu_acc(xv, consts)
    return np.clip(round_shift_ref(acc * out.multiplier, out.shift), qmin, qmax).astype(out_dtype)


# ---------------------------------------------------------------------------------- LayerNorm


def ln_span(dtype: str) -> int:
    """Largest ``|I - mean|`` of a ``dtype`` row."""
    info = np.iinfo(dtype)
    return int(info.max) - int(info.min)


def te_paper_layernorm(x, mult, bias, paper, shift, qmin, qmax, out_dtype):
    lead, c = row_shape(x)
    span = ln_span(str(x.dtype))
    if paper == "ivit":
        pc.ivit_layernorm_check(c, span)
    sh = 0 if paper == "ivit" else pc.ibert_layernorm_shift(c, span)
    k = te.reduce_axis((0, c), "k")
    total = te.compute(lead, lambda *i: te.sum(x(*i, k).astype("int64"), axis=k), name="row_sum")
    mu = stage(total, lambda *i: te_round_half_even_div(total(*i), c), "row_mean")

    def y(*i):
        return x(*i).astype("int64") - mu(*i[:-1])
    k2 = te.reduce_axis((0, c), "k2")
    var = te.compute(lead, lambda *i: te.sum((y(*i, k2) >> i64(sh)) * (y(*i, k2) >> i64(sh)), axis=k2), name="row_ssq")
    if paper == "ivit":
        kk = stage(var, lambda *i: i64(pc.IVIT_SQRT_START), "row_sqrt_k0")
        for it in range(pc.IVIT_SQRT_ITERS):
            kk = stage(var, lambda *i, kk=kk: (kk(*i) + tirx.floordiv(var(*i), kk(*i))) >> i64(1), f"row_sqrt_k{it + 1}")
        f = stage(var, lambda *i: tirx.floordiv(i64(pc.INT32_MAX), kk(*i)), "row_inv_std")
    else:
        r = te_isqrt_exact(var)
        f = stage(var, lambda *i: tirx.floordiv(i64((1 << 31) * pc.IBERT_LN_EPS_INV),
                                                (r(*i) << i64(sh)) * i64(pc.IBERT_LN_EPS_INV) + i64(1)), "row_inv_std")

    def out(*i):
        z = (f(*i[:-1]) * y(*i)) >> i64(1)
        return clamp_cast(round_shift(z * mult[i[-1]] + bias[i[-1]], shift), qmin, qmax, out_dtype)
    return te.compute(x.shape, out, name="y")


def te_isqrt_exact(v: te.Tensor) -> te.Tensor:
    """``isqrt(v)`` for ``0 <= v < 2**32``: the 16 result bits from the top, one stage each (I-BERT's
    I-SQRT result, the exact floor square root, without a division)."""
    r = stage(v, lambda *i: i64(0), "row_std_r16")
    for b in range(15, -1, -1):
        r = stage(v, lambda *i, r=r, b=b: tirx.if_then_else((r(*i) + i64(1 << b)) * (r(*i) + i64(1 << b)) <= v(*i),
                                                             r(*i) + i64(1 << b), r(*i)), f"row_std_r{b}")
    return r


def np_paper_layernorm(x, mult, bias, paper, shift, qmin, qmax, out_dtype):
    c = x.shape[-1]
    span = ln_span(str(x.dtype))
    if paper == "ivit":
        pc.ivit_layernorm_check(c, span)
    sh = 0 if paper == "ivit" else pc.ibert_layernorm_shift(c, span)
    xv = x.astype(np.int64)
    y = xv - np_round_half_even_div(xv.sum(axis=-1, keepdims=True), c)
    v = ((y >> sh) ** 2).sum(axis=-1, keepdims=True)
    if paper == "ivit":
        k = np.full_like(v, pc.IVIT_SQRT_START)
        for _ in range(pc.IVIT_SQRT_ITERS):
            k = (k + v // k) >> 1
        f = pc.INT32_MAX // k
    else:
        lo, hi = np.zeros_like(v), np.full_like(v, 1 << 16)
        while np.any(hi - lo > 1):   # bisection: largest r with r * r <= v
            mid = (lo + hi) >> 1
            ok = mid * mid <= v
            lo, hi = np.where(ok, mid, lo), np.where(ok, hi, mid)
        f = ((1 << 31) * pc.IBERT_LN_EPS_INV) // ((lo << sh) * pc.IBERT_LN_EPS_INV + 1)
    z = (f * y) >> 1
    acc = z * mult.astype(np.int64) + bias.astype(np.int64)
    return np.clip(round_shift_ref(acc, shift), qmin, qmax).astype(out_dtype)
