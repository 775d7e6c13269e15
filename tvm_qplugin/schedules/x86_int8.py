"""Tensorized x86 int8/int16 kernels: conv (groups 1) and dense on VNNI / AVX2 dot instructions, weights
prepacked at build time (schedules/packing.py), requantization on the register tile.

Each rule is both a *packer* (``pack``: the kernel rewritten in TE to read packed weights, plus the
NumPy packing of its constants) and a dlight-style schedule rule (``apply(func, target)`` on the
packed kernel). The instruction is chosen from the target's CPU features
(:func:`intrin_x86.select_isa`), never from the build machine.

Exactness: every product and partial sum is the kernel's own int32 arithmetic (the dot
instructions neither saturate nor round -- but for AVX2's ``vpmaddubsw``, taken only for the
kernels whose every call's weights prove no packed pair can saturate, x86_byte_pairs.py); the
signed-activation offset adds ``128 * sum(w)`` to each sum, removed again through the bias, a
compile-time constant, and the int32 bound of the offset sum (``255 * 128 * K``) is checked
before packing.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import tvm
from tvm import te, tirx
from tvm.s_tir import schedule as s_tir_schedule

from ..ops import op_of
from ..quant import abs_max
from .intrin_x86 import (
    AVX2,
    AVX2W8,
    ISA_BY_NAME,
    DotIsa,
    byte_pair_isa,
    dot_intrin,
    dot_term,
    select_isa,
)
from .packing import Packing, packed_info, tag_packed, with_info
from .x86_byte_pairs import packed_order, saturating_pairs
from .x86_conv_gather import (
    _border_parts,
    _inline_narrowing,
    _schedule_gather,
    activation_input,
)
from .x86_conv_tiles import _conv_tile, _largest_divisor, _round_up
from .x86_requant import (
    _channel_consts,
    _channel_placeholders,
    _epilogue_at,
    _epilogue_exact,
    _requant_stage,
    _tensorized_epilogue_at,
)
from .x86_requant_narrow import (NarrowCheck, info_epilogue_intrin, narrow_or_exact, narrow_placeholders, narrow_stage,
                                 starting_at_bias)

OFFSET = 128  # s8 activation + 128 = u8 (the operand vpdpbusd reads unsigned)


def _offset(isa: DotIsa, act_dtype: str) -> int:
    return OFFSET if isa.kp == 4 and act_dtype == "int8" else 0


def _constant_output(params: dict) -> bool:
    """``qmin >= qmax``: the kernel's output is one value whatever its inputs (an ONNX Clip to
    [v, v] after the layer). The simplifier then folds the accumulator out of the requantization,
    and the epilogue intrinsic, whose description reads it, no longer matches the kernel
    (tensorize's comparator fails); with no dot product worth tensorizing, the plain rules keep it."""
    return "qmin" in params and params["qmin"] >= params["qmax"]


def _fits_int32(act_dtype: str, k: int, offset: int) -> bool:
    """The (offset) int32 sum cannot overflow: ``(max|x| + offset) * 128 * K < 2**31``."""
    return (abs_max(act_dtype) + offset) * 128 * k < 2**31


class TensorizedRule:
    """Shared parts: target/op checks, the ISA and packing description, the schedule entry."""

    op = ""

    def pack(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target) -> Packing | None:
        described = op_of(func)
        if target.kind.name != "llvm" or described is None or described[0] not in (self.op, self.narrowed_op):
            return None
        if _constant_output(described[1]):
            return None
        shapes = [_param_type(p) for p in func.params]
        if described[0] == self.narrowed_op:  # the dot reads the int16 input's narrowing (x86_narrowing.py)
            shapes[0] = (shapes[0][0], described[1]["in_dtype"])
        act_dtype = shapes[0][1]
        isa = select_isa(target, act_dtype)
        if isa is None or shapes[1][1] != "int8":
            return None
        exact = self.pack_for(func, described[1], shapes, isa)
        pair_isa = byte_pair_isa(isa, act_dtype) if self.byte_pairs else None
        if exact is None or pair_isa is None:
            return self._narrow_or_exact(func, described[1], shapes, isa, exact)
        return dataclasses.replace(exact, for_calls=lambda calls: self._byte_pairs_or_exact(
            func, described[1], shapes, pair_isa, exact, calls))

    narrowed_op = None  # the op of this rule's kernels fused with a narrowing requantize (x86_narrowing.py)
    # ISAs on which pack_for takes x86_requant_narrow's epilogue where every call's constants prove it
    narrow_isas: tuple[str, ...] = ()
    byte_pairs = False  # whether pack_for takes AVX2's vpmaddubsw (x86_byte_pairs.py) where the weights allow
    reorders_k = False  # whether it then gathers the activations in a K order of its own (a k_order table)

    def _narrow_or_exact(self, func, params, shapes, isa, exact) -> Packing | None:
        """``exact``, or on :attr:`narrow_isas` a packing that picks x86_requant_narrow's epilogue
        from the constants of all the kernel's calls (``narrow_or_exact``), as the depthwise rule does."""
        if exact is None or isa.name not in self.narrow_isas:
            return exact
        check = NarrowCheck(shapes[0][1], _offset(isa, shapes[0][1]))
        return dataclasses.replace(exact, for_calls=lambda calls: narrow_or_exact(
            calls, check, exact, lambda kind: self.pack_for(func, params, shapes, isa, epilogue=kind)))

    def _byte_pairs_or_exact(self, func, params, shapes, pair_isa, exact, calls) -> Packing:
        """``pair_isa``'s (``vpmaddubsw``) packing when every call's weights have a safe packed
        order (x86_byte_pairs.packed_order), the K extent long enough for each; else ``exact``.
        Either way the decision is recorded in the packing info's ``pairs`` (layers[].kernel.why)."""
        w2ds = [c[0].reshape(c[0].shape[0], -1) for c in calls]
        orders = [packed_order(w, pair_isa.kp, self.reorders_k) for w in w2ds]
        if orders and all(o is not None for o in orders):
            k_len = max(len(o) for o in orders)
            fast = self.pack_for(func, params, shapes, pair_isa, k_len=k_len if self.reorders_k else None)
            if fast is not None:
                spacers = max(int((o < 0).sum()) for o in orders)
                how = (", K reordered" if any((o != np.arange(len(o))).any() for o in orders) else "") + \
                    (f", {spacers} zero-weight spacers" if spacers else "")
                return with_info(fast, pairs=f"vpmaddubsw: no pair can saturate (checked at compile time{how})")
        n = sum(saturating_pairs(w) for w in w2ds)
        return with_info(exact, pairs=f"vpmaddwd: {n} pairs could saturate vpmaddubsw"
                      + ("" if self.reorders_k else " (no K reordering for this kernel)"))

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target, tunable: bool = False):
        """The scheduled packed kernel; with ``tunable`` its design space instead: traced
        schedules with sampled knobs (x86_int8_space.py; tuning/space.py runs them)."""
        info = packed_info(func)
        if target.kind.name != "llvm" or info is None or info["rule"] != type(self).__name__:
            return None
        if tunable:  # a rule without a design space (no ``space``) has nothing to tune
            space = getattr(self, "space", None)
            return space(func, info) if space is not None else None
        sch = s_tir_schedule.Schedule(func)
        self.schedule(sch, info)
        return sch.mod["main"]

    def pack_for(self, func, params, shapes, isa) -> Packing | None:  # pragma: no cover - interface
        raise NotImplementedError

    def schedule(self, sch, info) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class DenseTensorized(TensorizedRule):
    """``dense_requant`` as a register-blocked GEMM on the dot instruction, int32 accumulation:
    ``acc_bits=32`` kernels, and ``acc_bits=64`` calls whose weights bound every sum below 2**31
    (:func:`_weight_sums_fit_int32`; other calls keep the plain int64 kernel).

    Weights packed ``[N/L, K/kp, L, kp]`` (L lanes of output channels, kp products per lane);
    each activation row's ``kp`` values are broadcast against one packed tile.
    1. Rows in tiles of ``mr``, channels in tiles of ``nr`` vectors: ``mr x nr`` int32
       accumulator vectors stay in registers over the whole K loop (at most 4 x 3: the tile's
       stack slot under :data:`~.x86_conv_tiles.STACK_BYTES` -- a 4 x 4 tile was a workspace call per tile,
       MiniLM's dense 4-6 % slower).
    2. Rows in blocks of ``BLOCK_ROWS``; within a block every channel tile sweeps the block's
       row tiles, so the block's activations (128 x 1536 int16: 384 KB) stay in L2 while each
       weight tile is read from memory once per block. The (block, channel tile, row tile)
       loop runs in parallel.
    3. The tile's requantization (int64 multiply, rounding shift, clamp) runs right after its K
       loop, vectorized over the channels, from registers.
    4. A batch-1 GEMV on AVX2 (one row tile: each weight read once per call, from memory, the rest
       of the model evicting it between calls) keeps the weights int8 in memory, widened as they
       are loaded (``avx2w8``, ``vpmovsxbw``: half the bytes of int16 weights), with up to
       :data:`GEMV_VECTORS` channel vectors per tile. MobileNetV2's 1280 -> 1000 on a Zen 3, cold
       caches: 255 -> 117 us.
    Note: N is padded to L in the packed weights; the pad channels are computed and dropped.
    Without the row blocks (each row tile sweeping every channel) the whole weight matrix
    streams through the cache per row tile: MiniLM's 1024 x 384 -> 1536 int16 ran at 86 GMAC/s
    on one core against 241 GMAC/s blocked (vpdpwssd peak 275); 384 -> 384 (weights in L2) ran
    at 241 either way.
    """

    op = "dense_requant"
    BLOCK_ROWS = 128
    byte_pairs = True  # natural K order only: the activations are broadcast from the input rows

    def pack_for(self, func, params, shapes, isa, k_len=None):
        (xs, adt), (ws, _) = shapes[0], shapes[1]
        n, k = ws
        off = _offset(isa, adt)
        acc_bits = params.get("acc_bits", 32)
        if acc_bits not in (32, 64) or k % isa.kp or (acc_bits == 32 and not _fits_int32(adt, k, off)):
            return None
        rows = int(np.prod(xs[:-1]))
        npad = _round_up(n, isa.lanes)
        small = isa.vector_bits == 256
        mr = _largest_divisor(rows, (3, 2, 1) if small else (4, 3, 2, 1))
        gemv = isa is AVX2 and rows == mr  # one row tile: every weight read once per call, from memory
        if gemv:
            isa = AVX2W8
        nr = _largest_divisor(npad // isa.lanes, GEMV_VECTORS if gemv else (2, 1) if small else (3, 2, 1))
        info = {"rule": type(self).__name__, "isa": isa.name, "mr": mr, "nr": nr, "offset": off,
                "out_shape": [*xs[:-1], n], "acc_shape": [rows, npad]}
        lanes, kp = isa.lanes, isa.kp

        def pack_args(consts):
            w, bias, mult, shift = consts
            wp = np.zeros((npad, k), np.int64)
            wp[:n] = w
            wp = wp.reshape(npad // lanes, lanes, k // kp, kp).transpose(0, 2, 1, 3).astype(isa.packed_dtype)
            return [np.ascontiguousarray(wp), *_channel_consts(w, bias, mult, shift, off, npad)]

        x = te.placeholder(xs, adt, name="x")
        wp = te.placeholder((npad // lanes, k // kp, lanes, kp), isa.packed_dtype, name="w_packed")
        consts = _channel_placeholders(npad)
        rk = te.reduce_axis((0, k), "k")
        acc = te.compute((rows, npad), lambda m, j: te.sum(
            dot_term(x[(*_unravel(m, xs[:-1]), rk)], wp[j // lanes, rk // kp, j % lanes, rk % kp], off), axis=rk),
            name="acc")
        y = _requant_stage(acc, (*xs[:-1], n), lambda i: (_ravel(i[:-1], xs[:-1]), i[-1]), lambda a: a[-1],
                           consts, params, npad != n)
        out = te.create_prim_func([x, wp, *consts, y]).without_attr("global_symbol")
        return Packing(tag_packed(out, func, info), (1, 2, 3, 4), pack_args,
                       lambda consts: (acc_bits == 32 or _weight_sums_fit_int32(consts[0], adt, off))
                       and _epilogue_exact(consts[0], *consts[1:4], adt, off))

    def schedule(self, sch, info):
        isa = ISA_BY_NAME[info["isa"]]
        acc = sch.get_sblock("acc")
        _flatten_output(sch, info["out_shape"], info["acc_shape"])
        rows, n, k = sch.get_loops(acc)
        row_tiles = sch.get(rows).extent.value // info["mr"]
        per_block = _largest_divisor(row_tiles, range(max(1, self.BLOCK_ROWS // info["mr"]), 0, -1))
        mb, mo, mi = sch.split(rows, [None, per_block, info["mr"]])
        no, nr, ni = sch.split(n, [None, info["nr"], isa.lanes])
        ko, ki = sch.split(k, [None, isa.kp])
        sch.reorder(mb, no, mo, ko, mi, nr, ni, ki)
        _dense_tile_body(sch, acc, (mb, no, mo), ko, mi, nr, ni, isa, info["offset"])

    def space(self, func, info):
        from .x86_int8_space import dense_space

        return dense_space(self, func, info)


def _dense_tile_body(sch, acc, tile_loops, ko, mi, nr, ni, isa, offset: int) -> None:
    """The register-tile GEMM body every dense-shaped rule shares (dense, 1x1 conv with channels in
    the lanes): the fused tile loop parallel, the requant epilogue at it, the accumulator's init
    vectorized, the dot instruction on the lanes, the ``mi x nr`` register tile unrolled."""
    tile = sch.fuse(*tile_loops)
    sch.parallel(tile)
    _epilogue_at(sch, tile, isa.lanes)
    init = sch.decompose_reduction(acc, ko)
    sch.vectorize(sch.get_loops(init)[-1])
    sch.tensorize(ni, dot_intrin(isa, _act_dtype(sch), "a", offset, "global"))
    sch.unroll(mi)
    sch.unroll(nr)


# channel vectors per tile of an AVX2 GEMV (the first that divides N's vectors): independent weight
# streams in flight; MobileNetV2's 1000 classes: 5 (cold caches 170 -> 117 us on Zen 3, 1 vector -> 5)
GEMV_VECTORS = (5, 4, 3, 2, 1)


def _weight_sums_fit_int32(w2d: np.ndarray, act_dtype: str, offset: int) -> bool:
    """A dense call whose dtypes alone need an int64 accumulator (``acc_bits=64``: int16 x int8 over
    a long K, e.g. MiniLM's 1536 -> 384 FFN output) still sums exactly in int32 when its constant
    weights say so: ``|sum_k (x_k + offset) w[o, k]| <= (max|x| + offset) * sum_k |w[o, k]|`` for
    every partial sum, so ``< 2**31`` per channel proves the int32 sums (and the int64 op's
    integers) exact for every input. MiniLM's six such calls: at most 1.69e9."""
    sums = np.abs(w2d.astype(np.int64)).sum(axis=1)
    return bool(((abs_max(act_dtype) + offset) * sums < 2**31).all())


class Conv2DTensorized(TensorizedRule):
    """``conv2d_requant`` with groups 1 (pointwise 1x1 first of all; also KxK, strided, padded,
    dilated), NCHW, on the dot instruction with the *output pixels* as vector lanes and each
    output channel's weights broadcast.

    1. The activations are gathered ``kp`` reduction elements per pixel, ``[N, K/kp, P, kp]``
       with K = C*KH*KW (for 1x1, C channels interleaved; for KxK an im2col; P = OH*OW padded to
       whole vectors; s8 shifted to u8 for VNNI, widened to int16 for AVX2) -- a stage inside
       the kernel, K*P values against the O*K*P multiply-adds it feeds. The ``kp`` elements are
       its innermost loop, unrolled: LLVM vectorizes the pixel loop into interleaving stores
       (:func:`_schedule_gather`; with the pixels innermost instead, each store was a lone byte
       at stride ``kp`` and the gather took 3/4 of a 1x1 conv's time on MobileNetV2).
       Stride-2 convs on even-width inputs read the input through ``x_cols``, its columns
       deinterleaved (even, then odd) in one pass: a tap's column ``2*ox + e`` is then
       ``x_cols[..., e % 2, ox + e // 2]``, unit stride in ``ox``, where LLVM turned the strided
       row reads into byte gathers (MobileNetV2's stem conv: 168 -> 88 us with the epilogue below).
    2. Output channels in blocks of ``mr`` (weights broadcast straight from memory), pixels in
       blocks of ``nr`` vectors: ``mr x nr`` accumulators in registers over the K loop.
    3. The tile is requantized from registers (x86_requant.epilogue_intrin: 9 instructions per
       vector; x86_requant_narrow's 7 where the call's constants prove it, :attr:`narrow_isas`)
       and its rows copied to the NCHW output.
    Note: the weights stay ``[O, K/kp, kp]`` -- OIHW flattened (widened to int16 where the
    instruction reads int16). Lanes over output channels instead would need a scatter to write
    NCHW. Zero padding is the value 0 (u8 128 after the offset, as the weight-sum correction
    assumes for every tap).
    """

    op = "conv2d_requant"
    narrowed_op = "conv2d_requant_narrowed"
    byte_pairs = reorders_k = True
    # x86_requant_narrow's epilogue where proven: on this Intel Xeon (1 thread, against x86_requant's)
    # the thin-K convs 1.09-1.14x (AVX-512 VNNI and AVX2 vpmaddwd), long K ~1.0x; AVX-VNNI's grouped
    # two-vector epilogue has no narrow form, and AVX2's byte-pair kernels keep theirs (_byte_pairs_or_exact)
    narrow_isas = ("vnni", "vnni16", "avx2")

    def pack_for(self, func, params, shapes, isa, k_len=None, epilogue="exact"):
        (xs, adt), (ws, _) = shapes[0], shapes[1]
        o, c, kh, kw = ws
        k = c * kh * kw
        off = _offset(isa, adt)
        if params["groups"] != 1 or not _fits_int32(adt, k, off):
            return None
        nb, _, h, w = xs
        (sh, sw), (dh, dw), (pt, pl, pb, pr) = params["strides"], params["dilation"], params["padding"]
        oh = (h + pt + pb - dh * (kh - 1) - 1) // sh + 1
        ow = (w + pl + pr - dw * (kw - 1) - 1) // sw + 1
        lanes, kp = isa.lanes, isa.kp
        p = oh * ow
        kpad = k_len or _round_up(k, kp)
        mr, nr, acc_scope = _conv_tile(o, p, isa, kpad // kp)
        ppad = _round_up(p, nr * lanes)
        flat = kh == kw == 1 and (sh, sw) == (1, 1) and not any(params["padding"])
        # the row-wise gather walks whole output rows: its pixel extent rounded up to them
        pbuf = ppad if flat else _round_up(ppad, ow)
        info = {"rule": type(self).__name__, "isa": isa.name, "mr": mr, "nr": nr, "offset": off,
                "out_shape": [nb, o, oh, ow], "acc_shape": [nb, o, ppad],
                "gather": "flat" if flat else "rows", "acc_scope": acc_scope,
                "requant": {key: params[key] for key in ("qmin", "qmax", "out_dtype")}}
        if epilogue != "exact":   # absent for x86_requant's (the kernels and their records before it)
            info["epilogue"] = epilogue
        check = NarrowCheck(adt, off)
        if not flat:
            info["row_parts"] = _border_parts(oh, pbuf // ow, h, kh, sh, dh, pt)
            info["col_parts"] = _border_parts(ow, ow, w, kw, sw, dw, pl)
        pdt = "uint8" if kp == 4 else "int16"

        def pack_args(consts):
            wt, bias, mult, shift = consts[0].reshape(o, k), *consts[1:]
            wk = np.zeros((o, kpad), np.int64)
            if k_len is None:
                wk[:, :k] = wt
                channel = _channel_consts(wt, bias, mult, shift, off, o) if epilogue == "exact" else \
                    check.narrow_constants(consts)
                return [wk.reshape(o, kpad // kp, kp).astype(isa.packed_dtype), *channel]
            # packed position -> reduction index (x86_byte_pairs); spacers and pad: zero weight, any index
            order = packed_order(wt, kp, True)
            order = np.concatenate([order, np.full(kpad - len(order), -1)])  # calls needing fewer spacers
            real = np.flatnonzero((order >= 0) & (order < k))
            wk[:, real] = wt[:, order[real]]
            table = np.zeros(kpad, np.int32)
            table[real] = order[real]
            return [wk.reshape(o, kpad // kp, kp).astype(isa.packed_dtype), table,
                    *_channel_consts(wt, bias, mult, shift, off, o)]

        x_in, x, narrowing = activation_input(xs, adt, params)
        wk = te.placeholder((o, kpad // kp, kp), isa.packed_dtype, name="w_packed")
        # the reduction index each packed position gathers (vpmaddubsw's safe pairing), a per-call constant
        table = None if k_len is None else te.placeholder((kpad,), "int32", name="k_order")
        consts = _channel_placeholders(o) if epilogue == "exact" else narrow_placeholders(o)

        # stride 2 along the rows: the columns deinterleaved first (one pass over the input), so that
        # each tap's row read is unit-stride (:func:`_schedule_gather`)
        split_cols = not flat and sw == 2 and w % 2 == 0
        if split_cols:
            info["split_cols"] = True
            xcols = te.compute((nb, c, h, 2, w // 2), lambda b, ch, r, par, half: x[b, ch, r, half * 2 + par],
                               name="x_cols")

        def gather(b, kb, q, j):
            # clamps only where they are needed (a clamp hides the unit stride from the simplifier):
            # pad pixels repeat the last pixel (flat) or the last row (rows); their lanes are dropped
            if table is not None:
                kf = table[kb * kp + j]
            else:
                kf = kb * kp + j if kpad == k else tirx.min(kb * kp + j, k - 1)
            ch, ry, rx = _unravel(kf, (c, kh, kw))
            if flat:
                px = q if ppad == p else tirx.min(q, p - 1)
                oy, ox = px // ow, px % ow
            else:
                oy, ox = (q // ow if pbuf == p else tirx.min(q // ow, oh - 1)), q % ow
            hi, wi = oy * sh + ry * dh - pt, ox * sw + rx * dw - pl
            v = (xcols[b, ch, hi, wi % 2, wi // 2] if split_cols else x[b, ch, hi, wi]).astype("int32")
            if pt or pl or pb or pr:
                v = tirx.if_then_else(tirx.all(hi >= 0, hi < h, wi >= 0, wi < w), v, tirx.const(0, "int32"))
            v = (v + off).astype(pdt)
            # positions past K gather a real pixel under a zero weight where a table maps them
            return v if kpad == k or table is not None else tirx.if_then_else(kb * kp + j < k, v, tirx.const(0, pdt))

        xp = te.compute((nb, kpad // kp, pbuf, kp), gather, name="x_packed")
        rc, rj = te.reduce_axis((0, kpad // kp), "rc"), te.reduce_axis((0, kp), "rj")
        acc = te.compute((nb, o, ppad), lambda b, oc, q: te.sum(
            dot_term(xp[b, rc, q, rj], wk[oc, rc, rj], 0), axis=[rc, rj]), name="acc")
        if epilogue == "exact":
            y = _requant_stage(acc, (nb, o, oh, ow), lambda i: (i[0], i[1], i[2] * ow + i[3]), lambda a: a[1],
                               consts, params, padded=True)  # always a tile: _tensorized_epilogue_at
        else:
            y = narrow_stage(acc, (nb, o, oh, ow), lambda i: (i[0], i[1], i[2] * ow + i[3]), lambda a: a[1],
                             consts, params, True, epilogue == "narrow_shift")
        out = te.create_prim_func([x_in, wk, *([table] if table is not None else []), *consts, *narrowing,
                                   y]).without_attr("global_symbol")
        if epilogue != "exact":   # the accumulator starts at bias' (x86_requant_narrow)
            return Packing(tag_packed(starting_at_bias(out, "acc", consts[0].name, 1), func, info), (1, 2, 3, 4),
                           pack_args, check.accepts(epilogue))
        return Packing(tag_packed(out, func, info), (1, 2, 3, 4), pack_args,
                       lambda consts: _epilogue_exact(consts[0].reshape(o, k), *consts[1:4], adt, off))

    def schedule(self, sch, info):
        isa = ISA_BY_NAME[info["isa"]]
        acc = sch.get_sblock("acc")
        if info["acc_scope"] != "global":
            sch.set_scope(acc, 0, info["acc_scope"])
        _flatten_output(sch, info["out_shape"], info["acc_shape"])
        b, oc, q, rc, rj = sch.get_loops(acc)
        oo, oi = sch.split(oc, [None, info["mr"]])
        qo, qr, qi = sch.split(q, [None, info["nr"], isa.lanes])
        sch.reorder(b, oo, qo, rc, oi, qr, qi, rj)
        tile = sch.fuse(b, oo, qo)
        sch.parallel(tile)
        lanes = epilogue_lanes(isa, info["nr"])
        grouped = lanes > isa.lanes
        _tensorized_epilogue_at(sch, tile, lanes, info["requant"], info["acc_scope"], grouped,
                                info_epilogue_intrin(lanes, info, info["acc_scope"], grouped))
        _inline_narrowing(sch)
        _schedule_gather(sch, info)
        init = sch.decompose_reduction(acc, rc)
        sch.vectorize(sch.get_loops(init)[-1])
        sch.tensorize(qi, dot_intrin(isa, "uint8" if isa.kp == 4 else "int16", "b", 0, info["acc_scope"]))
        sch.unroll(oi)
        sch.unroll(qr)

    def space(self, func, info):
        from .x86_int8_space import conv_pixel_lanes_space

        return conv_pixel_lanes_space(self, func, info)


def epilogue_lanes(isa: DotIsa, nr: int) -> int:
    """Accumulators one epilogue intrinsic call of the pixel-lane conv requantizes: a tile row's
    two 256-bit vectors at once where the tile has two, else one vector. Two vectors narrow
    together (one ``vpackssdw`` / ``vpackuswb`` over whole ymm registers) and take their high
    words in groups (``x86_requant.epilogue_intrin``'s ``grouped``): per 16 u8 outputs 8
    shuffles instead of 11 (``vpsrlq``, ``vpblendd``, packs, extracts), 20 vector instructions
    instead of 23. 512-bit ISAs keep one vector (their epilogue is already one ``vpermt2d``)."""
    return isa.lanes * nr if isa.vector_bits == 256 and nr == 2 else isa.lanes


def _unravel(flat, dims):
    """Indices into ``dims`` (row-major) of the flat index ``flat``."""
    out = []
    for d in reversed(dims[1:]):
        out.append(flat % d)
        flat = flat // d
    return [flat, *reversed(out)]


def _ravel(idx, dims):
    flat = idx[0]
    for i, d in zip(idx[1:], dims[1:]):
        flat = flat * d + i
    return flat


def _flatten_output(sch, out_shape, acc_shape) -> None:
    """Give the output block the accumulator's iteration space (rows fused / h*w fused), so that
    it can be computed under each accumulator tile (reverse_compute_at needs a rectangle)."""
    if list(out_shape) == list(acc_shape):
        return
    if len(acc_shape) == 2:  # dense: (*lead, n) -> (rows, n)
        index_map = tirx.IndexMap.from_func(lambda *i: (_ravel(i[:-1], out_shape[:-1]), i[-1]), ndim=len(out_shape))
        sch.transform_block_layout(sch.get_sblock("y"), index_map)
    else:  # conv: (n, o, h, w) -> (n, o, h * w + w)
        sch.transform_block_layout(sch.get_sblock("y"), lambda b, o, i, j: (b, o, i * out_shape[3] + j))


def _param_type(param) -> tuple[tuple[int, ...], str]:
    """``(shape, dtype)`` of a PrimFunc buffer parameter."""
    return tuple(int(d) for d in param.ty.shape), str(param.ty.dtype)


def _act_dtype(sch) -> str:
    """The dtype the dot reads: the first parameter's, or its narrowing's (x86_narrowing.py)."""
    described = op_of(sch.mod["main"])
    if described is not None and "in_dtype" in described[1]:
        return described[1]["in_dtype"]
    return _param_type(sch.mod["main"].params[0])[1]


