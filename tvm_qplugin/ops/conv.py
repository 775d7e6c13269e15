"""Integer convolution and dense layers with fused bias and per-channel dyadic requantization.

Both compute ``acc = sum(x * w) + bias`` in int32 and requantize it per output channel with the
rule of quant/dyadic.py. The NumPy twins compute the int32 sums as float64 matrix products: every
partial sum of int8/uint8 x int8 products is an integer below 2**53, so float64 arithmetic is
exact here (checked by :func:`_exact_matmul`), and BLAS makes the reference fast enough for
whole models.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from tvm import te, tirx

from ..quant import abs_max, requantize_ref
from .registry import IntegerOp, register_op
from .requant import i64, requant

_EXACT_LIMIT = 2**53


def _exact_matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Integer matmul via float64 BLAS; exact while sum |a||b| < 2**53 (asserted)."""
    k = a.shape[-1]
    bound = float(np.abs(a).max(initial=0)) * float(np.abs(b).max(initial=0)) * k
    assert bound < _EXACT_LIMIT, f"float64 matmul would not be exact (bound {bound:.3g})"
    return np.rint(a.astype(np.float64) @ b.astype(np.float64)).astype(np.int64)


@register_op
class Conv2DRequant(IntegerOp):
    """2-D convolution, NCHW x OIHW, any groups (depthwise when groups == C), strides, dilation,
    padding ``(top, left, bottom, right)`` with zeros (zero point is 0 everywhere).

    x : int8/uint8 (N, C, H, W). w : int8 (O, C/groups, KH, KW). bias : int32 (O,).
    multiplier : int32-valued int64 (O,). shift : int64 (O,) in [0, 62].
    Output ``out_dtype`` (N, O, OH, OW) clamped to [qmin, qmax].
    """

    name = "conv2d_requant"

    def compute(self, x, w, bias, multiplier, shift, *, strides, padding, dilation, groups, qmin, qmax, out_dtype):
        n, c, h, wd = (int(d) for d in x.shape)
        o, cg, kh, kw = (int(d) for d in w.shape)
        (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilation, padding
        oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (wd + pl + pr - dw * (kw - 1) - 1) // sw + 1
        og = o // groups
        if pt or pl or pb or pr:
            xp = te.compute(
                (n, c, h + pt + pb, wd + pl + pr),
                lambda b, ch, i, j: tirx.if_then_else(
                    tirx.all(i >= pt, i < h + pt, j >= pl, j < wd + pl), x[b, ch, i - pt, j - pl], tirx.const(0, x.dtype)
                ),
                name="x_pad",
            )
        else:
            xp = x
        rc = te.reduce_axis((0, cg), "rc")
        ry = te.reduce_axis((0, kh), "ry")
        rx = te.reduce_axis((0, kw), "rx")
        acc = te.compute(
            (n, o, oh, ow),
            lambda b, oc, i, j: te.sum(
                xp[b, (oc // og) * cg + rc, i * sh + ry * dh, j * sw + rx * dw].astype("int32")
                * w[oc, rc, ry, rx].astype("int32"),
                axis=[rc, ry, rx],
            ),
            name="acc",
        )
        return te.compute(
            (n, o, oh, ow),
            lambda b, oc, i, j: requant(
                i64(acc[b, oc, i, j]) + i64(bias[oc]), multiplier[oc], shift[oc], qmin, qmax, out_dtype
            ),
            name="y",
        )

    def reference(self, x, w, bias, multiplier, shift, *, strides, padding, dilation, groups, qmin, qmax, out_dtype):
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        (sh, sw), (dh, dw), (pt, pl, pb, pr) = strides, dilation, padding
        xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pt, pb), (pl, pr)))
        win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        win = win[:, :, ::sh, ::sw, ::dh, ::dw]  # (n, c, oh, ow, kh, kw)
        oh, ow = win.shape[2], win.shape[3]
        og = o // groups
        acc = np.empty((n, o, oh, ow), dtype=np.int64)
        for g in range(groups):
            cols = win[:, g * cg : (g + 1) * cg].transpose(0, 2, 3, 1, 4, 5).reshape(n * oh * ow, cg * kh * kw)
            wg = w[g * og : (g + 1) * og].reshape(og, cg * kh * kw).T
            acc[:, g * og : (g + 1) * og] = _exact_matmul(cols, wg).reshape(n, oh, ow, og).transpose(0, 3, 1, 2)
        acc += bias.astype(np.int64)[None, :, None, None]
        m = multiplier.astype(np.int64)[None, :, None, None]
        s = shift.astype(np.int64)[None, :, None, None]
        return requantize_ref(acc, m, s, qmin, qmax, out_dtype)




