"""The small-K pointwise path of the ``sdot4x4`` kernel: pixels in the ``sdot`` lanes, each channel's
requantization specialised to its own shift (issue 11: lv2 of MobileNetV2-96, K = 32, was bound by
its epilogue at 0.167 instructions/MAC).

Why another orientation: with K = 32 every output gets only K/16 = 2 ``sdot``, so the per-output
epilogue of :mod:`.tir_kernels_sdot` (channels in the lanes: ``sqdmulh``, ``sqrdmulh``, ``srshl`` and a
lane select where shifts 31 and 32 mix, a ``tbl`` transpose back to channel-major) costs as much as
the dot products. Here an accumulator holds 4 pixels of one channel:

1. ``sdot acc.4s, x.16b, w.4b[c]``: x packed once per call (:func:`px_module`: 4 pixels x 4 k per
   16 bytes, lane = pixel), the weights :mod:`.tir_kernels_sdot`'s prepacked ``[k/4][4 oc][4 k]``
   read by element (lane c = channel c's 4 k), two groups of 4 channels interleaved per 4 k
   (:func:`px_tile`). A register tile is 8 channels x 8 pixels (16 accumulators).
2. An accumulator is one channel, so its shift is one number, known when the package is written
   (the layer's constants): the channel loop and k are unrolled in Python (IRBuilder, not
   TVMScript: a script loop cannot index a Python tuple) and each channel gets the fewest
   instructions its shift allows, 2 per 4 outputs with the narrowing (:func:`narrow16`).
3. A channel's 8 pixels are contiguous in y (channel-major): narrowed, clamped on 8 or 16 lanes at
   once, stored as one run -- no transpose back.

Offered where 16 | m, n k <= :data:`PX_MAX_NK`, every shift >= 31 and 8/16-bit outputs
(:func:`px_applies`); :func:`.tir_kernels_sdot.sdot_module` dispatches here, the package and the
kernel choice still call it ``sdot4x4``. Measured on MobileNetV2-96 (docs/mcu-export.md): lv2
0.167 -> 0.114 instructions/MAC, the 24x24 and 12x12 projections 0.104-0.117 -> 0.090-0.097.
"""
from __future__ import annotations

import tvm
from tvm.script import tirx as T
from tvm.script.ir_builder import IRBuilder
from tvm.script.ir_builder.tirx import prim_func as build_prim_func

from .tir_kernels_sdot import (
    SDOT,
    SQDMULH,
    SQRDMULH,
    SQXTN8,
    SQXTN16,
    SQXTUN,
    SRSHL,
    UQXTN,
    pack_quad,
)

SQRSHRN = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sqrshrn.v4i16")     # rounding shift right, narrow, saturate
SQRSHRUN = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.sqrshrun.v4i16")   # the same to unsigned
PX_MAX_NK = 8192       # n k: the unrolled code's sdot count (the channel loop and k are unrolled; 4 bytes each)
PX_GROUPS = 4          # groups of 4 pixels per register tile
_RANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}


def px_applies(sp) -> bool:
    """A pointwise conv this path takes: whole blocks of 16 pixels (smaller maps measured slower here:
    6x6 0.141 against 0.114 instructions/MAC), whole groups of 4 channels and k, at most
    :data:`PX_MAX_NK` unrolled ``sdot``; per-channel shifts known and >= 31; 8/16-bit outputs."""
    return (sp.nchw and not sp.conv and sp.m % 16 == 0 and sp.n % 4 == 0 and sp.k % 4 == 0 and sp.n * sp.k <= PX_MAX_NK
            and sp.out_dtype in _RANGE and len(sp.shifts) == sp.n and min(sp.shifts) >= 31)


def px_tile(sp) -> tuple:
    """(groups of 4 channels, groups of 4 pixels) per register tile: 8 channels x 8 pixels where 8 | n
    (16 accumulators; per 4 k, 2 weight and 2 pixel vectors -- paired loads -- feed 16 ``sdot``),
    else 4 x 16."""
    cols = 2 if sp.n % 8 == 0 else 1
    return cols, PX_GROUPS // cols


def _split(v, parts: int):
    """A vector loaded as one run -> its ``parts`` 16-byte vectors."""
    return [v] if parts == 1 else [T.Shuffle([v], list(range(16 * i, 16 * i + 16))) for i in range(parts)]


