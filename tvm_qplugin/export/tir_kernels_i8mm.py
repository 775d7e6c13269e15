"""The ``smmla`` TIR kernel (Armv8.6 int8 matrix multiply, FEAT_I8MM): 2 pixels x 2 output channels
per instruction, weights prepacked (issue 11; a candidate of :mod:`.kernel_choice` on boards with
``i8mm``, beside ``sdot4x4``).

``smmla vd.4s, vn.16b, vm.16b`` multiplies a 2x8 int8 block (vn: two rows of 8 k) by the transpose
of another (vm: two rows of 8 k) into a 2x2 int32 tile: 32 MACs per instruction, twice ``sdot``'s
16. Here vn holds two pixels (rows of x) and vm two output channels, so an accumulator's lanes are
``[p0 c0, p0 c1, p1 c0, p1 c1]``:

1. Weights prepacked at package time as ``[n/2/cols][k8/8][cols][2 oc][8 k]`` (:func:`pack_weights_i8mm`,
   ``k8`` = k rounded up to 8, zero past k): a register tile's weights for 8 k are one contiguous
   run of ``16 cols`` bytes (paired loads), each 16 bytes exactly ``smmla``'s second operand.
2. All of x packed once per call as ``[k8/8][pixel pairs][2 pixels][8 k]`` int8 (uint8 flipped to
   int8, zero past k, an odd last pixel repeated): dense rows with two 8-byte loads per block;
   channel-major (pointwise conv) x 16 pixels x 8 channels at a time by three rounds of ``zip1`` /
   ``zip2`` (bytes, halfwords, words: 24 instructions per 128 bytes), then 4 pixels at a time (a
   word per channel, one shuffle) where 4 | m; the pixels left and a last partial group of 8 k
   bytewise.
3. Register tile: up to 4 pixel pairs x 4 channel pairs (16 accumulators, 4 loads of x and 4 of w
   per 8 k feed 16 ``smmla`` = 512 MACs), 5 pairs where that is all of them (:func:`_tile`); a last
   tile past the pixels repeats its last pair.
4. The accumulators start at the bias; the requantization of each 2x2 tile is ``sdot4x4``'s
   vector one (:func:`.tir_kernels_sdot._requant4`, one home) with the two channels' multipliers
   and shifts duplicated across the lanes; outputs past the map (an odd pixel count) store the last
   pixel's value twice, to the same place.

Note: ``smmla`` adds modulo 2^32 like ``sdot``: the package's accumulator bound check keeps the
final sum inside int32, so starting at the bias is exact.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from .tir_kernels_sdot import _bytes16, _halves16, _requant4, _saturating

I8MM_SCHEDULES = ("smmla",)   # need the board's int8 matrix multiply (i8mm): no candidate elsewhere
SMMLA = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smmla.v4i32.v16i8")
K_BLOCK = 8   # k per smmla row


def i8mm_applies(sp) -> bool:
    """Shapes this kernel takes: whole pairs of output channels (any k: padded to 8, any m)."""
    return sp.n % 2 == 0


def _k8(sp) -> int:
    return (sp.k + K_BLOCK - 1) // K_BLOCK * K_BLOCK


def _pairs(sp) -> int:
    return (sp.m + 1) // 2


def _tile(sp) -> tuple[int, int]:
    """(pixel pairs, channel pairs) per register tile: all the pairs where there are <= 5 (MobileNetV2's
    3x3 maps: one tile of 5 pairs, 20 accumulators, was 2 tiles of 4 with 3 pairs recomputed: 0.124 ->
    0.070 instructions/MAC on 960 -> 320), else the largest of 4, 3, 2 that divides them (else 4, the last
    tile repeating a pair); by the largest of 4, 2, 1 channel pairs that divides n / 2."""
    mp = _pairs(sp)
    pairs = mp if mp <= 5 else next((p for p in (4, 3, 2) if mp % p == 0), 4)
    return pairs, next(c for c in (4, 2, 1) if (sp.n // 2) % c == 0)


def pack_weights_i8mm(w: np.ndarray, sp) -> np.ndarray:
    """``w`` (n x k int8, any trailing layout of n rows) -> ``[n/2/cols][k8/8][cols][2 oc][8 k]``
    int8, zero past k: the weights of one register tile for 8 k contiguous."""
    n, k, k8, cols = sp.n, sp.k, _k8(sp), _tile(sp)[1]
    rows = np.zeros((n, k8), np.int8)
    rows[:, :k] = np.asarray(w, np.int8).reshape(n, -1)[:, :k]
    return np.ascontiguousarray(rows.reshape(n // 2 // cols, cols, 2, k8 // K_BLOCK, K_BLOCK)
                                .transpose(0, 3, 1, 2, 4)).reshape(-1)


def workspace_bytes(sp) -> int:
    """Workspace of one kernel (TVMBackendAllocWorkspace): the packed x."""
    return _k8(sp) * _pairs(sp) * 2


def _zip(a, b, lanes: int, hi: bool):
    """``zip1`` (``hi`` False) / ``zip2`` of two vectors of ``lanes`` elements."""
    base = lanes // 2 if hi else 0
    return T.Shuffle([a, b], [base + i // 2 + (i % 2) * lanes for i in range(lanes)])


def _transpose_16x8(vs):
    """8 int8x16 vectors (channel c: 16 pixels) -> 8 int8x16 vectors, vector j holding pixels 2j and
    2j + 1 with their 8 channels each (``[2 pixels][8 k]``): three rounds of zips."""
    z1 = [_zip(vs[2 * i], vs[2 * i + 1], 16, hi) for hi in (False, True) for i in range(4)]   # [lo01 lo23 lo45 lo67 hi..]
    z1 = [T.reinterpret("int16x8", v) for v in z1]
    z2 = []   # per quarter of the pixels (4 each): channels 0-3, channels 4-7 as words
    for half in (0, 4):
        for hi in (False, True):
            z2.append([_zip(z1[half + 2 * i], z1[half + 2 * i + 1], 8, hi) for i in range(2)])
    out = []
    for lo03, lo47 in z2:
        a, b = T.reinterpret("int32x4", lo03), T.reinterpret("int32x4", lo47)
        out += [T.reinterpret("int8x16", _zip(a, b, 4, hi)) for hi in (False, True)]
    return out


def i8mm_module(sp) -> tvm.IRModule:
    """The IRModule of one ``smmla`` kernel (``main``: the packed wrapper reads the DLTensors' data)."""
    m, k, n, xd, od = sp.m, sp.k, sp.n, sp.x_dtype, sp.out_dtype
    k8, mp, flip = _k8(sp), _pairs(sp), sp.flip
    kb, kfull = k8 // K_BLOCK, k // K_BLOCK   # groups of 8 k; the whole ones
    pt, cols = _tile(sp)
    ptiles, ntiles = (mp + pt - 1) // pt, n // 2 // cols
    m16 = m // 16 if sp.nchw else 0   # pointwise: chunks of 16 pixels transposed by zips,
    m4 = (m - 16 * m16) // 4 if sp.nchw and m % 4 == 0 else 0   # then groups of 4 (one word per channel)
    vec_pairs = m16 * 8 + m4 * 2   # pairs packed by vectors; the rest bytewise

    def group4(Xw, g, ib):   # channels 8g..8g+7 x pixels 16 m16 + 4 ib.. (a word each) -> [pixel][channel]
        v = T.reinterpret("int8x32", T.Shuffle([Xw[((g * 8 + c) * m) // 4 + m16 * 4 + ib] for c in range(8)],
                                               list(range(8))))
        v = T.Shuffle([v], [c * 4 + p for p in range(4) for c in range(8)])
        return T.bitwise_xor(v, T.Broadcast(T.int8(-128), 32)) if flip else v

    def pix(pp, r):   # pixel r of pair pp; an odd last pixel repeats
        return T.min(pp * 2 + r, m - 1)

    def pair(it, q):   # the q-th pair of pixel tile it; a last tile past the pixels repeats its last pair
        return T.min(it * pt + q, mp - 1)

    def x8(v, lanes=1):
        if flip:
            v = T.bitwise_xor(v, T.Broadcast(T.uint8(128), lanes) if lanes > 1 else T.uint8(128))
        return T.reinterpret(f"int8x{lanes}", v) if lanes > 1 else T.Cast("int8", v)

    def xval(X, c, p):   # x[channel c, pixel p] as int8, 0 past k (the read clamped inside x)
        cc = T.min(c, k - 1)
        src = X[cc * m + p] if sp.nchw else X[p * k + cc]
        return T.if_then_else(c < k, x8(src), T.int8(0))

    def dup2(buf, ch):   # the two channels' values, per lane of a 2x2 tile: [c0, c1, c0, c1]
        return T.Shuffle([buf[T.Ramp(ch, 1, 2)], buf[T.Ramp(ch, 1, 2)]], [0, 1, 2, 3])

    def lanes2(v, i, j):
        return T.Cast(f"{od}x2", T.Shuffle([v], [i, j]))

    # 8/16-bit outputs of whole tiles (m even, pt | pairs): the pt 2x2 tiles of a channel pair narrowed as one
    # vector of 16 lanes ordered [pair][pixel][channel] (the saturating narrows of sdot4x4: one home)
    wide = od == "int16"
    packed_out = od in ("int8", "uint8", "int16") and m % 2 == 0 and mp % pt == 0

    def narrowed(acc, MU, SH, ch, c):
        vs = [_requant4(sp, acc[T.Ramp((q * cols + c) * 4, 1, 4)], dup2(MU, ch), dup2(SH, ch),
                        clamp=not wide and not _saturating(sp)) for q in range(pt)]
        vs += [vs[-1]] * (4 - pt)
        return _halves16(sp, vs) if wide else T.reinterpret(f"{od}x16", _bytes16(sp, vs))

    def column(acc, MU, SH, ch, c, cc):   # pointwise: channel ch + cc's 2 pt pixels, contiguous in y (n, m)
        return T.Shuffle([narrowed(acc, MU, SH, ch, c)], [q * 4 + r * 2 + cc for q in range(pt) for r in range(2)])

    def rows(acc, MU, SH, ch, c):   # dense: each pixel's two channels as one 16-bit (32-bit) word, rows n apart
        v = T.reinterpret("int32x8" if wide else "int16x8", narrowed(acc, MU, SH, ch, c))
        return T.Shuffle([v], list(range(2 * pt)))

    @T.macro
    def store(Y, MU, SH, a, ch, pp):
        """One 2x2 tile requantized (channels ch, ch + 1; lanes duplicated per pixel) and stored."""
        v = _requant4(sp, a, dup2(MU, ch), dup2(SH, ch))
        if not sp.nchw:   # y (m, n): each pixel's two channels are adjacent
            Y[T.Ramp(pix(pp, 0) * n + ch, 1, 2)] = lanes2(v, 0, 1)
            Y[T.Ramp(pix(pp, 1) * n + ch, 1, 2)] = lanes2(v, 2, 3)
        elif m % 2 == 0:   # y (n, m): each channel's two pixels are adjacent
            Y[T.Ramp(ch * m + pp * 2, 1, 2)] = lanes2(v, 0, 2)
            Y[T.Ramp((ch + 1) * m + pp * 2, 1, 2)] = lanes2(v, 1, 3)
        else:
            Y[ch * m + pix(pp, 0)] = T.Cast(od, T.Shuffle([v], [0]))
            Y[(ch + 1) * m + pix(pp, 0)] = T.Cast(od, T.Shuffle([v], [1]))
            Y[ch * m + pix(pp, 1)] = T.Cast(od, T.Shuffle([v], [2]))
            Y[(ch + 1) * m + pix(pp, 1)] = T.Cast(od, T.Shuffle([v], [3]))

    @T.prim_func
    def main(X: T.Buffer((m * k,), xd), W: T.Buffer((n * k8,), "int8"), B: T.Buffer((n,), "int32"),
             MU: T.Buffer((n,), "int32"), SH: T.Buffer((n,), "int8"), Y: T.Buffer((m * n,), od)):
        T.func_attr({"tirx.noalias": True})
        acc = T.alloc_buffer((pt * cols * 4,), "int32", scope="local")
        Xw = T.decl_buffer((m * k // 4,), "int32", data=X.data)   # pointwise x, 4 | m: 4 pixels of a channel per word
        Yh = T.decl_buffer((m * n // 2,), "int16", data=Y.data)   # dense 8-bit y: a pixel's channel pair per halfword
        Yw = T.decl_buffer((m * n // 2,), "int32", data=Y.data)   # dense int16 y: ... per word
        XT = T.alloc_buffer((kb * mp * 16,), "int8")
        # x packed: [k8/8][pairs][2 pixels][8 k]
        if sp.nchw:
            for g, i16 in T.grid(kfull, m16):   # 8 pairs: 128 contiguous bytes
                XT[T.Ramp((g * mp + i16 * 8) * 16, 1, 128)] = T.Shuffle(_transpose_16x8(
                    [x8(X[T.Ramp((g * 8 + c) * m + i16 * 16, 1, 16)], 16) for c in range(8)]), list(range(128)))
            for g, ib in T.grid(kfull, m4):   # 2 pairs: 32 contiguous bytes
                XT[T.Ramp((g * mp + m16 * 8 + ib * 2) * 16, 1, 32)] = group4(Xw, g, ib)
            for g, pp, r, c in T.grid(kb, mp, 2, 8):   # the rest bytewise: pixels past the chunks, k past the groups
                if T.Or(g >= kfull, pp >= vec_pairs):
                    XT[(g * mp + pp) * 16 + r * 8 + c] = xval(X, g * 8 + c, pix(pp, r))
        else:
            for g, pp, r in T.grid(kfull, mp, 2):
                XT[T.Ramp((g * mp + pp) * 16 + r * 8, 1, 8)] = x8(X[T.Ramp(pix(pp, r) * k + g * 8, 1, 8)], 8)
            for pp, r, c in T.grid(mp, 2, (kb - kfull) * 8):
                XT[(kfull * mp + pp) * 16 + r * 8 + c] = xval(X, kfull * 8 + c, pix(pp, r))
        for jo, it in T.grid(ntiles, ptiles):
            for q in T.unroll(pt):
                for c in T.unroll(cols):   # the accumulators start at the bias
                    acc[T.Ramp((q * cols + c) * 4, 1, 4)] = dup2(B, (jo * cols + c) * 2)
            for g in T.serial(kb):
                wv = W[T.Ramp((jo * kb + g) * cols * 16, 1, 16 * cols)]
                for q in T.unroll(pt):
                    xv = XT[T.Ramp((g * mp + pair(it, q)) * 16, 1, 16)]
                    for c in T.unroll(cols):
                        acc[T.Ramp((q * cols + c) * 4, 1, 4)] = T.call_llvm_pure_intrin(
                            "int32x4", SMMLA, acc[T.Ramp((q * cols + c) * 4, 1, 4)], xv,
                            T.Shuffle([wv], [c * 16 + i for i in range(16)]))
            if packed_out:   # a channel pair's 2 pt outputs narrowed together, then one store per channel / per pixel
                for c in T.unroll(cols):
                    if sp.nchw:
                        Y[T.Ramp((jo * cols + c) * 2 * m + it * pt * 2, 1, 2 * pt)] = column(
                            acc, MU, SH, (jo * cols + c) * 2, c, 0)
                        Y[T.Ramp(((jo * cols + c) * 2 + 1) * m + it * pt * 2, 1, 2 * pt)] = column(
                            acc, MU, SH, (jo * cols + c) * 2, c, 1)
                    elif wide:
                        Yw[T.Ramp((it * pt * 2 * n + (jo * cols + c) * 2) // 2, n // 2, 2 * pt)] = rows(
                            acc, MU, SH, (jo * cols + c) * 2, c)
                    else:
                        Yh[T.Ramp((it * pt * 2 * n + (jo * cols + c) * 2) // 2, n // 2, 2 * pt)] = rows(
                            acc, MU, SH, (jo * cols + c) * 2, c)
            else:
                for q in T.unroll(pt):
                    for c in T.unroll(cols):
                        store(Y, MU, SH, acc[T.Ramp((q * cols + c) * 4, 1, 4)], (jo * cols + c) * 2, pair(it, q))

    return tvm.IRModule({"main": main})
