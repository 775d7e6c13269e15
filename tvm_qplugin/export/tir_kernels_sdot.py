"""The ``sdot4x4`` TIR kernel: 4 output channels per ``sdot`` lane, weights prepacked, the
requantization on vectors of 4 outputs (issue 11; a candidate of :mod:`.kernel_choice` on boards
with the dot-product extension).

Why a kernel of its own: the scheduled kernels of :mod:`.tir_kernels` let LLVM vectorize each
output's dot product along k, so every output ends with a horizontal add and a scalar int64
requantization (~30 instructions per output; the 1x1 conv's K = 64 spends 2/3 of its time there).
Here each 32-bit lane of an accumulator is a different output channel:

1. Weights prepacked at package time as ``[n/4][kp/4][4 oc][4 k]`` (:func:`pack_weights_sdot`):
   one 16-byte load holds 4 channels x 4 k, exactly ``sdot``'s second operand.
2. x is loaded 16 bytes (4 groups of 4 k) per row, each group broadcast by lane
   (``sdot v.4s, w.16b, x.4b[l]``: LLVM folds the shuffle into the indexed form); a tile is
   ``rows`` (<= 4) x 4 channels, so 4 loads of w and ``rows`` loads of x feed ``4 * rows`` sdot.
   Rows past ``m`` (a tile that ``rows`` does not divide) recompute the last row: no branch.
3. The epilogue (bias, dyadic multiply, rounding shift, clamp) is the same integer formula as the
   scalar kernels, written on int32x4 / int64x4 values: LLVM emits smull / sshl / sqxtn on 4
   outputs at once; bit-exact by construction (``acc + b`` in 32 bits: the package's accumulator
   bound check guarantees it cannot overflow).

Note: ``sqrdmulh`` is not used -- its rounding differs from quant/dyadic.py's.
A pointwise conv (``nchw``) packs each tile's pixels transposed (int8, the uint8 flip applied) into a
stack buffer; its outputs are stored with a stride (channel-major y).
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

SDOT = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8")
FLIP32 = -0x7F7F7F80   # 0x80808080 as int32: x ^ 0x80 on the 4 bytes of a word


def sdot_applies(sp) -> bool:
    """Shapes this kernel takes: whole groups of 4 channels and of 4 k (x is read 4 bytes at a time)."""
    return sp.n % 4 == 0 and sp.k % 4 == 0


def pack_weights_sdot(w: np.ndarray, n: int, kp: int) -> np.ndarray:
    """``w`` (n rows of kp int8, as the package stores them) -> ``[n/4][kp/4][4 oc][4 k]`` int8."""
    return np.ascontiguousarray(w[: n * kp].reshape(n // 4, 4, kp // 4, 4).transpose(0, 2, 1, 3)).reshape(-1)


def _rows(m: int) -> int:
    """Rows per tile: the largest of 4, 3, 2 that divides m, else 4 (the last tile repeats a row)."""
    return next((r for r in (4, 3, 2) if m % r == 0), 4 if m > 4 else m)


def _requant4(sp, acc, b, mu, sh):
    """The per-channel requantization of 4 outputs (int32x4 accumulators), quant/dyadic.py's formula."""
    s = acc + b                      # |acc + b| < 2^31: checked by kernels_c's accumulator bound
    if sp.shift33:                   # floor((a b + 2^(c-1)) / 2^c) == (hi + 2^(c-33)) >> (c-32), hi = (a b) >> 32
        hi32 = T.Cast("int32x4", (T.Cast("int64x4", s) * T.Cast("int64x4", mu)) >> T.Broadcast(T.int64(32), 4))
        c32 = T.Cast("int32x4", sh) - T.Broadcast(T.int32(32), 4)
        v = (hi32 + (T.Broadcast(T.int32(1), 4) << (c32 - T.Broadcast(T.int32(1), 4)))) >> c32
        return T.Cast(f"{sp.out_dtype}x4", T.max(T.min(v, T.Broadcast(T.int32(sp.qmax), 4)),
                                                  T.Broadcast(T.int32(sp.qmin), 4)))
    sh64 = T.Cast("int64x4", sh)
    one = T.Broadcast(T.int64(1), 4)
    v = (T.Cast("int64x4", s) * T.Cast("int64x4", mu) + ((one << sh64) >> one)) >> sh64
    return T.Cast(f"{sp.out_dtype}x4", T.max(T.min(v, T.Broadcast(T.int64(sp.qmax), 4)),
                                              T.Broadcast(T.int64(sp.qmin), 4)))


