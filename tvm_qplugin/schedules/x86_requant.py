"""The requantization of the tensorized x86 kernels' int32 accumulators in 32-bit lanes: the
per-channel constants (computed at build time), their exactness bounds, the TE expression every
packed kernel's epilogue is, and the tensor intrinsic that computes it on even / odd qwords
(used by the groups-1 convs of ``x86_int8`` and the depthwise convs of ``x86_depthwise``), and
the schedule steps that place it under a kernel's tile loop (:func:`_epilogue_at`,
:func:`_tensorized_epilogue_at`).

One home for the epilogue: the TE expression (:func:`_requant_stage`) is the description of the
intrinsic (:func:`epilogue_intrin`), so a kernel whose epilogue differs is not matched.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx
from tvm.s_tir import SBlock, SBlockRealize, TensorIntrin
from tvm.script import tirx as T

from ..ops.requant import i64
from ..quant import abs_max


def _bias_with_offset(w2d: np.ndarray, bias: np.ndarray, offset: int) -> np.ndarray:
    """int64 bias minus the offset's contribution ``offset * sum_k w[o, k]``."""
    return bias.astype(np.int64) - offset * w2d.astype(np.int64).sum(axis=1)


def _shift_split(shift: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per channel ``(t, s2)``: the accumulator pre-shift ``t`` that brings the total shift to at
    least 32, and the int32 shift ``s2`` applied to the product's high word."""
    sh = shift.astype(np.int64)
    t = np.maximum(0, 32 - sh)
    return t, np.minimum(sh + t - 32, 31)


def _epilogue_exact(w2d: np.ndarray, bias: np.ndarray, mult: np.ndarray, shift: np.ndarray, act_dtype: str,
                    offset: int) -> bool:
    """The packed kernels requantize in 32-bit lanes but for one int32 x int32 -> int64 product
    (``vpmuldq``; a full int64 multiply is three instructions on AVX2, an int64 shift and clamp
    several more):

        P' = (acc << t) * m + ((bias * m + round) << t)      (= P * 2**t, P the int64 product)
        y  = clamp((P' >> 32) >> s2)                          (int32 high word, then int32 shift)

    with ``t, s2`` from :func:`_shift_split` and ``bias * m + round`` a compile-time constant.
    ``floor(floor(P' / 2**32) / 2**s2) = floor(P / 2**shift)``: the same integers as the op, when
    ``acc << t`` fits int32, the multiplier fits int32 and ``P'`` stays inside int64 -- checked
    here per call with the offset sum's bound ``(max|x| + offset) * sum|w|``."""
    w = np.abs(w2d.astype(np.int64)).sum(axis=1).astype(np.float64)
    acc = (abs_max(act_dtype) + offset) * w
    corrected = np.abs(_bias_with_offset(w2d, bias, offset)).astype(np.float64)
    m = np.abs(mult.astype(np.int64))
    scale = np.exp2(_shift_split(shift)[0].astype(np.float64))
    return bool((m < 2**31).all() and (acc * scale < 2.0**31).all()
                and ((acc + corrected) * m.astype(np.float64) * scale < 2.0**62).all())


def _channel_consts(w2d, bias, mult, shift, offset: int, pad_to: int) -> list[np.ndarray]:
    """Per channel, zero-padded to ``pad_to`` (pad lanes are computed, then dropped, and must
    read in bounds): int64 ``(bias * m + round) << t`` (offset-corrected bias), int32 ``m``, and
    the two int32 shifts ``t``, ``s2`` (:func:`_epilogue_exact`)."""
    m, sh = mult.astype(np.int64), shift.astype(np.int64)
    t, s2 = _shift_split(sh)
    folded = (_bias_with_offset(w2d, bias, offset) * m + ((np.int64(1) << sh) >> 1)) << t
    out = []
    for value, dtype in ((folded, np.int64), (m, np.int32), (t, np.int32), (s2, np.int32)):
        padded = np.zeros(pad_to, dtype)
        padded[: len(value)] = value
        out.append(padded)
    return out


def _channel_placeholders(channels: int):
    return (te.placeholder((channels,), "int64", name="bias_times_multiplier"),
            te.placeholder((channels,), "int32", name="multiplier"), te.placeholder((channels,), "int32", name="pre_shift"),
            te.placeholder((channels,), "int32", name="post_shift"))


def _requant_stage(acc, shape, acc_index, channel, consts, params, padded: bool):
    """The requantization of ``acc`` into the output of ``shape`` (element ``i`` from
    ``acc[acc_index(i)]``, channel ``channel(acc index)``): straight into the output when the
    accumulator has no pad lanes, else into a tile of the accumulator's shape (``y_tile``: kept
    in registers, vectorized without a predicate) copied out after."""
    folded, mult, pre, post = consts

    def rq(a):  # see _epilogue_exact
        ch = channel(a)
        product = i64(acc(*a) << pre[ch]) * i64(mult[ch]) + folded[ch]
        high = (product >> tirx.const(32, "int64")).astype("int32") >> post[ch]
        return clamp_to(high, params)

    return laid_out(rq, acc, shape, acc_index, padded)


def clamp_to(y, params: dict):
    """int32 ``y`` clamped to the output's ``[qmin, qmax]`` and cast to its dtype."""
    return tirx.max(tirx.min(y, tirx.const(params["qmax"], "int32")),
                    tirx.const(params["qmin"], "int32")).astype(params["out_dtype"])


def laid_out(rq, acc, shape, acc_index, padded: bool):
    """The epilogue ``rq`` (of an accumulator index) as the output of ``shape``: ``y`` directly, or
    ``y_tile`` over the accumulator then ``y`` when the accumulator has pad lanes -- the layout every
    packed kernel's epilogue intrinsic is matched against (exact and narrow alike)."""
    if not padded:
        return te.compute(shape, lambda *i: rq(acc_index(i)), name="y")
    tile = te.compute(acc.shape, lambda *a: rq(a), name="y_tile")
    return te.compute(shape, lambda *i: tile(*acc_index(i)), name="y")


_REGISTERED: dict[tuple, str] = {}


def epilogue_intrin(lanes: int, params: dict, acc_scope: str = "global", grouped: bool = False) -> str:
    """The requantization of ``lanes`` accumulators of one channel (in a buffer of ``acc_scope``:
    the depthwise tile is a plain stack buffer, the groups-1 conv's a ``local`` one, as its dot
    intrinsic writes), computed on even / odd
    qwords: ``vpmuldq`` reads the (sign-extended) low dword of each qword, so the even
    accumulators multiply in place and the odd ones after an arithmetic 32-bit shift; one shuffle
    takes the high word of each sum ``P' = (acc << t) * m + folded`` (:func:`_epilogue_vector`).
    Same integers: ``P'`` is the exact int64 sum (``_epilogue_exact``'s bounds) and its high
    word is ``floor(P' / 2**32)`` either way -- 9 instructions per 16 outputs where LLVM makes 15
    of the per-lane int64 expression (sign extension, two halves, truncation). ``grouped``: the
    high words taken in groups of 4 lanes (:func:`_epilogue_vector`), for the AVX2 groups-1 conv's
    two-vector epilogue.

    The description *is* the packed kernels' TE expression (``_requant_stage`` on one channel), so
    tensorize only matches the kernels whose epilogue is that expression; the implementation
    restates it. Should ``_requant_stage`` change, this must change with it: the bit-exact
    tests and every compile's check against the NumPy twin catch a divergence.
    MobileNetV2's groups-1 convs (the tile's rows are output channels): 2178 -> 2005 us in all,
    the thin layers (K = 16 .. 32) 1.1-1.2x."""
    key = ("epilogue", lanes, params["qmin"], params["qmax"], params["out_dtype"], acc_scope, grouped)
    if key in _REGISTERED:
        return _REGISTERED[key]
    acc = te.placeholder((lanes,), "int32", name="acc")
    consts = _channel_placeholders(1)
    y = _requant_stage(acc, (lanes,), lambda i: i, lambda a: 0, consts, params, False)
    desc = _with_root_regions(te.create_prim_func([acc, *consts, y]))
    if acc_scope != "global":
        desc = desc.specialize({desc.params[0]: tvm.tirx.decl_buffer((lanes,), "int32", "acc", scope=acc_scope)})
    qmin, qmax, dt = params["qmin"], params["qmax"], params["out_dtype"]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, f: T.handle, m: T.handle, p: T.handle, q: T.handle, o: T.handle) -> None:
        A = T.match_buffer(a, (lanes,), "int32", offset_factor=1, scope=acc_scope)
        F = T.match_buffer(f, (1,), "int64", offset_factor=1)
        M = T.match_buffer(m, (1,), "int32", offset_factor=1)
        P = T.match_buffer(p, (1,), "int32", offset_factor=1)
        Q = T.match_buffer(q, (1,), "int32", offset_factor=1)
        O = T.match_buffer(o, (lanes,), dt, offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:lanes], F[0:1], M[0:1], P[0:1], Q[0:1])
            T.writes(O[0:lanes])
            O[T.ramp(T.int32(0), 1, lanes)] = _epilogue_vector(A.vload([0], f"int32x{lanes}"), F[0], M[0], P[0], Q[0],
                                                               lanes, qmin, qmax, dt, grouped)

    name = f"qplugin_epilogue_{lanes}_{qmin}_{qmax}_{dt}_{acc_scope}" + ("_grouped" if grouped else "")
    TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED[key] = name
    return name


