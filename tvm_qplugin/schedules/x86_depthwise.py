"""Depthwise int8 ``conv2d_requant`` (groups == channels, NCHW) on the x86 dot instructions, with
the requantization on the register tile: the per-channel counterpart of ``x86_int8.Conv2DTensorized``.

Same contract as the rules there: a *packer* (``pack``: the kernel rewritten in TE to read
prepacked weights, and the NumPy packing of its constants) and a dlight-style rule (``apply``)
for the packed kernel; the instruction comes from the target's features (``select_isa``).

Exactness: the sums are the kernel's own int32 sums (the dot instructions neither saturate nor
round; the zero-weight pad taps add 0), the s8 -> u8 offset (VNNI) is removed through the bias
and the epilogue is x86_requant's, checked per call by its ``_epilogue_exact``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from tvm import te, tirx
from tvm.s_tir import TensorIntrin
from tvm.script import tirx as T

from .intrin_x86 import AVX2, ISA_BY_NAME, DotIsa, _dot, _operand, dot_term
from .packing import Packing, tag_packed
from .x86_conv_tiles import _round_up
from .x86_int8 import TensorizedRule, _fits_int32, _offset
from .x86_requant import (
    _channel_consts,
    _channel_placeholders,
    _epilogue_exact,
    _has_block,
    _requant_stage,
)
from .x86_requant_narrow import (info_epilogue_intrin, narrow_consts, narrow_or_exact, narrow_placeholders,
                                 narrow_stage, starting_at_bias)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _load_elems(isa: DotIsa, dtype: str) -> int:
    """Elements of ``dtype`` in one vector register of ``isa`` (what one window load reads)."""
    return isa.vector_bits // (8 if dtype == "uint8" else 16)


# Output rows computed together (``_row_tile``), tried in this order: the first that divides the
# plane's height into at least two tiles and whose accumulators fit the register budget is taken.
@dataclass(frozen=True)
class DepthwiseGeometry:
    """What both depthwise rules (this one and x86_depthwise_lanes.py) read off a kernel before
    choosing a layout: shapes, strides, padding, the activation offset and the dot instruction's
    operand type, the output size and ``rbs`` groups of ``kp`` taps per kernel row."""

    nb: int
    c: int
    h: int
    w: int
    kh: int
    kw: int
    sh: int
    sw: int
    pads: tuple[int, int, int, int]   # top, left, bottom, right
    adt: str                          # the activations' dtype
    off: int                          # +128 for s8 activations on vpdpbusd
    pdt: str                          # the dot's activation operand: uint8 (kp 4) or int16
    oh: int
    ow: int
    rbs: int

    @staticmethod
    def of(params, shapes, isa: DotIsa) -> DepthwiseGeometry | None:
        """The geometry of a depthwise conv (groups = C = O, one filter per channel, no dilation),
        None for any other conv."""
        (xs, adt), (ws, _) = shapes[0], shapes[1]
        nb, c, h, w = xs
        o, cg, kh, kw = ws
        if params["groups"] != c or o != c or cg != 1 or list(params["dilation"]) != [1, 1]:
            return None
        (sh, sw), (pt, pl, pb, pr) = params["strides"], params["padding"]
        return DepthwiseGeometry(nb, c, h, w, kh, kw, sh, sw, (pt, pl, pb, pr), adt, _offset(isa, adt),
                                 "uint8" if isa.kp == 4 else "int16", (h + pt + pb - kh) // sh + 1,
                                 (w + pl + pr - kw) // sw + 1, _ceil_div(kw, isa.kp))

    def packed_constants(self, consts, kp: int) -> tuple[np.ndarray, list]:
        """The call's constants (weights ``[C, 1, KH, KW]``, bias, multiplier, shift) as both rules
        pack them: the weights ``[C, KH, rbs * kp]`` with each kernel row zero-padded (int64; each
        rule lays them out for its lanes) and the per-channel epilogue constants."""
        wt, bias, mult, shift = consts[0].reshape(self.c, self.kh, self.kw), *consts[1:4]
        wp = np.zeros((self.c, self.kh, self.rbs * kp), np.int64)
        wp[:, :, :self.kw] = wt
        return wp, _channel_consts(wt.reshape(self.c, -1), bias, mult, shift, self.off, self.c)

    def narrow_constants(self, consts) -> list | None:
        """x86_requant_narrow's per-channel constants of the call, None when not proven exact."""
        return narrow_consts(consts[0].reshape(self.c, -1), *consts[1:4], self.adt, self.off, self.c)

    def narrow_accepts(self, epilogue: str):
        """The ``accepts`` of a packing with the narrow ``epilogue``: proven for the call, and
        without the pre-shift ("narrow") only when every channel's is 0."""
        def accepts(consts) -> bool:
            found = self.narrow_constants(consts)
            return found is not None and (epilogue == "narrow_shift" or not found[2].any())
        return accepts

    def epilogue_exact(self, consts) -> bool:
        """x86_requant's check that the call's constants keep the register epilogue exact."""
        return _epilogue_exact(consts[0].reshape(self.c, -1), *consts[1:4], self.adt, self.off)

    def padded_operand(self, read, r, col):
        """The dot's activation operand at padded row ``r``, column ``col``: ``read(row, col)`` of the
        input inside it, 0 in the zero padding, plus the offset, in the operand's dtype."""
        pt, pl = self.pads[:2]
        v = tirx.if_then_else(tirx.all(r >= pt, r < self.h + pt, col >= pl, col < self.w + pl),
                              read(r - pt, col - pl).astype("int32"), tirx.const(0, "int32"))
        return (v + self.off).astype(self.pdt)


