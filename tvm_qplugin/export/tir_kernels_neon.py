"""The ``smlal`` TIR kernel: NEON widening multiply-accumulate by element for aarch64 cores without
the dot product (Cortex-A72, rpi4; issue 11: "NEON smlal on Cortex-A72"), a candidate of
:mod:`.kernel_choice` on every aarch64 board.

Why a kernel of its own: without ``+dotprod`` LLVM compiles the plain loop of :mod:`.tir_kernels`
to ``smull`` / ``smull2`` (int16 x int16 -> int32 lanes) and ``saddl`` / ``saddw`` along k, then a
horizontal add and ~30 instructions of scalar int64 requantization per output: 0.46-0.73
instructions/MAC, most of it the epilogue where k is small. Here a 32-bit lane is an output, so there
is no horizontal add and the requantization runs on 4 outputs at once (``sdot4x4``'s,
:func:`.tir_kernels_sdot._requant4`):

1. One operand ``A`` (int16) has an output per lane, 4 lanes per vector; the other ``B`` (int16) is
   read by element: ``smlal acc.4s, a.4h, b.h[i]`` / ``smlal2 acc.4s, a.8h, b.h[i]`` (4 MACs each; LLVM
   folds ``smull`` + add of a lane splat into them). ``A`` holds two k per 16 bytes (``[tiles][k8][4]``),
   ``B`` 8 k per 16 bytes (``[elements][k8]``), both zero past k (``k8``: k rounded up to 8).
2. Pointwise conv (x (k, m), y (n, m) channel-major): lanes are 4 pixels of x (A: all of x widened
   once, uint8 flipped, ``[m/4][k8][4]``), elements the output channels (B: the weights, prepacked as
   int16 ``[n][k8]`` at package time): an accumulator is 4 pixels of one channel, stored as they lie
   in y. Needs 4 | m; on maps of 9 or 1 pixels (MobileNetV2's last stages) the dense form below instead,
   x transposed bytewise and each accumulator's 4 channels stored m apart.
3. Dense (x (m, k), y (m, n)): lanes are 4 output channels (A: the weights, prepacked as int16
   ``[n/4][k8][4]``), elements the rows of x (B: x widened once, ``[m][k8]``): an accumulator is 4
   channels of one row. Needs 4 | n.
4. Register tile: 2 (or 3) lane vectors x 4 elements (8 accumulators; per 8 k, 8 loads of A and 4 of B
   feed 64 ``smlal`` = 256 MACs), fewer where the shape is smaller (:func:`_tile`); a last tile past the elements repeats
   the last one (it stores the same values to the same place).

int16 inputs (the residual stream of MobileNetV2's projections feeding the next block's expansion:
issue 11, 92 % of the model's instructions on rpi5 while they ran on the hand-written C) take the same
kernel: ``smlal`` multiplies int16 by int16 anyway, so x is only repacked (no widening) and the weights'
int16 copy is the same. The int32 accumulator cannot overflow: the package refuses a layer whose
``sum |w| * 32768 + |b|`` reaches 2^31 (kernels_c.py). Only this kernel takes int16 x
(:data:`INT16_SCHEDULES`; :func:`.tir_kernels.step_spec` refuses the others).

Note: the weights' int16 copy doubles their bytes on the board (a Linux board's DRAM: no flash limit);
int16 weights are what lets the inner loop be ``smlal`` alone, with no widening per use.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm.script import tirx as T

from .tir_kernels_sdot import _requant4

NEON_SCHEDULES = ("smlal",)   # plain NEON (Armv8.0-A): a candidate on every aarch64 board
INT16_SCHEDULES = NEON_SCHEDULES   # the TIR kernels that take int16 x (the others read x as 8-bit)
SMULL = T.llvm_lookup_intrinsic_id("llvm.aarch64.neon.smull.v4i32")
LANE_TILES, ELEMENT_TILE = 2, 4   # vectors of 4 lanes x elements per register tile


def neon_applies(sp) -> bool:
    """Shapes this kernel takes: pixels of a pointwise conv or output channels in whole groups of 4."""
    return _pixel_lanes(sp) or sp.n % 4 == 0


def _pixel_lanes(sp) -> bool:
    """Whether the lanes are pixels (a pointwise conv with 4 | m: y's rows written as they lie), else
    output channels (dense layers; pointwise convs on maps of 9 or 1 pixels, y written with a stride)."""
    return sp.nchw and sp.m % 4 == 0


def _k8(sp) -> int:
    return (sp.k + 7) // 8 * 8


def _dims(sp) -> tuple[int, int]:
    """(lanes, elements): pixels x channels for a pointwise conv, channels x rows for a dense layer."""
    return (sp.m, sp.n) if _pixel_lanes(sp) else (sp.n, sp.m)


def _tile(sp) -> tuple[int, int]:
    """(lane vectors, elements) per register tile: 2 lane vectors where they pair up, else 3 (6x6 maps:
    9 groups of 4 pixels; 0.398 -> 0.362 instructions/MAC on 384 -> 64 against 1), else 1; by 4 elements,
    or 3 where 3 divides them and 4 does not (9 pixels: no tile repeating 3 of 4; 0.49 -> 0.37)."""
    lanes, elems = _dims(sp)
    return (next(t for t in (LANE_TILES, 3, 1) if (lanes // 4) % t == 0),
            next((e for e in (ELEMENT_TILE, 3) if elems % e == 0), min(ELEMENT_TILE, elems)))


def pack_weights_neon(w: np.ndarray, sp) -> np.ndarray:
    """``w`` (n x k int8) -> int16, zero past k: ``[n][k8]`` (pointwise: B, by element) or
    ``[n/4][k8][4]`` (dense: A, 4 channels per lane group)."""
    n, k, k8 = sp.n, sp.k, _k8(sp)
    rows = np.zeros((n, k8), np.int16)
    rows[:, :k] = np.asarray(w, np.int8).reshape(n, -1)[:, :k]
    if _pixel_lanes(sp):
        return rows.reshape(-1)
    return np.ascontiguousarray(rows.reshape(n // 4, 4, k8).transpose(0, 2, 1)).reshape(-1)


def workspace_bytes(sp) -> int:
    """Workspace (TVMBackendAllocWorkspace): x widened to int16, zero past k."""
    return 2 * sp.m * _k8(sp)


def neon_module(sp) -> tvm.IRModule:
    """The IRModule of one ``smlal`` kernel (``main``: the packed wrapper reads the DLTensors' data)."""
    m, k, n, xd, od, flip = sp.m, sp.k, sp.n, sp.x_dtype, sp.out_dtype, sp.flip
    k8 = _k8(sp)
    lanes, elems = _dims(sp)
    lt, et = _tile(sp)
    pix = _pixel_lanes(sp)
    ltiles, etiles = lanes // 4 // lt, (elems + et - 1) // et

    def x16(v, n_lanes):   # 8-bit x -> int16 (uint8 flipped to int8 first); int16 x as it is
        if xd == "int16":
            return v
        if flip:
            v = T.reinterpret(f"int8x{n_lanes}", T.bitwise_xor(v, T.Broadcast(T.uint8(128), n_lanes)))
        return T.Cast(f"int16x{n_lanes}", v)

    def x16s(v):
        if xd == "int16":
            return v
        return T.Cast("int16", T.Cast("int8", T.bitwise_xor(v, T.uint8(128))) if flip else v)

    def elem(ie, e):   # element e of element tile ie; a last tile past the elements repeats the last
        return T.min(ie * et + e, elems - 1)

    def k8_macs(acc_v, A, base, bv):
        """acc + 8 k of A (int16, 4 lanes per k from ``base``) times bv's 8 elements (int16x8), each
        broadcast: 8 ``smlal`` by element, A loaded 2 k (16 bytes) at a time."""
        for q in range(4):
            av = A[T.Ramp((base + q * 2) * 4, 1, 8)]
            for h in range(2):
                acc_v = acc_v + T.call_llvm_pure_intrin("int32x4", SMULL, T.Shuffle([av], [h * 4 + i for i in range(4)]),
                                                        T.Shuffle([bv], [q * 2 + h] * 4))
        return acc_v

    @T.prim_func
    def main(X: T.Buffer((m * k,), xd), W: T.Buffer((n * k8 * 2,), "int8"), B: T.Buffer((n,), "int32"),
             MU: T.Buffer((n,), "int32"), SH: T.Buffer((n,), "int8"), Y: T.Buffer((m * n,), od)):
        T.func_attr({"tirx.noalias": True})
        acc = T.alloc_buffer((lt * et * 4,), "int32", scope="local")
        X16 = T.alloc_buffer((m * k8,), "int16")   # x widened: A [m/4][k8][4] (pointwise) or B [m][k8] (dense)
        W16 = T.decl_buffer((n * k8,), "int16", data=W.data)   # the weights' int16 copy (pack_weights_neon)
        A = X16 if pix else W16
        Bv = W16 if pix else X16
        if pix:   # x (k, m): 4 pixels of a channel -> 4 lanes at [pixel group][k]
            for kk, ig in T.grid(k, m // 4):
                X16[T.Ramp((ig * k8 + kk) * 4, 1, 4)] = x16(X[T.Ramp(kk * m + ig * 4, 1, 4)], 4)
            for ig, kk, r in T.grid(m // 4, k8 - k, 4):
                X16[(ig * k8 + k + kk) * 4 + r] = T.int16(0)
        elif sp.nchw:   # x (k, m), m = 9 or 1: transposed bytewise to [pixel][k8]
            for i, kk in T.grid(m, k8):
                X16[i * k8 + kk] = T.if_then_else(kk < k, x16s(X[T.min(kk, k - 1) * m + i]), T.int16(0))
        else:   # x (m, k): rows widened, k contiguous
            for i, g in T.grid(m, k // 8):
                X16[T.Ramp(i * k8 + g * 8, 1, 8)] = x16(X[T.Ramp(i * k + g * 8, 1, 8)], 8)
            for i, kk in T.grid(m, k8 - k // 8 * 8):
                X16[i * k8 + k // 8 * 8 + kk] = T.if_then_else(k // 8 * 8 + kk < k, x16s(X[i * k + T.min(k // 8 * 8 + kk, k - 1)]),
                                                                T.int16(0))
        for il, ie in T.grid(ltiles, etiles):
            for t in T.unroll(lt):
                for e in T.unroll(et):   # the accumulators start at the bias
                    if pix:
                        acc[T.Ramp((t * et + e) * 4, 1, 4)] = T.Broadcast(B[elem(ie, e)], 4)
                    else:
                        acc[T.Ramp((t * et + e) * 4, 1, 4)] = B[T.Ramp((il * lt + t) * 4, 1, 4)]
            for g in T.serial(k8 // 8):
                for e in T.unroll(et):
                    bv = Bv[T.Ramp(elem(ie, e) * k8 + g * 8, 1, 8)]
                    for t in T.unroll(lt):
                        acc[T.Ramp((t * et + e) * 4, 1, 4)] = k8_macs(
                            acc[T.Ramp((t * et + e) * 4, 1, 4)], A, (il * lt + t) * k8 + g * 8, bv)
            for t in T.unroll(lt):
                for e in T.unroll(et):
                    if pix:   # 4 pixels of channel e
                        Y[T.Ramp(elem(ie, e) * m + (il * lt + t) * 4, 1, 4)] = T.Cast(f"{od}x4", _requant4(
                            sp, acc[T.Ramp((t * et + e) * 4, 1, 4)], T.Broadcast(MU[elem(ie, e)], 4),
                            T.Broadcast(SH[elem(ie, e)], 4)))
                    elif sp.nchw:   # 4 channels of pixel e: y (n, m), m apart
                        Y[T.Ramp((il * lt + t) * 4 * m + elem(ie, e), m, 4)] = T.Cast(f"{od}x4", _requant4(
                            sp, acc[T.Ramp((t * et + e) * 4, 1, 4)], MU[T.Ramp((il * lt + t) * 4, 1, 4)],
                            SH[T.Ramp((il * lt + t) * 4, 1, 4)]))
                    else:   # 4 channels of row e
                        Y[T.Ramp(elem(ie, e) * n + (il * lt + t) * 4, 1, 4)] = T.Cast(f"{od}x4", _requant4(
                            sp, acc[T.Ramp((t * et + e) * 4, 1, 4)], MU[T.Ramp((il * lt + t) * 4, 1, 4)],
                            SH[T.Ramp((il * lt + t) * 4, 1, 4)]))

    return tvm.IRModule({"main": main})
