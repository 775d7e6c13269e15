"""Integer-only softmax, GELU and LayerNorm (I-ViT, I-BERT and division-free variants).

Each op is a TE kernel beside its NumPy twin, built on the integer exp / reciprocal / isqrt core of
:mod:`.int_core`; every constant comes from
:mod:`tvm_qplugin.quant.nonlinear_consts` (derived in Python from the float params), the data
arithmetic is written twice. All data arithmetic is int32/int64: no float dtype reaches the TIR.

``variant``:

* ``"ivit"``  -- I-ViT: Shiftmax, ShiftGELU, I-LayerNorm (Newton sqrt, 10 steps).
* ``"ibert"`` -- I-BERT: i-exp softmax, i-GELU (erf polynomial), I-LayerNorm with an exact isqrt.
* ``"ivit-paper"`` / ``"ibert-paper"`` -- the papers' published integer arithmetic bit for bit
  (:mod:`.paper_core`; constants, versions and int32 limits in quant/paper_consts.py). The three
  variants above take the papers' forms but not their integers (finer input grids, normalised
  reciprocals, rounding), which is why they are more accurate.
* ``"division-free"`` -- the I-ViT ops with every data division replaced: divisions by a
  constant become a magic multiply + shift (exact, :func:`div_const`); the per-row reciprocal
  ``floor((2**31-1)/s)`` and the isqrt are Newton iterations on multiplies and shifts, normalised
  by a count-leading-zeros sum of comparisons, then fixed up by +-2 exact integer steps. Both
  results are exact (reciprocal: Newton error in [-2, 0] over *all* s in [1, 2**31); isqrt:
  error in [-1, 1] for V < 2**56), so the division-free ops equal the I-ViT ones bit for bit
  (LayerNorm: up to I-ViT's sqrt, which may end one above isqrt).

Output conventions: softmax -> uint8 at scale 2**-8 or int16 at 2**-15 (probability 1.0 saturates;
ivit-paper: int8 [0, 127] at 2**-7, floored);
GELU and LayerNorm -> ``out_dtype`` at ``out_scale`` through the dyadic rule of quant/dyadic.py.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..quant import nonlinear_consts as nc
from ..quant import paper_consts as pc
from ..quant import round_shift_ref
from ..quant.scheme import softmax_format_of, variant_of
from . import paper_core
from .int_core import (check_int_dtype, i64, indicator, np_bitlen, np_ibert_exp, np_isqrt, np_pre, np_recip,
                       np_recip_norm, np_shiftexp, row_shape, stage, te_ibert_exp, te_isqrt_div, te_isqrt_newton,
                       te_pre, te_pre_bounded, te_recip, te_recip_norm, te_shiftexp)
from .registry import IntegerOp, register_op
from .requant import clamp_cast, requant, round_shift


def _paper_kind(variant: str, op: str, dtype: str, slot: int):
    """The variant row if it is a paper variant (checking the input width it takes), else None."""
    kind = variant_of(variant)
    if not kind.paper:
        return None
    bits = np.iinfo(str(dtype)).bits
    if bits > kind.in_bits[slot]:
        raise ValueError(f"{op} {variant}: input dtype {dtype} wider than the paper's int{kind.in_bits[slot]}")
    return kind


def _check_paper_softmax(kind, n: int, out_dtype: str) -> None:
    want = pc.IVIT_SHIFTMAX_N if kind.paper == "ivit" else pc.IBERT_EXP_N
    if n != want or out_dtype != kind.softmax_out.dtype:
        raise ValueError(f"softmax_int {kind.name}: n={n}, out_dtype={out_dtype}; the paper fixes n={want}, "
                         f"{kind.softmax_out.dtype}")

# ------------------------------------------------------------------------------------------ ops


@register_op
class SoftmaxInt(IntegerOp):
    """Integer softmax over the last axis.

    x : int8/int16/int32 (..., L) at real scale ``in_scale``. n : shift from
    :func:`~tvm_qplugin.quant.nonlinear_consts.choose_softmax_n` (``L * e_max < 2**31`` checked).
    Output ``out_dtype`` (..., L): uint8 at scale 2**-8 or int16 at 2**-15 (1.0 saturates to
    255 / 32767), round half up.

    Exponentials ``E`` (ShiftExp for ivit / division-free, i-exp for ibert) are summed in int32;
    the row's reciprocal is *normalised*: ``e = bitlen(sum E)``, ``f = 2**(30+e) // sum E`` in
    ``(2**30, 2**31]``, ``out = (f E + 2**(29+e-F)) >> (30+e-F)`` with F the fraction bits. A fixed
    numerator (``(2**31-1) // sum E``) would leave ``f`` only ``31 - bitlen(sum E)`` bits -- 7 bits
    for a 128-token row at e_max = 2**22 -- which is what limits 8-bit attention, not the 256 levels.
    division-free: the same ``f`` from a Newton reciprocal (exact after the fix-up).
    """

    name = "softmax_int"

    def divisions(self, params: dict) -> int:
        return 0 if variant_of(params["variant"]).division_free else 2

    @staticmethod
    def _consts(x_len, in_scale, n, variant, exp_poly, out_dtype):
        ce = nc.exp_consts(variant, in_scale, n, exp_poly)
        if x_len * ce.e_max > nc.INT32_MAX:
            raise ValueError(f"softmax_int: L={x_len} x e_max={ce.e_max} overflows int32; lower n ({n})")
        fmt = softmax_format_of(out_dtype)
        return ce, (fmt.frac_bits, fmt.qmax)

    def compute(self, x, *, in_scale, n, variant, exp_poly=1, out_dtype="uint8"):
        check_int_dtype(x, self.name)
        paper = _paper_kind(variant, self.name, x.dtype, 0)
        if paper:
            _check_paper_softmax(paper, n, out_dtype)
            return (paper_core.te_ivit_shiftmax if paper.paper == "ivit" else paper_core.te_ibert_softmax)(x, in_scale)
        kind = variant_of(variant)
        lead, length = row_shape(x)
        ce, (frac, qmax) = self._consts(length, in_scale, n, variant, exp_poly, out_dtype)
        k = te.reduce_axis((0, length), "k")
        mx = te.compute(lead, lambda *i: te.max(x(*i, k).astype("int32"), axis=k), name="row_max")

        def exp_fn(*i):
            d = te_pre(x(*i).astype("int64") - mx(*i[:-1]).astype("int64"), ce.pre_shift)
            e = te_ibert_exp(d, ce) if kind.exp == "poly" else te_shiftexp(d, ce, kind.division_free)
            return e.astype("int32")

        e = te.compute(x.shape, exp_fn, name="exp")
        k2 = te.reduce_axis((0, length), "k2")
        total = te.compute(lead, lambda *i: te.sum(e(*i, k2), axis=k2), name="exp_sum")
        f, bits = te_recip_norm(stage(total, total, "exp_sum64"), kind.division_free, "recip")

        def out(*i):
            sh = i64(30 - frac) + bits(*i[:-1])
            v = (f(*i[:-1]) * e(*i).astype("int64") + (i64(1) << (sh - i64(1)))) >> sh
            return clamp_cast(v, 0, qmax, out_dtype)
        return te.compute(x.shape, out, name="y")

    def reference(self, x, *, in_scale, n, variant, exp_poly=1, out_dtype="uint8"):
        paper = _paper_kind(variant, self.name, x.dtype, 0)
        if paper:
            _check_paper_softmax(paper, n, out_dtype)
            return (paper_core.np_ivit_shiftmax if paper.paper == "ivit" else paper_core.np_ibert_softmax)(x, in_scale)
        kind = variant_of(variant)
        ce, (frac, qmax) = self._consts(x.shape[-1], in_scale, n, variant, exp_poly, out_dtype)
        d = np_pre(x.astype(np.int64) - x.astype(np.int64).max(axis=-1, keepdims=True), ce.pre_shift)
        e = np_ibert_exp(d, ce) if kind.exp == "poly" else np_shiftexp(d, ce, kind.division_free)
        e = e.astype(np.int32)
        total = e.sum(axis=-1, dtype=np.int32, keepdims=True).astype(np.int64)
        f, bits = np_recip_norm(total, kind.division_free)
        sh = (30 - frac) + bits
        return np.clip((f * e + (np.int64(1) << (sh - 1))) >> sh, 0, qmax).astype(out_dtype)


@register_op
class GeluInt(IntegerOp):
    """Integer GELU, elementwise.

    x : int8/int16 at ``in_scale``. Output ``out_dtype`` in [qmin, qmax] at ``out_scale``.
    ivit (ShiftGELU): ``sigma(1.702x) = E1 / (E1 + E2)`` with one ShiftExp of ``-|x|`` (the
    per-element reference point ``max(x, 0)`` instead of I-ViT's row max keeps the op elementwise
    and exact for x << row max), ``sigma = ((2**31-1) // (E1+E2) * E1 + 2**15) >> 16`` at 2**-15,
    ``acc = x * sigma``; ibert (i-GELU): ``acc = x * ((sign(x)[(min(|x|,-b)+b)**2 + c] >> s) + one)``;
    division-free: ivit with Newton reciprocal. Then ``requant(acc)`` with a dyadic from the floats.
    n : ShiftExp shift (None: :func:`choose_gelu_n`).
    approx : ``"paper"`` -- the form of I-ViT's ShiftGELU ``x sigma(1.702 x)`` / I-BERT's i-GELU, 0.02 max
    error, in this module's arithmetic (the papers' integers are the ``*-paper`` variants);
    ``"tanh"`` -- ``x sigma(1.596 (x + 0.044715 x**3))``, the tanh-GELU, 0.0005 (one more multiply),
    with the variant's own exponential (ShiftExp; ibert: i-exp).
    """

    name = "gelu_int"

    def divisions(self, params: dict) -> int:
        kind = variant_of(params["variant"])
        erf_poly = kind.erf_gelu and params.get("approx", "paper") == "paper"  # no sigmoid, no division
        return 0 if kind.division_free or erf_poly else 2

    def compute(self, x, *, in_scale, out_scale, qmin, qmax, out_dtype, variant, n=None, exp_poly=1,
                approx="paper"):
        check_int_dtype(x, self.name, ("int8", "int16"))
        paper = _paper_kind(variant, self.name, x.dtype, 1)
        if paper:
            return paper_core.te_paper_gelu(x, paper.paper, in_scale, out_scale, qmin, qmax, out_dtype)
        kind = variant_of(variant)
        g = nc.gelu_consts(in_scale, out_scale, variant, n, exp_poly, approx)

        if g.se is None:  # I-BERT's i-GELU
            def erf_fn(*i):
                xs = te_pre(x(*i).astype("int64"), g.erf_pre_shift)
                a = tirx.min(tirx.abs(xs), i64(-g.erf_b)) + i64(g.erf_b)
                sgn = indicator(xs > i64(0)) - indicator(xs < i64(0))
                return ((sgn * (a * a + i64(g.erf_c))) >> i64(g.erf_shift)) + i64(g.erf_one)
            factor = stage(x, erf_fn, "erf_plus_one")
        else:
            se = g.se

            def z(*i):  # the sigmoid's argument; tanh form: x + 0.044715 s**2 x**3
                v = x(*i).astype("int64")
                return v if g.cubic is None else v + round_shift(v * v * v * i64(g.cubic.multiplier), g.cubic.shift)

            def exp_neg_abs(*i):
                d = te_pre(i64(0) - tirx.abs(z(*i)), se.pre_shift)
                return te_ibert_exp(d, se) if kind.exp == "poly" else te_shiftexp(d, se, kind.division_free)
            es = stage(x, exp_neg_abs, "exp_neg_abs")
            den = stage(x, lambda *i: i64(se.e_max) + es(*i), "exp_sum")
            if kind.division_free:
                inv = te_recip(den, "recip")
            else:
                inv = stage(x, lambda *i: tirx.floordiv(i64(nc.INT32_MAX), den(*i)), "recip")
            factor = stage(x, lambda *i: round_shift(inv(*i) * tirx.if_then_else(x(*i) >= tirx.const(0, x.dtype),
                                                                                  i64(se.e_max), es(*i)),
                                                      31 - nc.SIGMOID_BITS), "sigmoid")
        return te.compute(x.shape, lambda *i: requant(x(*i).astype("int64") * factor(*i), g.out.multiplier, g.out.shift,
                                                      qmin, qmax, out_dtype), name="y")

    def reference(self, x, *, in_scale, out_scale, qmin, qmax, out_dtype, variant, n=None, exp_poly=1,
                  approx="paper"):
        paper = _paper_kind(variant, self.name, x.dtype, 1)
        if paper:
            return paper_core.np_paper_gelu(x, paper.paper, in_scale, out_scale, qmin, qmax, out_dtype)
        kind = variant_of(variant)
        g = nc.gelu_consts(in_scale, out_scale, variant, n, exp_poly, approx)
        xv = x.astype(np.int64)
        if g.se is None:
            xs = np_pre(xv, g.erf_pre_shift)
            a = np.minimum(np.abs(xs), -g.erf_b) + g.erf_b
            y = (np.sign(xs) * (a * a + g.erf_c)) >> g.erf_shift
            acc = xv * (y + g.erf_one)
        else:
            se = g.se
            z = xv + round_shift_ref(xv * xv * xv * g.cubic.multiplier, g.cubic.shift) if g.cubic is not None else xv
            d = np_pre(-np.abs(z), se.pre_shift)
            es = np_ibert_exp(d, se) if kind.exp == "poly" else np_shiftexp(d, se, kind.division_free)
            den = se.e_max + es
            inv = np_recip(den) if kind.division_free else nc.INT32_MAX // den
            sig = round_shift_ref(inv * np.where(xv >= 0, se.e_max, es), 31 - nc.SIGMOID_BITS)
            acc = xv * sig
        return np.clip(round_shift_ref(acc * g.out.multiplier, g.out.shift), qmin, qmax).astype(out_dtype)


@register_op
class LayerNormInt(IntegerOp):
    """Integer LayerNorm over the last axis (I-LayerNorm), affine folded per channel.

    x : int8/int16/int32 (..., C) at ``in_scale``; ``pre_shift`` (see ``layernorm_pre_shift``)
    brings it to ``I`` in +-2**15: int8 ``x << 8`` (the rounded mean then costs 2**-8 of an input
    step, not half of one), int16 as is, int32 rounded right and saturated. mult, bias : int64 (C,) from
    :func:`~tvm_qplugin.quant.nonlinear_consts.layernorm_affine` (gamma, beta, out_scale).
    ``mu = floor((2 sum I + C) / 2C)`` (round half up), ``Y = I - mu``,
    ``V = sum Y**2 + round(eps C / S'**2)`` (int64), ``k = sqrt(V)``, ``f = (2**31-1) // k``
    (ibert: ``2**31 // k``), ``Z = (f Y) >> 1`` at scale sqrt(C)/2**30,
    ``y = clamp((Z mult[c] + bias[c] + 2**(shift-1)) >> shift)``.
    Division-free: mean by magic multiply, isqrt and reciprocal by Newton (all exact).
    """

    name = "layernorm_int"

    def divisions(self, params: dict) -> int:
        kind = variant_of(params["variant"])
        return 0 if kind.division_free else 2 + kind.ln_sqrt_iters

    def compute(self, x, mult, bias, *, in_scale, eps, pre_shift, shift, qmin, qmax, out_dtype, variant):
        kind = variant_of(variant)
        check_int_dtype(x, self.name)
        lead, c = row_shape(x)
        lc = nc.layernorm_consts(c, in_scale, eps, pre_shift, variant)
        if tuple(int(d) for d in mult.shape) != (c,) or tuple(int(d) for d in bias.shape) != (c,):
            raise ValueError(f"layernorm_int: mult/bias must have shape ({c},), got {tuple(mult.shape)}, {tuple(bias.shape)}")
        if _paper_kind(variant, self.name, x.dtype, 2):
            return paper_core.te_paper_layernorm(x, mult, bias, kind.paper, shift, qmin, qmax, out_dtype)

        def xi(*i):
            return te_pre_bounded(x(*i), pre_shift, str(x.dtype))

        k = te.reduce_axis((0, c), "k")
        total = te.compute(lead, lambda *i: te.sum(xi(*i, k), axis=k), name="row_sum")

        def mean_fn(*i):
            u = i64(2) * total(*i) + i64(c)
            if kind.division_free:
                return (((u + i64(2 * nc.LN_MAX_ABS * c)) * i64(lc.mean_div.m)) >> i64(lc.mean_div.s)) - i64(nc.LN_MAX_ABS)
            return tirx.floordiv(u, i64(2 * c))

        mu = te.compute(lead, mean_fn, name="row_mean")
        k2 = te.reduce_axis((0, c), "k2")
        var = te.compute(lead, lambda *i: te.sum((xi(*i, k2) - mu(*i)) * (xi(*i, k2) - mu(*i)), axis=k2), name="row_ssq")

        v = stage(var, lambda *i: tirx.max(var(*i) + i64(lc.eps), i64(1)), "row_var")
        if kind.division_free:
            f = te_recip(te_isqrt_newton(v, "row_sqrt"), "row_inv_std")
        else:
            kk = te_isqrt_div(v, lc.iters, kind.ln_exact_isqrt, "row_sqrt")
            num = i64(kind.ln_numerator)
            f = stage(kk, lambda *i: tirx.floordiv(num, kk(*i)), "row_inv_std")

        def out(*i):
            z = (f(*i[:-1]) * (xi(*i) - mu(*i[:-1]))) >> i64(1)
            return clamp_cast(round_shift(z * mult[i[-1]] + bias[i[-1]], shift), qmin, qmax, out_dtype)

        return te.compute(x.shape, out, name="y")

    def reference(self, x, mult, bias, *, in_scale, eps, pre_shift, shift, qmin, qmax, out_dtype, variant):
        kind = variant_of(variant)
        c = x.shape[-1]
        lc = nc.layernorm_consts(c, in_scale, eps, pre_shift, variant)
        if _paper_kind(variant, self.name, x.dtype, 2):
            return paper_core.np_paper_layernorm(x, mult, bias, kind.paper, shift, qmin, qmax, out_dtype)
        i = np_pre(x.astype(np.int64), pre_shift)
        if x.dtype == np.int32:
            i = np.clip(i, -nc.LN_MAX_ABS, nc.LN_MAX_ABS)
        u = 2 * i.sum(axis=-1, keepdims=True) + c
        if kind.division_free:
            mu = (((u + 2 * nc.LN_MAX_ABS * c) * lc.mean_div.m) >> lc.mean_div.s) - nc.LN_MAX_ABS
        else:
            mu = u // (2 * c)
        y = i - mu
        v = np.maximum((y * y).sum(axis=-1, keepdims=True) + lc.eps, 1)
        if kind.division_free:
            f = np_recip(np_isqrt(v))
        else:
            k = np.left_shift(1, (np_bitlen(v) + 1) >> 1)
            for _ in range(lc.iters):
                k_new = (k + v // k) >> 1
                k = np.minimum(k, k_new) if kind.ln_exact_isqrt else k_new
            f = kind.ln_numerator // k
        z = (f * y) >> 1
        acc = z * mult.astype(np.int64) + bias.astype(np.int64)
        return np.clip(round_shift_ref(acc, shift), qmin, qmax).astype(out_dtype)


def layernorm_int_args(gamma, beta, *, in_scale: float, out_scale: float, eps: float, in_dtype: str, c: int,
                       qmin: int, qmax: int, out_dtype: str, variant: str, max_abs: int | None = None):
    """``(mult, bias, params)`` for ``emit(bb, "layernorm_int", [x, const(mult), const(bias)], **params)``."""
    mult, bias, shift = nc.layernorm_affine(gamma, beta, c, out_scale)
    pre = 0 if variant_of(variant).paper else nc.layernorm_pre_shift(in_dtype, max_abs)  # the papers take I as is
    nc.layernorm_consts(c, in_scale, eps, pre, variant)  # validates C, variant
    return mult, bias, dict(in_scale=float(in_scale), eps=float(eps), pre_shift=pre, shift=shift, qmin=int(qmin),
                            qmax=int(qmax), out_dtype=out_dtype, variant=variant)
