"""Power-of-two weights for shift linears (ShiftAddViT): ``w ~= sign * scale[j] * 2^(e - 1)``.

Code format (4 bits, two codes per byte, low nibble first):

* bit 3: sign (1 = negative);
* bits 0-2: ``e`` in [0, 7]; ``e = 0`` is the zero weight, ``e >= 1`` the magnitude ``2^(e - 1)``,
  so the integer weight is ``w_int in {0, +-1, +-2, ..., +-64}`` at the per-channel ``scale``.

Why left shifts of the activation (``x << (e - 1)``) and not ShiftAddViT's right shifts
(``x >> p``): with the channel's largest weight at ``2^6``, a left shift is exact -- the product
``x * w_int`` bit for bit -- whereas ``x >> p`` throws away the low bits of an 8-bit activation
before they are summed. The channel scale then folds into the per-channel dyadic requantization.

Rounding picks the nearest representable magnitude in the linear domain (it minimises the
squared weight error, which is what the layer's output error sees).
"""
from __future__ import annotations

import numpy as np

MAX_EXP = 7           # e in [0, 7]: 3 bits
TOP_SHIFT = MAX_EXP - 1  # the largest magnitude is 2^6
SIGN_BIT = 8
SHIFT_W_ABS_MAX = 1 << TOP_SHIFT  # |w_int| <= 64: the accumulator bound of a shift linear


def shift_quantize(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-output-channel power-of-two codes of ``w`` (N, K).

    Returns
    -------
    codes : uint8 (N, K), values in [0, 15] (module doc).
    scale : float64 (N,), ``max|w_j| / 64`` (1.0 for an all-zero row).
    """
    w = np.asarray(w, np.float64)
    amax = np.abs(w).max(axis=1)
    scale = np.where(amax > 0, amax / SHIFT_W_ABS_MAX, 1.0)
    mag = np.abs(w) / scale[:, None]
    levels = np.concatenate([[0.0], 2.0 ** np.arange(MAX_EXP)])  # magnitude of e = 0..7
    mids = (levels[1:] + levels[:-1]) / 2
    e = np.searchsorted(mids, mag, side="left").astype(np.uint8)  # nearest level, ties to the smaller
    sign = ((w < 0) & (e > 0)).astype(np.uint8)
    return (sign * SIGN_BIT + e).astype(np.uint8), scale


def decode(codes: np.ndarray) -> np.ndarray:
    """Integer weights (int64) of 4-bit codes: ``+-2^(e - 1)``, 0 for ``e = 0``."""
    codes = np.asarray(codes, np.int64)
    e = codes & 7
    mag = np.where(e > 0, np.left_shift(1, np.maximum(e, 1) - 1), 0)
    return np.where(codes & SIGN_BIT, -mag, mag)


def pack_nibbles(codes: np.ndarray) -> np.ndarray:
    """(N, K) codes in [0, 15] -> uint8 (N, ceil(K / 2)), code 2i in the low nibble of byte i
    (an odd K is padded with the zero code)."""
    codes = np.asarray(codes, np.uint8)
    if codes.shape[1] % 2:
        codes = np.concatenate([codes, np.zeros((codes.shape[0], 1), np.uint8)], axis=1)
    return (codes[:, 0::2] | (codes[:, 1::2] << 4)).astype(np.uint8)


def unpack_nibbles(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_nibbles`: uint8 (N, ceil(K / 2)) -> codes (N, K)."""
    packed = np.asarray(packed, np.uint8)
    out = np.empty((packed.shape[0], 2 * packed.shape[1]), np.uint8)
    out[:, 0::2], out[:, 1::2] = packed & 15, packed >> 4
    return out[:, :k]


def weight_sqnr_db(w: np.ndarray, w_hat: np.ndarray) -> float:
    """SQNR (dB) of a reconstructed weight matrix against the float one."""
    err = float(np.sum((np.asarray(w, np.float64) - w_hat) ** 2))
    sig = float(np.sum(np.asarray(w, np.float64) ** 2))
    return float("inf") if err == 0 else 10.0 * np.log10(max(sig, 1e-300) / err)
