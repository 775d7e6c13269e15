"""Quantization math: dyadic multipliers, rounding, quantized tensor types, observers."""
from .dyadic import Dyadic, dyadic, dyadic_pair, requantize_ref, round_shift_ref
from .qtype import QType, abs_max, qrange

__all__ = ["Dyadic", "dyadic", "dyadic_pair", "requantize_ref", "round_shift_ref", "QType", "abs_max", "qrange"]
