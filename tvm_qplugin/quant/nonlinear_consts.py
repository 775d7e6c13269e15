"""Integer constants of the non-linear ops (softmax, GELU, LayerNorm), derived once from floats.

Every integer a non-linear kernel needs is computed here, in Python, at build time, from the
float parameters the caller passes (``in_scale``, ``out_scale``, ``gamma`` ...). The TE kernels
and their NumPy twins (``ops/nonlinear.py``) both call these helpers, so they agree on constants;
the *arithmetic* on data is written twice, once per side.

Shift-exp (I-ViT ShiftExp) on ``delta <= 0`` at real scale ``S`` per integer unit:

1. ``d = delta << -pre_shift`` or ``(delta + r) >> pre_shift`` (round half up): moves the unit
   so that ``|I0| = floor(1/S')`` has :data:`I0_BITS` bits, ``S' = S * 2**pre_shift``. This
   keeps the I-ViT formula precise for any input scale (int16 inputs would otherwise give
   ``|I0|`` in the thousands and overflow ``sum E``; coarse int8 scales a 5-bit ``I0``).
2. ``I_p = d + (d >> 1) - (d >> 4)`` (``~ d * log2 e``, I-ViT: 1.4375, 0.36 % low, i.e. 2.6 %
   error in E at delta = -5), clamped at ``q_clamp * I0``. ``exp_poly=2`` adds
   ``(d >> 8) + (d >> 10)``: 1.44238, 0.02 % low.
3. ``q = I_p // I0``, ``r = I_p - q * I0``, ``base = (r >> 1) - I0`` (``2**p ~ 1 + p/2``).
   ``exp_poly=2`` adds ``(r (r - I0) quad_m) >> quad_s`` (``+ c p (1 + p)``, c = 0.1699): one
   multiply more per element, the 2**p error drops from 6.1 % to 0.27 %: softmax max |error|
   0.018 -> 0.007 on attention-like rows (I-ViT's own formula cannot reach 0.01).
4. ``E = (base << n) >> q``: exactly I-ViT's ``base << (n - q)`` for ``q <= n``; below ``2**-n``
   it decays to 0 instead of saturating at ``2**-n`` (``q_clamp = n + bitlen|I0| + 1`` makes the
   clamped value exactly 0), so masked logits (the dtype minimum) add nothing, or for int8
   their true, negligible exponential, to ``sum E``.

``E`` is at real scale ``S'/2**n``-ish; its largest value (``delta = 0``) is ``e_max = |I0| << n``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .dyadic import Dyadic, dyadic
from .scheme import GELU_FORMS, variant_of

INT32_MAX = 2**31 - 1
I0_BITS = 10                # |I0| in [512, 1024): exponent base accurate to < 0.2 %
QUAD_C, QUAD_S = 0.1699, 30  # minimax c of 2**p ~ 1 + p/2 + c p (1 + p) on (-1, 0]
SIGMOID_BITS = 15           # ShiftGELU sigmoid at scale 2**-15
GELU_E_MAX_BITS = 15        # sigmoid: flooring f costs <= e_max / 2**16 <= 0.5 LSB of 2**-15

# I-BERT polynomials: exp(p) ~ A (p + B)**2 + C on (-ln2, 0]; erf(x) ~ sign(x)[A_ERF (min(|x|, -B_ERF) + B_ERF)**2 + 1]
IBERT_EXP_A, IBERT_EXP_B, IBERT_EXP_C = 0.35815147, 0.96963238 / 0.35815147, 1.0 / 0.35815147
IBERT_ERF_A, IBERT_ERF_B = -0.2888, -1.769
IBERT_ERF_BITS = 10         # |b_int| in [512, 1024): the erf polynomial's argument grid

# Newton reciprocal (Q30): y0 = 24/17 - 8/17 u on u in [1, 2) (max rel. error 1/17), 3 steps
RECIP_C1, RECIP_C2, RECIP_ITERS = round(24 / 17 * 2**30), round(8 / 17 * 2**30), 3
# Newton reciprocal square root (Q30): x0 = 1.067 - 0.1525 u on u in [1, 4) (minimax, 8.6 %), 5 steps
RSQRT_A, RSQRT_B, RSQRT_ITERS = round(1.067 * 2**30), round(0.1525 * 2**30), 5
NEWTON_CORRECTION = 2       # both Newton results are fixed up by up to +-2 exact integer steps
LN_MAX_ABS = 2**15          # LayerNorm input after pre_shift is saturated to +-2**15
LN_MAX_C = 2**13


def bitlen(v: int) -> int:
    return int(v).bit_length()


@dataclass(frozen=True)
class DivConst:
    """``floor(u / d) == (u * m) >> s`` for every integer ``0 <= u <= u_max`` (Granlund-Montgomery)."""

    d: int
    m: int
    s: int
    u_max: int


def div_const(d: int, u_max: int) -> DivConst:
    """Magic multiplier for exact floor division by the constant ``d > 0`` on ``[0, u_max]``.

    ``m = ceil(2**s / d)`` with ``2**s >= u_max * d``: the error ``u (m d - 2**s) / (d 2**s)``
    stays below ``1/d``, so the floor is exact; ``u_max * m < 2**63`` is asserted.
    """
    assert d > 0 and u_max >= 0
    s = bitlen(u_max * d)
    m = -(-(1 << s) // d)
    assert u_max * m < 2**63, f"magic division by {d} overflows int64 on [0, {u_max}]"
    return DivConst(d, m, s, u_max)


def _unit_shift(scale: float, bits: int) -> int:
    """``k`` with ``floor(1 / (scale * 2**k))`` a ``bits``-bit integer (k < 0: left shift)."""
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"non-linear op: input scale must be positive and finite, got {scale!r}")
    return int(min(max(math.floor(math.log2(1.0 / scale)) - (bits - 1), -16), 30))


@dataclass(frozen=True)
class ShiftExpConsts:
    """Integer constants of one ShiftExp (see the module docstring)."""

    pre_shift: int
    i0: int          # floor(-1 / S'), negative
    n: int
    q_clamp: int     # I_p is clamped at q_clamp * i0, where E == 0
    e_max: int       # E at delta == 0: |i0| << n
    div: DivConst    # q = (-I_p * m) >> s for the division-free variant
    poly: int = 1    # 1: I-ViT's 1 + p/2; 2: + c p (1 + p) with c/|I0| = quad_m / 2**quad_s
    quad_m: int = 0
    quad_s: int = 0

    @property
    def ip_min(self) -> int:
        return self.q_clamp * self.i0


def shiftexp_consts(scale: float, n: int, poly: int = 1) -> ShiftExpConsts:
    """ShiftExp for a delta at real ``scale`` per unit (``1.702 * s_in`` inside ShiftGELU)."""
    k = _unit_shift(scale, I0_BITS)
    i0 = math.floor(-1.0 / (scale * 2.0**k))
    q_clamp = n + bitlen(-i0) + 1
    if not (0 <= n <= 30) or (-i0 << n) > INT32_MAX:
        raise ValueError(f"ShiftExp: n={n} gives e_max = {-i0} << {n} beyond int32")
    if poly not in (1, 2):
        raise ValueError(f"ShiftExp: exp_poly={poly!r}, expected 1 (I-ViT) or 2 (quadratic)")
    quad_m = round(QUAD_C / -i0 * 2.0**QUAD_S) if poly == 2 else 0
    return ShiftExpConsts(k, i0, n, q_clamp, -i0 << n, div_const(-i0, q_clamp * -i0), poly, quad_m,
                          QUAD_S if poly == 2 else 0)


@dataclass(frozen=True)
class IBertExpConsts:
    """I-BERT i-exp: ``q = x // x0``, ``r = x - q x0``, ``z = r (r + b) + c``, ``E = (z << n) >> (q + z_shift)``."""

    pre_shift: int
    x0: int          # floor(-ln2 / S'), negative
    b: int           # floor(B / S')
    c: int           # floor(C / S'**2)
    n: int
    z_shift: int     # bitlen(c): E at delta == 0 lies in [2**(n-1), 2**n)
    q_clamp: int     # x clamped at q_clamp * x0, where E == 0
    e_max: int


