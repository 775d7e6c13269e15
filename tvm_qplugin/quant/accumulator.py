"""Accumulator width for an integer dot product, and the multiplier precision it leaves.

The requantization ``(acc * b + 2^(c-1)) >> c`` runs in int64 (DESIGN.md "Numerics"), so a wider
accumulator leaves fewer bits for the multiplier ``b``. Dense layers on wide inputs and the
activation x activation matmuls of attention share this rule.
"""
from __future__ import annotations


def accumulator_for(bound: int) -> tuple[int, int]:
    """``(acc_bits, mantissa_bits)`` for an accumulator whose ``|acc|`` can reach ``bound``: int32
    with a 31-bit multiplier when it fits, else int64 with the multiplier's mantissa cut so that
    ``acc * multiplier`` stays inside int64."""
    return (32, 31) if bound < 2**31 else (64, 62 - (bound + 2**31).bit_length())
