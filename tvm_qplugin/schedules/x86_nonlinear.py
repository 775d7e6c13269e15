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

import functools
import json

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import schedule as s_tir_schedule

from ..ops import OPS, op_of
from .packing import Packing, packed_info, tag_packed
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


class GeluTable:
    """``gelu_int`` on int8 / int16 input: a table of the op's output for every input value,
    computed at build time, and a kernel that only gathers ``y[i] = table[x[i] - min]``.

    A *packer* (schedules/packing.py, like the tensorized rules): the kernel is rewritten to read
    the table as one more constant argument (2**16 int16 entries: 128 KB, L2) and the table is
    the op's own TE definition (``GeluInt.compute``: the very expression the kernel had, nothing
    rewritten) built for the build host and run once on every value of the input dtype --
    exact by construction; compile's per-kernel and whole-model checks against the NumPy twin
    still compare the gathered outputs. Rows run in parallel.
    Note: the cost of the op is I-ViT's per-element int64 division ``(2**31-1) // (E1 + E2)``
    (scalar ``idiv``: no vector division exists). Evaluating the table per call (65536 entries)
    took 9.4 -> 0.75 ms at MiniLM's batch 8 (1024 x 1536) but cost as much as the gather itself
    at batch 1 (128 x 1536: 1.5 elements per entry); at build time the call is the gather alone.
    int16 tensors with fewer than ``count / MIN_ENTRIES_PER_ELEMENT`` elements keep the
    row-parallel kernel (the table would weigh more in the artifact than the tensor it maps).
    """

    op = "gelu_int"
    MIN_ENTRIES_PER_ELEMENT = 16

    def pack(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> Packing | None:
        described = op_of(func)
        if target.kind.name != "llvm" or described is None or described[0] != self.op:
            return None
        shape, dtype = tuple(int(d) for d in func.params[0].ty.shape), str(func.params[0].ty.dtype)
        if dtype not in ("int8", "int16") or not gelu_is_elementwise(described[1]):
            return None
        lo, count = int(np.iinfo(dtype).min), 1 << np.iinfo(dtype).bits
        if int(np.prod(shape)) * self.MIN_ENTRIES_PER_ELEMENT < count:
            return None
        out_dtype = str(func.params[-1].ty.dtype)
        x = te.placeholder(shape, dtype, name="x")
        table = te.placeholder((count,), out_dtype, name="table")
        y = te.compute(shape, lambda *i: table[x(*i).astype("int32") - lo], name="y")
        packed = te.create_prim_func([x, table, y]).without_attr("global_symbol")
        params = json.dumps(described[1], sort_keys=True)
        return Packing(tag_packed(packed, func, {"rule": type(self).__name__}), (),
                       lambda _consts: [_gelu_table(dtype, params)])

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target):
        info = packed_info(func)
        if target.kind.name != "llvm" or info is None or info["rule"] != type(self).__name__:
            return None
        sch = s_tir_schedule.Schedule(func)
        loops = sch.get_loops(sch.get_sblock("y"))
        if len(loops) > 1:
            sch.parallel(fuse_loops(sch, loops[:-1]))
        else:
            sch.parallel(sch.split(loops[0], [None, 4096])[0])
        return sch.mod["main"]


@functools.cache
def _gelu_table(dtype: str, params_json: str) -> np.ndarray:
    """The op's output for every value of ``dtype`` (ascending), from its TE definition built
    for the build host (integer arithmetic: the same integers on every target)."""
    params = json.loads(params_json)
    lo, count = int(np.iinfo(dtype).min), 1 << np.iinfo(dtype).bits
    domain = te.placeholder((count,), dtype, name="domain")
    out = OPS[GeluTable.op].compute(domain, **params)
    lib = tvm.tirx.build(tvm.IRModule({"main": te.create_prim_func([domain, out])}), target="llvm")
    values = tvm.runtime.tensor(np.arange(lo, lo + count).astype(dtype))
    table = tvm.runtime.tensor(np.zeros(count, str(out.dtype)))
    lib["main"](values, table)
    return table.numpy()
