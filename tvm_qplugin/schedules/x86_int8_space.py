"""The tunable design spaces of the tensorized x86 rules (``apply(func, target, tunable=True)``).

Each space is the rule's own schedule (same packing, same tensor intrinsics, same epilogue) with
the knobs the default fixes by heuristics left to MetaSchedule:

* inside one design, *sampled decisions* MetaSchedule replays (and, for the perfect tiles,
  mutates): the register tile's rows (``sample_categorical`` over divisors: output channels per
  tile for the pixel-lane conv, rows per tile for the GEMMs), the row block of the dense GEMM and
  the channel vectors per tile of the GEMMs (``sample_perfect_tile``);
* across designs, the choices the Python code branches on (the trace cannot replay a branch):
  the accumulator tile's scope (``global``: a stack slot, bounded by ``STACK_BYTES``; ``local``:
  a workspace buffer per tile, no bound), the vectors per tile ``nr`` of the conv (it bounds the
  rows a tile may take) and the order of the tile loops fused into the parallel loop (which
  operand a core reuses from cache: channel tiles outermost, or pixel / row tiles outermost).

The workload is the packed kernel compile builds (its ``qplugin.packed`` info included), so a
record is found by ``query_schedule`` at compile time. What would change the packed kernel
itself (the pixel-lane vs channel-lane choice, the conv's padded pixel count) is a different
workload and is not searched. Every candidate is checked bit-exactly by ``tuning/verify.py``.
Note: the trace names our intrinsics; :func:`register_intrinsics` registers every one the
designs of a kernel may use, so that a record replays in a process that has not built the space.
"""
from __future__ import annotations

from tvm.s_tir import schedule as s_tir_schedule

from .intrin_x86 import ISA_BY_NAME, dot_intrin
from .x86_requant import epilogue_intrin
from .x86_requant_narrow import info_epilogue_intrin, narrow_epilogue_intrin

# accumulator vectors a register tile may hold: 32 zmm (16 ymm) registers minus the broadcast operands
MAX_ACCUMULATORS = {512: 24, 256: 12}
# a "global" tile is a stack slot only below x86_conv_tiles.STACK_BYTES: 15 x 64-byte vectors
STACK_ACCUMULATORS = {512: 15, 256: 12}


def _scopes(isa) -> tuple[str, ...]:
    """Accumulator scopes worth a design: on 256-bit ISAs the register bound comes first."""
    return ("global", "local") if isa.vector_bits == 512 else ("global",)


def _fresh(func):
    return s_tir_schedule.Schedule(func)


def _sample_tile_rows(sch, loop, bound: int):
    """A sampled count of register-tile rows for ``loop``: a divisor of its extent up to ``bound``,
    ``sample_categorical`` over the divisors from 2 (1 only when nothing else divides).
    Note: not ``sample_perfect_tile``: with 1 row, ``reverse_compute_at`` leaves the epilogue one
    loop fewer, and a trace whose ``get_loops`` returns another number of loops does not replay."""
    extent = int(sch.get(loop).extent)
    rows = [d for d in range(2, min(bound, extent) + 1) if extent % d == 0] or [1]
    return sch.sample_categorical(rows, [1.0 / len(rows)] * len(rows))


