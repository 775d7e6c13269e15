"""CPU schedule for the *float* model's matmuls (calibration, the fp32 reference of the report).

The float graph is compiled with TVM only to observe every intermediate; LegalizeOps gives naive
``i, j, k`` loops on one thread, which ran MiniLM (batch 8, seq 128) at ~1.7 GFLOP/s: 13 s per
calibration batch, three quarters of a compile. This rule reorders each matmul to
``i, k, j`` (the output row and B's row stream with unit stride, so LLVM vectorizes ``j``) in
register tiles of 4 rows x 64 columns (:data:`ROWS`, :data:`COLS`), parallelizes the leading
spatial loops, and leaves everything else to the default pipeline.
The legalized convolutions had the same naive order (``n, c, y, x`` then the reduction), ~1.2
GFLOP/s: MobileNetV2's 64 calibration and 256 evaluation images took 80 s of a 160 s compile.
:func:`schedule_conv` moves the reduction outside the output plane (``n, c`` parallel, then
``rc, ry, rx``, then ``y, x``): rows stream with unit stride and LLVM vectorizes ``x`` (MobileNetV2
float convs ~4x faster on one thread). A pointwise (1x1) conv's output plane is one loop (fused
``y, x``): input and output rows are contiguous across it, so LLVM vectorizes the whole plane --
with separate ``y`` and ``x`` a 7x7 or 14x14 plane left 7- or 14-long inner loops it barely
vectorized (MobileNetV2's float run, one thread: 60 -> 23 ms of kernels per image).

Both rules only reorder *spatial* loops around the reduction: every output element still sums its
products in the same order from the same zero, so the float results -- the calibrated ranges and the
fp32 figures of the report -- are bit for bit those of the unscheduled build.
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


#: :func:`schedule_matmul`'s register tile: ``ROWS`` output rows x ``COLS`` columns (4 x 64 floats:
#: 16 AVX-512 registers) accumulated over the whole ``k`` loop; each row of B is loaded once per 4
#: output rows. MiniLM's float run (batch 8 x seq 128): 1.22 -> 0.77 s CPU per batch; 8 x 32 and
#: 8 x 64 were slower, 2 x 64 and 4 x 32 / 128 the same.
ROWS, COLS = 4, 64


def _extent(sch, loop) -> int | None:
    e = sch.get(loop).extent
    return e.value if isinstance(e, tvm.tirx.IntImm) else None


def schedule_matmul(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc | None:
    """``i.., j, k`` -> parallel ``i.. / ROWS, j / COLS``, then ``k``, then a ``ROWS x COLS`` tile
    (``j`` innermost, vectorized by LLVM); ``i.., k, j`` when the extents do not divide (or are
    symbolic). None when ``func`` is not a float matmul."""
    if op_of(func) is not None or len(func.params) != 3:
        return None
    sch, block = _matmul_block(func)
    if sch is None:
        return None
    loops = sch.get_loops(block)
    if len(loops) < 3:
        return None
    *outer, j, k = loops
    rows, cols = _extent(sch, outer[-1]), _extent(sch, j)
    if rows is None or rows % ROWS:
        sch.reorder(*outer, k, j)
        sch.parallel(fuse_loops(sch, outer))
    else:
        io, ii = sch.split(outer[-1], [None, ROWS])
        if cols is not None and cols % COLS == 0:
            jo, ji = sch.split(j, [None, COLS])
            sch.reorder(*outer[:-1], io, jo, k, ii, ji)
            sch.parallel(fuse_loops(sch, [*outer[:-1], io, jo]))
        else:
            sch.reorder(*outer[:-1], io, k, ii, j)
            sch.parallel(fuse_loops(sch, [*outer[:-1], io]))
    sch.decompose_reduction(block, k)  # LLVM vectorizes the unit-stride j loop by itself
    return sch.mod["main"]


def schedule_conv(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc | None:
    """``n, c, y.., r..`` -> parallel ``n, c``, then ``r..``, then the output plane ``y..`` (one fused
    loop when the window is 1x1: only the channel sum remains); None
    unless ``func`` is a legalized float convolution (one block named ``*conv*``: batch, channel and
    plane loops, then reduction loops). Each weight is read once per plane, the plane stays in cache."""
    if op_of(func) is not None:
        return None
    sch = s_tir_schedule.Schedule(func)
    convs = [b for b in sch.get_child_blocks(sch.get_sblock("root")) if "conv" in sch.get(b).name_hint]
    if len(convs) != 1:
        return None
    block = convs[0]
    kinds = [iv.iter_type for iv in sch.get(block).iter_vars]
    n_spatial = kinds.count(tvm.tirx.IterVar.DataPar)
    loops = sch.get_loops(block)
    if (n_spatial < 3 or n_spatial == len(kinds) or len(loops) != len(kinds)
            or any(k != tvm.tirx.IterVar.CommReduce for k in kinds[n_spatial:])):
        return None
    outer, plane, reduce = loops[:2], loops[2:n_spatial], loops[n_spatial:]
    pointwise = all(_extent(sch, r) == 1 for r in reduce[1:])
    try:
        sch.reorder(*outer, *reduce, *plane)
        sch.parallel(fuse_loops(sch, outer))
        if pointwise and len(plane) > 1:
            sch.fuse(*plane)  # one unit-stride loop over the plane (a strided conv's reads still land right)
        sch.decompose_reduction(block, reduce[0])
    except s_tir_schedule.ScheduleError:  # a conv form this order does not fit: the naive loops still compute it
        return None
    return sch.mod["main"]


def legalize_and_schedule(mod: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
    """LegalizeOps, then :func:`schedule_matmul` / :func:`schedule_conv` on every float matmul /
    convolution PrimFunc (CPU targets)."""
    with target:
        mod = relax.transform.LegalizeOps()(mod)
    if target.kind.name != "llvm":
        return mod
    for gv, func in list(mod.functions.items()):
        if isinstance(func, tvm.tirx.PrimFunc):
            new = schedule_matmul(func) or schedule_conv(func)
            if new is not None:
                mod.update_func(gv, new)
    return mod
