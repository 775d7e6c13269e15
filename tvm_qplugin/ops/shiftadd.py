"""Shift/add integer ops (ShiftAddViT, executed end to end): the shift linear and add attention.

Both kernels accumulate without a multiply: their reduction bodies are shifts, selects and
additions only, which ``passes/verify_tir.py:multiply_sites`` proves on the lowered TIR and
``export/kernels_c_shiftadd.py`` on the Cortex-M machine code. (The per-output dyadic
requantization and the per-row normalisation stay outside the reduction loops.)

Each op's TE definition and its NumPy twin sit side by side and share no code: the twins compute
the same integers the obvious way (a matmul with decoded weights; the quadratic popcount score
matrix), the kernels the cheap way.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..quant import abs_max, requantize_ref
from ..quant.pow2 import SHIFT_W_ABS_MAX, decode, unpack_nibbles
from .conv import _exact_matmul
from .registry import IntegerOp, register_op
from .requant import broadcast_index, i64, requant

X_DTYPES = ("int8", "uint8", "int16")
WORD_BITS = 32


def shift_acc_bound(x_dtype: str, k: int) -> int:
    """Largest ``|acc|`` of a shift linear over ``k`` inputs of ``x_dtype`` (|w_int| <= 64)."""
    return k * abs_max(x_dtype) * SHIFT_W_ABS_MAX


@register_op
class ShiftDenseRequant(IntegerOp):
    """Shift linear ``y[..., j] = requant(sum_k +-(x[..., k] << (e_jk - 1)) + bias[j])``.

    x : int8/uint8/int16 (..., K). w : uint8 (N, ceil(K/2)), two 4-bit codes per byte, low nibble
    first (quant/pow2.py: bit 3 sign, bits 0-2 e, e = 0 is a zero weight). bias : int32 (N,).
    multiplier, shift : int64 (N,), per-channel dyadic. Accumulator int32: the caller keeps
    ``K * max|x| * 64 < 2**31`` (:func:`shift_acc_bound`).
    """

    name = "shift_dense_requant"

    @staticmethod
    def _check(x_dtype: str, k: int, w_cols: int) -> None:
        if x_dtype not in X_DTYPES:
            raise ValueError(f"shift_dense_requant: x dtype {x_dtype} not in {X_DTYPES}")
        if w_cols != (k + 1) // 2:
            raise ValueError(f"shift_dense_requant: packed weight has {w_cols} bytes per row, K={k} needs {(k + 1) // 2}")
        if shift_acc_bound(x_dtype, k) >= 2**31:
            raise ValueError(f"shift_dense_requant: K={k} with {x_dtype} inputs can overflow int32; narrow x to int8")

    def compute(self, x, w, bias, multiplier, shift, *, qmin, qmax, out_dtype):
        k_len = int(x.shape[-1])
        self._check(str(x.dtype), k_len, int(w.shape[1]))
        lead = [int(d) for d in x.shape[:-1]]
        out_shape = (*lead, int(w.shape[0]))
        kb = te.reduce_axis((0, int(w.shape[1])), "kb")
        half = te.reduce_axis((0, 2), "half")
        zero = tirx.const(0, "int32")

        def term(i, kb, half):
            byte = w[i[-1], kb].astype("int32")
            code = tirx.Select(half == 0, byte & 15, byte >> 4)
            e = code & 7
            k = tirx.min(kb + kb + half, k_len - 1)  # an odd K's pad code is 0: the clamped read adds nothing
            mag = x(*i[:-1], k).astype("int32") << (tirx.max(e, 1) - 1)
            return tirx.Select(e == 0, zero, tirx.Select((code & 8) != 0, zero - mag, mag))

        acc = te.compute(out_shape, lambda *i: te.sum(term(i, kb, half), axis=[kb, half]), name="acc")
        return te.compute(
            out_shape,
            lambda *i: requant(i64(acc(*i)) + i64(bias[i[-1]]), multiplier[i[-1]], shift[i[-1]], qmin, qmax, out_dtype),
            name="y")

    def reference(self, x, w, bias, multiplier, shift, *, qmin, qmax, out_dtype):
        k_len = x.shape[-1]
        self._check(str(x.dtype), k_len, w.shape[1])
        w_int = decode(unpack_nibbles(w, k_len))  # (N, K)
        acc = _exact_matmul(x.reshape(-1, k_len), w_int.T).reshape(*x.shape[:-1], w.shape[0])
        acc += bias.astype(np.int64)
        return requantize_ref(acc, multiplier.astype(np.int64), shift.astype(np.int64), qmin, qmax, out_dtype)


def attention_acc_dtype(n: int, d: int, v_dtype: str) -> str:
    """int32 when ``2 * sum_m score * v + sum_m score`` (scores <= d) cannot overflow it."""
    bound = 2 * d * n * abs_max(v_dtype) + d * n
    return "int32" if bound < 2**31 else "int64"


def _code_bits(x, i_axis_last: bool, d: int, name: str):
    """Hamming codes of ``x``'s feature axis packed into uint32 words: bit i of a token's code is
    ``x_i > mean(x)``, decided as ``d * x_i > sum(x)`` (a shift when d is a power of two).
    ``i_axis_last``: features on the last axis (Q: (..., N, d)) or the one before (Kᵀ: (..., d, N))."""
    shape = [int(s) for s in x.shape]
    lead, n = (shape[:-2], shape[-2]) if i_axis_last else (shape[:-2], shape[-1])
    words = -(-d // WORD_BITS)
    log2d = d.bit_length() - 1 if d & (d - 1) == 0 else None

    def at(b, t, i):
        return x(*b, t, i) if i_axis_last else x(*b, i, t)

    r = te.reduce_axis((0, d), "i")
    total = te.compute((*lead, n), lambda *bt: te.sum(at(bt[:-1], bt[-1], r).astype("int32"), axis=r), name=f"{name}_sum")
    # d * x_i: a shift when d is a power of two, else an elementwise stage of its own (no reduction
    # multiplies: the multiply-free check reads every accumulation)
    scaled = te.compute((*lead, n, d), lambda *bti: at(bti[:-2], bti[-2], bti[-1]).astype("int32") << log2d
                        if log2d is not None else at(bti[:-2], bti[-2], bti[-1]).astype("int32") * d, name=f"{name}_scaled")
    bit = te.reduce_axis((0, WORD_BITS), "bit")

    def word(*bt):
        b, t, wd = bt[:-2], bt[-2], bt[-1]
        pos = (wd << 5) + bit  # WORD_BITS = 32
        on = tirx.all(pos < d, scaled(*b, t, tirx.min(pos, d - 1)) > total(*b, t))
        return te.sum(tirx.Select(on, tirx.const(1, "uint32") << bit.var.astype("uint32"), tirx.const(0, "uint32")),
                      axis=bit)

    return te.compute((*lead, n, words), word, name=f"{name}_code")


def _bit(code, b, t, i):
    """Bit ``i`` of token ``t``'s packed code, as a bool expression."""
    return ((code(*b, t, i >> 5) >> (i & 31).astype("uint32")) & tirx.const(1, "uint32")) != tirx.const(0, "uint32")