def conv_pixel_lanes_space(rule, func, info) -> list:
    """Designs of :class:`x86_int8.Conv2DTensorized`: scope x ``nr`` x tile order, each with the
    channels per tile sampled (at most the accumulators the scope allows)."""
    from .x86_conv_gather import _schedule_gather
    from .x86_int8 import _flatten_output, epilogue_lanes
    from .x86_requant import _tensorized_epilogue_at

    isa = ISA_BY_NAME[info["isa"]]
    vectors = info["acc_shape"][2] // isa.lanes
    designs = []
    for scope in _scopes(isa):
        bound = (MAX_ACCUMULATORS if scope == "local" else STACK_ACCUMULATORS)[isa.vector_bits]
        for nr in (n for n in (1, 2) if vectors % n == 0):
            for channels_outer in (True, False):
                sch = _fresh(func)
                acc = sch.get_sblock("acc")
                if scope != "global":
                    sch.set_scope(acc, 0, scope)
                _flatten_output(sch, info["out_shape"], info["acc_shape"])
                b, oc, q, rc, rj = sch.get_loops(acc)
                oo, oi = sch.split(oc, [None, _sample_tile_rows(sch, oc, bound // nr)])
                qo, qr, qi = sch.split(q, [None, nr, isa.lanes])
                sch.reorder(b, *((oo, qo) if channels_outer else (qo, oo)), rc, oi, qr, qi, rj)
                tile = sch.fuse(b, *((oo, qo) if channels_outer else (qo, oo)))
                sch.parallel(tile)
                lanes = epilogue_lanes(isa, nr)
                grouped = lanes > isa.lanes
                _tensorized_epilogue_at(sch, tile, lanes, info["requant"], scope, grouped,
                                        info_epilogue_intrin(lanes, info, scope, grouped))
                _schedule_gather(sch, info)
                init = sch.decompose_reduction(acc, rc)
                sch.vectorize(sch.get_loops(init)[-1])
                sch.tensorize(qi, dot_intrin(isa, "uint8" if isa.kp == 4 else "int16", "b", 0, scope))
                sch.unroll(oi)
                sch.unroll(qr)
                designs.append(sch)
    return designs


def _gemm_tiles(sch, acc, isa, rows_outer: bool, mr_max: int, nr_max: int, row_blocks: bool):
    """Split the GEMM accumulator ``(rows, n, k)``: rows into sampled register rows (at most
    ``mr_max``) and, with ``row_blocks``, the row tiles into sampled blocks; channels into a
    sampled ``(tiles, nr)`` of whole vectors (``nr`` at most ``nr_max``), K by the dot width.
    Returns ``(tile loops in order, ko, mi, nr, ni)``."""
    rows, n, k = sch.get_loops(acc)
    row_tiles, mi = sch.split(rows, [None, _sample_tile_rows(sch, rows, mr_max)])
    row_loops = [*sch.split(row_tiles, sch.sample_perfect_tile(row_tiles, n=2)), mi] if row_blocks else [row_tiles, mi]
    vec, ni = sch.split(n, [None, isa.lanes])
    no, nr = sch.split(vec, sch.sample_perfect_tile(vec, n=2, max_innermost_factor=nr_max))
    ko, ki = sch.split(k, [None, isa.kp])
    *row_tiles, mi = row_loops
    tiles = [*row_tiles[:1], no, *row_tiles[1:]] if rows_outer else [no, *row_tiles]
    sch.reorder(*tiles, ko, mi, nr, ni, ki)
    return tiles, ko, mi, nr, ni


def dense_space(rule, func, info) -> list:
    """Designs of :class:`x86_int8.DenseTensorized`: row blocks outermost (the default: a block's
    activations stay in L2 while every channel tile sweeps it) or channel tiles outermost; rows per
    tile, rows per block and vectors per tile sampled."""
    from .x86_int8 import _dense_tile_body, _flatten_output

    isa = ISA_BY_NAME[info["isa"]]
    small = isa.vector_bits == 256
    designs = []
    for rows_outer in (True, False):
        sch = _fresh(func)
        acc = sch.get_sblock("acc")
        _flatten_output(sch, info["out_shape"], info["acc_shape"])
        tiles, ko, mi, nr, ni = _gemm_tiles(sch, acc, isa, rows_outer, 3 if small else 4, 2 if small else 3, True)
        _dense_tile_body(sch, acc, tiles, ko, mi, nr, ni, isa, info["offset"])
        designs.append(sch)
    return designs


def conv_channel_lanes_space(rule, func, info) -> list:
    """Designs of :class:`x86_conv_channel_lanes.Conv2D1x1ChannelLanes`: channel tiles or pixel
    tiles outermost; pixels per tile and vectors per tile sampled (at most 14 accumulators)."""
    from .x86_int8 import _dense_tile_body

    isa = ISA_BY_NAME[info["isa"]]
    _, _, h, w = info["out_shape"]
    designs = []
    for channels_outer in (True, False):
        sch = _fresh(func)
        sch.transform_block_layout(sch.get_sblock("y"), lambda b, oc, i, j: (b * h * w + i * w + j, oc))
        acc = sch.get_sblock("acc")
        tiles, ko, mi, nr, ni = _gemm_tiles(sch, acc, isa, not channels_outer, 14, 2, False)
        _dense_tile_body(sch, acc, tiles, ko, mi, nr, ni, isa, info["offset"])
        kb, _, j = sch.get_loops(sch.get_sblock("x_kp"))
        sch.parallel(kb)
        sch.unroll(j)
        designs.append(sch)
    return designs


def register_intrinsics(info: dict, act_dtype: str) -> None:
    """Register every tensor intrinsic the designs of a kernel with packing ``info`` may name, so
    that a stored trace replays (``query_schedule``) in a process that never built the space."""
    isa = ISA_BY_NAME[info["isa"]]
    if info["rule"] == "Conv2DTensorized":
        for scope in _scopes(isa):
            dot_intrin(isa, "uint8" if isa.kp == 4 else "int16", "b", 0, scope)
            epilogue_intrin(isa.lanes, info["requant"], scope)
            if info.get("epilogue", "exact") != "exact":   # x86_requant_narrow's
                narrow_epilogue_intrin(isa.lanes, info["requant"], info["epilogue"] == "narrow_shift", scope)
            if isa.vector_bits == 256:  # the two-vector epilogue (x86_int8.epilogue_lanes)
                epilogue_intrin(2 * isa.lanes, info["requant"], scope, grouped=True)
    elif info["rule"] in ("DenseTensorized", "Conv2D1x1ChannelLanes"):
        dot_intrin(isa, act_dtype, "a", info["offset"], "global")
