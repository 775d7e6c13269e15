"""Depthwise int8 ``conv2d_requant`` on small output planes with the *channels* as vector lanes:
the depthwise counterpart of ``x86_conv_channel_lanes`` (MobileNetV2's last block: 960 x 7 x 7,
and the stride-2 576 x 14 x 14 whose output is 7 x 7).

``x86_depthwise.DepthwiseConv2DTensorized`` puts a row's output pixels in the lanes: a 7-pixel row
fills 7 of 16 lanes (AVX-512), and the per-channel work (the padded plane's copy, 7 row epilogues,
7 partial-row stores) outweighs the 441 multiply-adds of a 7 x 7 channel. Here 16 (8) channels
share every vector: the NCHW rows are transposed into channel-interleaved tiles inside the kernel,
the taps are the reduction, and the output tile is transposed back into the NCHW rows.

Exactness: the sums are the kernel's own int32 sums (the dot instructions neither saturate nor
round; the zero-weight pad taps add 0); the s8 -> u8 offset (VNNI) is removed through the bias
and the epilogue is x86_requant's expression, checked per call by its ``_epilogue_exact``.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx
from tvm.s_tir import TensorIntrin
from tvm.script import from_source
from tvm.script import tirx as T

from .intrin_x86 import ISA_BY_NAME, DotIsa, _dot, _operand, dot_term
from .packing import Packing, tag_packed
from .x86_depthwise import DepthwiseGeometry
from .x86_int8 import TensorizedRule, _fits_int32
from .x86_requant import (
    _channel_placeholders,
    _requant_stage,
    _with_root_regions,
)

# Taken where it measured faster than the pixel-lane rule (benchmarks/x86_depthwise.py --before
# pixel-lanes, one thread, interleaved, bit-exact; docs/kernels.md "Depthwise on channel lanes"):
# output rows of at most MAX_OUT_WIDTH pixels, and on the 256-bit ISAs (8 lanes: a 7-pixel row already
# fills 7 of 8) stride 1 only. MobileNetV2, AVX-512 VNNI: 960 x 7 x 7 2.6x, 576 x 14 x 14 s2 1.3x;
# 14 x 14 s1 0.69-0.83x and 28 x 28 s2 0.69-0.72x (rows of 14: the pixel lanes are full, the transposes
# are extra). AVX2: 7 x 7 1.4x, 14 x 14 s2 0.83-0.90x.
MAX_OUT_WIDTH = 7
STRIDES = {512: (1, 2), 256: (1,)}


class DepthwiseChannelLanes(TensorizedRule):
    """Depthwise ``conv2d_requant`` (groups == C == O, dilation 1, C a multiple of the lanes) on a
    small output plane (:data:`MAX_OUT_WIDTH`, :data:`STRIDES`), channels in the lanes.

    Per block of ``L`` channels (the parallel loop; L = 16 on AVX-512, 8 on 256-bit ISAs):
    1. ``x_rows``: the block's NCHW planes transposed to ``[H, W, L]`` -- on AVX-512 small planes
       whole (:data:`WHOLE_PLANE_PIXELS`: one load, one shuffle, one store;
       :func:`block_transpose_intrin`), else per input row ``L`` row loads and one shuffle
       (:func:`transpose_intrin`); ``x_t``: the zero-padded plane from it (s8 + 128 on VNNI,
       widened to int16 for the int16 instructions), whole vectors.
    2. Taps as the reduction: for an output pixel and kernel row, the ``kp`` consecutive columns
       of the ``L`` channels are one contiguous vector of ``x_t``; one shuffle makes them
       lane-major and one dot instruction adds them times the lanes' own ``kp`` weights (packed
       ``[C/L, KH, ceil(KW/kp), L, kp]``, zero past KW; 3x3 on VNNI: 3 of 4 taps). Register tile: a
       column of the output plane (``OH`` accumulators, unrolled), so the window of each input
       row serves every output row it lies under (7 x 7: 9 windows for 7 outputs, not 21).
    3. The column is requantized from registers with per-lane constants
       (:func:`lanes_epilogue_intrin`) into the block's ``[OH, OW, L]`` tile, which is transposed
       back to the ``L`` NCHW planes (whole, or per output row one load and ``L`` shuffled row
       stores).
    Note: odd channel counts keep the pixel-lane rule (a partial block would need masked loads
    and stores of the NCHW rows).
    """

    op = "conv2d_requant"

    def pack_for(self, func, params, shapes, isa):
        geo = DepthwiseGeometry.of(params, shapes, isa)
        if geo is None:
            return None
        xs, nb, c, h, w, kh, kw = shapes[0][0], geo.nb, geo.c, geo.h, geo.w, geo.kh, geo.kw
        sh, sw, adt, off, oh, ow, rbs = geo.sh, geo.sw, geo.adt, geo.off, geo.oh, geo.ow, geo.rbs
        lanes, kp = isa.lanes, isa.kp
        registers = 32 if isa.vector_bits == 512 else 16
        if (c % lanes or ow > MAX_OUT_WIDTH or sh != sw or sh not in STRIDES[isa.vector_bits]
                or oh + kh * rbs + 2 > registers or not _fits_int32(adt, kh * kw, off)):
            return None
        cb = c // lanes
        hx = sh * (oh - 1) + kh
        wx = sw * (ow - 1) + rbs * kp
        info = {"rule": type(self).__name__, "isa": isa.name, "offset": off, "out_shape": [nb, c, oh, ow],
                "in_shape": [nb, c, h, w], "x_dtype": adt, "out_dtype": params["out_dtype"],
                "requant": {key: params[key] for key in ("qmin", "qmax", "out_dtype")}}

        def pack_args(consts):
            wp, channel = geo.packed_constants(consts, kp)
            wp = wp.reshape(cb, lanes, kh, rbs, kp).transpose(0, 2, 3, 1, 4)
            return [np.ascontiguousarray(wp.astype(isa.packed_dtype)), *channel]

        x = te.placeholder(xs, adt, name="x")
        wp = te.placeholder((cb, kh, rbs, lanes, kp), isa.packed_dtype, name="w_packed")
        consts = _channel_placeholders(c)
        xr = te.compute((nb, cb, h, w, lanes), lambda b, blk, r, col, lane: x[b, blk * lanes + lane, r, col],
                        name="x_rows")

        xt = te.compute((nb, cb, hx, wx, lanes), lambda b, blk, r, col, lane: geo.padded_operand(
            lambda row, cl: xr[b, blk, row, cl, lane], r, col), name="x_t")
        ry, rb, rk = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, rbs), "rb"), te.reduce_axis((0, kp), "rk")
        acc = te.compute((nb, cb, oh, ow, lanes), lambda b, blk, i, j, lane: te.sum(
            dot_term(xt[b, blk, i * sh + ry, j * sw + rb * kp + rk, lane], wp[blk, ry, rb, lane, rk], 0),
            axis=[ry, rb, rk]), name="acc")
        y = _requant_stage(acc, (nb, c, oh, ow), lambda i: (i[0], i[1] // lanes, i[2], i[3], i[1] % lanes),
                           lambda a: a[1] * lanes + a[4], consts, params, True)
        out = te.create_prim_func([x, wp, *consts, y]).without_attr("global_symbol")
        return Packing(tag_packed(out, func, info), (1, 2, 3, 4), pack_args, geo.epilogue_exact)

    def schedule(self, sch, info):
        isa = ISA_BY_NAME[info["isa"]]
        lanes = isa.lanes
        acc = sch.get_sblock("acc")
        b, blk, i, j, lane, ry, rb, rk = sch.get_loops(acc)
        tile = sch.fuse(b, blk)
        sch.parallel(tile)
        sch.reorder(tile, j, ry, rb, i, lane, rk)   # a column of output rows per register tile
        xt = sch.get_sblock("x_t")
        sch.compute_at(xt, tile, preserve_unit_loops=True)
        sch.vectorize(sch.get_loops(xt)[-1])
        xrows = sch.get_sblock("x_rows")
        sch.compute_at(xrows, tile, preserve_unit_loops=True)
        _transposed(sch, xrows, info["x_dtype"], isa, info["in_shape"][2:], "in")
        ytile = sch.get_sblock("y_tile")
        sch.reverse_compute_at(ytile, j)
        *_, yr, _, yl = sch.get_loops(ytile)
        sch.unroll(yr)
        init = sch.decompose_reduction(acc, ry)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(lane, lanes_intrin(isa))
        for loop in (ry, rb, i):
            sch.unroll(loop)
        y = sch.get_sblock("y")
        whole = _whole_planes(info["out_shape"][2:], isa.vector_bits)
        sch.transform_block_layout(y, (lambda b, ch, i, j: (b, ch // lanes, ch % lanes, i, j)) if whole else
                                   (lambda b, ch, i, j: (b, ch // lanes, i, ch % lanes, j)))
        sch.reverse_compute_at(y, tile)
        _transposed(sch, y, info["out_dtype"], isa, info["out_shape"][2:], "out")
        sch.tensorize(yl, lanes_epilogue_intrin(lanes, info["requant"]))


# AVX-512 (vpermb / vpermt2b): planes of at most this many pixels are transposed a block of whole
# planes at a time, one shuffle (960 x 7 x 7: 2.0 -> 2.7x over the pixel lanes); larger ones row by row
# (576 x 14 x 14's input as one 3136-byte shuffle: 1.28 -> 1.10x). 256-bit ISAs row by row: without a
# byte permute across the register the whole-plane shuffle made 7 x 7 slower (AVX2 1.39 -> 1.26x,
# AVX-VNNI 1.40 -> 1.20x).
WHOLE_PLANE_PIXELS = {512: 64, 256: 0}


def _whole_planes(plane, vector_bits: int) -> bool:
    return plane[0] * plane[1] <= WHOLE_PLANE_PIXELS[vector_bits]


def _transposed(sch, block, dtype: str, isa: DotIsa, plane, direction: str) -> None:
    """Tensorize the NCHW <-> channel-tile copy ``block`` (its loops (row, column, lane) for "in";
    (lane, row, column) or (row, lane, column) for "out", as :func:`_whole_planes` laid it out)."""
    loops = sch.get_loops(block)
    lanes = isa.lanes
    if _whole_planes(plane, isa.vector_bits):
        sch.tensorize(loops[-3], block_transpose_intrin(dtype, lanes, plane, direction))
    else:
        sch.tensorize(loops[-2], transpose_intrin(dtype, lanes, plane[1], direction))


_REGISTERED: dict = {}


def lanes_intrin(isa: DotIsa) -> str:
    """``C[l] += sum_k A[k, l] * B[l, k]`` for ``l < lanes``, ``k < kp``: A the ``kp`` columns of
    the lanes' channels (one contiguous vector of ``x_t``: one load, one shuffle to lane-major),
    B the lanes' own packed weights (one load). Registered on first use."""
    if isa in _REGISTERED:
        return _REGISTERED[isa]
    lanes, kp, w_dtype = isa.lanes, isa.kp, isa.packed_dtype
    a_dtype = "uint8" if kp == 4 else "int16"

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (kp, lanes), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, kp), w_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:kp, 0:lanes], B[0:lanes, 0:kp])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, kp):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + dot_term(A[vk, vi], B[vi, vk], 0)

    indices = [k * lanes + l for l in range(lanes) for k in range(kp)]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (kp, lanes), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (lanes, kp), w_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:kp, 0:lanes], B[0:lanes, 0:kp])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = _dot(isa, C.vload([0], f"int32x{lanes}"),
                                                   tirx.Shuffle([A.vload([0, 0], f"{a_dtype}x{kp * lanes}")], indices),
                                                   _operand(B, w_dtype, lanes * kp, isa, 0, False))

    name = f"qplugin_dw_lanes_{isa.name}"
    TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED[isa] = name
    return name