def ibert_exp_consts(scale: float, n: int) -> IBertExpConsts:
    k = _unit_shift(scale / math.log(2.0), I0_BITS)
    s = scale * 2.0**k
    x0 = math.floor(-math.log(2.0) / s)
    b, c = math.floor(IBERT_EXP_B / s), math.floor(IBERT_EXP_C / s**2)
    zs = bitlen(c)
    if not (1 <= n <= 30):
        raise ValueError(f"i-exp: n={n} outside [1, 30]")
    return IBertExpConsts(k, x0, b, c, n, zs, n + 1, (c << n) >> zs)


def exp_consts(variant: str, scale: float, n: int, poly: int = 1):
    """The exponential of ``variant`` (scheme.py): I-BERT's i-exp or ShiftExp."""
    return ibert_exp_consts(scale, n) if variant_of(variant).exp == "poly" else shiftexp_consts(scale, n, poly)


def choose_softmax_n(in_scale: float, max_abs_delta: float | None, row_len: int, variant: str = "ivit") -> int:
    """The shift ``N`` of a softmax layer, from its input scale and calibration.

    Parameters
    ----------
    in_scale : real scale of the integer logits.
    max_abs_delta : largest ``max(row) - x`` seen in calibration (real units), or None.
    row_len : softmax length (last axis).

    Returns the largest ``N`` with ``row_len * e_max <= 2**31 - 1``: ``sum E`` cannot overflow
    int32 for *any* row (an all-equal row reaches the bound, so calibration cannot relax it);
    with calibration, no larger than needed to keep the smallest calibrated exponential
    ``e_max * exp(-max_abs_delta)`` at >= 2**12. The row reciprocal is normalised (31 bits
    whatever ``sum E`` is, ops/nonlinear.py), so a large ``e_max`` costs no output precision.
    """
    if row_len < 1:
        raise ValueError(f"softmax row length {row_len} < 1")
    best = None
    for n in range(1, 31):
        try:
            e_max = exp_consts(variant, in_scale, n).e_max
        except ValueError:
            break
        if row_len * e_max > INT32_MAX:
            break
        best = n
        if max_abs_delta is not None and e_max * math.exp(-max_abs_delta) >= 2**12:
            break
    if best is None:
        raise ValueError(f"softmax of length {row_len} at scale {in_scale!r}: no N keeps sum E inside int32")
    return best