def _with_root_regions(func):
    """``func`` whose root block reads every input buffer whole and writes the output (what a
    tensor intrinsic's description declares; TE leaves the root block's regions empty)."""
    root = func.body.block
    inner = root.body.body.block                      # the one loop's block, its regions in TE's order

    def whole(regions):
        return [tirx.BufferRegion(r.source, [tvm.ir.Range(0, d) for d in r.source.ty.shape]) for r in regions]

    block = SBlock([], whole(inner.reads), whole(inner.writes), root.name_hint, root.body)
    return func.with_body(SBlockRealize([], True, block))


def _epilogue_vector(acc, folded, mult, pre, post, lanes: int, qmin: int, qmax: int, dt: str, grouped: bool = False):
    """The vector expression of :func:`epilogue_intrin`.

    The high dwords of the even and odd products sit at the odd dword positions of their qwords.
    By default one shuffle takes them in lane order (LLVM: the even products shifted into place,
    then a blend, or ``vpermt2d`` on AVX-512). ``grouped`` takes them per 128-bit group of 4 lanes
    in the order (0, 2, 1, 3) instead -- one ``vshufps`` where the shift and the blend were two --
    and puts the narrowed outputs back in lane order at the end, where LLVM folds that permutation
    into the pack sequence's own final shuffle (AVX2, two ymm narrowed to u8 together: a
    ``vpshufb`` in place of a ``vpshufd``; with one ymm LLVM cannot fold it and the count is
    unchanged, so the one-vector epilogues keep the default). Lane for lane the same integers:
    only where each lane's value travels changes."""
    half = lanes // 2
    shifted = T.reinterpret(acc << T.broadcast(pre, lanes), dtype=f"int64x{half}")
    m = T.broadcast(T.Cast("int64", mult), half)
    b = T.broadcast(folded, half)
    thirty_two = T.broadcast(T.int64(32), half)
    even = ((shifted << thirty_two) >> thirty_two) * m + b
    odd = T.reinterpret((shifted >> thirty_two) * m + b, dtype=f"int32x{lanes}")
    grouped = grouped and lanes % 4 == 0
    if grouped:  # lane i holds output order[i] (an involution: the same list puts them back)
        order = [4 * (i // 4) + (0, 2, 1, 3)[i % 4] for i in range(lanes)]
        high = tirx.Shuffle([T.reinterpret(even, dtype=f"int32x{lanes}"), odd],
                            [(lanes if j % 2 else 0) + 2 * (j // 2) + 1 for j in order])
    else:
        high = tirx.Shuffle([T.reinterpret(even >> thirty_two, dtype=f"int32x{lanes}"), odd],
                            [l + (lanes if l % 2 else 0) for l in range(lanes)])
    clamped = T.max(T.min(high >> T.broadcast(post, lanes), T.broadcast(T.int32(qmax), lanes)),
                    T.broadcast(T.int32(qmin), lanes))
    narrowed = T.Cast(f"{dt}x{lanes}", clamped)
    return tirx.Shuffle([narrowed], order) if grouped else narrowed


def _has_block(sch, name: str) -> bool:
    try:
        sch.get_sblock(name)
        return True
    except Exception:  # noqa: BLE001 -- s_tir raises a plain error for a missing block
        return False


def _epilogue_at(sch, tile, lanes: int) -> None:
    """Requantize each accumulator tile under its ``tile`` loop, vectorized by ``lanes``."""
    first = "y_tile" if _has_block(sch, "y_tile") else "y"
    stage = sch.get_sblock(first)
    if first == "y_tile":
        sch.set_scope(stage, 0, "local")
    for name in (first, "y") if first == "y_tile" else (first,):
        sch.reverse_compute_at(sch.get_sblock(name), tile)
    # only the loops *inside* the tile: with one row per tile (mr == 1) the loop above the pixel /
    # channel loop is the parallel tile loop itself, and unrolling it (PP-OCRv5 det's last conv:
    # 4096 tiles) serialized the kernel and kept LLVM busy for over 15 minutes
    *rows, last = _loops_under(sch, stage, tile)[-2:]
    outer, inner = sch.split(last, [None, lanes])
    sch.vectorize(inner)
    for loop in (*rows, outer):  # constant tile indices: LLVM keeps the accumulators in registers
        sch.unroll(loop)


def _tensorized_epilogue_at(sch, tile, lanes: int, requant: dict, acc_scope: str, grouped: bool = False,
                            intrin: str | None = None) -> None:
    """Requantize each accumulator tile under its ``tile`` loop with :func:`epilogue_intrin`, or
    ``intrin`` (x86_requant_narrow's), one output channel per tile row and ``lanes`` pixels per
    step, into the tile ``y_tile``, then copy
    its rows to the NCHW output (the intrinsic writes a whole vector: on the 4-D output a vector
    of a flattened pixel range is no rectangle tensorize can match)."""
    stage = sch.get_sblock("y_tile")
    for name in ("y_tile", "y"):
        sch.reverse_compute_at(sch.get_sblock(name), tile)
    *rows, last = _loops_under(sch, stage, tile)[-2:]
    outer, inner = sch.split(last, [None, lanes])
    for loop in (*rows, outer):  # constant tile indices: LLVM keeps the accumulators in registers
        sch.unroll(loop)
    sch.tensorize(inner, intrin or epilogue_intrin(lanes, requant, acc_scope, grouped))
    # the copy's own loops only: a tile of one channel and one pixel (Silero VAD's last 128 -> 1
    # conv on a 1x1 plane) has none, and the innermost loop of the block is then the parallel tile
    # loop, whose vectorization put the dot intrinsic's vectors inside a vectorized loop ("Cannot
    # broadcast lanes=16 to 64" in TVM's vectorizer)
    copy_loops = _loops_under(sch, sch.get_sblock("y"), tile)
    if copy_loops:
        _, copy = sch.split(copy_loops[-1], [None, lanes])
        sch.vectorize(copy)


def _loops_under(sch, block, loop) -> list:
    """The loops of ``block`` nested inside ``loop`` (innermost last)."""
    loops = sch.get_loops(block)
    target = sch.get(loop)
    at = next(i for i, lp in enumerate(loops) if sch.get(lp).same_as(target))
    return loops[at + 1:]
