"""Calibration observers: streaming histogram, minmax / percentile / MSE thresholds."""
from __future__ import annotations

import numpy as np
import pytest

from tvm_qplugin.quant.observers import Histogram, calibrated_range, mse_threshold, percentile_threshold


def test_histogram_streams_and_rebins(rng):
    h = Histogram.empty()
    a, b = rng.normal(0, 1, 10000), rng.normal(0, 4, 10000)
    h.update(a)
    h.update(b)
    assert h.counts.sum() == 20000
    assert h.amax == pytest.approx(max(np.abs(a).max(), np.abs(b).max()))
    assert h.lo == pytest.approx(min(a.min(), b.min())) and h.hi == pytest.approx(max(a.max(), b.max()))


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
