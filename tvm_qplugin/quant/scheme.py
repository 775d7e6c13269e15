"""The integer non-linear schemes as data: what each published family computes differently, and the
validated choice a compile makes.

A kernel's ``qplugin.params`` tag records the variant by *name* (it is serialised with the
artifact and read by the NumPy reference); every decision that depends on it reads the
:class:`NonlinearVariant` row for that name instead of comparing strings, so adding a family is
one row here plus the arithmetic it introduces.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..errors import QPluginError
from .qtype import qrange


@dataclass(frozen=True)
class SoftmaxFormat:
    """Softmax probabilities: ``dtype`` at real scale ``2**-frac_bits`` (1.0 saturates to qmax)."""

    dtype: str
    frac_bits: int

    @property
    def qmax(self) -> int:
        return qrange(self.dtype)[1]

    @property
    def scale(self) -> float:
        return 2.0**-self.frac_bits


@dataclass(frozen=True)
class NonlinearVariant:
    """One family of integer softmax / GELU / LayerNorm.

    exp : ``"shift"`` -- I-ViT's ShiftExp (shifts and adds); ``"poly"`` -- I-BERT's i-exp
        second-order polynomial.
    division_free : every per-row division is a Newton reciprocal on multiplies and shifts, fixed
        up exactly (bit-identical to the dividing form).
    ln_sqrt_iters : I-LayerNorm's integer Newton square-root steps ``k <- (k + V // k) >> 1``
        (0 for the division-free reciprocal square root).
    ln_exact_isqrt : I-BERT keeps the running minimum of the Newton steps (an exact isqrt) and
        divides ``2**31`` by it; I-ViT takes the last step and divides ``2**31 - 1``.
    erf_gelu : the family's GELU (``--gelu paper``) is I-BERT's erf polynomial, not ShiftGELU's
        ``x sigmoid(1.702 x)``.
    paper : ``"ivit"`` / ``"ibert"``: the published integer arithmetic itself, bit for bit
        (ops/paper_core.py, quant/paper_consts.py), with its output formats, fixed shifts and
        int32 limits. The other rows take the papers' *forms* into the project's own arithmetic
        (normalised reciprocals, rounding, chosen shifts), which is more accurate and equals
        neither paper's integers -- ``--gelu paper`` / ``--softmax-bits 8`` included.
    softmax_out : the paper's softmax output format (None: ``--softmax-bits`` decides).
    in_bits : widest softmax, GELU and LayerNorm input the paper's kernels take; wider inputs are
        requantized down first (0: as they come). I-ViT's benchmark feeds all three int8; I-BERT's
        i-GELU and LayerNorm are meant for wide inputs (int16 here), its softmax for int8 here.
    """

    name: str
    exp: str
    division_free: bool = False
    ln_sqrt_iters: int = 0
    ln_exact_isqrt: bool = False
    erf_gelu: bool = False
    paper: str = ""
    softmax_out: SoftmaxFormat | None = None
    in_bits: tuple[int, int, int] = (0, 0, 0)

    @property
    def ln_numerator(self) -> int:
        """The LayerNorm reciprocal's numerator, ``(numerator // k)``."""
        return 2**31 if self.ln_exact_isqrt else 2**31 - 1


VARIANTS = {v.name: v for v in (
    NonlinearVariant("ivit", exp="shift", ln_sqrt_iters=10),
    NonlinearVariant("ibert", exp="poly", ln_sqrt_iters=8, ln_exact_isqrt=True, erf_gelu=True),
    NonlinearVariant("division-free", exp="shift", division_free=True),
    NonlinearVariant("ivit-paper", exp="shift", ln_sqrt_iters=10, paper="ivit", softmax_out=SoftmaxFormat("int8", 7),
                     in_bits=(8, 8, 8)),
    NonlinearVariant("ibert-paper", exp="poly", ln_exact_isqrt=True, erf_gelu=True, paper="ibert",
                     softmax_out=SoftmaxFormat("uint8", 8), in_bits=(8, 16, 16)),
)}