# GELU: the sigmoid argument's factor per form lives in scheme.GELU_FORMS; the tanh form's cubic
# is one int64 multiply and a rounding shift per element
GELU_CUBIC = 0.044715
GELU_CUBIC_BITS = 16  # the cubic's multiplier: x**3 (|x| <= 2**15, 45 bits) times it stays inside int64


def choose_gelu_n(in_scale: float, variant: str = "ivit", approx: str = "paper") -> int:
    """``N`` of ShiftGELU: the largest with ``e_max = |I0| << N <= 2**15``.

    The sigmoid is ``((2**31-1) // (E1 + E2) * E1) >> 16``; flooring the reciprocal costs up to
    ``e_max / 2**16`` LSB of 2**-15 and the exponentials resolve ``1 / e_max``: 2**15 balances the
    two. (I-ViT's N = 23 with a 4-5 bit I0 gives e_max ~ 2**27 and a 4-bit reciprocal.)
    """
    variant_of(variant)
    i0 = -shiftexp_consts(GELU_FORMS[approx] * in_scale, 0).i0
    n = 0
    while (i0 << (n + 1)) <= 2**GELU_E_MAX_BITS:
        n += 1
    return n


@dataclass(frozen=True)
class GeluConsts:
    """ShiftGELU (ivit, division-free), i-GELU (ibert) or tanh-form GELU constants plus the output requant."""

    variant: str
    se: ShiftExpConsts | IBertExpConsts | None  # the sigmoid's exponential (None: i-GELU's erf polynomial)
    erf_pre_shift: int = 0
    erf_b: int = 0            # floor(B_ERF / S_e), negative
    erf_c: int = 0            # floor((1 / A_ERF) / S_e**2), negative
    erf_shift: int = 0        # y >> erf_shift keeps |y| <= 2**15
    erf_one: int = 0          # floor(1 / sigmoid scale), negative: "1 + erf" in y units
    out: Dyadic = Dyadic(0, 0)
    cubic: Dyadic | None = None  # tanh form: z = x + ((x**3 * b + r) >> c), b / 2**c ~ 0.044715 s**2


