"""Dyadic numbers and the one rounding rule of the project.

A real multiplier ``m`` is represented as ``b / 2**c`` with integers ``b`` (int32) and
``0 <= c <= 62`` (HAWQ-V3). Requantization of an integer accumulator is::

    y = clamp((acc * b + ((1 << c) >> 1)) >> c, qmin, qmax)

computed in int64, ``>>`` arithmetic (floor). ``((1 << c) >> 1)`` is ``2**(c-1)`` for ``c >= 1``
and 0 for ``c == 0``, so the rule is *round half up* (towards +inf) of ``acc * b / 2**c``.
Every kernel (TIR, NumPy reference, generated C) uses exactly this rule; it is tested once in
``tests/test_dyadic.py`` on ties, saturation and the largest shifts.

Range: ``|acc| < 2**31`` and ``|b| < 2**31`` keep ``acc * b + 2**61`` inside int64.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import CalibrationError

MAX_SHIFT = 62
MANTISSA_BITS = 31


@dataclass(frozen=True)
class Dyadic:
    """``multiplier / 2**shift`` approximating a real scale ratio."""

    multiplier: int
    shift: int

    def __post_init__(self):
        if not (-(2**31) <= self.multiplier < 2**31):
            raise ValueError(f"dyadic multiplier {self.multiplier} does not fit int32")
        if not (0 <= self.shift <= MAX_SHIFT):
            raise ValueError(f"dyadic shift {self.shift} outside [0, {MAX_SHIFT}]")

    @property
    def value(self) -> float:
        return self.multiplier / 2.0**self.shift


def dyadic(m: float, max_shift: int = MAX_SHIFT, mantissa_bits: int = MANTISSA_BITS) -> Dyadic:
    """Closest ``b / 2**c`` to ``m`` with ``2**(bits-1) <= |b| < 2**bits`` where the shift range allows.

    ``mantissa_bits`` below 31 leaves headroom for accumulators wider than int32 (``acc * b``
    must stay inside int64).

    Relative error is below ``2**-31`` whenever ``c`` is not clamped; multipliers so small that
    ``c`` would exceed ``max_shift`` lose mantissa bits (and round to 0 below ``2**-max_shift``).
    """
    if not math.isfinite(m):
        raise CalibrationError(f"a requantization scale ratio is non-finite ({m!r}): the calibrated ranges overflow; "
                               "check that the calibration data and weights are in the model's units")
    if m == 0.0:
        return Dyadic(0, 0)
    mant, exp = math.frexp(m)  # m = mant * 2**exp, 0.5 <= |mant| < 1
    b = round(mant * 2**mantissa_bits)
    if abs(b) == 2**mantissa_bits:  # mantissa rounded up to 1.0
        b //= 2
        exp += 1
    c = mantissa_bits - exp
    if c > max_shift:
        b = _round_half_up(b, c - max_shift)
        c = max_shift
    if c < 0:
        # Only calibrated ranges ~2**31 apart get here (input x weight scale >> output scale): data
        # far outside the range the model works in, not a bug -- a one-line user error (CalibrationError
        # is a ValueError, as before).
        raise CalibrationError(f"a requantization scale ratio of {m:.3g} is >= 2**31 (int32 multiplier): the "
                               "calibrated ranges of an op's input and output differ by more than 2**31; check that "
                               "the calibration data is in the model's units (e.g. pixels scaled as in training)")
    return Dyadic(int(b), int(c))


def dyadic_pair(ma: float, mb: float) -> tuple[int, int, int]:
    """Two multipliers on one shared shift: ``(ba, bb, c)`` with ``ba/2**c ~ ma``, ``bb/2**c ~ mb``.

    Used where two integer operands are summed before a single rounding (residual add, concat
    alignment), which halves the rounding error of rounding each branch separately.
    """
    big = dyadic(max(abs(ma), abs(mb)))
    c = big.shift
    return round(ma * 2.0**c), round(mb * 2.0**c), c


def _round_half_up(v: int, s: int) -> int:
    return (v + ((1 << s) >> 1)) >> s


def round_shift_ref(x: np.ndarray, shift) -> np.ndarray:
    """``(x + ((1 << shift) >> 1)) >> shift`` in int64, broadcasting ``shift``."""
    x = np.asarray(x, dtype=np.int64)
    s = np.asarray(shift, dtype=np.int64)
    return (x + ((np.int64(1) << s) >> 1)) >> s


def requantize_ref(acc, multiplier, shift, qmin: int, qmax: int, dtype) -> np.ndarray:
    """NumPy twin of the requantization rule above (the golden model)."""
    acc = np.asarray(acc, dtype=np.int64)
    y = round_shift_ref(acc * np.asarray(multiplier, dtype=np.int64), shift)
    return np.clip(y, qmin, qmax).astype(dtype)
