"""int4 weights: the per-channel quantizer (min-MSE clipping, and rounding with error feedback
against the layer's calibrated inputs) and the two-per-byte storage.

Why packed int8 bytes and not TVM's ``int4`` dtype: TVM 0.27 refuses to run it and its TIR reads
one value per byte of what the runtime packs two per byte -- silently wrong results
(docs/precision.md "Precision: int4"). So every int4 weight tensor of the integer module is an
``int8`` array of shape ``(rows, ceil(K / 2))`` and the kernels (ops/int4_linear.py, the C
package's ``qk_unpack_s4``) widen it themselves.

Packing contract (one home; the TE kernels, the NumPy twins and the C package all follow it):
row ``r`` of the ``(rows, K)`` weight matrix -- a conv's ``(O, C/groups * KH * KW)`` row-major
flattening, a dense layer's ``(N, K)`` -- is byte ``r, k // 2``: element ``k`` is the low nibble
when ``k`` is even, the high nibble when odd, each a two's complement 4-bit value; an odd ``K``
leaves the last high nibble 0.
"""
from __future__ import annotations

import numpy as np

# Symmetric [-7, 7], not [-8, 7]: the grid stays symmetric about 0 like the int8 weights'
# [-127, 127] (a weight and its negation quantize to opposite values; no zero point, no bias
# towards negative weights), for one level (~0.1 bit) less. -8 can still appear in packed data
# (the kernels and twins widen all 16 codes exactly), it is only never chosen by the quantizer.
INT4_QMAX = 7
INT4_QMIN = -7
NIBBLE_MIN, NIBBLE_MAX = -8, 7  # what a packed nibble can hold

# candidate clip ratios of the min-MSE search (fraction of max |w| per channel)
CLIP_RATIOS = np.linspace(0.35, 1.0, 66)
# Tikhonov damping of the input second moments in the error-feedback rounding, as a fraction of
# their mean diagonal (GPTQ's 1 %): keeps the inverse finite for inputs that never vary
ROUNDING_DAMPING = 0.01


def pack_int4(w: np.ndarray) -> np.ndarray:
    """``(rows, K)`` integers in [-8, 7] -> ``(rows, ceil(K / 2))`` int8, two per byte (module
    docstring). ValueError on values outside the nibble range (they would wrap)."""
    w = np.asarray(w)
    if w.ndim != 2:
        raise ValueError(f"pack_int4: expected a (rows, K) matrix, got shape {w.shape}")
    if w.size and (w.min() < NIBBLE_MIN or w.max() > NIBBLE_MAX):
        raise ValueError(f"pack_int4: values in [{w.min()}, {w.max()}] outside [-8, 7]")
    rows, k = w.shape
    padded = np.zeros((rows, k + (k & 1)), dtype=np.int64)
    padded[:, :k] = w
    low = padded[:, 0::2] & 0xF
    high = padded[:, 1::2] & 0xF
    return ((high << 4) | low).astype(np.uint8).view(np.int8)


def unpack_int4(packed: np.ndarray, k: int) -> np.ndarray:
    """Inverse of :func:`pack_int4`: ``(rows, ceil(K / 2))`` int8 -> ``(rows, K)`` int8 in [-8, 7]."""
    b = np.asarray(packed).view(np.uint8).astype(np.int16)
    nib = np.empty((b.shape[0], 2 * b.shape[1]), dtype=np.int16)
    nib[:, 0::2] = b & 0xF
    nib[:, 1::2] = b >> 4
    nib = np.where(nib >= 8, nib - 16, nib)
    return nib[:, :k].astype(np.int8)


def packed_shape(rows: int, k: int) -> tuple[int, int]:
    """Shape of the packed array of a ``(rows, K)`` int4 matrix."""
    return rows, (k + 1) // 2