@register_op
class AddAttention(IntegerOp):
    """Add attention: ``out[n] = round(sum_m s(n, m) v[m] / sum_m s(n, m))`` with the Hamming
    similarity ``s(n, m) = popcount(XNOR(code(q_n), code(k_m)))`` over the d feature bits.

    Computed in the linear order Q(KᵀV): ``sum_m s(n, m) v[m, j] = sum_i (qbit(n, i) ? A[i, j] :
    T[j] - A[i, j])`` with ``A[i, j] = sum_m kbit(m, i) v[m, j]`` (masked sums) and ``T = sum_m v``;
    the row sum likewise from the key bit counts. Cost O(N d dv), linear in the sequence length N.
    Rounding: ``floor((2 num + den) / (2 den))`` (half up), ``den`` at least 1.

    q : int8/uint8/int16 (B..., N, d). kt : same dtypes (B..., d, N) (keys transposed, as the
    attention ``Q Kᵀ`` holds them). v : int8/uint8/int16 (B..., N, dv). Batch dims equal.
    keep : optional bool/uint8 key mask broadcastable to (B..., 1, N): masked keys (0) take no
    part (an attention mask over keys: padding tokens). Output ``out_dtype`` (B..., N, dv) in
    [qmin, qmax], at v's scale (a convex combination of v).
    """

    name = "add_attention"

    def divisions(self, params: dict) -> int:
        return 1

    @staticmethod
    def _dims(q_shape, kt_shape, v_shape, keep_shape=None):
        q_shape, kt_shape, v_shape = (tuple(int(s) for s in t) for t in (q_shape, kt_shape, v_shape))
        n, d = q_shape[-2:]
        if kt_shape[-2:] != (d, n) or v_shape[-2] != n or not (q_shape[:-2] == kt_shape[:-2] == v_shape[:-2]):
            raise ValueError(f"add_attention: shapes q {q_shape}, kt {kt_shape}, v {v_shape} do not form Q(KᵀV)")
        if keep_shape is not None:
            full = (*q_shape[:-2], 1, n)
            ks = tuple(int(s) for s in keep_shape)
            if len(ks) != len(full) or any(k not in (1, f) for k, f in zip(ks, full)) or ks[-1] != n:
                raise ValueError(f"add_attention: key mask of shape {ks} does not broadcast to {full}")
        return q_shape[:-2], n, d, v_shape[-1]

    def compute(self, q, kt, v, *keep, qmin, qmax, out_dtype):
        lead, n, d, dv = self._dims(q.shape, kt.shape, v.shape, keep[0].shape if keep else None)
        acc_t = attention_acc_dtype(n, d, str(v.dtype))
        qc, kc = _code_bits(q, True, d, "q"), _code_bits(kt, False, d, "k")
        zero, one = tirx.const(0, "int32"), tirx.const(1, "int32")

        def kept(b, m):
            if not keep:
                return tirx.const(True, "bool")
            flag = keep[0](*broadcast_index(keep[0].shape, (*lead, 1, n), (*b, 0, m)))
            return flag if str(keep[0].dtype) == "bool" else flag != tirx.const(0, keep[0].dtype)

        m = te.reduce_axis((0, n), "m")
        a = te.compute((*lead, d, dv), lambda *bij: te.sum(tirx.Select(
            tirx.all(kept(bij[:-2], m), _bit(kc, bij[:-2], m, bij[-2])), v(*bij[:-2], m, bij[-1]).astype("int32"), zero),
            axis=m), name="kv")
        m2 = te.reduce_axis((0, n), "m2")
        tot = te.compute((*lead, dv), lambda *bj: te.sum(tirx.Select(
            kept(bj[:-1], m2), v(*bj[:-1], m2, bj[-1]).astype("int32"), zero), axis=m2), name="vsum")
        m3 = te.reduce_axis((0, n), "m3")
        ones = te.compute((*lead, d), lambda *bi: te.sum(
            tirx.Select(tirx.all(kept(bi[:-1], m3), _bit(kc, bi[:-1], m3, bi[-1])), one, zero), axis=m3), name="kcount")
        m4 = te.reduce_axis((0, n), "m4")
        n_kept = te.compute(tuple(lead), lambda *b: te.sum(tirx.Select(kept(b, m4), one, zero), axis=m4), name="nkeys")
        i = te.reduce_axis((0, d), "i")

        def num(*bnj):
            b, t, j = bnj[:-2], bnj[-2], bnj[-1]
            hit = a(*b, i, j).astype(acc_t)
            return te.sum(tirx.Select(_bit(qc, b, t, i), hit, tot(*b, j).astype(acc_t) - hit), axis=i)

        i2 = te.reduce_axis((0, d), "i2")
        numer = te.compute((*lead, n, dv), num, name="num")
        denom = te.compute((*lead, n), lambda *bt: te.sum(tirx.Select(
            _bit(qc, bt[:-1], bt[-1], i2), ones(*bt[:-1], i2), n_kept(*bt[:-1]) - ones(*bt[:-1], i2)), axis=i2), name="den")

        def out(*bnj):
            den = tirx.max(denom(*bnj[:-1]), 1).astype(acc_t)
            y = tirx.floordiv(numer(*bnj) + numer(*bnj) + den, den + den)
            return tirx.max(tirx.min(y, tirx.const(qmax, acc_t)), tirx.const(qmin, acc_t)).astype(out_dtype)

        return te.compute((*lead, n, dv), out, name="y")

    def reference(self, q, kt, v, *keep, qmin, qmax, out_dtype):
        lead, n, d, dv = self._dims(q.shape, kt.shape, v.shape, keep[0].shape if keep else None)
        qw = _pack_codes_ref(q.astype(np.int64), d)
        kw = _pack_codes_ref(np.swapaxes(kt, -1, -2).astype(np.int64), d)
        # the quadratic form: every query's code against every key's, popcount of the XOR
        differ = np.bitwise_count(qw[..., :, None, :] ^ kw[..., None, :, :]).sum(axis=-1).astype(np.int64)
        scores = d - differ                                         # (B..., N, N) matching bits
        if keep:
            scores = scores * (np.broadcast_to(keep[0], (*lead, 1, n)) != 0)
        flat_s, flat_v = scores.reshape(-1, n, n), v.astype(np.int64).reshape(-1, n, dv)
        num = np.stack([_exact_matmul(s, x) for s, x in zip(flat_s, flat_v)]).reshape(*lead, n, dv)
        den = np.maximum(scores.sum(axis=-1), 1)[..., None]
        y = np.floor_divide(2 * num + den, 2 * den)
        return np.clip(y, qmin, qmax).astype(out_dtype)


def _pack_codes_ref(x: np.ndarray, d: int) -> np.ndarray:
    """NumPy twin of the code packing: (..., T, d) -> uint32 (..., T, ceil(d/32))."""
    bits = (x * d > x.sum(axis=-1, keepdims=True)).astype(np.uint64)
    words = -(-d // WORD_BITS)
    bits = np.concatenate([bits, np.zeros((*bits.shape[:-1], words * WORD_BITS - d), np.uint64)], axis=-1)
    weights = np.left_shift(np.uint64(1), np.arange(WORD_BITS, dtype=np.uint64))
    return (bits.reshape(*bits.shape[:-1], words, WORD_BITS) * weights).sum(axis=-1).astype(np.uint32)