def lanes_epilogue_intrin(lanes: int, params: dict) -> str:
    """The requantization of one vector of ``lanes`` channels, each with its own constants:
    x86_requant's epilogue (its description *is* ``_requant_stage``'s TE expression, so only a
    kernel whose epilogue is that expression matches) on even / odd qwords, as
    ``x86_requant.epilogue_intrin`` computes it for one channel's broadcast constants. ``vpmuldq``
    reads the sign-extended low dword of each qword: the even lanes' accumulators and multipliers in
    place, the odd ones after an arithmetic 32-bit shift; the int64 ``folded`` constants split into
    their even and odd lanes; one shuffle takes the high word of each sum. Same integers: ``P'`` is
    the exact int64 sum within ``_epilogue_exact``'s bounds, and its high word is ``floor(P' /
    2**32)`` either way."""
    key = ("epilogue", lanes, params["qmin"], params["qmax"], params["out_dtype"])
    if key in _REGISTERED:
        return _REGISTERED[key]
    acc = te.placeholder((lanes,), "int32", name="acc")
    consts = _channel_placeholders(lanes)
    y = _requant_stage(acc, (lanes,), lambda i: i, lambda a: a[0], consts, params, False)
    desc = _with_root_regions(te.create_prim_func([acc, *consts, y]))
    qmin, qmax, dt = params["qmin"], params["qmax"], params["out_dtype"]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, f: T.handle, m: T.handle, p: T.handle, q: T.handle, o: T.handle) -> None:
        A = T.match_buffer(a, (lanes,), "int32", offset_factor=1)
        F = T.match_buffer(f, (lanes,), "int64", offset_factor=1)
        M = T.match_buffer(m, (lanes,), "int32", offset_factor=1)
        P = T.match_buffer(p, (lanes,), "int32", offset_factor=1)
        Q = T.match_buffer(q, (lanes,), "int32", offset_factor=1)
        O = T.match_buffer(o, (lanes,), dt, offset_factor=1)
        with T.sblock("root"):
            T.reads(A[0:lanes], F[0:lanes], M[0:lanes], P[0:lanes], Q[0:lanes])
            T.writes(O[0:lanes])
            O[T.ramp(T.int32(0), 1, lanes)] = _lanes_epilogue_vector(
                A.vload([0], f"int32x{lanes}"), F.vload([0], f"int64x{lanes}"), M.vload([0], f"int32x{lanes}"),
                P.vload([0], f"int32x{lanes}"), Q.vload([0], f"int32x{lanes}"), lanes, qmin, qmax, dt)

    name = f"qplugin_dw_lanes_epilogue_{lanes}_{qmin}_{qmax}_{dt}"
    TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED[key] = name
    return name