def quantize_weight_int4(w: np.ndarray, axis: int = 0,
                         input_moments: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int4 ``w ~= w_q * scale[c]``, ``w_q`` in [-7, 7] (int8 array).

    The scale is the min-MSE clip, not ``max|w| / 7``: with 15 levels the largest weight of a
    channel otherwise stretches the step for all the others (rounding error ~ step**2 / 12 on
    every weight versus clipping error on a few outliers). Per channel, every ratio of
    :data:`CLIP_RATIOS` is tried and the one with the smallest ``||Q(w) - w||**2`` kept
    (ratio 1.0 is among them, so the result is never worse than max scaling).

    ``input_moments``: the layer's calibrated input second moments ``E[p p^T]`` over its input
    patches, ``(groups, K, K)`` for the ``(O, K)`` flattening of ``w`` along ``axis``
    (quant/int4_inputs.py). With them the codes are rounded by :func:`round_with_error_feedback`,
    which minimises the layer's output error rather than the weights' -- what matters to the
    network. Without them: round to nearest."""
    wq, scale = _min_mse_int4(w, axis)
    if input_moments is None:
        return wq, scale
    moved = np.moveaxis(np.asarray(w, dtype=np.float64), axis, 0)
    codes = round_with_error_feedback(moved.reshape(moved.shape[0], -1), scale, input_moments)
    return np.moveaxis(codes.reshape(moved.shape), 0, axis), scale


def round_with_error_feedback(w: np.ndarray, scale: np.ndarray, moments: np.ndarray) -> np.ndarray:
    """int4 codes of the ``(O, K)`` rows ``w`` on the per-row grid ``scale`` that keep the layer's
    output error ``(Q(w) - w) H (Q(w) - w)^T`` small, ``H = moments[g]`` for the rows of group
    ``g`` (the GPTQ recursion of Frantar et al. 2023, in our own NumPy): the columns are rounded
    in order and each one's rounding error is pushed onto the columns not yet rounded, weighted
    by how the inputs correlate (the upper Cholesky factor of ``H^-1``).

    Why not round to nearest: a layer's inputs are correlated (neighbouring pixels, channels after
    a ReLU), so independent rounding errors add up in the output where correlated corrections
    cancel. On the digits CNN's ``node_Conv_85`` (4 608 weights, the layer every midway plan
    lowers) the output error falls 3.8x and the compiled network's KL to fp32 3.8x (docs/mixed-precision.md
    "Mixed precision"). Returns int8 codes in [-7, 7]."""
    groups, k = moments.shape[0], moments.shape[1]
    assert w.shape[1] == k and w.shape[0] % groups == 0, (w.shape, moments.shape)
    w = np.array(w, dtype=np.float64).reshape(groups, -1, k)  # every group at once (depthwise: 1 row each)
    scale = np.asarray(scale, dtype=np.float64).reshape(groups, -1)
    h = np.array(moments, dtype=np.float64)
    diag = np.diagonal(h, axis1=1, axis2=2).copy()
    diag[diag <= 0] = 1.0  # an input that is always 0: any code is exact, keep the column alone
    idx = np.arange(k)
    h[:, idx, idx] = diag + ROUNDING_DAMPING * diag.mean(axis=1, keepdims=True)
    upper = np.linalg.cholesky(np.linalg.inv(h)).transpose(0, 2, 1)
    codes = np.zeros(w.shape, dtype=np.int8)
    for i in range(k):
        q = np.clip(np.floor(w[:, :, i] / scale + 0.5), INT4_QMIN, INT4_QMAX)
        codes[:, :, i] = q
        err = (w[:, :, i] - q * scale) / upper[:, i, i, None]
        w[:, :, i + 1:] -= err[:, :, None] * upper[:, None, i, i + 1:]
    return codes.reshape(-1, k)


def _min_mse_int4(w: np.ndarray, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Round-to-nearest int4 codes and the per-channel min-MSE scale (:func:`quantize_weight_int4`)."""
    w = np.asarray(w, dtype=np.float64)
    moved = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
    amax = np.abs(moved).max(axis=1)
    best_err = np.full(moved.shape[0], np.inf)
    best_scale = np.where(amax > 0, amax / INT4_QMAX, 1.0)
    for r in CLIP_RATIOS:
        scale = np.where(amax > 0, amax * r / INT4_QMAX, 1.0)
        q = np.clip(np.floor(moved / scale[:, None] + 0.5), INT4_QMIN, INT4_QMAX)
        err = ((q * scale[:, None] - moved) ** 2).sum(axis=1)
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better, scale, best_scale)
    shape = [1] * w.ndim
    shape[axis] = -1
    wq = np.clip(np.floor(w / best_scale.reshape(shape) + 0.5), INT4_QMIN, INT4_QMAX).astype(np.int8)
    return wq, best_scale


def activation_levels(nonneg: bool, bits: int = 4) -> int:
    """Largest code of a ``bits``-wide symmetric activation (unsigned after ReLU: 15, else 7)."""
    return 2 ** (bits - (0 if nonneg else 1)) - 1


def narrow_input(ctx, x, a_bits: int):
    """A conv / dense input requantized to ``a_bits`` (4: 15 or 7 levels stored in uint8 / int8,
    over the tensor's current range); unchanged for 8 -- what the int8 scheme already chose,
    int16 residual inputs included. ``ctx`` is the integerize context, ``x`` its QValue."""
    from ..passes.rules.base import QValue
    from .qtype import QType

    if a_bits == 8:
        return x
    assert a_bits == 4, a_bits  # quant/precision.py:check_plan admits 4 and 8 only
    amax = x.qtype.scale * max(abs(x.qtype.qmin), x.qtype.qmax)
    levels = activation_levels(x.nonneg)
    target = QType("uint8" if x.nonneg else "int8", amax / levels, levels=levels)
    return QValue(ctx.requantize(x, target), target, x.nonneg)
