"""The C package's int4-weight layers: ``conv2d_requant_w4`` / ``dense_requant_w4`` steps.

The packed rows go to flash as they are in the integer module (quant/int4.py's contract: two per
byte, half the int8 bytes). At run time ``qk_conv2d_w4_*`` / ``qk_dense_w4_*``
(mcu/qkernels_w4.c.in) widen a *tile* of output channels into the step's scratch and hand it to
the int8 kernel -- the SMLAD / MVE / portable GEMM and the depthwise paths, unchanged -- so an
int4 layer is exactly its int8 twin on the widened weights, for ``TILE_BYTES`` more RAM at most.

Note: widening the whole layer at once would cost its full int8 size in RAM (MobileNetV2's
1280x320 head: 400 KB), which defeats int4 on a microcontroller; a tile of one row at a time
would repeat the im2col per output channel. ``TILE_BYTES`` trades the two: a layer whose rows fit
is widened in one go, a larger one in tiles of a multiple of 4 channels (each re-reads its input).
"""
from __future__ import annotations

import numpy as np

from . import scratch
from .c_graph import ALIGN, Step, dt_info

TILE_BYTES = 8192
W4_OPS = ("conv2d_requant_w4", "dense_requant_w4")


def weight_shape(s: Step) -> tuple[int, ...]:
    """The unpacked weight shape of a conv / dense step (int4 steps carry it as ``w_shape``)."""
    return tuple(s.params.get("w_shape") or s.args[1].shape)


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def row_bytes(k: int) -> int:
    """Bytes of a widened weight row in the int8 kernels' layout (``kp``: K rounded up to 4)."""
    return (k + 3) // 4 * 4


def conv_tiles(o: int, groups: int, kp: int) -> tuple[int, int]:
    """``(gt, ot)``: whole groups per tile when a group's rows fit ``TILE_BYTES``, else ``ot``
    channels (a multiple of 4 where the group has that many) of one group."""
    og = o // groups
    if og * kp <= TILE_BYTES:
        return max(1, min(groups, TILE_BYTES // (og * kp))), og
    return 1, min(og, max(4, TILE_BYTES // kp // 4 * 4))


def tile_bytes(rows: int, kp: int) -> int:
    """The widened tile in scratch: ``rows`` rows of ``kp`` bytes plus the GEMM's 16-byte over-read."""
    return _round_up(rows * kp + 16, ALIGN)


def w4_scratch_bytes(s: Step) -> int:
    """Scratch of an int4 step: its tile, then the int8 kernel's scratch for the largest tile --
    what ``qk_*_w4_*_buffer_size`` returns in C."""
    from .kernels_c import conv_dims, dense_dims

    x8 = dt_info(s.args[0].dtype)[2] == 1
    if s.op == "conv2d_requant_w4":
        d = conv_dims(s)
        kp = row_bytes(d["c"] // d["groups"] * d["kh"] * d["kw"])
        gt, ot = conv_tiles(d["o"], d["groups"], kp)
        cg = d["c"] // d["groups"]
        inner = dict(d, n=1, groups=gt, c=gt * cg, o=gt * ot)
        return tile_bytes(gt * ot, kp) + scratch.buffer_size("conv2d", inner, x8)
    d = dense_dims(s)
    kp = row_bytes(d["k"])
    ot = dense_tile(d["n"], kp)
    return tile_bytes(ot, kp) + scratch.buffer_size("dense", dict(d, n=ot), x8)


def dense_tile(n: int, kp: int) -> int:
    """Output features widened at a time by ``qk_dense_w4``."""
    return min(n, max(4, TILE_BYTES // kp // 4 * 4))


class Int4KernelCalls:
    """``op_*_w4`` methods of :class:`~.kernels_c.KernelCalls` (mixed in there)."""

    def op_conv2d_requant_w4(self, s: Step, p: dict) -> None:
        from ..quant.int4 import unpack_int4
        from .kernels_c import conv_dims

        x, w, bias, mult, shift = s.args
        o, cg, kh, kw = p["w_shape"]
        depthwise = cg == 1 and p["groups"] > 1
        packed = np.asarray(w.val.const)
        wk = self._weights(s, unpack_int4(packed, cg * kh * kw), bias.val.const, mult.val.const, shift.val.const, x,
                           gemm=not depthwise, packed=packed)
        gt, ot = conv_tiles(o, p["groups"], wk["kp"])
        conv = dict(conv_dims(s), kp=wk["kp"], qmin=p["qmin"], qmax=p["qmax"], wt=0, bias=wk["bias"],
                    mult=wk["mult"], shift=wk["shift"], wcorr=0)
        fields = dict(conv="{" + ", ".join(f".{k} = {v}" for k, v in conv.items()) + "}", packed=wk["wt"], gt=gt,
                      ot=ot, tile_bytes=tile_bytes(gt * ot, wk["kp"]))
        self._w4_call(s, "conv2dw4", "conv2d", "qk_conv_w4_t", fields, x)

    def op_dense_requant_w4(self, s: Step, p: dict) -> None:
        from ..quant.int4 import unpack_int4
        from .kernels_c import dense_dims

        x, w, bias, mult, shift = s.args
        dims = dense_dims(s)
        packed = np.asarray(w.val.const)
        wk = self._weights(s, unpack_int4(packed, dims["k"]), bias.val.const, mult.val.const, shift.val.const, x,
                           packed=packed)
        ot = dense_tile(dims["n"], wk["kp"])
        dense = dict(dims, kp=wk["kp"], qmin=p["qmin"], qmax=p["qmax"], wt=0, bias=wk["bias"], mult=wk["mult"],
                     shift=wk["shift"], wcorr=0)
        fields = dict(dense="{" + ", ".join(f".{k} = {v}" for k, v in dense.items()) + "}", packed=wk["wt"], ot=ot,
                      tile_bytes=tile_bytes(ot, wk["kp"]))
        self._w4_call(s, "densew4", "dense", "qk_dense_w4_t", fields, x)

    def _w4_call(self, s: Step, kind: str, int8_kind: str, struct: str, fields: dict, x) -> None:
        """Parameter block and call of ``qk_<int8_kind>_w4_<X>_<O>``; its instance needs the int8
        kernel of the same types and the widening helper."""
        pn = self.pstruct(struct, s, fields)
        X, O = dt_info(x.dtype)[0], dt_info(s.out.dtype)[0]
        self.instances.update({(kind, X, O), (int8_kind, X, O), ("unpack4",)})
        s.c_func = f"qk_{int8_kind}_w4_{X}_{O}"
        self.calls.append(f"  {s.c_func}(&{pn}, {self.ptr(x, True)}, {self.ptr(s.out)}, {self.scratch(s)});")