# GELU forms: the sigmoid argument's factor. "paper": the papers' approximations -- ShiftGELU's
# x sigma(1.702 x) (max |error| vs erf-GELU 0.020) or I-BERT's erf polynomial (0.018) -- computed in
# the project's arithmetic (not the papers' integers: that is --nonlinear ivit-paper / ibert-paper). "tanh": x sigma(c1 (x + 0.044715
# x**3)), c1 = 2 sqrt(2/pi), the tanh form of GELU written as a sigmoid (0.0005).
GELU_FORMS = {"paper": 1.702, "tanh": 2.0 * math.sqrt(2.0 / math.pi)}


# --softmax-bits: 16 -> int16 at 2**-15 (attention x V accumulates exactly in int32: a row sums
# to one); 8 -> uint8 at 2**-8, I-BERT's output format (I-ViT's is [0, 127] at 2**-7), with the
# project's normalised reciprocal and rounding (~25 dB less softmax SQNR on MiniLM's 128-token
# rows than 16). Neither equals a paper's integers: --nonlinear ivit-paper / ibert-paper do.
SOFTMAX_FORMATS = {16: SoftmaxFormat("int16", 15), 8: SoftmaxFormat("uint8", 8)}


def variant_of(name: str) -> NonlinearVariant:
    """The variant row for a name (kernel params carry names); ValueError for an unknown one."""
    try:
        return VARIANTS[name]
    except (KeyError, TypeError):
        raise ValueError(f"non-linear variant {name!r}: choose one of {', '.join(VARIANTS)}") from None


def softmax_format_of(dtype: str) -> SoftmaxFormat:
    """The softmax output format whose integer dtype is ``dtype``."""
    for fmt in SOFTMAX_FORMATS.values():
        if fmt.dtype == dtype:
            return fmt
    raise ValueError(f"softmax_int: out_dtype {dtype!r} not in {sorted(f.dtype for f in SOFTMAX_FORMATS.values())}")


@dataclass(frozen=True)
class NonlinearScheme:
    """How a compile integerizes softmax, GELU and LayerNorm (``--nonlinear``, ``--gelu``,
    ``--softmax-bits``), validated once. ``exp_poly`` 2 refines ShiftExp's ``log2 e`` and ``2**p``
    (docs/transformers.md); 1 is the paper's formula. I-BERT's i-exp has no such refinement.

    A paper variant (``ivit-paper``, ``ibert-paper``) fixes all three: its GELU is the paper's, its
    softmax 8-bit, its exponential unrefined, so ``gelu`` / ``softmax_bits`` / ``exp_poly`` are set
    to ``"paper"`` / 8 / 1 whatever was passed (there is no other choice to make)."""

    variant: str = "ivit"
    gelu: str = "tanh"
    softmax_bits: int = 16
    exp_poly: int = 2

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise QPluginError(f"--nonlinear {self.variant!r}: choose one of {', '.join(VARIANTS)}")
        if self.gelu not in GELU_FORMS:
            raise QPluginError(f"--gelu {self.gelu!r}: choose one of {', '.join(GELU_FORMS)}")
        if self.softmax_bits not in SOFTMAX_FORMATS:
            raise QPluginError(f"--softmax-bits {str(self.softmax_bits)!r}: choose 16 (int16 probabilities) or 8 "
                               "(uint8)")
        if self.exp_poly not in (1, 2):
            raise QPluginError(f"exp_poly={self.exp_poly!r}: choose 1 (the paper's ShiftExp) or 2")
        if self.kind.paper:
            for name, value in (("gelu", "paper"), ("softmax_bits", 8), ("exp_poly", 1)):
                object.__setattr__(self, name, value)

    @property
    def kind(self) -> NonlinearVariant:
        return VARIANTS[self.variant]

    @property
    def softmax(self) -> SoftmaxFormat:
        return self.kind.softmax_out or SOFTMAX_FORMATS[self.softmax_bits]

    @property
    def shiftexp_poly(self) -> int:
        """``exp_poly`` where the exponential is ShiftExp, else 1 (the kernels' parameter)."""
        return self.exp_poly if self.kind.exp == "shift" else 1