def _lanes_epilogue_vector(acc, folded, mult, pre, post, lanes: int, qmin: int, qmax: int, dt: str):
    """The vector expression of :func:`lanes_epilogue_intrin` (per-lane constants)."""
    half = lanes // 2
    thirty_two = T.broadcast(T.int64(32), half)
    shifted = T.reinterpret(acc << pre, dtype=f"int64x{half}")
    m = T.reinterpret(mult, dtype=f"int64x{half}")
    folded_even = tirx.Shuffle([folded], list(range(0, lanes, 2)))
    folded_odd = tirx.Shuffle([folded], list(range(1, lanes, 2)))
    even = T.reinterpret(((shifted << thirty_two) >> thirty_two) * ((m << thirty_two) >> thirty_two) + folded_even
                         >> thirty_two, dtype=f"int32x{lanes}")
    odd = T.reinterpret((shifted >> thirty_two) * (m >> thirty_two) + folded_odd, dtype=f"int32x{lanes}")
    high = tirx.Shuffle([even, odd], [l + (lanes if l % 2 else 0) for l in range(lanes)])
    clamped = T.max(T.min(high >> post, T.broadcast(T.int32(qmax), lanes)), T.broadcast(T.int32(qmin), lanes))
    return T.Cast(f"{dt}x{lanes}", clamped)


