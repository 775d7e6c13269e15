"""Depthwise 3x3 TensorIR kernels for Cortex-M boards: ``smlad`` (DSP: M4/M7/M33/M55) and ``mve``
(Helium: M55), candidates of :mod:`.tir_kernels_cortexm_choice` beside the hand-written
``qk_dw3x3`` (issue 11, deliverable 1).

The layer is :mod:`.tir_kernels_dw`'s (one image, NCHW, groups == channels, 3x3, stride 1 or 2,
zero padding, 8-bit input; its :class:`~.tir_kernels_dw.DwSpec` with ``schedule`` "smlad" / "mve").
Both kernels work one channel plane at a time on a zero-padded copy of it in the workspace: the
block is zeroed once per call and only the plane's interior is copied per channel (the frame stays
zero), so every tap of every output reads inside it without a bounds check.

1. ``smlad``: the block holds int16 (uint8 / int8 widened exactly), its rows an even number of
   halfwords, so each aligned word is a column pair (x[2q], x[2q+1]) -- the operand ``SMLAD``
   multiplies by a weight pair. Two outputs per pass, two or three word loads per kernel row:
   stride 1, outputs 2p and 2p+1 from words A = (x0, x1), B = (x2, x3):
   ``acc0 = SMLAD(A, (w0, w1)) + SMLABB(B, w2)``, ``acc1 = SMLATB(A, w0) + SMLAD(B, (w1, w2))``;
   stride 2, output j from words 2j and 2j+1 (``SMLAD`` + ``SMLABB``): 6 MAC instructions per
   output (9 taps) either way; the weight pairs are built once per channel.
2. ``mve``: the block holds the input's own bytes (copied 16 and 8 at a time); 4 outputs per pass
   in int32 lanes: 9 widening loads (``VLDRB.S32`` / ``.U32``; stride 2: gathers with offsets
   0, 2, 4, 6, ``llvm.arm.mve.vldr.gather.offset``) and ``VMLA`` by the tap's scalar weight (an
   int32 held per channel: a splat of the int8 weight made LLVM widen it as a vector and spill),
   then the 4 outputs requantized at once (:func:`.tir_kernels_cortexm._requant4_mve`; shifts
   below 31: the scalar formula per lane). A last group past the row recomputes the row's last 4.

The requantization is :func:`.tir_kernels.requant`'s (one home). The kernels read the package's own
arrays (weight rows of ``kp`` bytes, bias, multipliers, shifts) through the same shim and ABI as
the GEMM kernels (:func:`.tir_shim.shim_sources`).

Note: the M4 block is filled one int16 at a time (a word store would land on the odd halfword of
a left-padded row): at stride 2, where a plane feeds 4x fewer outputs, that copy is about a third
of the kernel's instructions. A strided ``T.Ramp`` load is scalarized by TVM's codegen (one
``LDRB`` + lane move per byte), hence the explicit gather on M55.
"""
from __future__ import annotations

from dataclasses import replace

import tvm
from tvm.script import tirx as T

SMLABB = T.llvm_lookup_intrinsic_id("llvm.arm.smlabb")
SMLATB = T.llvm_lookup_intrinsic_id("llvm.arm.smlatb")
GATHER = T.llvm_lookup_intrinsic_id("llvm.arm.mve.vldr.gather.offset")   # (base, offsets, bits, shift, unsigned)


def cortexm_dw_spec(s, schedule: str, kp: int = 12):
    """The Cortex-M kernel (``schedule``: "smlad" or "mve") of depthwise 3x3 step ``s``: the aarch64
    kernel's spec (:func:`.tir_kernels_dw.dw_spec`: one home for the layer's geometry) with this schedule."""
    from .tir_kernels_dw import dw_spec

    return replace(dw_spec(s, kp=kp), schedule=schedule)


