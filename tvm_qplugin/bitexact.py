"""What "bit-exact" means, in one function that needs only NumPy.

Its own module so that the checks which run on a deployment machine with nothing but TVM's
runtime (``cuda_device_check.py`` on a GPU box) compare exactly as compile, ``verify``, the
per-kernel check and the C package do, without importing the compiler side (``reference.py``
imports Relax).
"""
from __future__ import annotations

import numpy as np


def first_difference(got: np.ndarray, want: np.ndarray) -> str | None:
    """None when ``got`` equals ``want`` bit for bit (same dtype, same shape, same values); else
    one line naming how many elements differ and the first position with both values. The one
    comparison behind every bit-exact claim: compile, ``verify``, the per-kernel check, the C package."""
    want = np.asarray(want)
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"got {got.dtype}{list(got.shape)}, want {want.dtype}{list(want.shape)}"
    bad = np.argwhere(got != want)
    if not bad.size:
        return None
    pos = tuple(int(v) for v in bad[0])
    return f"{bad.shape[0]} of {want.size} elements differ, first {pos}: got {got[pos]} want {want[pos]}"
