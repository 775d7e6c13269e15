"""Constants and int32 limits of the *published* integer non-linears (``--nonlinear ivit-paper`` /
``ibert-paper``, quant/scheme.py), derived once from the float input scale.

The kernels (ops/paper_core.py, TE and NumPy twins) reproduce the papers' integer arithmetic
bit for bit; what is fixed here is which published version each step follows and why:

I-ViT -- the TVM benchmark (``TVM_benchmark/models/layers.py``) for Shiftmax and ShiftGELU:
``x0 = int32(-1/S - 1)`` (a truncating cast; the PyTorch version's ``floor(-1/S)`` differs only
when ``1/S`` is an integer), ``I_p = d + (d >> 1) - (d >> 4)``, clamp at ``n x0``, ``q = I_p / x0``
(C division, truncating), ``r = I_p - q x0``, ``E = ((r >> 1) - x0) << (n - q)`` (the PyTorch
version uses ``r / 2`` unfloored), Shiftmax ``n = 16`` (PyTorch: 15), output
``((2**31-1) / sum E * E) >> 24`` = 8-bit at 2**-7, floored; ShiftGELU ``n = 23`` with the row
maximum subtracted. Inputs are int8, as the benchmark requantizes them (no input pre-shift).
I-LayerNorm follows the paper's equations as the PyTorch version computes them on exact
integers (the benchmark's ``relay.mean`` of int8 sums in int8 and truncates, which is not an
integer algorithm one can reproduce): ``mu = round(mean)`` (half to even, ``torch.round``),
``V = sum Y**2`` (uint32), ``k <- (k + V // k) // 2`` ten times from ``2**16``,
``Z = floor(Y ((2**31-1) // k) / 2)``.

I-BERT -- the published PyTorch code on exact integers (it runs in float32, which does not
reproduce its own integer arithmetic: that needs float64): i-exp with ``x0 = floor(-0.6931/S)``,
``n = 30``; the exponential requantized to 16 bits at the calibrated maximum ``exp(0)`` by
I-BERT's dyadic (``frexp``, 31-bit mantissa rounded half up, product rounded half to even as
``torch.round``); ``out = floor(exp16 floor(2**32 / sum) / 2**24)`` (uint8 at 2**-8). i-GELU with
``k = 1.4142``, ``n = 14``. LayerNorm with the exact integer sqrt and ``floor(2**31 / (std + 1e-4))``,
its overflow shift fixed from the input's bound (I-BERT sets it from training data).

Where the paper's int32 arithmetic would overflow for a layer's shape or scale, the ``*_consts``
functions raise :class:`PaperOverflow` (one line); the integerize rules turn that into a refusal.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

INT32_MAX = 2**31 - 1
UINT32_LIMIT = 2**32

IVIT_SHIFTMAX_N = 16        # TVM benchmark quantized_softmax (PyTorch IntSoftmax: 15)
IVIT_SHIFTGELU_N = 23
IVIT_GELU_FACTOR = 1.702    # sigmoid(1.702 x) ~ Phi(x)
IVIT_OUT_SHIFT = 24         # 31 - M + 1, M = 8 output bits: Shiftmax and the sigmoid at 2**-7
IVIT_OUT_FRAC = 7
IVIT_SQRT_START, IVIT_SQRT_ITERS = 2**16, 10
IVIT_GELU_SHIFT_CAP = 32    # E2 = base << (n - q): any shift >= 32 already saturates the int32 sum

IBERT_LN2 = 0.6931          # the code's ln 2
IBERT_EXP_COEF = (0.35815147, 0.96963238, 1.0)  # a x**2 + b x + c -> a (x**2 + (b/a) x + c/a)
IBERT_EXP_N = 30
IBERT_EXP_BITS = 16         # the exponential's QuantAct(16)
IBERT_OUT_BITS = 8          # softmax output: uint8 at 2**-8
IBERT_FREXP_BITS = 31
IBERT_GELU_K = 1.4142       # the code's sqrt 2
IBERT_GELU_N = 14
IBERT_ERF_COEF = (-0.2888, -1.769, 1.0)        # a (x + b)**2 + c, c / a folded
IBERT_LN_EPS_INV = 10_000   # factor = floor(2**31 / (std + 1e-4)) = floor(2**31 * 1e4 / (1e4 std + 1))


class PaperOverflow(ValueError):
    """The published arithmetic leaves int32 for this layer's shape or scale (one line)."""


def ivit_x0(scale: float) -> int:
    """``relay.const(-1.0 / scale - 1, "int32")``: the float truncated toward zero (``< 0``)."""
    if not (scale > 0 and math.isfinite(scale)):
        raise ValueError(f"paper non-linear: input scale must be positive and finite, got {scale!r}")
    return int(-1.0 / scale - 1)


@dataclass(frozen=True)
class ShiftExpPaper:
    """I-ViT's ShiftExp as published: ``x0`` and ``n``; ``e_max = -x0 << n`` is ``E`` at delta 0."""

    x0: int
    n: int

    @property
    def e_max(self) -> int:
        return -self.x0 << self.n


def ivit_shiftmax_consts(in_scale: float, length: int) -> ShiftExpPaper:
    """Shiftmax of an int8 row of ``length`` at ``in_scale``; refuses when an all-equal row's
    ``sum E = length * e_max`` leaves int32 (the benchmark sums in int32)."""
    se = ShiftExpPaper(ivit_x0(in_scale), IVIT_SHIFTMAX_N)
    if length * se.e_max > INT32_MAX:
        raise PaperOverflow(
            f"I-ViT Shiftmax (n={se.n}) overflows int32: {length} tokens x E(0) = {-se.x0} << {se.n} at input "
            f"scale {in_scale:.4g} (needs input scale > {1.0 / max(INT32_MAX // (length << se.n), 1):.4g})")
    return se