def _geometry(sp) -> tuple[int, int, int]:
    """(rows, columns, outputs per pass) of the padded block: rows up to the last output's taps;
    smlad: int16 columns, an even number, past the last pair's second word; mve: bytes, past the
    last group's taps."""
    hp = (sp.oh - 1) * sp.sh + 3
    if sp.schedule == "smlad":
        pairs = -(-sp.ow // 2)
        wide = max(sp.w + sp.pl, sp.sw * 2 * pairs + 2)
        return hp, wide + wide % 2, 2
    return hp, max(sp.w + sp.pl, (sp.ow - 1) * sp.sw + 3), 4 if sp.ow >= 4 else 1


def dw_workspace_bytes(sp) -> int:
    """Shim pool bytes one kernel allocates: its padded block (smlad: int16; mve: bytes)."""
    hp, wq, _ = _geometry(sp)
    return (hp * wq * (2 if sp.schedule == "smlad" else 1) + 63) // 64 * 64


def cortexm_dw_module(sp) -> tvm.IRModule:
    """The IRModule of one kernel (``main``: the packed wrapper reads the tensors' data)."""
    return tvm.IRModule({"main": _smlad(sp) if sp.schedule == "smlad" else _mve(sp)})


def _smlad(sp):
    from .tir_kernels import requant
    from .tir_kernels_cortexm import SMLAD

    c, h, w, oh, ow, sw, pt, pl, kp = sp.c, sp.h, sp.w, sp.oh, sp.ow, sp.sw, sp.pt, sp.pl, sp.kp
    hp, wpe, _ = _geometry(sp)
    rows, cols = min(h, hp - pt), min(w, wpe - pl)
    pairs, hw = -(-ow // 2), wpe // 2   # output pairs per row; words per block row

    def wt(W, ch, t):
        return T.Cast("int32", W[ch * kp + t])

    def pair(W, ch, a, b):   # the int16 pair (w[a], w[b]) as SMLAD's second operand
        return T.bitwise_or(T.bitwise_and(wt(W, ch, a), 0xFFFF), T.shift_left(wt(W, ch, b), 16))

    @T.prim_func
    def main(X: T.Buffer((c * h * w,), sp.x_dtype), W: T.Buffer((c * kp,), "int8"), B: T.Buffer((c,), "int32"),
             MU: T.Buffer((c,), "int32"), SH: T.Buffer((c,), "int8"), Y: T.Buffer((c * oh * ow,), sp.out_dtype)):
        T.func_attr({"tirx.noalias": True})
        XP = T.alloc_buffer((hp * wpe,), "int16")
        XW = T.decl_buffer((hp * hw,), "int32", data=XP.data)
        WK = T.alloc_buffer((12,), "int32", scope="local")   # per kernel row: (w0,w1), w2, (w1,w2), w0
        acc = T.alloc_buffer((2,), "int32", scope="local")
        for i in T.serial(hp * hw):
            XW[i] = 0
        for ch in T.serial(c):
            for r, q in T.grid(rows, cols):
                XP[(r + pt) * wpe + q + pl] = T.Cast("int16", X[(ch * h + r) * w + q])
            for ky in T.unroll(3):
                WK[ky * 4] = pair(W, ch, ky * 3, ky * 3 + 1)
                WK[ky * 4 + 1] = wt(W, ch, ky * 3 + 2)
                WK[ky * 4 + 2] = pair(W, ch, ky * 3 + 1, ky * 3 + 2)
                WK[ky * 4 + 3] = wt(W, ch, ky * 3)
            for i, p in T.grid(oh, pairs):
                acc[0] = B[ch]
                acc[1] = B[ch]
                for ky in T.unroll(3):
                    if sw == 1:   # outputs 2p, 2p + 1: words A = (x[2p], x[2p+1]), B = (x[2p+2], x[2p+3])
                        acc[0] = T.call_llvm_pure_intrin("int32", SMLAD, XW[(i + ky) * hw + p], WK[ky * 4], acc[0])
                        acc[0] = T.call_llvm_pure_intrin("int32", SMLABB, XW[(i + ky) * hw + p + 1], WK[ky * 4 + 1],
                                                         acc[0])
                        acc[1] = T.call_llvm_pure_intrin("int32", SMLATB, XW[(i + ky) * hw + p], WK[ky * 4 + 3],
                                                         acc[1])
                        acc[1] = T.call_llvm_pure_intrin("int32", SMLAD, XW[(i + ky) * hw + p + 1], WK[ky * 4 + 2],
                                                         acc[1])
                    else:         # output 2p + e from words 4p + 2e (columns 0, 1) and 4p + 2e + 1 (column 2)
                        for e in T.unroll(2):
                            acc[e] = T.call_llvm_pure_intrin("int32", SMLAD, XW[(i * 2 + ky) * hw + 2 * p + e],
                                                             WK[ky * 4], acc[e])
                            acc[e] = T.call_llvm_pure_intrin("int32", SMLABB, XW[(i * 2 + ky) * hw + 2 * p + e + 1],
                                                             WK[ky * 4 + 1], acc[e])
                for e in T.unroll(2):
                    if 2 * p + e < ow:
                        Y[(ch * oh + i) * ow + 2 * p + e] = requant(sp, acc[e], ch, B, MU, SH, biased=True)

    return main


def _mve(sp):
    from .tir_kernels import requant
    from .tir_kernels_cortexm import _requant4_mve

    c, h, w, oh, ow, sh, sw, pt, pl, kp = sp.c, sp.h, sp.w, sp.oh, sp.ow, sp.sh, sp.sw, sp.pt, sp.pl, sp.kp
    hp, wq, lanes = _geometry(sp)
    rows, cols = min(h, hp - pt), min(w, wq - pl)
    c16, c8 = cols // 16 * 16, cols // 8 * 8   # where the 8-byte and the single-byte copies start
    groups = -(-ow // lanes)
    vec = lanes == 4 and sp.shift_range[0] >= 31
    xd, od = sp.x_dtype, sp.out_dtype
    acc_t = "int32x4" if lanes == 4 else "int32"

    def bc(v):
        return T.Broadcast(v, 4) if lanes == 4 else v

    def tap(XB, i, j0, ky, kx):   # the lanes' inputs of tap (ky, kx), widened (stride 2: one gather)
        base = (i * sh + ky) * wq + j0 * sw + kx
        if lanes == 1:
            return T.Cast(acc_t, XB[base])
        if sw == 1:
            return T.Cast(acc_t, XB[T.Ramp(base, 1, 4)])
        return T.call_llvm_intrin(acc_t, GATHER, T.address_of(XB[base]), T.Ramp(0, 2, 4), T.int32(8), T.int32(0),
                                  T.int32(int(xd == "uint8")))

    def conv(XB, WK, B, ch, i, j0):   # bias + the 9 taps of `lanes` outputs
        s = bc(B[ch])
        for t in range(9):   # the weight an int32 scalar: a splat of it is VMLA's operand (of an int8
            s = s + tap(XB, i, j0, t // 3, t % 3) * bc(WK[t])   # vector, LLVM widens and spills 9 q registers)
        return s

    @T.prim_func
    def main(X: T.Buffer((c * h * w,), xd), W: T.Buffer((c * kp,), "int8"), B: T.Buffer((c,), "int32"),
             MU: T.Buffer((c,), "int32"), SH: T.Buffer((c,), "int8"), Y: T.Buffer((c * oh * ow,), od)):
        T.func_attr({"tirx.noalias": True})
        XB = T.alloc_buffer((hp * wq,), xd)
        WK = T.alloc_buffer((9,), "int32", scope="local")
        acc = T.alloc_buffer((lanes,), "int32", scope="local")
        for i in T.serial(hp * wq):
            XB[i] = T.Cast(xd, 0)
        for ch in T.serial(c):
            for r in T.serial(rows):   # 16, then 8 bytes at a time, then single bytes
                for v in T.serial(cols // 16):
                    XB[T.Ramp((r + pt) * wq + pl + v * 16, 1, 16)] = X[T.Ramp((ch * h + r) * w + v * 16, 1, 16)]
                for v in T.serial(cols % 16 // 8):
                    XB[T.Ramp((r + pt) * wq + pl + c16 + v * 8, 1, 8)] = X[T.Ramp((ch * h + r) * w + c16 + v * 8, 1, 8)]
                for q in T.serial(cols % 8):
                    XB[(r + pt) * wq + pl + c8 + q] = X[(ch * h + r) * w + c8 + q]
            for t in T.unroll(9):
                WK[t] = T.Cast("int32", W[ch * kp + t])
            for i, jg in T.grid(oh, groups):
                if vec:
                    Y[T.Ramp((ch * oh + i) * ow + T.min(jg * 4, ow - 4), 1, 4)] = _requant4_mve(
                        sp, conv(XB, WK, B, ch, i, T.min(jg * 4, ow - 4)), T.Broadcast(MU[ch], 4),
                        T.Broadcast(SH[ch], 4))
                elif lanes == 4:
                    acc[T.Ramp(0, 1, 4)] = conv(XB, WK, B, ch, i, T.min(jg * 4, ow - 4))
                    for e in T.serial(4):
                        Y[(ch * oh + i) * ow + T.min(jg * 4, ow - 4) + e] = requant(sp, acc[e], ch, B, MU, SH,
                                                                                  biased=True)
                else:
                    acc[0] = conv(XB, WK, B, ch, i, jg)
                    Y[(ch * oh + i) * ow + jg] = requant(sp, acc[0], ch, B, MU, SH, biased=True)

    return main
