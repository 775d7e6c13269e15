"""CPU schedule for the *float* model's matmuls (calibration, the fp32 reference of the report).

The float graph is compiled with TVM only to observe every intermediate; LegalizeOps gives naive
``i, j, k`` loops on one thread, which ran MiniLM (batch 8, seq 128) at ~1.7 GFLOP/s: 13 s per
calibration batch, three quarters of a compile. This rule reorders each matmul to
``i, k, j`` (the output row and B's row stream with unit stride, so LLVM vectorizes ``j``),
parallelizes the leading spatial loops, and leaves everything else to the default pipeline.
"""
from __future__ import annotations

import tvm
from tvm import relax
from tvm.s_tir import schedule as s_tir_schedule

from ..ops import op_of
from .x86 import fuse_loops


def _matmul_block(func: tvm.tirx.PrimFunc):
    sch = s_tir_schedule.Schedule(func)
    try:
        block = sch.get_sblock("matmul")
    except Exception:  # noqa: BLE001 -- not a legalized matmul
        return None, None
    return sch, block


def schedule_matmul(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc | None:
    """``i.., j, k`` -> parallel ``i..``, ``k``, vectorized ``j``; None when ``func`` is not a float matmul."""
    if op_of(func) is not None or len(func.params) != 3:
        return None
    sch, block = _matmul_block(func)
    if sch is None:
        return None
    loops = sch.get_loops(block)
    if len(loops) < 3:
        return None
    *outer, j, k = loops
    sch.reorder(*outer, k, j)
    lead = fuse_loops(sch, outer)
    sch.parallel(lead)
    sch.decompose_reduction(block, k)  # LLVM vectorizes the unit-stride j loop by itself
    return sch.mod["main"]


def legalize_and_schedule(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """LegalizeOps, then :func:`schedule_matmul` on every float matmul PrimFunc (CPU targets)."""
    with target:
        mod = relax.transform.LegalizeOps()(mod)
    if target.kind.name != "llvm":
        return mod
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            new = schedule_matmul(func)
            if new is not None:
                mod.update_func(gv, new)
    return mod