def block_transpose_intrin(dtype: str, lanes: int, plane, direction: str) -> str:
    """``direction`` "in": ``D[r, c, l] = A[l, r, c]`` -- a block of ``lanes`` whole NCHW channel
    planes (contiguous) into the channel-interleaved tile; "out": the inverse. One load, one
    shuffle, one store of ``lanes * H * W`` elements: LLVM lowers the shuffle to ``vpermt2b``
    sequences (960 x 7 x 7 bytes: 1.6 us for all 60 blocks). The source text is generated (the
    shuffle's index list is a constant); registered on first use."""
    height, width = plane
    key = ("block_transpose", dtype, lanes, height, width, direction)
    if key in _REGISTERED:
        return _REGISTERED[key]
    planes, tile = (lanes, height, width), (height, width, lanes)
    src, dst = (planes, tile) if direction == "in" else (tile, planes)
    n = lanes * height * width
    if direction == "in":
        index = [l * height * width + q for q in range(height * width) for l in range(lanes)]
        update = "D[vi, vj, vk] = A[vk, vi, vj]"
    else:
        index = [q * lanes + l for l in range(lanes) for q in range(height * width)]
        update = "D[vi, vj, vk] = A[vj, vk, vi]"

    def region(name, shape):
        return f"{name}[" + ", ".join(f"0:{d}" for d in shape) + "]"

    head = f"""
@T.prim_func(s_tir=True)
def f(a: T.handle, d: T.handle):
    A = T.match_buffer(a, {src}, "{dtype}", offset_factor=1)
    D = T.match_buffer(d, {dst}, "{dtype}", offset_factor=1)
    with T.sblock("root"):
        T.reads({region("A", src)})
        T.writes({region("D", dst)})
"""
    desc = head + f"""        for i, j, k in T.grid({dst[0]}, {dst[1]}, {dst[2]}):
            with T.sblock("update"):
                vi, vj, vk = T.axis.remap("SSS", [i, j, k])
                {update}
"""
    impl = head + f"        D[0, 0, T.Ramp(0, 1, {n})] = T.Shuffle([A[0, 0, T.Ramp(0, 1, {n})]], {index})\n"
    name = f"qplugin_dw_block_transpose_{direction}_{dtype}_{lanes}x{height}x{width}"
    TensorIntrin.register(name, from_source(desc), from_source(impl), override=True)
    _REGISTERED[key] = name
    return name


