"""The one rounding rule (quant/dyadic.py), tested once on ties, saturation and extreme shifts."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_qplugin.quant import Dyadic, QType, dyadic, dyadic_pair, requantize_ref, round_shift_ref


@given(st.floats(min_value=1e-9, max_value=2.0**30, allow_nan=False, allow_infinity=False))
def test_dyadic_relative_error_below_2_pow_minus_31(m):
    d = dyadic(m)
    assert d.shift < 62, d   # 1e-9 needs a shift of 60: the clamp never applies in this range
    assert 2**30 <= d.multiplier < 2**31
    assert abs(d.value - m) / m <= 2.0**-31


def test_dyadic_clamps_tiny_multipliers_to_max_shift():
    d = dyadic(2.0**-70)
    assert d.shift == 62 and d.multiplier == 0
    d = dyadic(2.0**-40)
    assert d.shift == 62 and d.multiplier == 2**22


def test_dyadic_rejects_unrepresentable():
    with pytest.raises(ValueError, match="2\\*\\*31"):
        dyadic(2.0**32)
    with pytest.raises(ValueError, match="non-finite"):
        dyadic(math.inf)


def test_round_half_up_on_ties_including_negative():
    # x / 4 for x = -6, -2, 2, 6 are -1.5, -0.5, 0.5, 1.5 -> half up: -1, 0, 1, 2
    np.testing.assert_array_equal(round_shift_ref(np.array([-6, -2, 2, 6]), 2), [-1, 0, 1, 2])
    # shift 0 is the identity (no rounding constant)
    np.testing.assert_array_equal(round_shift_ref(np.array([-3, 5]), 0), [-3, 5])


def test_requantize_saturates_and_uses_int64():
    acc = np.array([2**31 - 1, -(2**31), 1000, -1000], dtype=np.int64)
    y = requantize_ref(acc, 2**31 - 1, 62, -128, 127, "int8")  # ~x * 2**-31: no int64 overflow
    np.testing.assert_array_equal(y, [1, -1, 0, 0])
    y = requantize_ref(acc, 2**30, 30, -128, 127, "int8")  # x1
    np.testing.assert_array_equal(y, [127, -128, 127, -128])


@settings(max_examples=200)
@given(st.integers(-(2**31), 2**31 - 1), st.integers(0, 2**31 - 1), st.integers(0, 62))
def test_requantize_matches_exact_rational_rounding(acc, b, c):
    got = int(requantize_ref(np.array([acc]), b, c, -(2**31), 2**31 - 1, "int64")[0])
    exact = math.floor((acc * b) / 2**c + 0.5) if c else acc * b
    assert got == max(-(2**31), min(2**31 - 1, exact))


def test_dyadic_pair_shares_shift():
    ba, bb, c = dyadic_pair(0.75, 0.001)
    assert abs(ba / 2**c - 0.75) < 2**-30 and abs(bb / 2**c - 0.001) < 2**-29


def test_qtype_unsigned_after_relu_and_wide_outputs():
    assert QType.for_range(0, 6, nonneg=True).dtype == "uint8"
    assert QType.for_range(-1, 2, nonneg=False).dtype == "int8"
    wide = QType.for_range(-10, 10, nonneg=False, bits=24)
    assert wide.dtype == "int32" and wide.qmax == 2**23 - 1 and wide.qmin == -(2**23 - 1)
    q = QType("int8", 0.5).quantize(np.array([0.25, -0.25, 100.0, -100.0]))
    np.testing.assert_array_equal(q, [1, 0, 127, -128])


def test_dyadic_validates_fields():
    with pytest.raises(ValueError):
        Dyadic(2**31, 0)
    with pytest.raises(ValueError):
        Dyadic(1, 63)
