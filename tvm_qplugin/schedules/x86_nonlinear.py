"""Row-parallel CPU schedules for the integer non-linear kernels (softmax, GELU).

Why: written as TE, each kernel is a chain of int64 stages over the whole tensor
(``ops/int_core.stage``) that no rule scheduled -- one thread, every stage a pass over memory
(MiniLM batch 8: GELU over 1024 x 1536, softmax over 96 x 128 rows of 128).

1. The output's leading axes are fused into one row loop that runs in parallel.
2. Every producer stage is computed under that row loop (``compute_at``): a row's int64
   intermediates (12 KB for a GELU row of 1536) stay in L1 instead of streaming through memory.
Note: the innermost loops are left to LLVM's loop vectorizer. Forcing ``vectorize`` on them
(16 int64 lanes) made softmax 2-5x slower on AVX-512 (1.2 -> 2.9..6.9 ms for 96 x 128 x 128):
ShiftExp's division by a constant is an int64 multiply-high, which has no vector instruction,
and the vectorized loop scalarizes it lane by lane. GELU's cost is its per-element int64
division (``(2**31-1) // (E1 + E2)``, I-ViT), which no schedule can vectorize; the rows only
spread it over the cores. On one core (this shared machine) softmax moves 1.24 -> 1.6 ms on
five of MiniLM's six kernels and 9.4 -> 1.5 ms on the sixth, GELU stays at 9.4 ms.
"""
from __future__ import annotations

from tvm.s_tir import schedule as s_tir_schedule

from .x86 import CpuKernelRule, GeluInlineStages, fuse_loops


def _rows_in_parallel(sch: s_tir_schedule.Schedule) -> bool:
    """Steps 1-2 of the module docstring on a kernel whose output block is ``y``."""
    y = sch.get_sblock("y")
    *lead, _last = sch.get_loops(y)
    if not lead:
        return False
    rows = fuse_loops(sch, lead)
    sch.parallel(rows)
    producers = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if sch.get(b).name_hint != "y"]
    for block in reversed(producers):
        sch.compute_at(block, rows, preserve_unit_loops=True)
    return True


class GeluRowsParallel(GeluInlineStages):
    """``gelu_int``: :class:`~.x86.GeluInlineStages`' inlining, then rows in parallel with the
    remaining stages computed under each row (module docstring)."""

    def schedule(self, sch, p):
        super().schedule(sch, p)
        return _rows_in_parallel(sch)


class SoftmaxRowsParallel(CpuKernelRule):
    """``softmax_int``: rows in parallel; a row's max, exponentials, sum, reciprocal and output
    computed under it (module docstring)."""

    op = "softmax_int"

    def schedule(self, sch, p):
        return _rows_in_parallel(sch)
