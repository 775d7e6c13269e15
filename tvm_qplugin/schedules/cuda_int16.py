"""CUDA GEMM for the integer kernels with an int16 operand: register tiles over shared-memory tiles.

The transformers' activations are int16 (digits ViT, MiniLM), so their ``dense_requant``
(int16 x int8 weights) and attention ``matmul_requant`` (int16 x int16: ``Q Kᵀ`` in int64,
``P V`` in int32 under the softmax row-sum bound) have no ``__dp4a`` (s8/u8 operands only) and
ran on dlight's fallback: one thread per output, the reduction serial, every operand read from
global memory once per output. :func:`_register_tiled_gemm` schedules the kernel's own ``acc``
block instead:

1. Output rows x columns tiled over a block of ``TY x TX`` threads, each thread owning an
   ``RM x RN`` register tile of outputs (4 x 4 where the extents allow; every tile size divides
   its extent: no boundary predicates); batch dims on ``blockIdx.z``.
2. The reduction split into ``KT``-long stages; per stage the block copies both operand tiles
   (``TY*RM x KT`` of ``a``; ``KT x TX*RN`` of the other, stored k-major, an 8-bit one with its
   k pairs adjacent) into shared memory, cooperatively.
3. Per reduction step each thread loads ``RM`` values of ``a`` and ``RN`` of ``b`` from shared
   memory into registers and issues ``RM * RN`` multiply-adds into its register accumulators
   (``mad.lo.s32``; ``dp2a`` for int16 x int8 pairs; the 64-bit forms for an int64 accumulator).
4. The requant epilogue (bias, dyadic multiply, shift, clamp) runs right after, in the same
   thread, from those registers: the sums never go to global memory.

Exactness. Every value is the op's own TIR expression in the op's own accumulator dtype; the
schedule only changes where and in which order the products are added. The op's reference
(NumPy twin) is the exact integer sum, and reordering integer additions changes nothing unless
an intermediate overflows: every partial sum is a sum over a subset of the products, so
``|partial| <= sum_k |a_k| |b_k| <= acc_bound`` (ops/matmul.py: ``K * max|a| * max|b|``, or
``a_row_sum * max|b|``). The rule takes an int32 accumulator only when ``acc_bound < 2**31``
(int16 x int8: K <= 511; ``P V`` with the row-sum bound: any K) and an int64 one only when
``acc_bound < 2**63``, and declines the rest. The chunked int64 dense (``acc_bits=64``: int32
``acc_part`` chunks summed in int64, ops/conv.py ``chunked_dot``) keeps its form
(:func:`_register_tiled_chunked_gemm`); the rule re-checks that each chunk fits int32 and
declines a ragged last chunk (its clamped index times 0).

Note: instructions per multiply-accumulate (MAC), read from the PTX (nvcc 13, sm_80 / sm_90;
tests/test_cuda_int16.py checks them). int16 x int8 in int32 (the dense layers): with the weight
tile's k pairs adjacent (:func:`_b_tile_layout`) nvcc itself pairs two k steps into
``dp2a.lo.s32.s32`` (an int16 pair in one 32-bit register times an int8 pair, exact: two
products of at most 2**22), so per two k steps of a 4 x 4 tile a thread issues 16 ``dp2a``, four
32-bit loads of ``a`` pairs and one 64-bit load of four weight pairs: ~0.7 instructions per MAC
plus loop overhead, against ~3 for the fallback (two uncached global loads and a ``mad`` per
MAC). int16 x int16 in int32 (``P V``): one ``mad.lo.s32`` per MAC plus 0.5 shared loads; in
int64 (``Q Kᵀ``): ``mul.wide.s32`` + a 64-bit add. Splitting int16 into a signed high and an
unsigned low byte (``x = 256 * hi + lo``) for two ``__dp4a`` per four MACs would reach ~0.7 as
well, but it rewrites the computation (byte planes, two accumulators, their recombination)
instead of scheduling the op's TIR, and gains nothing on int16 x int16 -- so it is not done.
On an H200 (docs/cuda.md, "CUDA"): bit-exact; MiniLM's FFN up 34.5x faster than the
fallback, its attention matmuls 1.7-2x.
"""
from __future__ import annotations

import tvm
from tvm.s_tir import schedule as s_tir_schedule

from ..ops.matmul import OPERAND_DTYPES, acc_bound
from ..passes.verify_tir import _dtype_of
from .cuda_int8 import (
    DP4A_OPERANDS,
    SCHEDULED_ATTR,
    THREADS_X,
    THREADS_Y,
    CudaKernelRule,
    _cooperative_copy,
    _divisor,
    _operand_dtypes,
)

