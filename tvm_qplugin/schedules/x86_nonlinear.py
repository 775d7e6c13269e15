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

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import schedule as s_tir_schedule

from ..ops import OPS, op_of
from ..ops.registry import OP_ATTR, PARAMS_ATTR
from .packing import PACKED_ATTR
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


def gelu_is_elementwise(params: dict) -> bool:
    """Whether a ``gelu_int``'s output depends on each element alone: not the I-ViT paper's
    ShiftGELU, which subtracts the row maximum (``--nonlinear ivit-paper``; ops/paper_core.py)."""
    return params.get("variant") != "ivit-paper"


class GeluTable(GeluInlineStages):
    """``gelu_int`` on int8 / int16 input with more elements than the dtype has values: the op's
    own TE definition evaluated once per input value, then each element gathered.

    1. ``domain`` lists every value of the input dtype (65536 for int16); ``GeluInt.compute``
       on it -- the very expression the kernel had, nothing rewritten -- is the table of their
       outputs (2**16 int16: 128 KB, L2), its stages inlined as :class:`~.x86.GeluInlineStages`
       does and computed in parallel chunks.
    2. ``y_gather[i] = table[x[i] - min]``, rows in parallel.
    Exact by construction: each output is the op's expression at that element's value.
    MiniLM batch 8 (1024 x 1536 = 24 elements per table entry), one core: 9.4 -> 0.75 ms.
    Note: the cost is I-ViT's per-element int64 division ``(2**31-1) // (E1 + E2)`` (scalar
    ``idiv``: no vector division exists), which only a smaller count of evaluations removes.
    """

    MIN_ELEMENTS_PER_ENTRY = 2  # below this the table costs more than it saves
    CHUNK = 512  # table entries per parallel task (a power of two: divides every table)

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target):
        described = op_of(func)
        if target.kind.name != "llvm" or described is None or described[0] != self.op or PACKED_ATTR in func.attrs:
            return None
        shape, dtype = tuple(int(d) for d in func.params[0].ty.shape), str(func.params[0].ty.dtype)
        if dtype not in ("int8", "int16") or not gelu_is_elementwise(described[1]):
            return None
        lo, count = int(np.iinfo(dtype).min), 1 << np.iinfo(dtype).bits
        if int(np.prod(shape)) < self.MIN_ELEMENTS_PER_ENTRY * count:
            return None
        x = te.placeholder(shape, dtype, name="x")
        domain = te.compute((count,), lambda v: (v + lo).astype(dtype), name="domain")
        table = OPS[self.op].compute(domain, **described[1])
        y = te.compute(shape, lambda *i: table[x(*i).astype("int32") - lo], name="y_gather")
        new = te.create_prim_func([x, y]).without_attr("global_symbol")
        for key in (OP_ATTR, PARAMS_ATTR):
            new = new.with_attr(key, func.attrs[key])
        sch = s_tir_schedule.Schedule(new)
        super().schedule(sch, described[1])
        sch.compute_inline(sch.get_sblock("domain"))
        entries = sch.get_sblock("y")
        chunks, _ = sch.split(sch.get_loops(entries)[0], [None, min(self.CHUNK, count)])  # whole chunks: no predicate
        sch.parallel(chunks)
        stages = [b for b in sch.get_child_blocks(sch.get_sblock("root"))
                  if sch.get(b).name_hint not in ("y", "y_gather")]
        for block in reversed(stages):
            sch.compute_at(block, chunks, preserve_unit_loops=True)
        gather = sch.get_sblock("y_gather")
        sch.parallel(fuse_loops(sch, sch.get_loops(gather)[:-1]) if len(shape) > 1 else sch.get_loops(gather)[0])
        return sch.mod["main"]
