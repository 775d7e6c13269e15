"""Integer inputs that make a dyadic requantization see an exact rounding tie.

Why this exists: image-like or random inputs almost never land ``acc * b`` exactly halfway
between two multiples of ``2**c``, so a kernel that rounds those ties the wrong way (down instead
of up) passes every whole-model check. :mod:`tvm_qplugin.kernel_check` feeds each kernel inputs
built here instead.

The arithmetic (rule of quant/dyadic.py, ``y = (acc * b + 2**(c-1)) >> c``): write
``b = b' * 2**e`` with ``b'`` odd. ``acc * b`` is a tie (``acc * b mod 2**c == 2**(c-1)``) iff
``e < c`` and ``acc`` is an odd multiple of ``2**(m-1)``, ``m = c - e`` -- the odd factor ``b'``
does not matter, because ``odd * 2**(m-1) == 2**(m-1) (mod 2**m)``. A normalized 31-bit mantissa
with a large shift needs ``acc`` near ``2**(c-1)``, beyond what int8 operands reach: for such
channels no legal input can produce a tie, and rounding ties one way or the other cannot change
any output.
"""
from __future__ import annotations

import math
from fractions import Fraction

import numpy as np


def is_tie(acc: int, multiplier: int, shift: int) -> bool:
    """``acc * multiplier`` lies exactly halfway between two multiples of ``2**shift``."""
    return shift >= 1 and (int(acc) * int(multiplier)) % (1 << int(shift)) == 1 << (int(shift) - 1)


def tie_step(multiplier: int, shift: int) -> int | None:
    """``2**(m-1)``: ties are exactly the odd multiples of it; None when no ``acc`` gives a tie."""
    b, c = int(multiplier), int(shift)
    if b == 0 or c < 1:
        return None
    e = (b & -b).bit_length() - 1  # trailing zero bits of b
    return None if e >= c else 1 << (c - e - 1)


def visible_window(multiplier: int, shift: int, qmin: int, qmax: int) -> tuple[Fraction, Fraction]:
    """Accumulator interval where ``acc * b / 2**c`` lies in ``[qmin + 1/2, qmax - 1/2]``: a tie
    there rounds to two different in-range outputs (outside it the clamp hides the rounding)."""
    lo, hi = Fraction(2 * qmin + 1, 2), Fraction(2 * qmax - 1, 2)
    scale = Fraction(1 << int(shift), int(multiplier))
    a, b = lo * scale, hi * scale
    return (a, b) if a <= b else (b, a)


def tie_targets(acc_lo: int, acc_hi: int, multiplier: int, shift: int, qmin: int, qmax: int,
                limit: int = 8) -> list[int]:
    """Up to ``limit`` tie accumulators in ``[acc_lo, acc_hi]`` whose rounding shows in the output,
    nearest the middle of that interval first (an exact dot-product solution is easiest there)."""
    step = tie_step(multiplier, shift)
    if step is None:
        return []
    w_lo, w_hi = visible_window(multiplier, shift, qmin, qmax)
    lo, hi = max(acc_lo, math.ceil(w_lo)), min(acc_hi, math.floor(w_hi))
    if lo > hi:
        return []
    mid = (lo + hi) // 2
    k = mid // step
    ks = [k + d for d in range(-2 * limit, 2 * limit + 2)]
    odd = sorted((x for x in ks if x % 2 and lo <= x * step <= hi), key=lambda x: abs(x * step - mid))
    return [x * step for x in odd[:limit]]


def may_tie(acc_lo, acc_hi, multiplier, shift, qmin: int, qmax: int) -> np.ndarray:
    """Vectorized over channels, conservative form of :func:`tie_targets`: False only where no
    visible tie exists in ``[acc_lo, acc_hi]``. Float64 with a margin, so wide layers skip the exact
    per-channel work for the (usual) channels whose ties lie beyond every legal accumulator."""
    b, c = np.asarray(multiplier, np.int64), np.asarray(shift, np.int64)
    low_bit = np.abs((b & -b).astype(np.float64))  # 2**(trailing zeros of b)
    step = np.where(b != 0, 2.0 ** (c - 1) / np.maximum(low_bit, 1.0), np.inf)  # 2**(m-1)
    scale = 2.0 ** c.astype(np.float64) / np.maximum(np.abs(b).astype(np.float64), 1.0)
    w_lo = np.where(b > 0, (qmin + 0.5) * scale, -(qmax - 0.5) * scale)
    w_hi = np.where(b > 0, (qmax - 0.5) * scale, -(qmin + 0.5) * scale)
    lo = np.maximum(np.asarray(acc_lo, np.float64), w_lo)
    hi = np.minimum(np.asarray(acc_hi, np.float64), w_hi)
    lo, hi = lo - 1 - 1e-9 * np.abs(lo), hi + 1 + 1e-9 * np.abs(hi)
    with np.errstate(invalid="ignore"):
        k_lo, k_hi = np.ceil(lo / step), np.floor(hi / step)
    return (b != 0) & (c >= 1) & (step >= 1) & ((k_hi > k_lo) | ((k_hi == k_lo) & (k_lo % 2 != 0)))