ROW_TILES = (8, 7, 4, 2, 1)
# AVX2: x86_requant_narrow's shorter epilogue where every call's constants prove it (off: x86_requant's).
NARROW = True
# the same on the 512-bit / AVX-VNNI ISAs (VNNI, s8 + 128 offset folded into bias' as on AVX2)
NARROW_WIDE = True


def _row_tile(oh: int, nr: int, sh: int, kh: int, kw: int, isa: DotIsa) -> int:
    """Output rows per tile. A tile of ``rows`` output rows reads ``sh * (rows - 1) + kh`` padded
    input rows, and each of those rows' windows (load + shuffle) feeds every output row it lies
    under: LLVM merges the identical loads and shuffles of the unrolled tile, so ``kh`` windows per
    output row vector become ``(sh * (rows - 1) + kh) / rows`` (stride 1, 3x3, 8 rows: 1.25). The
    ``rows * nr`` accumulators share the vector registers (32 on AVX-512, 16 on AVX2 / AVX-VNNI)
    with the ``kh * ceil(kw / kp)`` broadcast weights and two more (the shuffle's index, a window),
    16 at most. (16 x 64 bytes is not under TVM's 1 KB stack limit: the tile becomes a workspace
    allocation per channel, which 4 rows of 144 x 56 x 56 still pay back: 1.07x against 2 rows.)
    Measured per MobileNetV2 shape, one thread, against one row per tile: 1.1-1.2x on the 112 /
    56 / 28 stride-1 planes, 1.08x on 14 x 14; a tile of the whole plane (7 x 7, or the 7 rows
    of a stride-2 14 x 14) was 0.9x, and stride 2 on AVX2 (little reuse, more spills) 0.95-1.0x,
    so those keep one row per tile. AVX2 with 8 accumulators instead of 6: 1.08x on 112 and 28."""
    if sh > 1 and isa.vector_bits < 512:
        return 1
    weights = kh * _ceil_div(kw, isa.kp)
    budget = min(16, (32 if isa.vector_bits == 512 else 16) - weights - 2)
    return next(r for r in ROW_TILES if r == 1 or (oh % r == 0 and r < oh and r * nr <= budget))