def sdot_module(sp) -> tvm.IRModule:
    """The IRModule of one ``sdot4x4`` kernel (``main``: the packed wrapper reads the DLTensors' data)."""
    m, k, kp, n, xd, od = sp.m, sp.k, sp.kp, sp.n, sp.x_dtype, sp.out_dtype
    rows, kb, kq, nchw, flip = _rows(m), k // 4, k // 16, sp.nchw, sp.flip
    ktail = kb - 4 * kq
    ntile, mtile = n // 4, (m + _rows(m) - 1) // _rows(m)

    def row(ib, r):   # rows past m repeat the last one
        return T.min(ib * rows + r, m - 1)

    def xwords(Xw, XTw, ib, r, i, lanes):
        """``lanes`` words (4 k each) of row r from word i, int8 after the uint8 flip."""
        if nchw:
            return XTw[T.Ramp(r * kb + i, 1, lanes)] if lanes > 1 else XTw[r * kb + i]
        v = Xw[T.Ramp(row(ib, r) * kb + i, 1, lanes)] if lanes > 1 else Xw[row(ib, r) * kb + i]
        if flip:
            return T.bitwise_xor(v, T.Broadcast(T.int32(FLIP32), lanes) if lanes > 1 else T.int32(FLIP32))
        return v

    def dot(acc, W, jb, g, r, xb):   # acc[r] += W's 4 channels x 4 k of group g . x bytes xb (broadcast)
        return T.call_llvm_pure_intrin("int32x4", SDOT, acc[T.Ramp(r * 4, 1, 4)],
                                       W[T.Ramp((jb * (kp // 4) + g) * 16, 1, 16)], T.reinterpret("int8x16", xb))

    def pack(X, ib, r, c):
        v = X[c * m + row(ib, r)]
        return T.Cast("int8", T.bitwise_xor(v, T.uint8(128))) if flip else T.Cast("int8", v)

    def yidx(ib, r, jb):
        return T.Ramp(jb * 4 * m + row(ib, r), m, 4) if nchw else T.Ramp(row(ib, r) * n + jb * 4, 1, 4)

    xt_len = rows * k if nchw else 4

    @T.prim_func
    def main(X: T.Buffer((m * k,), xd), W: T.Buffer((n * kp,), "int8"), B: T.Buffer((n,), "int32"),
             MU: T.Buffer((n,), "int32"), SH: T.Buffer((n,), "int8"), Y: T.Buffer((m * n,), od)):
        T.func_attr({"tirx.noalias": True})
        acc = T.alloc_buffer((rows * 4,), "int32", scope="local")
        XT = T.alloc_buffer((xt_len,), "int8", scope="local")
        Xw = T.decl_buffer((m * k // 4,), "int32", data=X.data)
        XTw = T.decl_buffer((xt_len // 4,), "int32", data=XT.data)
        for ib in T.serial(mtile):
            for r, c in T.grid(rows if nchw else 0, k):   # nchw: this tile's pixels, channels contiguous
                XT[r * k + c] = pack(X, ib, r, c)
            for jb in T.serial(ntile):
                for r in T.unroll(rows):
                    acc[T.Ramp(r * 4, 1, 4)] = T.Broadcast(T.int32(0), 4)
                for q in T.serial(kq):
                    for r in T.unroll(rows):
                        xv = xwords(Xw, XTw, ib, r, q * 4, 4)
                        for g in T.unroll(4):
                            acc[T.Ramp(r * 4, 1, 4)] = dot(acc, W, jb, q * 4 + g, r, T.Shuffle([xv], [g, g, g, g]))
                for t in T.serial(ktail):
                    for r in T.unroll(rows):
                        acc[T.Ramp(r * 4, 1, 4)] = dot(acc, W, jb, kq * 4 + t, r,
                                                       T.Broadcast(xwords(Xw, XTw, ib, r, kq * 4 + t, 1), 4))
                for r in T.unroll(rows):
                    Y[yidx(ib, r, jb)] = _requant4(sp, acc[T.Ramp(r * 4, 1, 4)], B[T.Ramp(jb * 4, 1, 4)],
                                                   MU[T.Ramp(jb * 4, 1, 4)], SH[T.Ramp(jb * 4, 1, 4)])

    return tvm.IRModule({"main": main})