def gelu_consts(in_scale: float, out_scale: float, variant: str, n: int | None, poly: int = 1,
                approx: str = "paper") -> GeluConsts:
    kind = variant_of(variant)
    if approx not in GELU_FORMS:
        raise ValueError(f"GELU: approx={approx!r}, expected one of {sorted(GELU_FORMS)}")
    if not kind.erf_gelu or approx == "tanh":
        scale = GELU_FORMS[approx] * in_scale
        if kind.exp == "poly":  # i-exp of the sigmoid: E at delta = 0 in [2**14, 2**15)
            se = ibert_exp_consts(scale, GELU_E_MAX_BITS if n is None else n)
        else:
            se = shiftexp_consts(scale, choose_gelu_n(in_scale, variant, approx) if n is None else n, poly)
        if 2 * se.e_max > INT32_MAX:
            raise ValueError(f"GELU: n={se.n} lets E1 + E2 overflow int32")
        cubic = dyadic(GELU_CUBIC * in_scale**2, max_shift=62, mantissa_bits=GELU_CUBIC_BITS) if approx == "tanh" else None
        return GeluConsts(variant, se, out=dyadic(in_scale * 2.0**-SIGMOID_BITS / out_scale), cubic=cubic)
    k = _unit_shift(in_scale / math.sqrt(2.0) / -IBERT_ERF_B, IBERT_ERF_BITS)
    s_e = in_scale * 2.0**k / math.sqrt(2.0)
    b, c = math.floor(IBERT_ERF_B / s_e), math.floor(1.0 / IBERT_ERF_A / s_e**2)
    sh = max(0, bitlen(-c) - 15)
    sig_scale = IBERT_ERF_A * s_e**2 * 2.0**sh
    one = math.floor(1.0 / sig_scale)
    return GeluConsts(variant, None, k, b, c, sh, one, dyadic(in_scale * sig_scale / 2.0 / out_scale))


@dataclass(frozen=True)
class LayerNormConsts:
    """Row-level constants of the integer LayerNorm."""

    c: int
    eps: int                  # round(eps * C / S'**2), added to sum Y**2
    mean_div: DivConst        # division-free mean: floor(u / 2C) with u = 2 sum + C + 2**16 C
    iters: int


def layernorm_consts(c: int, in_scale: float, eps: float, pre_shift: int, variant: str) -> LayerNormConsts:
    kind = variant_of(variant)
    if not (1 <= c <= LN_MAX_C):
        raise ValueError(f"layernorm_int: row length C={c} outside [1, {LN_MAX_C}]")
    s = in_scale * 2.0**pre_shift
    eps_int = min(round(eps * c / (s * s)), 2**50) if eps > 0 else 0
    u_max = 2 * c * LN_MAX_ABS + c + 2 * LN_MAX_ABS * c
    return LayerNormConsts(c, int(eps_int), div_const(2 * c, u_max), kind.ln_sqrt_iters)


def layernorm_pre_shift(in_dtype: str, max_abs: int | None = None) -> int:
    """Shift bringing the input to +-2**15: int8 -8 (a left shift: finer grid for the rounded
    mean), int16 0, int32 the fewest right-shift bits (round half up) that fit ``max_abs``
    (calibrated largest |x|, default the dtype bound; values beyond saturate at +-2**15)."""
    if in_dtype in ("int8", "int16"):
        return -8 if in_dtype == "int8" else 0
    if in_dtype != "int32":
        raise ValueError(f"layernorm_int: unsupported input dtype {in_dtype!r}; expected int8, int16 or int32")
    return max(0, bitlen(2**31 if max_abs is None else max(int(max_abs), 1)) - 15)


def layernorm_affine(gamma, beta, c: int, out_scale: float) -> tuple[np.ndarray, np.ndarray, int]:
    """Fold ``gamma * n + beta`` (``n = Z * sqrt(C) / 2**30``) into ``(Z * mult + bias) >> shift``.

    ``mult`` : int32 values (int64 array) ``round(gamma * sqrt(C) / (2**30 out_scale) * 2**shift)``;
    ``bias`` : ``round(beta / out_scale * 2**shift)``, ``|bias| <= 2**61`` (``shift`` is lowered
    until it is); one shared ``shift`` so the rounding of the project's rule happens once.
    """
    gamma = np.broadcast_to(np.asarray(gamma, dtype=np.float64), (c,))
    beta = np.broadcast_to(np.asarray(beta, dtype=np.float64), (c,))
    if not (np.all(np.isfinite(gamma)) and np.all(np.isfinite(beta))):
        raise ValueError("layernorm_int: gamma and beta must be finite")
    m = gamma * math.sqrt(c) / (2.0**30 * out_scale)
    shift = dyadic(float(np.abs(m).max())).shift if np.any(m != 0) else 40
    bmax = float(np.abs(beta).max()) / out_scale
    while shift > 0 and bmax * 2.0**shift > 2.0**61:
        shift -= 1
    mult = np.round(m * 2.0**shift).astype(np.int64)
    bias = np.round(beta / out_scale * 2.0**shift).astype(np.int64)
    assert np.abs(mult).max(initial=0) < 2**31
    return mult, bias, int(shift)
