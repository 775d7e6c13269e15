"""Calibration observers: streaming histogram, minmax / percentile / MSE thresholds."""
from __future__ import annotations

import numpy as np
import pytest

from tvm_qplugin.quant.observers import BINS, Histogram, calibrated_range, mse_threshold, percentile_threshold


def test_histogram_streams_and_rebins(rng):
    h = Histogram.empty()
    a, b = rng.normal(0, 1, 10000), rng.normal(0, 4, 10000)
    h.update(a)
    h.update(b)
    assert h.counts.sum() == 20000
    assert h.amax == pytest.approx(max(np.abs(a).max(), np.abs(b).max()))
    assert h.lo == pytest.approx(min(a.min(), b.min())) and h.hi == pytest.approx(max(a.max(), b.max()))


def _reference_update(h: Histogram, x: np.ndarray) -> None:
    """The plain form of Histogram.update: every |x| indexed in int64, then capped at the last bin."""
    x = np.asarray(x, dtype=np.float32).ravel()
    a = np.abs(x)
    h.lo, h.hi = min(h.lo, float(x.min())), max(h.hi, float(x.max()))
    if float(a.max()) > h.amax:
        h._rebin(float(a.max()))
    if h.amax == 0.0:
        h.counts[0] += a.size
        return
    h.counts += np.bincount(np.minimum((a * (BINS / h.amax)).astype(np.int64), BINS - 1), minlength=BINS)


def test_histogram_counts_bit_identical_to_the_plain_form(rng):
    """The fast update keeps every count, bin for bin, over widening batches (rebinning), exact bin
    edges, the extremes themselves, zeros, all-zero batches and float64 input."""
    edges = (np.arange(BINS + 1) * np.float32(3.0 / BINS)).astype(np.float32)
    batches = [np.zeros(50), rng.normal(0, 1, (4, 3, 17, 19)).astype(np.float32), np.concatenate([edges, -edges]),
               rng.standard_cauchy(30000), np.array([0.0, -0.0, 1e-30, -7.5, 7.5]), np.zeros(9, np.float32),
               rng.uniform(-2, 2, 5000) * 1e-3]
    fast, plain = Histogram.empty(), Histogram.empty()
    for b in batches:
        fast.update(b)
        _reference_update(plain, b)
        assert fast.amax == plain.amax and fast.lo == plain.lo and fast.hi == plain.hi
        assert np.array_equal(fast.counts, plain.counts), np.flatnonzero(fast.counts != plain.counts)[:5]
    assert fast.counts.sum() == sum(b.size for b in batches)


def test_nonfinite_found_in_any_position():
    for bad in (np.nan, np.inf, -np.inf):
        for pos in (0, 5, 9):
            x = np.ones(10, np.float32)
            x[pos] = bad
            with pytest.raises(ValueError, match="non-finite"):
                Histogram.empty().update(x)


def test_minmax_covers_everything_and_sign_decides_type(rng):
    h = Histogram.empty()
    h.update(np.abs(rng.normal(0, 1, 1000)))
    lo, hi = calibrated_range(h, "minmax")
    assert lo == 0.0 and hi == pytest.approx(h.amax)
    h.update(np.array([-0.1]))
    lo, hi = calibrated_range(h, "minmax")
    assert lo == -hi


def test_percentile_and_mse_clip_outliers(rng):
    h = Histogram.empty()
    x = rng.normal(0, 1, 200000)
    x[0] = 80.0  # one outlier
    h.update(x)
    p = percentile_threshold(h, 127, 99.99)
    m = mse_threshold(h, 127)
    assert 3.0 < p < 10.0, p
    assert 2.0 < m < 0.75 * h.amax, m  # one squared outlier still pulls MSE's choice up
    # the MSE choice really has lower error than min-max on this data
    def qerr(t):
        step = t / 127
        return float(np.mean((x - np.clip(np.floor(x / step + 0.5), -127, 127) * step) ** 2))
    assert qerr(m) < qerr(h.amax)


def test_unknown_observer_and_nan_rejected():
    h = Histogram.empty()
    h.update(np.ones(4))
    with pytest.raises(ValueError, match="unknown observer"):
        calibrated_range(h, "kl")
    with pytest.raises(ValueError, match="non-finite"):
        h.update(np.array([np.nan]))
