"""Depthwise int8 ``conv2d_requant`` on AVX2 with the taps of *two input rows* as ``vpmaddwd``'s
pairs: no shuffle in the inner loop.

``vpmaddwd`` multiplies adjacent int16 pairs and adds each pair into an int32 lane. With a row's
output pixels in the lanes (``x86_depthwise.DepthwiseConv2DTensorized``) a pair must come from the
taps, and that rule pairs horizontal neighbours: every window is a load, a ``vpermq`` and a
``vpshufb`` (stride 1). On Zen 3 (``znver3``) the shuffles and the requantization's shifts share
two pipes and were the bound: ~14 shuffle / shift instructions for every 8 outputs against 6
``vpmaddwd``.

Here the pairs are *vertical*: per channel the zero-padded plane is interleaved once into a plane
of row pairs, ``x_pairs[p, phase, c, e] = x_pad[2p + e, sw * c + phase]`` (int16; for stride 2 the
columns are deinterleaved by ``phase`` in the same pass), so that for 8 consecutive output pixels
the 16 values ``(x[2p][col + l], x[2p + 1][col + l])`` are one contiguous load. An output row ``i``
(stride ``sh``) reads input rows ``sh * i + ky``; with ``npar`` output rows per pair row (2 at
stride 1, 1 at stride 2) and ``d = sh * (i % npar) + ky``, tap row ``ky`` is element ``d % 2`` of
pair row ``i // npar + d // 2``. The weights are packed per output row parity
``w_pairs[ch, par, q, kx, e] = w[ch, 2q + e - sh * par, kx]`` (0 outside the kernel), broadcast:
3x3 stride 1 is ``x_pairs[i/2] . (w0, w1) + x_pairs[i/2 + 1] . (w2, 0)`` for even rows and
``x_pairs[i/2] . (0, w0) + x_pairs[i/2 + 1] . (w1, w2)`` for odd rows -- 6 ``vpmaddwd`` and no
shuffle per 8 outputs, each pair-row load shared by the rows of the register tile it lies under.

Exactness: the sums are the kernel's own int32 sums (``vpmaddwd`` neither saturates nor rounds on
int16 operands; the zero weights add 0), the epilogue is x86_requant_narrow's where every call's
constants prove it (the accumulator starts at the bias; :data:`NARROW`), else x86_requant's,
checked per call by ``_epilogue_exact``.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import te, tirx
from tvm.s_tir import TensorIntrin
from tvm.script import from_source

from .intrin_x86 import AVX2, ISA_BY_NAME, dot_intrin, dot_term
from .packing import Packing, tag_packed
from .x86_depthwise import DepthwiseGeometry, _schedule_padding, stage_output_at
from .x86_conv_tiles import _round_up
from .x86_int8 import TensorizedRule, _fits_int32
from .x86_requant import _channel_placeholders, _loops_under, _requant_stage
from .x86_requant_narrow import info_epilogue_intrin, narrow_or_exact, narrow_placeholders, narrow_stage, starting_at_bias

# Pair rows of the register tile, tried in this order: the first that divides the pair rows of the
# plane into at least two tiles (or is 1) and whose ``rows * npar * nr`` accumulators stay within
# ACCUMULATORS (the 12 broadcast weight vectors of a 3x3 at stride 1 are reloaded from the stack).
PAIR_ROWS = (4, 2, 1)
# Stride 2 builds (the column phases deinterleaved in the pair pass, one input row pair per output
# row) but measured 0.7x against the pixel-lane rule, whose stride-2 windows need no shuffle at
# all (its int16 pairs are adjacent columns already) -- the pass over an input four times the
# output costs more than it saves. Taken for stride 1 only.
STRIDES = (1,)
ACCUMULATORS = 8
NR = (4, 3, 2, 1)
CHUNK = 16   # output pairs of one interleave step (two 256-bit stores)
# Stride 1: interleave 8 pairs at a time (two 8-byte row loads, vpunpcklbw, the widening vpmovzxbw: 2
# shuffles per 8 pairs) instead of one shuffle of the whole chunk, which LLVM lowered to vpermq /
# vpunpcklbw / vpmovzxbw / vextracti128 (3 shuffles per 8 pairs); off: the whole-chunk shuffle.
# Only where the padded plane is a workspace (over STACK_BYTES, TVM's stack-allocation limit): a
# plane on the stack (14 x 14) is unrolled whole, and LLVM then forwards the padded copy's stores
# into the 8-byte loads as byte inserts (384 x 14 x 14: 0.72x).
UNPACK_ROWS = True
STACK_BYTES = 1024
# Take x86_requant_narrow's shorter epilogue where every call's constants prove it (off: x86_requant's).
NARROW = True


def _chunk(reach: int, rows: int) -> int:
    """Pairs per interleave step: :data:`CHUNK`, or -- when that many steps split evenly make the
    plane of pairs (``rows`` rows of ``reach`` int16 pairs, rounded up to whole steps) smaller than
    :data:`STACK_BYTES` -- the even split (14-wide rows: 18 pairs in 2 steps of 9, 648 bytes instead
    of 32 pairs' 1152). The plane is then a stack array instead of a workspace allocated and freed
    per channel (``TVMBackendAllocWorkspace``: ~14 % of the 384 x 14 x 14 kernel's time under perf;
    1.10x on the 14 x 14 planes). Even steps of fewer than 8 pairs were slower (6: 0.5x)."""
    chunk = min(CHUNK, reach)
    even = -(-reach // -(-reach // chunk))
    if even >= 8 and rows * _round_up(reach, even) * 4 < STACK_BYTES <= rows * _round_up(reach, chunk) * 4:
        return even
    return chunk


def _tile(pair_rows: int, npar: int, nvec: int) -> tuple[int, int]:
    """``(rows, nr)``: pair rows and 8-pixel vectors of a row per register tile."""
    nr = min(NR, key=lambda n: (_round_up(nvec, n), -n))
    while nr > 1 and npar * nr > ACCUMULATORS:
        nr -= 1
    rows = next(r for r in PAIR_ROWS if r == 1 or (pair_rows % r == 0 and r < pair_rows
                                                   and r * npar * nr <= ACCUMULATORS))
    return rows, nr


class DepthwiseRowPairs(TensorizedRule):
    """Depthwise ``conv2d_requant`` (groups == C == O, dilation 1, any KHxKW, stride 1: the kernel
    also builds stride 2, but :data:`STRIDES` does not take it) on AVX2's ``vpmaddwd``, output
    pixels of a row as lanes, the pairs taken from two input rows.

    Per channel (the parallel loop):
    1. ``x_pad``: the zero-padded plane in the activations' dtype (border rows and columns split
       off: the interior is a plain copy), then ``x_pairs``: its rows interleaved in pairs and
       widened to int16, :data:`CHUNK` pairs per step (:func:`pair_rows_intrin`: two row loads, one
       shuffle; the stride-2 column phases deinterleaved by the same shuffle).
    2. ``acc``: tiles of ``rows * npar`` output rows x ``nr`` vectors of 8 pixels, accumulated in
       registers, one ``vpmaddwd`` per (pair row, kx) straight from ``x_pairs`` (no shuffle) times
       the row parity's broadcast weight pair.
    3. Requantized from registers (x86_requant_narrow's even / odd qword epilogue where proven,
       else x86_requant's) and written to the
       NCHW rows (through a tile when the plane's rows or columns were padded).
    """

    op = "conv2d_requant"

    def pack_for(self, func, params, shapes, isa):
        geo = DepthwiseGeometry.of(params, shapes, isa)
        if geo is None or isa is not AVX2 or geo.sh not in STRIDES or geo.sw not in STRIDES:
            return None
        exact = self._packing(func, params, shapes, isa, geo, "exact")
        if exact is None or not NARROW:
            return exact
        return dataclasses.replace(exact, for_calls=lambda calls: narrow_or_exact(
            calls, geo, exact, lambda kind: self._packing(func, params, shapes, isa, geo, kind)))

    def _packing(self, func, params, shapes, isa, geo, epilogue: str):
        """The packing with ``epilogue``: "exact" (x86_requant's), "narrow" or "narrow_shift"
        (x86_requant_narrow's, with the pre-shift)."""
        xs, nb, c, h, w, kh, kw = shapes[0][0], geo.nb, geo.c, geo.h, geo.w, geo.kh, geo.kw
        (sh, sw), (pt, pl, _, _), adt, oh, ow = (geo.sh, geo.sw), geo.pads, geo.adt, geo.oh, geo.ow
        if geo.off or not _fits_int32(adt, kh * kw, 0):
            return None
        lanes = isa.lanes
        npar = 2 if sh == 1 else 1
        ohp = _round_up(oh, npar)
        nq = -(-(sh * (npar - 1) + kh) // 2)           # pair rows one output row reads
        pq = ohp // npar + nq - 1                         # pair rows of the plane
        rows, nr = _tile(ohp // npar, npar, -(-ow // lanes))
        owpad = _round_up(-(-ow // lanes), nr) * lanes
        reach = owpad + (kw - 1) // sw                    # pair columns per phase the tiles read
        chunk = _chunk(reach, pq * sw)                    # (compute_at keeps no more than that)
        wq = _round_up(reach, chunk)
        hx, wx = 2 * pq, sw * wq + sw                     # the last chunk's loads end before sw * wq + sw
        info = {"rule": type(self).__name__, "isa": isa.name, "nr": nr, "rows": rows, "npar": npar,
                "stride_w": sw, "chunk": chunk, "x_dtype": adt, "pad": [pt, pl, h, w], "plane": hx * wx,
                "out_shape": [nb, c, oh, ow], "requant": {key: params[key] for key in ("qmin", "qmax", "out_dtype")}}

        if epilogue != "exact":   # absent for x86_requant's (the kernels and their records before it)
            info["epilogue"] = epilogue

        def pack_args(consts):
            wp, channel = geo.packed_constants(consts, isa.kp)
            if epilogue != "exact":
                channel = geo.narrow_constants(consts)
            wt = wp[:, :, :kw]
            pairs = np.zeros((c, npar, nq, kw, 2), np.int64)
            for par in range(npar):
                for q in range(nq):
                    for e in range(2):
                        ky = 2 * q + e - sh * par
                        if 0 <= ky < kh:
                            pairs[:, par, q, :, e] = wt[:, ky, :]
            return [pairs.astype(isa.packed_dtype), *channel]

        x = te.placeholder(xs, adt, name="x")
        wpairs = te.placeholder((c, npar, nq, kw, 2), isa.packed_dtype, name="w_pairs")
        consts = _channel_placeholders(c) if epilogue == "exact" else narrow_placeholders(c)
        xpad = te.compute((nb, c, hx, wx), lambda b, ch, r, col: tirx.if_then_else(
            tirx.all(r >= pt, r < h + pt, col >= pl, col < w + pl), x[b, ch, r - pt, col - pl],
            tirx.const(0, adt)), name="x_pad")
        xpairs = te.compute((nb, c, pq, sw, wq // chunk, chunk, 2), lambda b, ch, p, ph, cb, ci, e: xpad[
            b, ch, 2 * p + e, sw * (cb * chunk + ci) + ph].astype("int16"), name="x_pairs")
        q, kx, e = te.reduce_axis((0, nq), "q"), te.reduce_axis((0, kw), "kx"), te.reduce_axis((0, 2), "e")
        acc = te.compute((nb, c, ohp, owpad), lambda b, ch, i, j: te.sum(dot_term(
            xpairs[b, ch, i // npar + q, kx % sw, (j + kx // sw) // chunk, (j + kx // sw) % chunk, e],
            wpairs[ch, i % npar, q, kx, e], 0),
            axis=[q, kx, e]), name="acc")
        if epilogue == "exact":
            y = _requant_stage(acc, (nb, c, oh, ow), lambda i: i, lambda a: a[1], consts, params,
                               owpad != ow or ohp != oh)
            accepts = geo.epilogue_exact
        else:
            y = narrow_stage(acc, (nb, c, oh, ow), lambda i: i, lambda a: a[1], consts, params,
                             owpad != ow or ohp != oh, epilogue == "narrow_shift")
            accepts = geo.narrow_accepts(epilogue)
        out = te.create_prim_func([x, wpairs, *consts, y]).without_attr("global_symbol")
        if epilogue != "exact":
            out = starting_at_bias(out, "acc", consts[0].name, 1)
        return Packing(tag_packed(out, func, info), (1, 2, 3, 4), pack_args, accepts)

    def schedule(self, sch, info):
        isa = ISA_BY_NAME[info["isa"]]
        npar, sw = info["npar"], info["stride_w"]
        acc = sch.get_sblock("acc")
        b, ch, i, j, q, kx, e = sch.get_loops(acc)
        plane = sch.fuse(b, ch)
        io, ir, par = sch.split(i, [None, info["rows"], npar])
        jo, jr, ji = sch.split(j, [None, info["nr"], isa.lanes])
        sch.reorder(io, jo, q, kx, ir, par, jr, ji, e)
        sch.parallel(plane)
        pairs = sch.get_sblock("x_pairs")
        sch.compute_at(pairs, plane, preserve_unit_loops=True)
        _schedule_padding(sch, plane, info)
        plane_bytes = info["plane"] * tvm.DataType(info["x_dtype"]).bits // 8
        _schedule_pairs(sch, pairs, info["x_dtype"], sw, info["chunk"], UNPACK_ROWS and plane_bytes > STACK_BYTES)
        stage = stage_output_at(sch, jo, io)
        *stage_rows, stage_cols = _loops_under(sch, stage, jo)
        outer, inner = sch.split(stage_cols, [None, isa.lanes])
        for loop in (*stage_rows, outer):
            sch.unroll(loop)
        init = sch.decompose_reduction(acc, q)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(ji, dot_intrin(isa, "int16", "b", 0, "global"))
        sch.tensorize(inner, info_epilogue_intrin(isa.lanes, info))
        for loop in (q, kx, ir, par, jr):
            sch.unroll(loop)


def _schedule_pairs(sch, pairs, dtype: str, sw: int, chunk: int, unpack: bool) -> None:
    """Tensorize the interleave ``pairs`` in steps of ``chunk`` pairs (:data:`CHUNK`, or all the
    columns read when fewer). The buffer is declared in whole chunks (``[.., chunks, chunk, 2]``)
    so that compute_at keeps whole chunks (it keeps only the columns the tiles read: 58 of 64, no
    whole number of steps), then laid out flat (``[.., chunks * chunk, 2]``) so that a tile's
    8-pixel load is one rectangle."""
    sch.transform_layout(pairs, ("write", 0), lambda b, ch, p, ph, cb, ci, e: (b, ch, p, ph, cb * chunk + ci, e))
    *_, ci, _ = sch.get_loops(pairs)
    sch.tensorize(ci, pair_rows_intrin(dtype, sw, chunk, unpack))


_REGISTERED: dict[tuple, str] = {}


def pair_rows_intrin(dtype: str, stride: int, chunk: int, unpack: bool = False) -> str:
    """``D[c, e] = int16(A[e, stride * c])`` for ``c < chunk``, ``e < 2``: two padded rows (any
    pitch) interleaved into pairs and widened, every ``stride``-th column. Two row loads of
    ``stride * chunk`` elements (``stride - 1`` past the region: the plane's width leaves room),
    one shuffle, the widening; with ``unpack`` (stride 1), 8 pairs at a time from two 8-byte
    loads (:data:`UNPACK_ROWS`). Registered on first use."""
    unpack = unpack and stride == 1 and chunk % 8 == 0
    key = (dtype, stride, chunk, unpack)
    if key in _REGISTERED:
        return _REGISTERED[key]
    span, load = stride * (chunk - 1) + 1, stride * chunk
    head = f"""
@T.prim_func(s_tir=True)
def f(a: T.handle, d: T.handle):
    row_pitch = T.int32()
    A = T.match_buffer(a, (2, {span}), "{dtype}", offset_factor=1, strides=[row_pitch, 1])
    D = T.match_buffer(d, ({chunk}, 2), "int16", offset_factor=1)
    with T.sblock("root"):
        T.reads(A[0:2, 0:{span}])
        T.writes(D[0:{chunk}, 0:2])
"""
    desc = head + f"""        for i, j in T.grid({chunk}, 2):
            with T.sblock("update"):
                vi, vj = T.axis.remap("SS", [i, j])
                D[vi, vj] = T.Cast("int16", A[vj, vi * {stride}])
"""
    if unpack:   # 8 pairs at a time: unpack the two rows' 8 bytes, then widen (UNPACK_ROWS)
        body = "".join(
            f"        D[{lo}, T.Ramp(0, 1, 16)] = T.Cast(\"int16x16\", T.Shuffle([A[0, T.Ramp({lo}, 1, 8)], "
            f"A[1, T.Ramp({lo}, 1, 8)]], {[e * 8 + col for col in range(8) for e in range(2)]}))\n"
            for lo in range(0, chunk, 8))
        impl = head + body
    else:
        index = [e * load + stride * col for col in range(chunk) for e in range(2)]
        impl = head + (f"        D[0, T.Ramp(0, 1, {2 * chunk})] = T.Cast(\"int16x{2 * chunk}\", T.Shuffle("
                       f"[A[0, T.Ramp(0, 1, {load})], A[1, T.Ramp(0, 1, {load})]], {index}))\n")
    name = f"qplugin_dw_pair_rows_{dtype}_s{stride}_{chunk}" + ("_unpacked" if unpack else "")
    TensorIntrin.register(name, from_source(desc), from_source(impl), override=True)
    _REGISTERED[key] = name
    return name