def int32_chunk(a_dtype: str, b_dtype: str) -> int:
    """Longest reduction whose int32 partial sum cannot overflow for these operand dtypes."""
    return (2**31 - 1) // (abs_max(a_dtype) * abs_max(b_dtype))


def chunked_dot(x, b_at, k_len: int, out_shape, a_dtype: str, b_dtype: str, acc_bits: int, name: str = "acc"):
    """``acc[i] = sum_k x[i[:-1], k] * b_at(i, k)`` (x's last axis is k) in ``int{acc_bits}``.

    An int64 accumulator is exact but its multiply-adds do not vectorize the way int32 ones do
    (x86 ``vpdpwssd``, Arm ``sdot``): MiniLM's 1536-deep FFN ran at 23 GMAC/s. So a 64-bit
    accumulation is computed as int32 partial sums over chunks short enough that int32 cannot
    overflow (:func:`int32_chunk`), added up in int64: the same integers, exactly."""
    if acc_bits == 32:
        k = te.reduce_axis((0, k_len), "k")
        return te.compute(out_shape, lambda *i: te.sum(x(*i[:-1], k).astype("int32") * b_at(i, k).astype("int32"),
                                                       axis=k), name=name)
    limit = int32_chunk(a_dtype, b_dtype)
    n_chunks = -(-k_len // limit)
    # equal chunks that tile K exactly when some n <= 2 * ceil(K / limit) divides it; otherwise
    # the last chunk is padded, reading a clamped (in-bounds) index multiplied by 0
    n_chunks = next((n for n in range(n_chunks, 2 * n_chunks + 1) if k_len % n == 0), n_chunks)
    chunk = -(-k_len // n_chunks)
    ragged = n_chunks * chunk != k_len
    kc = te.reduce_axis((0, chunk), "kc")

    def part(c, *i):
        kk = c * chunk + kc
        if not ragged:
            return te.sum(x(*i[:-1], kk).astype("int32") * b_at(i, kk).astype("int32"), axis=kc)
        kin = tirx.min(kk, k_len - 1)
        keep = tirx.if_then_else(kk < k_len, tirx.const(1, "int32"), tirx.const(0, "int32"))
        return te.sum(x(*i[:-1], kin).astype("int32") * b_at(i, kin).astype("int32") * keep, axis=kc)

    partial = te.compute((n_chunks, *out_shape), part, name=f"{name}_part")
    c = te.reduce_axis((0, n_chunks), "c")
    return te.compute(out_shape, lambda *i: te.sum(partial(c, *i).astype("int64"), axis=c), name=name)


@register_op
class DenseRequant(IntegerOp):
    """Dense layer ``y[..., j] = requant(sum_k x[..., k] * w[j, k] + bias[j])``.

    x : int8/uint8/int16 (..., K). w : int8 (N, K). bias : int32 (N,). multiplier, shift : int64 (N,).
    acc_bits : 32, or 64 for int16 inputs whose K * 32768 * 128 could overflow int32 (the caller
    then limits the multiplier's mantissa so ``acc * multiplier`` stays inside int64).
    """

    name = "dense_requant"

    def compute(self, x, w, bias, multiplier, shift, *, qmin, qmax, out_dtype, acc_bits=32):
        lead = [int(d) for d in x.shape[:-1]]
        out_shape = (*lead, int(w.shape[0]))
        acc = chunked_dot(x, lambda i, k: w[i[-1], k], int(x.shape[-1]), out_shape, str(x.dtype), "int8", acc_bits)
        return te.compute(
            out_shape,
            lambda *i: requant(i64(acc(*i)) + i64(bias[i[-1]]), multiplier[i[-1]], shift[i[-1]], qmin, qmax, out_dtype),
            name="y",
        )

    def reference(self, x, w, bias, multiplier, shift, *, qmin, qmax, out_dtype, acc_bits=32):
        acc = _exact_matmul(x.reshape(-1, x.shape[-1]), w.T).reshape(*x.shape[:-1], w.shape[0])
        acc += bias.astype(np.int64)
        return requantize_ref(acc, multiplier.astype(np.int64), shift.astype(np.int64), qmin, qmax, out_dtype)
