"""Shared timing helper for the side-by-side benchmarks."""
from __future__ import annotations

import time

import numpy as np


def median_ms(fn, runs: int) -> float:
    """Median wall time of ``fn()`` in milliseconds over ``runs`` calls, after one warm-up call."""
    fn()
    ts = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.median(ts))
