"""The ``sdot4x4`` TIR kernel: 4 output channels per ``sdot`` lane, weights prepacked, the
requantization on vectors of 4 outputs (issue 11; a candidate of :mod:`.kernel_choice` on boards
with the dot-product extension).

Why a kernel of its own: the scheduled kernels of :mod:`.tir_kernels` let LLVM vectorize each
output's dot product along k, so every output ends with a horizontal add and a scalar int64
requantization (~30 instructions per output; the 1x1 conv's K = 64 spends 2/3 of its time there).
Here each 32-bit lane of an accumulator is a different output channel:

1. Weights prepacked at package time as ``[n/4][kp/4][4 oc][4 k]`` (:func:`pack_weights_sdot`; a
   dense tile's groups of 4 channels interleaved per 4 k): one 16-byte load holds 4 channels x 4 k,
   exactly ``sdot``'s second operand.
2. x broadcast by lane (``sdot v.4s, w.16b, x.4b[l]``: LLVM folds the shuffle into the indexed
   form). Dense: 16 bytes of a row (4 groups of 4 k) per load, tiles of <= 4 rows x 8 (or 4)
   channels; rows past ``m`` recompute the last row (no branch). Pointwise conv (x, y channel-major):
   all of x packed once as ``[k/4][tiles of 4 pixels][4 pixels][4 k]``, then per 4 channels the
   weights stay in registers while the tiles of pixels pass.
3. The accumulators start at the bias (``sdot`` adds modulo 2^32; the package's accumulator bound
   check keeps the final sum inside int32). The requantization runs on 4 outputs at once:
   ``srshl(sqdmulh(acc, mu), 31 - shift)`` for shifts >= 32 and ``sqrdmulh(acc, mu)`` for shift 31
   (both exact: :func:`_requant4`), else quant/dyadic.py's int64 formula on int64x4 lanes. Full-range 8-bit outputs clamp in the
   saturating narrows (``sqxtun``/``uqxtn``, ``sqxtn``).

Note: ``sqrdmulh`` is exact only where the shift is 31; followed by a rounding shift it would round
twice (gemmlowp's scheme), so it is not used that way.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

SDOT = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sdot.v4i32.v16i8")
SQDMULH = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sqdmulh.v4i32")
SRSHL = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.srshl.v4i32")
SQRDMULH = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sqrdmulh.v4i32")
TBL4 = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.tbl4.v16i8")   # low byte of each int32 lane (clamped)
SQXTUN = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sqxtun.v4i16")
UQXTN = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.uqxtn.v8i8")
SQXTN16 = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sqxtn.v4i16")
SQXTN8 = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sqxtn.v8i8")
FLIP32 = -0x7F7F7F80   # 0x80808080 as int32: x ^ 0x80 on the 4 bytes of a word


def sdot_applies(sp) -> bool:
    """Shapes this kernel takes: whole groups of 4 channels and of 4 k (x is read 4 bytes at a time)."""
    return sp.n % 4 == 0 and sp.k % 4 == 0 and not sp.conv   # (a 3x3 conv: tir_kernels_sdot_conv.py)


def pack_weights_sdot(w: np.ndarray, sp) -> np.ndarray:
    """``w`` (n rows of kp int8, as the package stores them) -> ``[n/4/cols][kp/4][cols][4 oc][4 k]``
    int8, ``cols`` = :func:`weight_cols`: the groups of 4 channels of one dense tile interleaved per
    4 k, so that the tile's weights for 16 k are one contiguous run (paired loads)."""
    n, kp, cols = sp.n, sp.kp, weight_cols(sp)
    return np.ascontiguousarray(w[: n * kp].reshape(n // 4 // cols, cols, 4, kp // 4, 4)
                                .transpose(0, 3, 1, 2, 4)).reshape(-1)


def weight_cols(sp) -> int:
    """Groups of 4 channels interleaved in the packed weights: a dense tile's (:func:`_dense_cols`);
    1 for a pointwise conv (its tiles read each group of 4 channels on its own)."""
    from .tir_kernels_sdot_px import px_applies, px_tile

    if px_applies(sp) or sp.conv:   # the pixel-lane path's tile of channels (im2col-sdot's too)
        return px_tile(sp)[0]
    return 1 if sp.nchw else _dense_cols(sp)


def workspace_bytes(sp) -> int:
    """Workspace of one kernel (TVMBackendAllocWorkspace): a pointwise conv's packed x."""
    return (sp.m + 3) // 4 * 4 * sp.k if sp.nchw else 0


def _rows(m: int) -> int:
    """Rows per tile: the largest of 4, 3, 2 that divides m, else 4 (the last tile repeats a row)."""
    return next((r for r in (4, 3, 2) if m % r == 0), min(m, 4))


def _requant4(sp, s, mu, sh, clamp: bool = True):
    """The per-channel requantization of 4 outputs (``s``: int32x4 accumulators, bias included),
    quant/dyadic.py's formula, clamped to [qmin, qmax] unless ``clamp`` is off, still int32x4."""
    lo, hi = T.Broadcast(T.int32(sp.qmin), 4), T.Broadcast(T.int32(sp.qmax), 4)
    smin, smax = sp.shift_range
    if smin >= 31:
        # floor((s mu + 2^(c-1)) / 2^c), P = s mu, c = shift, in 32-bit lanes (mu in [2^30, 2^31): the
        # doubling multiplies saturate only for s = mu = -2^31, never):
        # c >= 32: srshl(sqdmulh(s, mu), 31 - c) -- sqdmulh is a = floor(P / 2^31), P = a 2^31 + f with
        #   0 <= f < 2^31, so (P + 2^(c-1)) / 2^c = (a + 2^(c-32) + f / 2^31) / 2^(c-31) floors as
        #   (a + 2^(c-32)) / 2^(c-31), srshl's exact rounding shift;
        # c = 31: sqrdmulh(s, mu) = (2P + 2^31) >> 32 = floor((P + 2^30) / 2^31) itself.
        # (Not sqrdmulh followed by a rounding shift: that rounds twice.)
        c = T.Cast("int32x4", sh)
        exact = T.call_llvm_pure_intrin("int32x4", SRSHL, T.call_llvm_pure_intrin("int32x4", SQDMULH, s, mu),
                                        T.Broadcast(T.int32(31), 4) - c)
        at31 = T.call_llvm_pure_intrin("int32x4", SQRDMULH, s, mu)
        v = at31 if smax == 31 else exact if smin >= 32 else T.Select(c == T.Broadcast(T.int32(31), 4), at31, exact)
        return T.max(T.min(v, hi), lo) if clamp else v
    sh64 = T.Cast("int64x4", sh)
    one = T.Broadcast(T.int64(1), 4)
    v = (T.Cast("int64x4", s) * T.Cast("int64x4", mu) + ((one << sh64) >> one)) >> sh64
    return T.Cast("int32x4", T.max(T.min(v, T.Cast("int64x4", hi)), T.Cast("int64x4", lo)))


def _saturating(sp) -> bool:
    """[qmin, qmax] is the whole 8/16-bit range: saturating narrows (sqxtun/uqxtn, sqxtn) clamp for free."""
    return (sp.out_dtype, sp.qmin, sp.qmax) in (("uint8", 0, 255), ("int8", -128, 127), ("int16", -32768, 32767))


def _halves16(sp, vs):
    """4 requantized, unclamped int32x4 vectors -> their 16 int16, in order: narrowed saturating
    (``sqxtn``), then clamped on 8 lanes per instruction where [qmin, qmax] is narrower than int16
    (clamp(saturate16(v)) == clamp(v) for any range inside int16)."""
    h = T.Shuffle([T.call_llvm_pure_intrin("int16x4", SQXTN16, v) for v in vs], list(range(16)))
    if _saturating(sp):
        return h
    return T.max(T.min(h, T.Broadcast(T.int16(sp.qmax), 16)), T.Broadcast(T.int16(sp.qmin), 16))


def _bytes16(sp, vs):
    """4 requantized int32x4 vectors (no clamp when :func:`_saturating`) -> their 16 bytes, in order."""
    if _saturating(sp):
        n1, n2, d1, d2 = ((SQXTUN, UQXTN, "int16x4", "uint8x8") if sp.out_dtype == "uint8"
                          else (SQXTN16, SQXTN8, "int16x4", "int8x8"))
        h = [T.Shuffle([T.call_llvm_pure_intrin(d1, n1, vs[i]), T.call_llvm_pure_intrin(d1, n1, vs[i + 1])],
                       list(range(8))) for i in (0, 2)]
        return T.reinterpret("int8x16", T.Shuffle([T.call_llvm_pure_intrin(d2, n2, x) for x in h], list(range(16))))
    return T.call_llvm_pure_intrin("int8x16", TBL4, *[T.reinterpret("int8x16", v) for v in vs],
                                   T.Shuffle([T.int8(4 * i) for i in range(16)], list(range(16))))


def sdot_module(sp) -> tvm.IRModule:
    """The IRModule of one ``sdot4x4`` kernel (``main``: the packed wrapper reads the DLTensors' data)."""
    from .tir_kernels_sdot_px import px_applies, px_module  # noqa: I001 - it imports this module's intrinsics

    if px_applies(sp):   # small k: pixels in the lanes, each channel's shift baked in
        return px_module(sp)
    return _pointwise_module(sp) if sp.nchw else _dense_module(sp)


def _dot(W, kp, jb, g, acc_r, xb):
    """acc_r (int32x4) + the 4 channels x 4 k of W's group g . the 4 bytes xb, broadcast (int32x4)."""
    return T.call_llvm_pure_intrin("int32x4", SDOT, acc_r, W[T.Ramp((jb * (kp // 4) + g) * 16, 1, 16)],
                                   T.reinterpret("int8x16", xb))


def _params4(MU, SH, jb):
    return MU[T.Ramp(jb * 4, 1, 4)], SH[T.Ramp(jb * 4, 1, 4)]


def _dense_cols(sp) -> int:
    """Groups of 4 channels per dense tile: each load of x feeds 4 ``sdot`` per group. A single row
    (the classifier's matrix-vector product) takes up to 5 groups -- 20 weight registers, the
    loads of x and the loop spread over 20 ``sdot`` -- more rows take 2 (8 channels)."""
    ntile = sp.n // 4
    return next((c for c in ((5, 4, 3, 2) if sp.m == 1 else (2,)) if ntile % c == 0), 1)


def _dense_module(sp) -> tvm.IRModule:
    """Dense: x rows contiguous; 16 bytes of a row (4 groups of 4 k) per load, each group by lane."""
    m, k, kp, n, xd, od = sp.m, sp.k, sp.kp, sp.n, sp.x_dtype, sp.out_dtype
    rows, kb, kq, flip = _rows(m), k // 4, k // 16, sp.flip
    ktail = kb - 4 * kq
    ntile, mtile = n // 4, (m + rows - 1) // rows
    cols = _dense_cols(sp)

    def row(ib, r):   # rows past m repeat the last one
        return T.min(ib * rows + r, m - 1)

    def xwords(Xw, ib, r, i, lanes):
        """``lanes`` words (4 k each) of row r from word i, int8 after the uint8 flip."""
        v = Xw[T.Ramp(row(ib, r) * kb + i, 1, lanes)] if lanes > 1 else Xw[row(ib, r) * kb + i]
        if flip:
            return T.bitwise_xor(v, T.Broadcast(T.int32(FLIP32), lanes) if lanes > 1 else T.int32(FLIP32))
        return v

    @T.macro(hygienic=False)
    def k16(jo, ib, q):
        """16 k of the tile: its w is 64 x cols contiguous bytes (paired loads, ldp), x one load per row."""
        wv = W[T.Ramp((jo * (kp // 4) + q * 4) * cols * 16, 1, 64 * cols)]
        for r in T.unroll(rows):
            xv = xwords(Xw, ib, r, q * 4, 4)
            for g in T.unroll(4):
                for c in T.unroll(cols):
                    acc[T.Ramp((r * cols + c) * 4, 1, 4)] = T.call_llvm_pure_intrin(
                        "int32x4", SDOT, acc[T.Ramp((r * cols + c) * 4, 1, 4)],
                        T.Shuffle([wv], [(g * cols + c) * 16 + i for i in range(16)]),
                        T.reinterpret("int8x16", T.Shuffle([xv], [g, g, g, g])))

    @T.prim_func
    def main(X: T.Buffer((m * k,), xd), W: T.Buffer((n * kp,), "int8"), B: T.Buffer((n,), "int32"),
             MU: T.Buffer((n,), "int32"), SH: T.Buffer((n,), "int8"), Y: T.Buffer((m * n,), od)):
        T.func_attr({"tirx.noalias": True})
        acc = T.alloc_buffer((rows * cols * 4,), "int32", scope="local")
        Xw = T.decl_buffer((m * k // 4,), "int32", data=X.data)
        for jo, ib in T.grid(ntile // cols, mtile):
            for r in T.unroll(rows):   # the accumulators start at the bias
                for c in T.unroll(cols):
                    acc[T.Ramp((r * cols + c) * 4, 1, 4)] = B[T.Ramp((jo * cols + c) * 4, 1, 4)]
            # two steps of 16 k per pass of the loop (its counter and branch spread over twice the sdot)
            for q2 in T.serial(kq // 2):
                for qq in T.unroll(2):
                    k16(jo, ib, q2 * 2 + qq)
            for q in T.serial(kq - kq % 2, kq):   # an odd last one
                k16(jo, ib, q)
            for t in T.serial(ktail):
                for r in T.unroll(rows):
                    for c in T.unroll(cols):
                        acc[T.Ramp((r * cols + c) * 4, 1, 4)] = T.call_llvm_pure_intrin(
                            "int32x4", SDOT, acc[T.Ramp((r * cols + c) * 4, 1, 4)],
                            W[T.Ramp(((jo * (kp // 4) + kq * 4 + t) * cols + c) * 16, 1, 16)],
                            T.reinterpret("int8x16", T.Broadcast(xwords(Xw, ib, r, kq * 4 + t, 1), 4)))
            for r in T.unroll(rows):
                for c in T.unroll(cols):
                        Y[T.Ramp(row(ib, r) * n + (jo * cols + c) * 4, 1, 4)] = T.Cast(f"{od}x4", _requant4(
                        sp, acc[T.Ramp((r * cols + c) * 4, 1, 4)], *_params4(MU, SH, jo * cols + c)))

    return tvm.IRModule({"main": main})


SMALL_K = 96   # pointwise layers with k <= this keep a tile's weights (k/4 vectors) in registers over the pixels


def _pointwise_tile(sp) -> tuple:
    """(groups of 4 channels, groups of 4 pixels) per register tile of the pointwise kernel.

    k <= SMALL_K: 4 x 4 (LLVM keeps the k/4 weight vectors of the 4 channels in registers while the
    pixels pass: one load of x per 4 ``sdot``). Otherwise 8 channels where 8 | n (each load of x
    feeds 8 ``sdot``) by 8 pixels (each load of w feeds 8), or by 12 where the groups of 4 pixels
    come in threes, not pairs (6x6 maps: 9 groups; 3x3 maps: one tile, 9 live lanes, no ``sdot``
    on the 3 past the map). Measured on MobileNetV2-96's layers (docs/mcu-export.md)."""
    mtile = (sp.m + 3) // 4
    if sp.k <= SMALL_K:
        return 1, 1
    pt4 = 3 if mtile % 3 == 0 and mtile % 2 else 2
    return (2 if sp.n % 8 == 0 else 1), min(pt4, mtile)


def pack_quad(X, i16, g, m: int, flip: bool):
    """Channels 4g..4g+3 x pixels 16 i16.. of channel-major x (4 loads) -> 64 bytes [pixel][channel]
    (one ``st4``), int8 (uint8 flipped)."""
    vs = [X[T.Ramp((4 * g + c) * m + 16 * i16, 1, 16)] for c in range(4)]
    vs = [T.reinterpret("int8x16", T.bitwise_xor(v, T.Broadcast(T.uint8(128), 16)) if flip else v) for v in vs]
    return T.Shuffle(vs, [c * 16 + p for p in range(16) for c in range(4)])


def pack_group(Xw, ib, g, m: int, flip: bool):
    """Channels 4g..4g+3 x pixels 4ib..4ib+3 (``Xw``: x as words of 4 pixels) -> 16 bytes [pixel][channel]."""
    v = T.reinterpret("int8x16", T.Shuffle([Xw[((4 * g + c) * m) // 4 + ib] for c in range(4)], [0, 1, 2, 3]))
    v = T.Shuffle([v], [c * 4 + r for r in range(4) for c in range(4)])
    return T.bitwise_xor(v, T.Broadcast(T.int8(-128), 16)) if flip else v


def _pointwise_module(sp) -> tvm.IRModule:
    """Pointwise conv, x (k, m) and y (n, m) channel-major. x is packed as ``[k/4][tiles][4 pixels]
    [4 k]`` int8 (one 16-byte load per group of 4 k: pixel r in lane r): 16 pixels per ``st4`` when
    16 | m, a 4 x 4 byte transpose per group when 4 | m, else bytewise with pixels past m repeating
    the last. 8-bit results of 4 pixels are transposed back (one ``tbl``) so each channel stores its
    4 pixels as one word; other outputs are stored with a stride."""
    m, k, kp, n, xd, od = sp.m, sp.k, sp.kp, sp.n, sp.x_dtype, sp.out_dtype
    kb, flip, whole = k // 4, sp.flip, m % 4 == 0
    tbl_out = whole and od in ("int8", "uint8")
    half_out = whole and od == "int16"
    ntile, mtile = n // 4, (m + 3) // 4
    cols, pt4 = _pointwise_tile(sp)
    ptiles = (mtile + pt4 - 1) // pt4

    def grp(it, q):   # the q-th group of 4 pixels of pixel tile it; a last tile past the map repeats its last group
        return T.min(it * pt4 + q, mtile - 1)

    def live(q, r):   # whether lane r of group q holds a pixel of the map: statically known for a single tile
        return (q * 4 + r) < m if ptiles == 1 else True

    def pix(ib, r):
        return T.min(ib * 4 + r, m - 1)

    def x8(v):
        return T.Cast("int8", T.bitwise_xor(v, T.uint8(128))) if flip else T.Cast("int8", v)

    def quad(X, i16, g):
        return pack_quad(X, i16, g, m, flip)

    def group(Xw, ib, g):
        return pack_group(Xw, ib, g, m, flip)

    @T.prim_func
    def main(X: T.Buffer((m * k,), xd), W: T.Buffer((n * kp,), "int8"), B: T.Buffer((n,), "int32"),
             MU: T.Buffer((n,), "int32"), SH: T.Buffer((n,), "int8"), Y: T.Buffer((m * n,), od)):
        T.func_attr({"tirx.noalias": True})
        acc = T.alloc_buffer((pt4 * cols * 16,), "int32", scope="local")
        XT = T.alloc_buffer((mtile * kb * 16,), "int8")
        Xw = T.decl_buffer((m * k // 4,), "int32", data=X.data)
        XTw = T.decl_buffer((mtile * kb * 4,), "int32", data=XT.data)
        Yw = T.decl_buffer((m * n // 4,), "int32", data=Y.data)   # 8-bit y, 4 | m: 4 pixels of a channel per word
        # all of x packed first, [k/4][tiles][4 pixels][4 k]: each tile's w then stays in registers over the pixels
        if m % 16 == 0:
            for g, i16 in T.grid(kb, m // 16):
                XT[T.Ramp((g * mtile + 4 * i16) * 16, 1, 64)] = quad(X, i16, g)
        elif whole:
            for g, ib in T.grid(kb, mtile):
                XT[T.Ramp((g * mtile + ib) * 16, 1, 16)] = group(Xw, ib, g)
        else:
            for g, ib, r, c in T.grid(kb, mtile, 4, 4):
                XT[(g * mtile + ib) * 16 + r * 4 + c] = x8(X[(4 * g + c) * m + pix(ib, r)])
        for jo, it in T.grid(ntile // cols, ptiles):
            for q in T.unroll(pt4):
                for r in T.unroll(4):
                    for c in T.unroll(cols):   # the accumulators start at the bias
                        acc[T.Ramp(((q * 4 + r) * cols + c) * 4, 1, 4)] = B[T.Ramp((jo * cols + c) * 4, 1, 4)]
            for g in T.serial(kb):
                for q in T.unroll(pt4):
                    xv = XTw[T.Ramp((g * mtile + grp(it, q)) * 4, 1, 4)]
                    for r in T.unroll(4):
                        for c in T.unroll(cols):
                            if live(q, r):
                                acc[T.Ramp(((q * 4 + r) * cols + c) * 4, 1, 4)] = _dot(
                                    W, kp, jo * cols + c, g, acc[T.Ramp(((q * 4 + r) * cols + c) * 4, 1, 4)],
                                    T.Shuffle([xv], [r, r, r, r]))
            for q in T.unroll(pt4):
                for c in T.unroll(cols):
                    if tbl_out:
                        # 8-bit outputs: 16 bytes [pixel][channel], transposed to [channel][pixel]: a word per channel
                        yt = T.reinterpret("int32x4", T.Shuffle([_bytes16(sp, [_requant4(
                            sp, acc[T.Ramp(((q * 4 + r) * cols + c) * 4, 1, 4)], *_params4(MU, SH, jo * cols + c),
                            clamp=not _saturating(sp)) for r in range(4)])], [r * 4 + cc for cc in range(4) for r in range(4)]))
                        for cc in T.unroll(4):
                            Yw[(((jo * cols + c) * 4 + cc) * m + grp(it, q) * 4) // 4] = T.Shuffle([yt], [cc])
                    elif half_out:   # int16 outputs: [pixel][channel] transposed, 4 pixels (8 bytes) per channel
                        yh = T.Shuffle([_halves16(sp, [_requant4(sp, acc[T.Ramp(((q * 4 + r) * cols + c) * 4, 1, 4)],
                                                                 *_params4(MU, SH, jo * cols + c), clamp=False)
                                                       for r in range(4)])],
                                       [r * 4 + cc for cc in range(4) for r in range(4)])
                        for cc in T.unroll(4):
                            Y[T.Ramp(((jo * cols + c) * 4 + cc) * m + grp(it, q) * 4, 1, 4)] = T.Shuffle(
                                [yh], [cc * 4, cc * 4 + 1, cc * 4 + 2, cc * 4 + 3])
                    else:
                        for r in T.unroll(4):
                            if live(q, r):
                                Y[T.Ramp((jo * cols + c) * 4 * m + pix(grp(it, q), r), m, 4)] = T.Cast(f"{od}x4", _requant4(
                                    sp, acc[T.Ramp(((q * 4 + r) * cols + c) * 4, 1, 4)], *_params4(MU, SH, jo * cols + c)))
    return tvm.IRModule({"main": main})