class DepthwiseConv2DTensorized(TensorizedRule):
    """Depthwise ``conv2d_requant`` (groups == C == O, dilation 1; any KHxKW, strides whose
    window fits one register, zero padding) on the dot instruction, *output pixels of a row* as
    lanes and each channel's weights broadcast.

    1. Per channel, the zero-padded plane (u8 -- s8 + 128 on VNNI -- or widened to int16 for the
       int16 instructions), its border rows / columns split off so that the interior is a plain
       copy.
    2. Per output row and kernel row ``ry``, the ``kp`` consecutive taps ``rb*kp .. rb*kp+kp-1``
       of every lane are one *window*: a vector load of the padded row and one shuffle
       (``vpermb``; AVX2: ``vpermq`` + ``vpshufb``, none for stride 2) give lane ``l`` the inputs
       ``x[(j0+l)*sw + rb*kp + k]``; the dot instruction adds them times the channel's ``kp``
       weights (zero past KW). Stride 2 is the same shuffle with even indices: no
       deinterleaving pass.
    3. Tiles of ``rows`` output rows x ``nr`` vectors of a row's pixels (``_row_tile``: a window
       of one input row serves every output row of the tile it lies under), accumulated in
       registers over ``KH*RB`` dot steps, requantized from registers (x86_requant's epilogue,
       on even / odd qwords: :func:`epilogue_intrin`; on AVX2 x86_requant_narrow's where every
       call's constants prove it, :data:`NARROW`) and written to the NCHW rows; channels run
       in parallel.
    Note: lanes over channels would need the NCHW activations transposed in and out, and an
    im2col of the taps (x86_int8's route) writes ``KH*KW`` bytes per output for 9 MACs.
    A row of 7 pixels fills 7 of 16 lanes (MobileNetV2's last block).
    """

    op = "conv2d_requant"

    def pack_for(self, func, params, shapes, isa):
        geo = DepthwiseGeometry.of(params, shapes, isa)
        if geo is None:
            return None
        exact = self._packing(func, params, shapes, isa, geo, "exact")
        if exact is None or not NARROW or (isa is not AVX2 and not NARROW_WIDE):
            return exact
        return dataclasses.replace(exact, for_calls=lambda calls: narrow_or_exact(
            calls, geo, exact, lambda kind: self._packing(func, params, shapes, isa, geo, kind)))

    def _packing(self, func, params, shapes, isa, geo, epilogue: str):
        """The packing with ``epilogue``: "exact" (x86_requant's), "narrow" or "narrow_shift"
        (x86_requant_narrow's; AVX2 only: the 512-bit ISAs are not measured with it)."""
        xs, nb, c, h, w, kh, kw = shapes[0][0], geo.nb, geo.c, geo.h, geo.w, geo.kh, geo.kw
        (sh, sw), (pt, pl, _, _), adt, off = (geo.sh, geo.sw), geo.pads, geo.adt, geo.off
        oh, ow, rbs = geo.oh, geo.ow, geo.rbs
        lanes, kp = isa.lanes, isa.kp
        load = _load_elems(isa, geo.pdt)
        if (lanes - 1) * sw + kp > load or not _fits_int32(adt, kh * kw, off):
            return None
        nvec = _ceil_div(ow, lanes)
        nr = min((4, 3, 2, 1), key=lambda n: (_round_up(nvec, n), -n))
        rows = _row_tile(oh, nr, sh, kh, kw, isa)
        owpad = _round_up(nvec, nr) * lanes
        hx = sh * (oh - 1) + kh
        wx = sw * (owpad - lanes) + (rbs - 1) * kp + (lanes - 1) * sw + kp      # the last window's end
        plane = hx * wx + load - ((lanes - 1) * sw + kp)  # ... and the last row's whole-register load
        info = {"rule": type(self).__name__, "isa": isa.name, "nr": nr, "rows": rows, "offset": off, "stride_w": sw,
                "pad": [pt, pl, h, w], "plane": plane, "out_shape": [nb, c, oh, ow],
                "requant": {key: params[key] for key in ("qmin", "qmax", "out_dtype")}}

        if epilogue != "exact":   # absent for x86_requant's (the kernels and their records before it)
            info["epilogue"] = epilogue

        def pack_args(consts):
            wp, channel = geo.packed_constants(consts, kp)
            if epilogue != "exact":
                channel = geo.narrow_constants(consts)
            return [wp.reshape(c, kh, rbs, kp).astype(isa.packed_dtype), *channel]

        x = te.placeholder(xs, adt, name="x")
        wp = te.placeholder((c, kh, rbs, kp), isa.packed_dtype, name="w_packed")
        consts = _channel_placeholders(c) if epilogue == "exact" else narrow_placeholders(c)

        xpad = te.compute((nb, c, hx, wx), lambda b, ch, r, col: geo.padded_operand(
            lambda row, cl: x[b, ch, row, cl], r, col), name="x_pad")
        ry, rb, rk = te.reduce_axis((0, kh), "ry"), te.reduce_axis((0, rbs), "rb"), te.reduce_axis((0, kp), "rk")
        acc = te.compute((nb, c, oh, owpad), lambda b, ch, i, j: te.sum(
            dot_term(xpad[b, ch, i * sh + ry, j * sw + rb * kp + rk], wp[ch, ry, rb, rk], 0), axis=[ry, rb, rk]),
            name="acc")
        if epilogue == "exact":
            y = _requant_stage(acc, (nb, c, oh, ow), lambda i: i, lambda a: a[1], consts, params, owpad != ow)
        else:
            y = narrow_stage(acc, (nb, c, oh, ow), lambda i: i, lambda a: a[1], consts, params, owpad != ow,
                             epilogue == "narrow_shift")
        out = te.create_prim_func([x, wp, *consts, y]).without_attr("global_symbol")
        if epilogue == "exact":
            return Packing(tag_packed(out, func, info), (1, 2, 3, 4), pack_args, geo.epilogue_exact)
        out = starting_at_bias(out, "acc", consts[0].name, 1)
        return Packing(tag_packed(out, func, info), (1, 2, 3, 4), pack_args, geo.narrow_accepts(epilogue))

    def schedule(self, sch, info):
        isa = ISA_BY_NAME[info["isa"]]
        acc = sch.get_sblock("acc")
        b, ch, i, j, ry, rb, rk = sch.get_loops(acc)
        plane = sch.fuse(b, ch)
        io, ir = sch.split(i, [None, info["rows"]])
        jo, jr, ji = sch.split(j, [None, info["nr"], isa.lanes])
        sch.reorder(io, jo, ry, rb, ir, jr, ji, rk)
        sch.parallel(plane)
        _schedule_padding(sch, plane, info)
        stage = stage_output_at(sch, jo, io)
        *_, stage_rows, stage_cols = sch.get_loops(stage)
        outer, inner = sch.split(stage_cols, [None, isa.lanes])
        sch.unroll(outer)
        if info["rows"] > 1:  # the tile's rows (a unit loop is not there to unroll)
            sch.unroll(stage_rows)
        init = sch.decompose_reduction(acc, ry)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(ji, window_intrin(isa, info["stride_w"]))
        sch.tensorize(inner, info_epilogue_intrin(isa.lanes, info))
        for loop in (ry, rb, ir, jr):
            sch.unroll(loop)


