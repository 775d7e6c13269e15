"""Pointwise (1x1) int8/int16 convs on small planes with the *output channels* as vector lanes:
the plane no longer has to fill the vectors (MobileNetV2's 7x7 layers).

``x86_int8.Conv2DTensorized`` puts the output pixels in the lanes, so a 7x7 plane (49 pixels) is
64 lanes on AVX-512 -- 15 of them computed and dropped, 23 % of the dot work of the layers that
hold most of MobileNetV2's late MACs (320 -> 1280, 3 x 160 -> 960, 960 -> 320, ...), whose
channel counts are all multiples of 16. Here the conv is the GEMM ``acc[p, o] = sum_k
x[k, p] w[o, k]`` of ``x86_int8.DenseTensorized`` (same intrinsic, broadcast activations against
packed weight tiles ``[O/L, K/kp, L, kp]``), every lane a real output channel.
"""
from __future__ import annotations

import numpy as np
from tvm import te

from .intrin_x86 import ISA_BY_NAME, dot_term
from .packing import Packing, tag_packed
from .x86_conv_gather import _inline_narrowing, activation_input
from .x86_conv_tiles import _largest_divisor, _round_up
from .x86_int8 import TensorizedRule, _dense_tile_body, _fits_int32, _offset
from .x86_requant import (
    _channel_consts,
    _channel_placeholders,
    _epilogue_exact,
    _requant_stage,
)

# pixel lanes are kept unless they drop at least this share of the dot work: a 14x14 plane on
# AVX-512 drops 12 of 208 lanes (6 %), and with channel lanes MobileNetV2's 14x14 / 28x28 convs ran
# 0.60-1.02x (the thin-K int16 ones slowest: their time is the epilogue, cheaper per channel row)
MIN_PIXEL_WASTE = 0.1


def _pixel_lane_waste(p: int, lanes: int) -> float:
    """Share of the pixel-lane kernel's lanes that are padding (x86_int8: whole vectors, nr of 1 or 2)."""
    nr = 2 if _round_up(p, 2 * lanes) == _round_up(p, lanes) else 1
    return 1 - p / _round_up(p, nr * lanes)


class Conv2D1x1ChannelLanes(TensorizedRule):
    """``conv2d_requant``, groups 1, 1x1, stride 1, no padding, on a plane whose pixels waste at
    least :data:`MIN_PIXEL_WASTE` of the pixel lanes, with C_out a multiple of the lanes; 512-bit
    (AVX-512 VNNI) only.

    1. The activations are transposed to pixel-major ``x_t[N*P, K]`` (K*P values against the
       O*K*P multiply-adds; MobileNetV2's 7x7 layers: 8-47 K values) so that each pixel's ``kp``
       reduction values are adjacent -- the broadcast operand.
    2. Pixels in tiles of ``mr`` (a divisor of N*P: 7 for 7x7), channels in tiles of ``nr``
       vectors; channel tiles outermost, so each weight tile stays in L1 while every pixel tile
       reads it (the weights are read from memory once per call, as in the pixel-lane kernel).
    3. The tile is requantized from registers, vectorized over the channels (per-channel
       constants as vectors), and each channel's value stored to its NCHW plane.
    Note: not on 256-bit ISAs: there a 7x7 plane wastes 7 of 56 pixel lanes only, and on AVX2 the
    broadcast 8-bit pair is widened to int16 before every dot -- MobileNetV2's 7x7 layers ran
    0.47-0.98x the pixel-lane kernels' speed (u8 960 -> 320: 173 -> 369 us).
    The stores of step 3 are single bytes at stride P (no byte scatter on x86); for K of
    160-960 they are a small share of the K/kp dot steps per output vector that they replace
    with 23 % fewer lanes.
    """

    op = "conv2d_requant"
    narrowed_op = "conv2d_requant_narrowed"

    def pack_for(self, func, params, shapes, isa, k_len=None):
        (xs, adt), (ws, _) = shapes[0], shapes[1]
        o, c, kh, kw = ws
        nb, _, h, w = xs
        p = h * w
        off = _offset(isa, adt)
        pointwise = (kh, kw) == (1, 1) and params["strides"] == [1, 1] and not any(params["padding"])
        if (isa.vector_bits != 512 or params["groups"] != 1 or not pointwise or o % isa.lanes or c % isa.kp
                or _pixel_lane_waste(p, isa.lanes) < MIN_PIXEL_WASTE or not _fits_int32(adt, c, off)):
            return None
        rows, lanes, kp = nb * p, isa.lanes, isa.kp
        accumulators = 14 if isa.vector_bits == 512 else 12
        nr = _largest_divisor(o // lanes, (2, 1))
        mr = _largest_divisor(rows, range(accumulators // nr, 0, -1))
        info = {"rule": type(self).__name__, "isa": isa.name, "mr": mr, "nr": nr, "offset": off,
                "out_shape": [nb, o, h, w], "acc_shape": [rows, o]}

        def pack_args(consts):
            wt, bias, mult, shift = consts[0].reshape(o, c), *consts[1:]
            wp = wt.astype(np.int64).reshape(o // lanes, lanes, c // kp, kp).transpose(0, 2, 1, 3)
            return [np.ascontiguousarray(wp.astype(isa.packed_dtype)), *_channel_consts(wt, bias, mult, shift, off, o)]

        x_in, x, narrowing = activation_input(xs, adt, params)
        wp = te.placeholder((o // lanes, c // kp, lanes, kp), isa.packed_dtype, name="w_packed")
        consts = _channel_placeholders(o)
        xi = te.compute((c // kp, rows, kp), lambda kb, m, j: x[m // p, kb * kp + j, m % p // w, m % w], name="x_kp")
        rk = te.reduce_axis((0, c), "k")
        acc = te.compute((rows, o), lambda m, j: te.sum(
            dot_term(xi[rk // kp, m, rk % kp], wp[j // lanes, rk // kp, j % lanes, rk % kp], off), axis=rk), name="acc")
        y = _requant_stage(acc, (nb, o, h, w), lambda i: (i[0] * p + i[2] * w + i[3], i[1]), lambda a: a[1],
                           consts, params, padded=False)
        out = te.create_prim_func([x_in, wp, *consts, *narrowing, y]).without_attr("global_symbol")
        return Packing(tag_packed(out, func, info), (1, 2, 3, 4), pack_args,
                       lambda consts: _epilogue_exact(consts[0].reshape(o, c), *consts[1:4], adt, off))

    def schedule(self, sch, info):
        isa = ISA_BY_NAME[info["isa"]]
        _, _, h, w = info["out_shape"]
        sch.transform_block_layout(sch.get_sblock("y"), lambda b, oc, i, j: (b * h * w + i * w + j, oc))
        acc = sch.get_sblock("acc")
        rows, n, k = sch.get_loops(acc)
        mo, mi = sch.split(rows, [None, info["mr"]])
        no, nr, ni = sch.split(n, [None, info["nr"], isa.lanes])
        ko, ki = sch.split(k, [None, isa.kp])
        sch.reorder(no, mo, ko, mi, nr, ni, ki)
        _dense_tile_body(sch, acc, (no, mo), ko, mi, nr, ni, isa, info["offset"])
        _inline_narrowing(sch)
        kb, _, j = sch.get_loops(sch.get_sblock("x_kp"))
        sch.parallel(kb)
        sch.unroll(j)  # kp values per pixel innermost: LLVM vectorizes the pixels into interleaving stores

    def space(self, func, info):
        from .x86_int8_space import conv_channel_lanes_space

        return conv_channel_lanes_space(self, func, info)