REGISTER_TILE = (4, 2, 1)          # outputs per thread along rows and along columns (largest first)
K_TILE = (32, 16, 8, 4, 2, 1)      # reduction steps per shared-memory stage
ACC_LIMITS = {"int32": 2**31, "int64": 2**63}  # |acc| must stay below these (module doc: exactness)
RULE_ATTR = "qplugin.cuda_rule"    # set on the kernels this module scheduled (CudaBuild lists them)
RULE_NAME = "cuda-int16-gemm"      # report.json layers[].kernel.source for them


def _fits(sch: s_tir_schedule.Schedule, block, dtypes, k: int, params: dict) -> bool:
    """Whether ``block``'s accumulator dtype holds ``acc_bound`` of operands ``dtypes`` over ``k`` steps."""
    limit = ACC_LIMITS.get(_dtype_of(sch.get(block).writes[0].source.ty))
    return limit is not None and acc_bound(*dtypes, k, params.get("a_row_sum")) < limit


def takes_int16_gemm(sch: s_tir_schedule.Schedule, params: dict) -> bool:
    """True when the kernel is ``acc`` + ``y`` (or the chunked ``acc_part`` + ``acc`` + ``y`` with
    chunks tiling K exactly), has an int16 operand, and every accumulator provably cannot overflow
    (module doc) for its reduction length."""
    root_blocks = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
    chunked = root_blocks == {"acc_part", "acc", "y"}
    if root_blocks != {"acc", "y"} and not chunked:
        return False
    gemm, acc = sch.get_sblock("acc_part" if chunked else "acc"), sch.get_sblock("acc")
    dtypes = _operand_dtypes(sch, gemm)
    if "int16" not in dtypes or any(d not in OPERAND_DTYPES for d in dtypes):
        return False
    steps = sch.get(sch.get_loops(gemm)[-1]).extent.value  # K, or one chunk's length
    if not chunked:
        return _fits(sch, acc, dtypes, steps, params)
    k = int(sch.get(gemm).reads[0].source.ty.shape[-1])
    chunks = sch.get(sch.get_loops(acc)[-1]).extent.value
    # a ragged last chunk reads a clamped index times 0 (chunked_dot): left to the fallback
    return chunks * steps == k and _fits(sch, gemm, dtypes, steps, params) and _fits(sch, acc, dtypes, k, params)


def _unroll_below(sch: s_tir_schedule.Schedule, block, loop) -> None:
    """Unroll ``block``'s loops under ``loop`` (the register tile: constant indices keep it in registers)."""
    loops = sch.get_loops(block)
    at = next(n for n, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(loop)))
    for inner in loops[at + 1:]:
        if sch.get(inner).extent.value > 1:
            sch.unroll(inner)