def stage_output_at(sch, jo, io):
    """Move the requantized tile's stage under the column-tile loop ``jo`` (and, where the kernel
    stages its tile, the copy into ``y`` under the row-tile loop ``io``); returns the stage block.
    Shared by the depthwise rules on pixel lanes and on row pairs (x86_depthwise_pairs.py)."""
    first = "y_tile" if _has_block(sch, "y_tile") else "y"
    stage = sch.get_sblock(first)
    sch.reverse_compute_at(stage, jo)
    if first == "y_tile":
        sch.reverse_compute_at(sch.get_sblock("y"), io)
    return stage


def _schedule_padding(sch, plane, info) -> None:
    """The padded plane computed per channel, its border rows and columns split off so that the
    bounds test vanishes from the interior (a contiguous copy LLVM vectorizes)."""
    pt, pl, h, w = info["pad"]
    xpad = sch.get_sblock("x_pad")
    sch.compute_at(xpad, plane, preserve_unit_loops=True)
    # the channel's plane padded to ``plane`` elements: the last row's last window load stays inside
    # the allocation (a load past a small stack plane was undefined behaviour that LLVM turned into
    # garbage lanes); the elements past the windows are never written and reach only dropped lanes
    sch.storage_align(xpad, 0, axis=1, factor=2 * info["plane"], offset=info["plane"])
    *_, r, col = sch.get_loops(xpad)
    rows, cols = sch.get(r).extent.value, sch.get(col).extent.value
    middle = _split_borders(sch, r, min(pt, rows), min(pt + h, rows), rows)
    inner = sch.get_loops(sch.get_child_blocks(middle)[0])[-1]
    _split_borders(sch, inner, min(pl, cols), min(pl + w, cols), cols)


