"""When AVX2's ``vpmaddubsw`` is exact: a compile-time proof on the weights, and the reduction
order that makes it hold.

``vpmaddubsw`` multiplies 32 unsigned bytes (activations: u8, or s8 + 128) by 32 signed bytes
(weights) and adds *adjacent pairs* into int16 **with saturation**; ``vpmaddwd`` against ones
then adds pairs of those into int32 (exact). For activations ``a0, a1`` in ``[0, 255]`` the pair
sum ``a0 * w0 + a1 * w1`` lies in

    [255 * (min(w0, 0) + min(w1, 0)),  255 * (max(w0, 0) + max(w1, 0))]

and both ends are reached, so a pair of one output channel can saturate int16 exactly when both
weights have the same sign and ``|w0 + w1| > 128`` (``255 * 128 = 32640 <= 32767``,
``-255 * 128 >= -32768``; 129 overflows either way). The weights are compile-time constants: a
layer whose packed pairs all pass is exact on ``vpmaddubsw`` for every input.

Full-range per-channel weights (every channel reaches +-127) rarely pass in their natural order,
but a pairing usually exists: a large weight next to an opposite-sign or small one.
:func:`k_order` finds one order of the reduction axis (a permutation applied to the weights at
pack time and to the activation gather) that is safe for *every* output channel at once -- the
gather is shared by all channels -- or says there is none (the layer then keeps the exact
``vpmaddwd`` route).

Pure NumPy: no TVM, so the proof is testable on its own (tests/test_x86_avx2_pairs.py).
"""
from __future__ import annotations

import hashlib

import numpy as np

U8_MAX = 255
INT16_MIN, INT16_MAX = -(2**15), 2**15 - 1
# the largest same-sign |w0 + w1| whose pair sum cannot saturate: 255 * 128 = 32640
PAIR_LIMIT = INT16_MAX // U8_MAX


def pair_can_saturate(w0: np.ndarray, w1: np.ndarray) -> np.ndarray:
    """Elementwise: can ``a0 * w0 + a1 * w1`` leave int16 for some ``a0, a1`` in ``[0, 255]``?

    Parameters
    ----------
    w0, w1 : int arrays of one shape (int8 weights; wider types are fine)
    """
    w0, w1 = np.asarray(w0, np.int64), np.asarray(w1, np.int64)
    high = U8_MAX * (np.maximum(w0, 0) + np.maximum(w1, 0))
    low = U8_MAX * (np.minimum(w0, 0) + np.minimum(w1, 0))
    return (high > INT16_MAX) | (low < INT16_MIN)


def saturating_pairs(w2d: np.ndarray, order: np.ndarray | None = None) -> int:
    """How many (output channel, pair) of the packed layout can saturate: the weights ``w2d``
    ``[O, K]`` read in ``order`` (packed position -> reduction index; natural when None), pairs
    being packed positions ``(2i, 2i + 1)`` (an odd K padded with a zero weight)."""
    w = np.asarray(w2d, np.int64)
    if order is not None:
        w = w[:, order]
    w = np.pad(w, ((0, 0), (0, w.shape[1] % 2)))
    return int(pair_can_saturate(w[:, 0::2], w[:, 1::2]).sum())


def _conflicts(w: np.ndarray) -> np.ndarray:
    """``[K, K]`` bool: reduction indices ``i, j`` form a saturating pair in some output channel.

    Only a weight above ``PAIR_LIMIT / 2`` in magnitude can be in one (the other one then larger
    than ``PAIR_LIMIT - |w|``), so each channel contributes the rows of its few large weights."""
    k = w.shape[1]
    bad = np.zeros((k, k), bool)
    for sign in (1, -1):
        v = np.maximum(sign * w, 0)  # the weights of this sign, as magnitudes; 0 elsewhere
        for o, i in zip(*np.nonzero(2 * v > PAIR_LIMIT)):
            partners = v[o] > PAIR_LIMIT - v[o, i]
            bad[i] |= partners
            bad[:, i] |= partners
    np.fill_diagonal(bad, False)
    return bad


def k_order(w2d: np.ndarray, max_extra: int | None = None) -> np.ndarray | None:
    """An order of the reduction axis of ``w2d`` ``[O, K]`` under which no packed pair of any
    output channel can saturate: packed position -> reduction index, ``-1`` for an added position
    of zero weight (a *spacer*); None when it needs more than ``max_extra`` spacers (default K/8).

    The natural order when it passes (``np.arange(K)``, K even). Otherwise a greedy matching on
    the compatibility graph: the index with the fewest compatible partners left is paired first,
    with its compatible partner that has the fewest left (the large weights go first and take the
    small or opposite-sign ones they need); an index with none left gets a spacer (zero weight is
    compatible with anything: ``|w| <= 128``). The result has even length. Greedy is not
    minimal -- more spacers than needed cost dot work, never exactness."""
    w = np.asarray(w2d, np.int64)
    k = w.shape[1]
    max_extra = k // 8 if max_extra is None else max_extra
    if k % 2 == 0 and saturating_pairs(w) == 0:
        return np.arange(k)
    ok = ~_conflicts(w)
    np.fill_diagonal(ok, False)
    free = np.ones(k, bool)
    degree = ok.sum(axis=1)
    order: list[int] = []
    while free.any():
        candidates = np.flatnonzero(free)
        i = candidates[np.argmin(degree[candidates])]
        partners = np.flatnonzero(ok[i] & free)
        j = partners[np.argmin(degree[partners])] if partners.size else -1
        order += [i, j]
        for taken in (i, j) if j >= 0 else (i,):
            free[taken] = False
            degree -= ok[:, taken]
    spacers = order.count(-1)
    return np.asarray(order, np.int64) if spacers <= max_extra else None


def packed_order(w2d: np.ndarray, kp: int, reorder: bool) -> np.ndarray | None:
    """The reduction order a ``vpmaddubsw`` kernel with ``kp`` products per lane packs ``w2d``
    ``[O, K]`` in, its length a multiple of ``kp`` (``-1`` and indices ``>= K``: zero weights),
    or None when no safe one is found: with ``reorder`` :func:`k_order` over the weights
    zero-padded to whole ``kp`` groups (the pad columns are spacers already), else the natural
    order only (a kernel whose activations are not gathered cannot reorder them)."""
    w = np.ascontiguousarray(w2d)
    k = w.shape[1]
    padded = np.zeros((w.shape[0], -(-k // kp) * kp), np.int64)
    padded[:, :k] = w
    if not reorder:
        return np.arange(padded.shape[1]) if saturating_pairs(padded) == 0 else None
    # a compile asks once to choose the kernel and once more to pack each call: the matching is
    # remembered under a digest of the weights (not their bytes: MiniLM's would be megabytes each)
    key = (hashlib.sha1(w.tobytes()).hexdigest(), w.shape, str(w.dtype), kp)
    if key not in _ORDERS:
        if len(_ORDERS) >= ORDERS_KEPT:
            _ORDERS.pop(next(iter(_ORDERS)))
        order = k_order(padded, max_extra=k // 8)
        if order is not None:
            order = np.concatenate([order, np.full(-len(order) % kp, -1, np.int64)])
            order.setflags(write=False)  # shared by every caller
        _ORDERS[key] = order
    return _ORDERS[key]


ORDERS_KEPT = 256
_ORDERS: dict[tuple, np.ndarray | None] = {}