def narrow16(acc, mu, shift: int, unsigned: bool):
    """quant/dyadic.py's ``floor((acc mu + 2^(shift-1)) / 2^shift)`` of 4 outputs of one channel,
    saturated to int16 (``unsigned``: to uint16, for uint8 outputs), by the shift's own instructions
    (``mu``: the channel's multiplier on every lane, in [2^30, 2^31); P = acc mu):

    * shift 31: ``sqrdmulh`` is (2P + 2^31) >> 32 = floor((P + 2^30) / 2^31) itself, then ``sqxtn``;
    * 32..47: ``sqdmulh`` is a = floor(P / 2^31) (it saturates only for acc = mu = -2^31, never),
      and ``sqrshrn #d``, d = shift - 31, is the saturated floor((a + 2^(d-1)) / 2^d) =
      floor((P + 2^(shift-1)) / 2^shift): dividing the floor again floors the whole, since
      2^(d-1) is an integer (:mod:`.tir_kernels_sdot`'s ``srshl`` argument, narrowing in the same
      instruction);
    * 48 and more (past ``sqrshrn``'s 16): ``srshl`` by -d, then ``sqxtn``.

    Saturating to 16 bits first never changes a later clamp to a range inside them."""
    if shift == 31:
        v, d = T.call_llvm_pure_intrin("int32x4", SQRDMULH, acc, mu), 0
    else:
        v, d = T.call_llvm_pure_intrin("int32x4", SQDMULH, acc, mu), shift - 31
    if 0 < d <= 16:
        return T.call_llvm_pure_intrin("int16x4", SQRSHRUN if unsigned else SQRSHRN, v, T.int32(d))
    if d > 16:
        v = T.call_llvm_pure_intrin("int32x4", SRSHL, v, T.Broadcast(T.int32(-d), 4))
    return T.call_llvm_pure_intrin("int16x4", SQXTUN if unsigned else SQXTN16, v)


def _typed_run(sp, h, lanes: int):
    """``h``: ``lanes`` int16 (uint16 bit patterns for uint8 outputs), saturated -> the output run,
    clamped to [qmin, qmax] where that is narrower than the dtype."""
    od = sp.out_dtype
    if od == "int16":
        v = h
    else:   # 8 lanes per narrowing instruction; a run of 4 narrows 8 lanes and keeps 4
        op, dt = (UQXTN, "uint8x8") if od == "uint8" else (SQXTN8, "int8x8")
        parts = []
        for i in range(0, lanes, 8):
            chunk = T.Shuffle([h], [i + j if i + j < lanes else i for j in range(8)])
            parts.append(T.call_llvm_pure_intrin(dt, op, chunk))
        v = T.Shuffle(parts, list(range(lanes)))
        if od == "uint8":
            v = T.reinterpret(f"uint8x{lanes}", v)
    lo, hi = _RANGE[od]
    if sp.qmax < hi:
        v = T.min(v, T.Broadcast(T.Cast(od, sp.qmax), lanes))
    if sp.qmin > lo:
        v = T.max(v, T.Broadcast(T.Cast(od, sp.qmin), lanes))
    return v


