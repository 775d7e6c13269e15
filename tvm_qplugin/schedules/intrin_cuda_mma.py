"""The int8 tensor-core step of :mod:`cuda_mma`'s kernels: one warp's ``mma.sync.aligned.m16n8k32``.

Why our own (as :mod:`intrin_cuda` for ``__dp4a``): ``tvm.s_tir.tensor_intrin.cuda`` registers
every MMA / WMMA / ldmatrix variant at import (25-35 s of CPU per process), and its int8
intrinsics are s8 x s8 only, in ``warp``-scope buffers that need TVM's ``LowerWarpMemory``
layout machinery. Our GEMM kernels are written out loop by loop (cuda_mma.py), so all they need
is the PTX instruction itself on per-thread registers plus the fragment layout that says which
elements each lane holds -- both here, from the PTX ISA ("Matrix Fragments for mma.m16n8k32",
integer types), so the layout has one home.

Fragment layout of ``mma.sync.aligned.m16n8k32.row.col.s32.{s8,u8}.{s8}.s32`` per lane
(``group = lane // 4``, ``quad = lane % 4``), each register a ``.b32`` of four 8-bit values:

* A (16 x 32, row major): register r holds row ``group + 8 * (r % 2)``, columns
  ``16 * (r // 2) + 4 * quad + 0..3``;
* B (32 x 8, "col": stored n-major, k contiguous): register r holds column ``group``, rows
  ``16 * r + 4 * quad + 0..3``;
* C / D (16 x 8 int32): element e holds row ``group + 8 * (e // 2)``, column ``2 * quad + e % 2``.

The products are exact (8 x 8 -> 16 bits) and summed into the s32 accumulator (no
``.satfinite``): the same integers as the op's int32 sum wherever that sum does not overflow
int32 -- for u8 x s8, K up to 65,793 -- which is the op's own int32 accumulator's limit too
(ops/conv.py's int64 chunked sums, ``acc_bits`` 64, are for int16 inputs: cuda_mma declines them).
"""
from __future__ import annotations

from tvm.script import tirx as T

MMA_SHAPE = (16, 8, 32)          # m, n, k of one instruction
MMA_PTX_TYPE = {"int8": "int8", "uint8": "uint8"}  # operand dtype -> ptx_legacy.mma's type name (.s8 / .u8)
A_REGS, B_REGS, C_REGS = 4, 2, 4  # .b32 registers per lane


def a_element(lane, reg: int, byte):
    """(row, column) of the A tile byte ``byte`` of register ``reg`` of ``lane``."""
    return lane // 4 + 8 * (reg % 2), 16 * (reg // 2) + 4 * (lane % 4) + byte


def b_element(lane, reg: int, byte):
    """(column n, row k) of the B tile byte ``byte`` of register ``reg`` of ``lane``."""
    return lane // 4, 16 * reg + 4 * (lane % 4) + byte


def c_element(lane, elem: int):
    """(row, column) of accumulator element ``elem`` of ``lane``."""
    return lane // 4 + 8 * (elem // 2), 2 * (lane % 4) + elem % 2


def mma_m16n8k32(a_dtype: str, b_dtype: str, a_regs, b_regs, c_regs, c_offset):
    """``c_regs[c_offset : c_offset + 4] += A . B`` for the warp: the one ``mma.sync`` call.

    ``a_regs`` / ``b_regs``: int32 ``local`` buffers of :data:`A_REGS` / :data:`B_REGS` packed
    8-bit registers at offset 0; ``c_regs``: the int32 ``local`` accumulators."""
    return T.ptx_legacy.mma("m16n8k32", "row", "col", MMA_PTX_TYPE[a_dtype], MMA_PTX_TYPE[b_dtype], "int32",
                            a_regs.data, 0, b_regs.data, 0, c_regs.data, c_offset, False, dtype="int32")
