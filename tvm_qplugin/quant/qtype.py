"""Quantized tensor types: integer dtype plus real scale (zero point is always 0).

Symmetric quantization everywhere keeps zero exact (padding, ReLU and max pooling need no zero
point arithmetic); tensors that are non-negative by construction (after ReLU/ReLU6) use the
unsigned type of the same width, which buys the sign bit back.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_RANGES = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "int32": (-(2**31), 2**31 - 1),
}


def qrange(dtype: str) -> tuple[int, int]:
    """``(qmin, qmax)`` of an integer dtype string."""
    try:
        return _RANGES[dtype]
    except KeyError:
        raise ValueError(f"unsupported quantized dtype {dtype!r}; expected one of {sorted(_RANGES)}") from None


def abs_max(dtype: str) -> int:
    """Largest ``|value|`` of an integer dtype (int8: 128, uint8: 255, int16: 32768): the bound every
    accumulator-overflow proof multiplies."""
    lo, hi = qrange(dtype)
    return max(-lo, hi)


@dataclass(frozen=True)
class QType:
    """A quantized tensor: ``real ~= scale * int`` with integer ``dtype``.

    ``levels`` narrows the representable range below the dtype's (e.g. int32 outputs that carry
    24 bits of precision); it defaults to the full dtype range.
    """

    dtype: str
    scale: float
    levels: int | None = None

    def __post_init__(self):
        qrange(self.dtype)
        if not (self.scale > 0 and np.isfinite(self.scale)):
            raise ValueError(f"quantization scale must be positive and finite, got {self.scale!r}")

    @property
    def qmin(self) -> int:
        lo, hi = qrange(self.dtype)
        return lo if self.levels is None else max(lo, -self.levels if lo < 0 else 0)

    @property
    def qmax(self) -> int:
        lo, hi = qrange(self.dtype)
        return hi if self.levels is None else min(hi, self.levels)

    @property
    def signed(self) -> bool:
        return qrange(self.dtype)[0] < 0

    @classmethod
    def for_range(cls, lo: float, hi: float, nonneg: bool, bits: int = 8) -> "QType":
        """Symmetric type covering ``[lo, hi]``; unsigned when ``nonneg`` (known ``>= 0``)."""
        amax = max(abs(lo), abs(hi))
        # A range calibration never opened (a ReLU no sample gets through: exactly 0) carries no scale.
        # A 1e-8 floor made the scale so small that a consumer's bias, quantized at input x weight
        # scale, overflowed int32 and was clipped (a constant output off by 600x); a unit range keeps
        # every consumer's bias representable and still quantizes 0 exactly.
        amax = 1.0 if amax == 0 else max(amax, 1e-8)
        if bits == 8:
            dtype = "uint8" if nonneg else "int8"
            return cls(dtype, amax / qrange(dtype)[1])
        levels = 2 ** (bits - (0 if nonneg else 1)) - 1
        dtype = "int16" if bits <= 16 and not nonneg else "int32"
        return cls(dtype, amax / levels, levels=levels)

    def quantize(self, x: np.ndarray) -> np.ndarray:
        """Float to integer, round half up, saturating (the entry quantizer's NumPy twin)."""
        v = np.floor(np.asarray(x, dtype=np.float32) * np.float32(1.0 / self.scale) + np.float32(0.5))
        return np.clip(v, self.qmin, self.qmax).astype(self.dtype)

    def dequantize(self, q: np.ndarray) -> np.ndarray:
        return (np.asarray(q).astype(np.float32) * np.float32(self.scale)).astype(np.float32)

    def to_json(self) -> dict:
        return {"dtype": self.dtype, "scale": self.scale, "levels": self.levels}

    @classmethod
    def from_json(cls, d: dict) -> "QType":
        return cls(d["dtype"], float(d["scale"]), d.get("levels"))
