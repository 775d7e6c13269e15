"""Range observers for calibration: minmax, percentile and MSE-optimal clipping.

All three read one running histogram of ``|x|`` per tensor (2048 bins over ``[0, amax]``, rebinned
when a later batch widens the range), so calibration streams over any number of batches in
constant memory. The quantization grid is symmetric (zero point 0, see quant/qtype.py), so
only the clipping threshold ``t`` is chosen; the observed sign decides signed vs unsigned.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BINS = 2048


@dataclass
class Histogram:
    """Running histogram of |x| plus the signed extremes."""

    counts: np.ndarray
    amax: float
    lo: float
    hi: float

    @classmethod
    def empty(cls) -> "Histogram":
        return cls(np.zeros(BINS, dtype=np.float64), 0.0, np.inf, -np.inf)

    def update(self, x: np.ndarray) -> None:
        """Add ``x``'s magnitudes. One pass each for min / max (they also find NaN / Inf: either
        shows in an extreme), then |x| scaled, clipped and truncated in one float32 buffer: the
        bin of ``|x| * (BINS / amax)`` capped at the last -- the same float32 products and so the
        same counts as indexing then capping in int64, at ~1/3 of the time (calibration runs this
        on every float tensor of every batch)."""
        x = np.asarray(x, dtype=np.float32).ravel()
        if x.size == 0:
            return
        xmin, xmax = float(x.min()), float(x.max())
        if not (np.isfinite(xmin) and np.isfinite(xmax)):
            raise ValueError("non-finite values (NaN/Inf) in a calibration activation")
        self.lo = min(self.lo, xmin)
        self.hi = max(self.hi, xmax)
        amax = max(-xmin, xmax)
        if amax > self.amax:
            self._rebin(amax)
        if self.amax == 0.0:
            self.counts[0] += x.size
            return
        buf = np.abs(x)
        buf *= BINS / self.amax            # float32 products (a Python float scalar stays weak)
        np.minimum(buf, BINS - 1, out=buf)  # exact: BINS - 1 is a float32, and truncation is monotone
        self.counts += np.bincount(buf.astype(np.intp), minlength=BINS)

    def _rebin(self, new_amax: float) -> None:
        """Widen the range; old bins move to the new bin holding their centre."""
        if self.amax > 0 and self.counts.any():
            centres = (np.arange(BINS) + 0.5) * (self.amax / BINS)
            idx = np.minimum((centres * (BINS / new_amax)).astype(np.int64), BINS - 1)
            self.counts = np.bincount(idx, weights=self.counts, minlength=BINS).astype(np.float64)
        self.amax = new_amax

    def centres(self) -> np.ndarray:
        return (np.arange(BINS) + 0.5) * (self.amax / BINS)


def minmax_threshold(h: Histogram, qmax: int) -> float:
    """Clip at the largest magnitude seen."""
    return h.amax


def percentile_threshold(h: Histogram, qmax: int, percentile: float = 99.999) -> float:
    """Smallest threshold covering ``percentile`` % of the observed magnitudes."""
    total = h.counts.sum()
    if total == 0 or h.amax == 0:
        return h.amax
    cdf = np.cumsum(h.counts) / total
    k = int(np.searchsorted(cdf, percentile / 100.0))
    return min(h.amax, (k + 1) * h.amax / BINS)


def mse_threshold(h: Histogram, qmax: int) -> float:
    """Threshold minimising the expected squared error of clip + round on the histogram.

    Inside the range the rounding error is modelled as uniform (``step**2 / 12`` per value);
    outside it is the clipping error ``(|x| - t)**2`` at bin centres. (Rounding bin centres
    themselves would alias once the step nears the bin width.) Candidates: bin edges from
    amax/64 to amax.
    """
    if h.amax == 0 or h.counts.sum() == 0:
        return h.amax
    v = h.centres()
    w = h.counts
    total = w.sum()
    tail_w = np.cumsum(w[::-1])[::-1]                 # count of bins >= k
    tail_wv = np.cumsum((w * v)[::-1])[::-1]
    tail_wv2 = np.cumsum((w * v * v)[::-1])[::-1]
    best_t, best_err = h.amax, np.inf
    for k in range(BINS // 64, BINS + 1):
        t = k * h.amax / BINS
        step = t / qmax
        if k < BINS:  # clipped bins: sum w (v - t)^2
            clip = tail_wv2[k] - 2 * t * tail_wv[k] + t * t * tail_w[k]
            inside = total - tail_w[k]
        else:
            clip, inside = 0.0, total
        err = inside * step * step / 12.0 + clip
        if err < best_err:
            best_t, best_err = t, err
    return best_t


OBSERVERS = {"minmax": minmax_threshold, "percentile": percentile_threshold, "mse": mse_threshold}
DEFAULT_OBSERVER = "percentile"  # 99.999: best MobileNetV2 agreement (docs/performance.md); the one default


def calibrated_range(h: Histogram, method: str) -> tuple[float, float]:
    """``(lo, hi)`` after clipping with ``method``; ``lo >= 0`` iff nothing negative was seen."""
    try:
        fn = OBSERVERS[method]
    except KeyError:
        raise ValueError(f"unknown observer {method!r}; choose one of {sorted(OBSERVERS)}") from None
    nonneg = h.lo >= 0
    t = fn(h, 255 if nonneg else 127)
    return (0.0 if nonneg else -t), t