def transpose_intrin(dtype: str, lanes: int, width: int, direction: str) -> str:
    """``direction`` "in": ``D[w, l] = A[l, w]`` (A: ``lanes`` rows of ``width`` elements at any
    pitch -- the NCHW channels' rows; D the contiguous tile) as ``lanes`` row loads and one
    shuffle; "out": the inverse, ``D[l, w] = A[w, l]`` (D: rows at any pitch) as one load and
    ``lanes`` shuffled row stores. The source text is generated (the shuffles' index lists are
    constants); registered on first use."""
    key = ("transpose", dtype, lanes, width, direction)
    if key in _REGISTERED:
        return _REGISTERED[key]
    # the NCHW side is (channels, one row, width) of a 4-D buffer: tensorize matches the region's
    # trailing dimensions
    rows, tile = (lanes, 1, width), (width, lanes)
    src, dst = (rows, tile) if direction == "in" else (tile, rows)
    src_pitch, dst_pitch = (", strides=[pitch, row_pitch, 1]", "") if direction == "in" else \
        ("", ", strides=[pitch, row_pitch, 1]")

    def region(name, shape):
        return f"{name}[" + ", ".join(f"0:{n}" for n in shape) + "]"

    head = f"""
@T.prim_func(s_tir=True)
def f(a: T.handle, d: T.handle):
    pitch = T.int32()
    row_pitch = T.int32()
    A = T.match_buffer(a, {src}, "{dtype}", offset_factor=1{src_pitch})
    D = T.match_buffer(d, {dst}, "{dtype}", offset_factor=1{dst_pitch})
    with T.sblock("root"):
        T.reads({region("A", src)})
        T.writes({region("D", dst)})
"""
    if direction == "in":
        desc = head + f"""        for i, j in T.grid({width}, {lanes}):
            with T.sblock("update"):
                vi, vj = T.axis.remap("SS", [i, j])
                D[vi, vj] = A[vj, 0, vi]
"""
        rows_loaded = ", ".join(f"A[{l}, 0, T.Ramp(0, 1, {width})]" for l in range(lanes))
        index = [l * width + w for w in range(width) for l in range(lanes)]
        impl = head + f"        D[0, T.Ramp(0, 1, {width * lanes})] = T.Shuffle([{rows_loaded}], {index})\n"
    else:
        desc = head + f"""        for i, j in T.grid({lanes}, {width}):
            with T.sblock("update"):
                vi, vj = T.axis.remap("SS", [i, j])
                D[vi, 0, vj] = A[vj, vi]
"""
        impl = head + "".join(
            f"        D[{l}, 0, T.Ramp(0, 1, {width})] = T.Shuffle([A[0, T.Ramp(0, 1, {width * lanes})]], "
            f"{[w * lanes + l for w in range(width)]})\n" for l in range(lanes))
    name = f"qplugin_dw_transpose_{direction}_{dtype}_{lanes}x{width}"
    TensorIntrin.register(name, from_source(desc), from_source(impl), override=True)
    _REGISTERED[key] = name
    return name
