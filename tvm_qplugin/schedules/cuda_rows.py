"""Row-parallel CUDA schedules for the integer row kernels (softmax, LayerNorm): one block per row.

Why: dlight's ``gpu.Fallback`` inlines every injective stage into its consumer. LayerNorm's
integer square root is a chain of Newton stages (``ops/int_core.te_isqrt_div``: each stage reads
the previous one several times), so inlining multiplies the expression at every stage: the
kernel's TIR grows exponentially and ``tvm.tirx.build`` does not come back (a single 17 x 64
``layernorm_int`` ran > 5 min without finishing; the digits ViT build never ended). Softmax
inlined builds, but recomputes the exponentials in the sum and in the output.

1. The output's leading axes are fused into one row loop bound to ``blockIdx.x``; the row's
   last axis is split over ``threadIdx.x`` (a multiple of 32 covering the row, at most
   :data:`MAX_THREADS`; a predicate trims the tail).
2. Every producer stage is computed under the row (``compute_at``) and stays a stage (no
   inlining): a reduction over the row (max, sum, sum of squares) splits its reduced loop over
   the same threads -- TVM's cross-thread reduction (``LowerCrossThreadReduction``: warp shuffles,
   then shared memory across warps) -- and its per-row result lives in registers (``local``); a
   per-row scalar stage (mean, reciprocal, the Newton steps) is computed by every thread in its
   own registers; a stage over the whole row (softmax's exponentials) is spread over the threads
   into shared memory, read back by the sum and the output.
Note: every value is the op's own TE expression; only where it is computed changes, so the
kernel stays bit-exact by construction (tests/test_cuda_rows.py runs it on a GPU where present).
"""
from __future__ import annotations

from tvm.tirx import IterVar

from .cuda_int8 import CudaKernelRule
from .x86 import fuse_loops
from .x86_nonlinear import gelu_is_elementwise

MAX_THREADS = 256
WARP = 32


def threads_for(row_len: int) -> int:
    """Threads per row block: the row rounded up to whole warps, at most :data:`MAX_THREADS`."""
    return min(MAX_THREADS, -(-row_len // WARP) * WARP)


def _is_reduction(sch, block) -> bool:
    return any(iv.iter_type == IterVar.CommReduce for iv in sch.get(block).iter_vars)


def _spread_over_threads(sch, loops, threads: int) -> None:
    """Fuse ``loops`` and bind their inner ``threads`` iterations to ``threadIdx.x``."""
    fused = fuse_loops(sch, loops)
    _, inner = sch.split(fused, [None, threads])
    sch.bind(inner, "threadIdx.x")


def schedule_rows(sch) -> bool:
    """Steps 1-2 of the module docstring on a kernel whose output block is ``y``."""
    y = sch.get_sblock("y")
    *lead, last = sch.get_loops(y)
    if not lead:
        return False
    threads = threads_for(sch.get(last).extent.value)
    row = fuse_loops(sch, lead)
    sch.bind(row, "blockIdx.x")
    _spread_over_threads(sch, [last], threads)
    producers = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint != "y"]
    for block in reversed(producers):
        sch.compute_at(block, row, preserve_unit_loops=True)
    for block in producers:
        under_row = sch.get_loops(block)[1:]
        if _is_reduction(sch, block):
            _spread_over_threads(sch, under_row[-1:], threads)
            sch.set_scope(block, 0, "local")
        elif any(sch.get(lp).extent.value > 1 for lp in under_row):
            _spread_over_threads(sch, under_row, threads)
            sch.set_scope(block, 0, "shared")
        else:
            sch.set_scope(block, 0, "local")
    return True


class SoftmaxRows(CudaKernelRule):
    """``softmax_int``: one block per row (module docstring)."""

    op = "softmax_int"

    def schedule(self, sch, p):
        return schedule_rows(sch)


class LayerNormRows(CudaKernelRule):
    """``layernorm_int``: one block per row (module docstring); the Newton square-root stages
    stay separate per-row scalars instead of one exponentially inlined expression."""

    op = "layernorm_int"

    def schedule(self, sch, p):
        return schedule_rows(sch)


class GeluShiftRows(CudaKernelRule):
    """``gelu_int`` in the I-ViT paper's ShiftGELU form (subtracts the row maximum): one block per
    row. The elementwise GELU forms are left to dlight's fallback (one thread per element)."""

    op = "gelu_int"

    def schedule(self, sch, p):
        return not gelu_is_elementwise(p) and schedule_rows(sch)


ROW_RULES = [SoftmaxRows(), LayerNormRows(), GeluShiftRows()]