def _split_borders(sch, loop, lo: int, hi: int, extent: int):
    """``loop`` partitioned into ``[0, lo)``, ``[lo, hi)``, ``[hi, extent)`` (empty parts left
    out); returns the middle loop."""
    factors = [f for f in (lo, hi - lo, extent - hi) if f > 0]
    if len(factors) == 1:
        return loop
    parts = sch.loop_partition(loop, [*factors[:-1], None])
    return parts[1] if lo > 0 else parts[0]


_REGISTERED: dict[tuple, str] = {}
# The accumulator tile is a plain buffer: a few hundred bytes, so the compiler puts it on the stack
# and keeps it in registers (a "local" buffer here became a workspace allocation per channel).
_ACC_SCOPE = "global"


def window_intrin(isa: DotIsa, stride: int) -> str:
    """``C[l] += sum_k A[l*stride + k] * B[k]`` for ``l < lanes``, ``k < kp`` (A the padded row
    from the window's first input, B one channel's ``kp`` weights broadcast): one vector load
    of A (a whole register: up to ``load - span`` elements past the window, which the padded plane's
    allocation leaves room for -- ``_schedule_padding``), one shuffle, one dot instruction.
    Registered on first use."""
    key = (isa, stride)
    if key in _REGISTERED:
        return _REGISTERED[key]
    lanes, kp, w_dtype = isa.lanes, isa.kp, isa.packed_dtype
    a_dtype = "uint8" if kp == 4 else "int16"
    span, load = (lanes - 1) * stride + kp, _load_elems(isa, a_dtype)

    @T.prim_func(s_tir=True)
    def desc(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (span,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (kp,), w_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=_ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:span], B[0:kp])
            T.writes(C[0:lanes])
            for i, k in T.grid(lanes, kp):
                with T.sblock("update"):
                    vi, vk = T.axis.remap("SR", [i, k])
                    C[vi] = C[vi] + dot_term(A[vi * stride + vk], B[vk], 0)

    indices = [l * stride + k for l in range(lanes) for k in range(kp)]

    @T.prim_func(s_tir=True)
    def impl(a: T.handle, b: T.handle, c: T.handle) -> None:
        A = T.match_buffer(a, (span,), a_dtype, offset_factor=1)
        B = T.match_buffer(b, (kp,), w_dtype, offset_factor=1)
        C = T.match_buffer(c, (lanes,), "int32", offset_factor=1, scope=_ACC_SCOPE)
        with T.sblock("root"):
            T.reads(C[0:lanes], A[0:span], B[0:kp])
            T.writes(C[0:lanes])
            C[T.ramp(T.int32(0), 1, lanes)] = _dot(isa, C.vload([0], f"int32x{lanes}"),
                                                   tirx.Shuffle([A.vload([0], f"{a_dtype}x{load}")], indices),
                                                   _operand(B, w_dtype, kp, isa, 0, True))

    name = f"qplugin_dw_window_{isa.name}_s{stride}"
    TensorIntrin.register(name, desc, impl, override=True)
    _REGISTERED[key] = name
    return name