def solve_dot(weights: np.ndarray, target: int, lo: int, hi: int) -> np.ndarray | None:
    """Integers ``x`` in ``[lo, hi]`` (``lo <= 0 <= hi``) with ``sum(weights * x) == target``, or None.

    1. Greedy: walk the weights from largest magnitude down, taking as much of the remainder as
       each ``x_k`` holds. 2. Close the last small remainder ``r`` exactly with one weight
       (``r % w_k == 0``) or a pair (extended Euclid: ``a w_i + b w_j = r``, the free parameter
       chosen to keep both inside their ranges). Note: not a complete solver (that is an integer
       program); a miss is reported as "unsolved", never as a failure.
    """
    w = [int(v) for v in np.asarray(weights).ravel()]
    x = [0] * len(w)
    nz = sorted((k for k in range(len(w)) if w[k]), key=lambda k: -abs(w[k]))
    if not nz:
        return np.zeros(len(w), np.int64) if target == 0 else None
    if target % math.gcd(*[w[k] for k in nz]):
        return None
    r = int(target)
    for k in nz:
        x[k] = min(max(_toward_zero(r, w[k]), lo), hi)
        r -= x[k] * w[k]
    if r and not _close_remainder(w, x, r, lo, hi, nz[::-1][:48]):
        return None
    out = np.asarray(x, np.int64)
    assert int(np.dot(out, np.asarray(w, np.int64))) == target
    return out


def _toward_zero(r: int, w: int) -> int:
    q = abs(r) // abs(w)
    return q if (r >= 0) == (w > 0) else -q


def _close_remainder(w, x, r, lo, hi, cand) -> bool:
    """Adjust one or two entries of ``x`` (indices ``cand``, small weights first) by exactly ``r``."""
    for k in cand:
        if r % w[k] == 0 and lo <= x[k] + r // w[k] <= hi:
            x[k] += r // w[k]
            return True
    for i_pos, i in enumerate(cand):
        for j in cand[i_pos + 1:]:
            g, a0, b0 = _egcd(w[i], w[j])
            if r % g:
                continue
            a0, b0 = a0 * (r // g), b0 * (r // g)
            da, db = w[j] // g, -w[i] // g  # a = a0 + t da, b = b0 + t db keeps a w_i + b w_j = r
            t_lo, t_hi = _t_range(x[i] + a0, da, lo, hi), _t_range(x[j] + b0, db, lo, hi)
            t0, t1 = max(t_lo[0], t_hi[0]), min(t_lo[1], t_hi[1])
            if t0 <= t1:
                x[i] += a0 + t0 * da
                x[j] += b0 + t0 * db
                return True
    return False


def _t_range(v0: int, d: int, lo: int, hi: int) -> tuple[int, int]:
    """Integers ``t`` with ``lo <= v0 + t d <= hi`` (``d != 0``)."""
    a, b = Fraction(lo - v0, d), Fraction(hi - v0, d)
    a, b = min(a, b), max(a, b)
    return math.ceil(a), math.floor(b)


def _egcd(a: int, b: int) -> tuple[int, int, int]:
    """``(g, s, t)`` with ``s a + t b == g == gcd(a, b) > 0``."""
    s0, s1, t0, t1, r0, r1 = 1, 0, 0, 1, a, b
    while r1:
        q = r0 // r1
        r0, r1, s0, s1, t0, t1 = r1, r0 - q * r1, s1, s0 - q * s1, t1, t0 - q * t1
    return (r0, s0, t0) if r0 > 0 else (-r0, -s0, -t0)


def spread_sum(target: int, n: int, lo: int, hi: int) -> np.ndarray:
    """``n`` integers in ``[lo, hi]`` summing to ``target`` (requires ``n lo <= target <= n hi``)."""
    q, rem = divmod(int(target), n)
    out = np.full(n, q, np.int64)
    out[:rem] += 1
    assert out.min() >= lo and out.max() <= hi and int(out.sum()) == target
    return out


def dot_range(weights: np.ndarray, lo: int, hi: int) -> tuple[int, int]:
    """Smallest and largest ``sum(weights * x)`` over ``x`` in ``[lo, hi]``."""
    w = np.asarray(weights, np.int64)
    return int(np.minimum(w * lo, w * hi).sum()), int(np.maximum(w * lo, w * hi).sum())