def px_module(sp, pack=None, x_size: int | None = None) -> tvm.IRModule:
    """The IRModule of the pixel-lane pointwise kernel (``main``), x (k, m) / y (n, m) channel-major.

    x is packed once as blocks of 16 pixels, each ``[k/4][4 groups][4 pixels][4 k]`` -- one ``st4``
    per 4 k of a block -- so that a tile's x for all k lies within a few hundred bytes of one pointer
    (``ldp`` reaches +-1008 bytes; :mod:`.tir_kernels_sdot`'s ``[k/4][pixels]`` layout put 4 k apart
    by the whole map: 0.120 -> 0.117 on lv2). ``pack(X, XT, xt_at, kb)``, where given, writes that
    layout instead (:mod:`.tir_kernels_sdot_conv`: the im2col of a 3x3 conv, x of ``x_size`` elements)."""
    m, k, kp, n, xd, od = sp.m, sp.k, sp.kp, sp.n, sp.x_dtype, sp.out_dtype
    kb, flip, unsigned = kp // 4, sp.flip, sp.out_dtype == "uint8"
    cols, groups = px_tile(sp)
    lanes = 4 * groups

    def xt_at(block, g):   # byte offset of the 16 pixels of a block for 4 k g, in the packed x
        return (block * kb + g) * 64

    with IRBuilder() as ib, build_prim_func():
        T.func_name("main")
        # no "tirx.noalias": the stores to y then keep the weight loads, and their lane splats, inside the
        # pixel loop, where they fold into the indexed sdot (hoisted, 32 splats took 32 registers and spilled)
        X = T.arg("X", T.Buffer((x_size or m * k,), xd))
        W = T.arg("W", T.Buffer((n * kp,), "int8"))
        B = T.arg("B", T.Buffer((n,), "int32"))
        MU = T.arg("MU", T.Buffer((n,), "int32"))
        T.arg("SH", T.Buffer((n,), "int8"))   # the shifts are baked in (sp.shifts)
        Y = T.arg("Y", T.Buffer((m * n,), od))
        XT = T.alloc_buffer((m * kp,), "int8")
        if pack is not None:
            pack(X, XT, xt_at, kb)
        elif m % 32 == 0:   # 32 pixels of 4 channels per pass (two blocks): paired loads, two st4
            with T.grid(m // 32, kb) as (i32, g):
                rows = [X[T.Ramp((4 * g + c) * m + 32 * i32, 1, 32)] for c in range(4)]
                rows = [T.bind(T.reinterpret("int8x32", T.bitwise_xor(v, T.Broadcast(T.uint8(128), 32))
                                             if flip else v)) for v in rows]
                for h in range(2):
                    T.buffer_store(XT, T.Shuffle(rows, [c * 32 + 16 * h + p for p in range(16) for c in range(4)]),
                                   [T.Ramp(xt_at(2 * i32 + h, g), 1, 64)])
        else:
            with T.grid(m // 16, kb) as (i16, g):
                T.buffer_store(XT, pack_quad(X, i16, g, m, flip), [T.Ramp(xt_at(i16, g), 1, 64)])

        def tile(jo, block, sub):
            """Channels 4 cols jo.. x the groups of pixels ``sub`` groups.. of ``block``: dot products,
            requantization, stores."""
            # per 4 k the tile's weights (cols groups of 4 channels, interleaved at packing) are one run, its
            # pixels another
            bv = T.bind(B[T.Ramp(jo * cols * 4, 1, 4 * cols)])
            muv = T.bind(MU[T.Ramp(jo * cols * 4, 1, 4 * cols)])
            acc = [[T.Shuffle([bv], [c] * 4) for _ in range(groups)] for c in range(4 * cols)]   # start at the bias
            for g in range(kb):   # 4 k at a time over all 16 accumulators: only this step's w and x are live
                # the tile's weights for 4 k (cols groups of 4 channels, interleaved at packing) are one run, its
                # pixels another
                wv = [T.reinterpret("int32x4", v) for v in _split(T.bind(
                    W[T.Ramp((jo * (kp // 4) + g) * cols * 16, 1, 16 * cols)]), cols)]
                xv = _split(T.bind(XT[T.Ramp(xt_at(block, g) + sub * 16, 1, 16 * groups)]), groups)
                acc = [[T.bind(T.call_llvm_pure_intrin("int32x4", SDOT, acc[c][q], xv[q], T.reinterpret(
                    "int8x16", T.Shuffle([wv[c // 4]], [c % 4] * 4)))) for q in range(groups)] for c in range(4 * cols)]
            runs = []
            for c in range(4 * cols):   # channel 4 cols jo + c: group c // 4, lane c % 4 of its vectors
                outs = [narrow16(acc[c][q], T.Shuffle([muv], [c] * 4), sp.shifts[jo * 4 * cols + c], unsigned)
                        for q in range(groups)]
                runs.append(T.bind(_typed_run(sp, T.Shuffle(outs, list(range(lanes))), lanes)))
            for c in range(4 * cols):   # stores after every channel's dot products: no load waits on them
                T.buffer_store(Y, runs[c], [T.Ramp((jo * 4 * cols + c) * m + block * 16 + sub * 4, 1, lanes)])

        for jo in range(n // 4 // cols):   # unrolled here: each channel's requantization is its own code
            with T.serial(0, m // 16) as block:   # a block's tiles unrolled: offsets fixed from its pointer
                for sub in range(0, 4, groups):
                    tile(jo, block, sub)
    return tvm.IRModule({"main": ib.get()})