def ivit_shiftgelu_consts(in_scale: float) -> ShiftExpPaper:
    """ShiftGELU's exponential of ``1.702 x``; refuses when ``E1 + E2`` of a row whose maximum
    is 0 (both ``-x0 << 23``) leaves int32."""
    se = ShiftExpPaper(ivit_x0(in_scale * IVIT_GELU_FACTOR), IVIT_SHIFTGELU_N)
    if 2 * se.e_max > INT32_MAX:
        raise PaperOverflow(
            f"I-ViT ShiftGELU (n={se.n}) overflows int32: E1 + E2 = 2 x ({-se.x0} << {se.n}) at input scale "
            f"{in_scale:.4g}; the paper's int32 needs |x0| <= 127 (input scale > {1.0 / (127 * IVIT_GELU_FACTOR):.4g})")
    return se


def ivit_layernorm_check(c: int, span: int) -> None:
    """I-LayerNorm sums ``Y**2`` in uint32: ``c * span**2`` must stay below 2**32 (``span``: the
    largest ``|Y|``, 255 for int8 inputs)."""
    if c * span * span >= UINT32_LIMIT:
        raise PaperOverflow(f"I-LayerNorm overflows uint32: {c} channels x |Y| <= {span} gives sum Y**2 up to "
                            f"{c * span * span} >= 2**32")


@dataclass(frozen=True)
class IBertExpPaper:
    """I-BERT i-exp and its 16-bit requantization: ``z = r (r + b) + c``, ``exp = z << (30 - q)``,
    ``exp16 = round_half_even(exp * m / 2**e)``."""

    x0: int
    b: int
    c: int
    m: int
    e: int
    n: int = IBERT_EXP_N


def ibert_frexp(ratio: float) -> tuple[int, int]:
    """I-BERT's ``batch_frexp``: ``ratio ~ m / 2**e`` with ``m`` the mantissa times 2**31 rounded half up."""
    mant, ex = math.frexp(ratio)
    return math.floor(mant * 2**IBERT_FREXP_BITS + 0.5), IBERT_FREXP_BITS - ex


def ibert_softmax_consts(in_scale: float, length: int) -> IBertExpPaper:
    a, b, c = IBERT_EXP_COEF
    if not (in_scale > 0 and math.isfinite(in_scale)):
        raise ValueError(f"paper non-linear: input scale must be positive and finite, got {in_scale!r}")
    x0 = math.floor(-IBERT_LN2 / in_scale)
    b_int, c_int = math.floor(b / a / in_scale), math.floor(c / a / in_scale**2)
    if not (1 <= c_int <= INT32_MAX):
        raise PaperOverflow(f"I-BERT i-exp: c = floor(1/(a S**2)) = {c_int} at input scale {in_scale:.4g} "
                            "is outside [1, 2**31) (int32)")
    if length * (2**(IBERT_EXP_BITS - 1) - 1) > INT32_MAX:
        raise PaperOverflow(f"I-BERT softmax: {length} x 32767 overflows the int32 row sum")
    # the calibrated 16-bit scale is exp(0) / 32767: exp(0) = c << 30 integer units
    m, e = ibert_frexp((2**(IBERT_EXP_BITS - 1) - 1) / (c_int * 2.0**IBERT_EXP_N))
    return IBertExpPaper(x0, b_int, c_int, m, e)


@dataclass(frozen=True)
class IBertGeluPaper:
    """i-GELU: ``y = floor(sign(x) ((min(|x|, -b) + b)**2 + c) / 2**14)``, ``acc = x (y + one)`` at
    ``in_scale * sig_scale / 2`` (``sig_scale < 0``: ``a`` is negative)."""

    b: int
    c: int
    one: int
    sig_scale: float
    n: int = IBERT_GELU_N


def ibert_gelu_consts(in_scale: float) -> IBertGeluPaper:
    """Refuses when the erf polynomial leaves int32. The product ``x (y + one)`` is the input of the
    requantization that follows at once (I-BERT's QuantAct; here the int64 dyadic), as in I-BERT,
    where it is not an int32 value either."""
    a, b, c = IBERT_ERF_COEF
    s = in_scale / IBERT_GELU_K
    b_int, c_int = math.floor(b / s), math.floor(c / a / s**2)
    sig = s**2 * a * 2.0**IBERT_GELU_N
    poly = max(b_int * b_int, -c_int)
    if poly > INT32_MAX:
        raise PaperOverflow(f"I-BERT i-GELU overflows int32 at input scale {in_scale:.4g}: the erf polynomial "
                            f"reaches {poly} (needs input scale > {IBERT_GELU_K * math.sqrt(-c / a / INT32_MAX):.3g})")
    return IBertGeluPaper(b_int, c_int, math.floor(1.0 / sig), sig)


def ibert_layernorm_shift(c: int, span: int) -> int:
    """I-BERT's overflow shift, fixed from the input bound: the fewest ``s`` with
    ``c * ceil(span / 2**s)**2 < 2**32`` (``sum (Y >> s)**2`` in uint32)."""
    s = 0
    while c * (-(-span >> s)) ** 2 >= UINT32_LIMIT:
        s += 1
    return s