def _b_tile_layout(b_k_last: bool, pairs: bool):
    """Index map of the second operand's shared tile (``[..., n, k]`` when ``b_k_last``, else
    ``[..., k, n]``): k-major, so that a warp's threads read consecutive columns; with ``pairs``,
    two consecutive k of one column adjacent (``[k // 2, n, k % 2]``): an int8 weight pair is one
    16-bit load, four columns one 64-bit load, and nvcc pairs two k steps of int16 x int8 into
    one ``dp2a`` without byte shuffles. None: the tile is already as wanted."""
    if pairs:
        if b_k_last:
            return lambda *ix: (*ix[:-2], ix[-1] // 2, ix[-2], ix[-1] % 2)
        return lambda *ix: (*ix[:-2], ix[-2] // 2, ix[-1], ix[-2] % 2)
    return (lambda *ix: (*ix[:-2], ix[-1], ix[-2])) if b_k_last else None


def _tile_outputs(sch: s_tir_schedule.Schedule, batch, row, col, red):
    """Step 1 of the module doc on the block owning loops ``batch`` (fused onto ``blockIdx.z``),
    ``row`` / ``col`` (tiled over blocks, threads and registers) and its reduction ``red`` (moved
    right above the register tile); returns the ``threadIdx.x`` loop and the thread counts."""
    if batch:
        sch.bind(sch.fuse(*batch) if len(batch) > 1 else batch[0], "blockIdx.z")
    m, n = (sch.get(lp).extent.value for lp in (row, col))
    rm, rn = _divisor(m, REGISTER_TILE), _divisor(n, REGISTER_TILE)
    ty, tx = _divisor(m // rm, THREADS_Y), _divisor(n // rn, THREADS_X)
    by, thread_y, reg_y = sch.split(row, [None, ty, rm])
    bx, thread_x, reg_x = sch.split(col, [None, tx, rn])
    sch.reorder(by, bx, thread_y, thread_x, red, reg_y, reg_x)
    sch.bind(by, "blockIdx.y")
    sch.bind(bx, "blockIdx.x")
    sch.bind(thread_y, "threadIdx.y")
    sch.bind(thread_x, "threadIdx.x")
    return thread_x, ty, tx


def _stage_through_shared(sch: s_tir_schedule.Schedule, gemm, red, ty: int, tx: int, b_k_last: bool):
    """Steps 2-3 of the module doc on block ``gemm``, whose reduction loop ``red`` sits right above
    its register tile; returns its init block. ``b_k_last``: the second operand is ``[..., n, k]``
    (dense weights), not ``[..., k, n]`` (:func:`_b_tile_layout`)."""
    kt = _divisor(sch.get(red).extent.value, K_TILE)
    b_layout = _b_tile_layout(b_k_last, kt % 2 == 0 and _operand_dtypes(sch, gemm)[1] in DP4A_OPERANDS)
    ko, ki = sch.split(red, [None, kt])
    for index, layout in ((0, None), (1, b_layout)):
        shared = sch.cache_read(gemm, index, "shared")
        sch.compute_at(shared, ko)
        if layout is not None:
            sch.transform_layout(shared, ("write", 0), layout)
        _cooperative_copy(sch, shared, ko, ty, tx)
        sch.compute_at(sch.cache_read(gemm, index, "local"), ki)
    sch.set_scope(gemm, 0, "local")
    init = sch.decompose_reduction(gemm, ko)
    _unroll_below(sch, gemm, ki)
    return init


def _register_tiled_gemm(sch: s_tir_schedule.Schedule, batch, row, col, red, b_k_last: bool) -> None:
    """Steps 1-4 of the module doc on the ``acc`` block (loops as :func:`_tile_outputs` takes them)."""
    acc, y = sch.get_sblock("acc"), sch.get_sblock("y")
    thread_x, ty, tx = _tile_outputs(sch, batch, row, col, red)
    sch.reverse_compute_at(y, thread_x)
    init = _stage_through_shared(sch, acc, red, ty, tx, b_k_last)
    for block in (init, y):
        _unroll_below(sch, block, thread_x)


def _register_tiled_chunked_gemm(sch: s_tir_schedule.Schedule, batch, row, col, chunk, b_k_last: bool) -> None:
    """The same for the chunked int64 dense (ops/conv.py ``chunked_dot``): ``acc`` (int64, summing
    the chunks over its loop ``chunk``) is tiled as above; each chunk's int32 ``acc_part`` is
    computed under ``chunk`` into its own register tile, through the shared-memory stages."""
    part, acc, y = sch.get_sblock("acc_part"), sch.get_sblock("acc"), sch.get_sblock("y")
    thread_x, ty, tx = _tile_outputs(sch, batch, row, col, chunk)
    sch.reverse_compute_at(y, thread_x)
    sch.compute_at(part, chunk)
    loops = sch.get_loops(part)
    at = next(n for n, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(chunk)))
    *register_tile, kc = loops[at + 1:]
    sch.reorder(kc, *register_tile)
    part_init = _stage_through_shared(sch, part, kc, ty, tx, b_k_last)
    _unroll_below(sch, part_init, chunk)
    sch.set_scope(acc, 0, "local")
    init = sch.decompose_reduction(acc, chunk)
    for block, under in ((acc, chunk), (init, thread_x), (y, thread_x)):
        _unroll_below(sch, block, under)


class Int16GemmRule(CudaKernelRule):
    """A :class:`CudaKernelRule` whose scheduled kernels carry :data:`RULE_ATTR` (the build lists them by it)."""

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target):
        if func.attrs is not None and SCHEDULED_ATTR in func.attrs:
            return None  # another CUDA rule scheduled it already
        new = super().apply(func, target)
        return None if new is None else new.with_attr(RULE_ATTR, RULE_NAME)


class DenseInt16Gemm(Int16GemmRule):
    """``dense_requant`` on int16 activations (x[..., k] . w[n, k]): the weight tile stored k-major."""

    op = "dense_requant"

    def schedule(self, sch, p):
        if not takes_int16_gemm(sch, p):
            return False
        *lead, j, k = sch.get_loops(sch.get_sblock("acc"))  # k: the chunks when acc_bits=64
        tiled = _register_tiled_chunked_gemm if p.get("acc_bits", 32) == 64 else _register_tiled_gemm
        tiled(sch, lead[:-1], lead[-1], j, k, b_k_last=True)
        return True


class MatmulInt16Gemm(Int16GemmRule):
    """``matmul_requant`` with an int16 operand (a[..., m, k] @ b[..., k, n]): b is k-major already."""

    op = "matmul_requant"

    def schedule(self, sch, p):
        if not takes_int16_gemm(sch, p):
            return False
        *lead, i, j, k = sch.get_loops(sch.get_sblock("acc"))
        _register_tiled_gemm(sch, lead, i, j, k, b_k_last=False)
        return True


INT16_RULES = [DenseInt16Gemm(), MatmulInt16Gemm()]


def int16_gemm_kernels(mod: tvm.IRModule) -> list[str]:
    """Names of the kernels of ``mod`` an :data:`INT16_RULES` rule scheduled."""
    return sorted(gv.name_hint for gv, func in mod.functions.items()
                  if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None
                  and str(func.attrs.get(RULE_ATTR, "")) == RULE_NAME)
