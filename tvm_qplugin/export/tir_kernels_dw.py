"""A depthwise 3x3 conv2d_requant as a TensorIR kernel for aarch64 boards (issue 11): one more
candidate of :mod:`.kernel_choice` beside the hand-written ``qk_dw3x3_*`` of qkernels.c.

The layer: one image, NCHW, groups == channels, a 3x3 window, stride 1 or 2, zero padding, 8-bit
input. Per channel the kernel first copies its map, zero-padded, into an int16 block (so the taps
read no bounds check and the products widen with the NEON ``smlal`` family; ``dw3x3-split``, a
second candidate for stride 2, keeps the even and the odd columns apart, so that every tap reads its
row's pixels contiguously, for a strided copy), then accumulates a
row of outputs at a time in int32 with the 9 taps unrolled and the row's pixels innermost (LLVM
vectorizes that loop), and requantizes the row (quant/dyadic.py's formula: :func:`.tir_kernels.requant`).
It reads the package's own weight rows (9 taps, rows padded to ``kp``), bias, multipliers and
shifts, so choosing it costs no flash; the same plain-pointer shim (:func:`.tir_shim.shim_sources`)
calls it, the padded block coming from the shim's workspace pool (:func:`dw_workspace_bytes`).
"""
from __future__ import annotations

from dataclasses import dataclass

import tvm
from tvm.script import tirx as T

from ..errors import UnsupportedOpError

DW_SCHEDULES = ("dw3x3", "dw3x3-split")   # -split: stride 2's even and odd columns apart (stride 2 only)


@dataclass(frozen=True)
class DwSpec:
    """One depthwise 3x3 kernel: ``y (c, oh, ow) = requant(conv3x3(x (c, h, w), w (c, kp)[:, :9]) + b)``."""

    name: str
    c: int
    h: int
    w: int
    oh: int
    ow: int
    sh: int
    sw: int
    pt: int
    pl: int
    kp: int
    x_dtype: str
    out_dtype: str
    qmin: int
    qmax: int
    schedule: str = "dw3x3"
    shift33: bool = False   # every shift >= 33: the requantization in 32 bits (tir_kernels.requant)
    shift_range: tuple = (0, 62)
    nchw: bool = False      # (not a pointwise GEMM: tir_shim.shim_sources sizes its pool by dw_workspace_bytes)

    @property
    def phases(self) -> int:
        """Column phases of the padded block: 2 where ``dw3x3-split`` keeps a stride-2 layer's even and
        odd columns apart (each tap then reads its row contiguously), else 1."""
        return self.sw if self.schedule == "dw3x3-split" else 1

    @property
    def padded(self) -> tuple[int, int]:
        """(rows, cols) of one channel's zero-padded block: every tap of every output inside it."""
        return (max(self.h + self.pt, (self.oh - 1) * self.sh + 3), max(self.w + self.pl, (self.ow - 1) * self.sw + 3))


def is_depthwise3x3(s) -> bool:
    """A step this kernel takes: one image, groups == channels == outputs, 3x3, no dilation, stride 1 or 2."""
    p = s.params
    if s.op != "conv2d_requant" or s.args[0].shape[0] != 1:
        return False
    o, cg, kh, kw = (int(d) for d in s.args[1].shape)
    return (cg == 1 and p["groups"] == o == int(s.args[0].shape[1]) and (kh, kw) == (3, 3)
            and tuple(p["dilation"]) == (1, 1) and tuple(p["strides"]) in ((1, 1), (2, 2)))


def dw_spec(s, schedule: str = "dw3x3", kp: int = 12) -> DwSpec:
    """The kernel of package step ``s`` (:func:`is_depthwise3x3`)."""
    import numpy as np

    from .kernels_c import conv_dims
    from .tir_kernels import OUT_DTYPES, shift_range

    x = s.args[0]
    if not is_depthwise3x3(s) or x.dtype not in ("uint8", "int8") or s.out.dtype not in OUT_DTYPES:
        raise UnsupportedOpError(f"TIR kernel: {s.name}: {s.op} {x.dtype} -> {s.out.dtype} is no 8-bit depthwise 3x3 "
                                 "conv of one image (stride 1 or 2): it has no depthwise TIR kernel")
    if schedule not in DW_SCHEDULES:
        raise UnsupportedOpError(f"TIR kernel: {s.name}: schedule {schedule!r} for a depthwise conv "
                                 f"(known: {', '.join(DW_SCHEDULES)})")
    d = conv_dims(s)
    shifts = np.asarray(s.args[4].val.const)
    return DwSpec(f"qk_tir_dw3x3_{s.index}", int(d["c"]), int(d["h"]), int(d["w"]), int(d["oh"]), int(d["ow"]),
                  int(d["sh"]), int(d["sw"]), int(d["pt"]), int(d["pl"]), int(kp), x.dtype, s.out.dtype,
                  int(s.params["qmin"]), int(s.params["qmax"]), schedule, bool(shifts.min() >= 33), shift_range(shifts))


def dw_workspace_bytes(sp: DwSpec) -> int:
    """Shim pool bytes the kernel allocates: one channel's int16 padded block, one row of int32 sums."""
    hp, wp = sp.padded
    return (2 * hp * -(-wp // sp.phases) * sp.phases + 63) // 64 * 64 + (4 * sp.ow + 63) // 64 * 64


def dw_module(sp: DwSpec) -> tvm.IRModule:
    """The scheduled IRModule of one kernel (``main``: the packed wrapper reads the tensors' data)."""
    from .tir_kernels import requant
    from .tir_kernels_sdot import _requant4

    c, h, w, oh, ow, sh, sw, pt, pl, kp = sp.c, sp.h, sp.w, sp.oh, sp.ow, sp.sh, sp.sw, sp.pt, sp.pl, sp.kp
    hp, wp = sp.padded
    ph_n = sp.phases
    wq = -(-wp // ph_n)   # columns of one phase
    xd, od = sp.x_dtype, sp.out_dtype
    # the requantization 4 outputs at a time (sdot4x4's, 32-bit lanes where every shift >= 31); a last
    # group past the row recomputes the row's last 4 (written twice, the same values)
    lanes = 4 if ow >= 4 else 1
    yw = -(-ow // 4) if lanes == 4 else ow

    def tap(XP, vc, vi, vj, vy, vx):
        """Tap (vy, vx) of output (vi, vj) in the padded block: column vj * sw + vx of its phase."""
        if ph_n == 1:
            return XP[vc, vi * sh + vy, 0, vj * sw + vx]
        return XP[vc, vi * sh + vy, vx % sw, vj + vx // sw]   # (vj * sw + vx) split, sw == phases

    @T.prim_func(s_tir=True)
    def main(X: T.Buffer((c, h, w), xd), W: T.Buffer((c, kp), "int8"), B: T.Buffer((c,), "int32"),
             MU: T.Buffer((c,), "int32"), SH: T.Buffer((c,), "int8"), Y: T.Buffer((c, oh, ow), od)):
        T.func_attr({"tirx.noalias": True})
        with T.sblock("root"):
            XP = T.sblock_alloc_buffer((c, hp, ph_n, wq), "int16")
            ACC = T.sblock_alloc_buffer((c, oh, ow), "int32")
            for ch, i, ph, q in T.grid(c, hp, ph_n, wq):
                with T.sblock("pad"):
                    vc, vi, vp, vq = T.axis.remap("SSSS", [ch, i, ph, q])
                    XP[vc, vi, vp, vq] = T.if_then_else(   # the padded column vq * ph_n + vp
                        vi >= pt and vi < h + pt and vq * ph_n + vp >= pl and vq * ph_n + vp < w + pl,
                        T.Cast("int16", X[vc, T.min(T.max(vi - pt, 0), h - 1),
                                          T.min(T.max(vq * ph_n + vp - pl, 0), w - 1)]),
                        T.int16(0))
            for ch, i, j, ky, kx in T.grid(c, oh, ow, 3, 3):
                with T.sblock("acc"):
                    vc, vi, vj, vy, vx = T.axis.remap("SSSRR", [ch, i, j, ky, kx])
                    with T.init():
                        ACC[vc, vi, vj] = 0
                    ACC[vc, vi, vj] = ACC[vc, vi, vj] + (T.Cast("int32", tap(XP, vc, vi, vj, vy, vx))
                                                         * T.Cast("int32", W[vc, vy * 3 + vx]))
            for ch, i, j in T.grid(c, oh, yw):
                with T.sblock("y"):
                    vc, vi, vj = T.axis.remap("SSS", [ch, i, j])
                    if lanes == 4:
                        Y[vc, vi, T.Ramp(T.min(vj * 4, ow - 4), 1, 4)] = T.Cast(
                            od + "x4", _requant4(sp, ACC[vc, vi, T.Ramp(T.min(vj * 4, ow - 4), 1, 4)]
                                                 + T.Broadcast(B[vc], 4), T.Broadcast(MU[vc], 4),
                                                 T.Broadcast(SH[vc], 4)))
                    else:
                        Y[vc, vi, vj] = requant(sp, ACC[vc, vi, vj], vc, B, MU, SH)

    sch = tvm.s_tir.Schedule(tvm.IRModule({"main": main}))
    pad, acc, y = sch.get_sblock("pad"), sch.get_sblock("acc"), sch.get_sblock("y")
    ych, yi, _ = sch.get_loops(y)
    sch.compute_at(acc, yi)        # one row of sums per output row
    sch.compute_at(pad, ych)       # one channel's padded block per channel
    a_j, a_y, a_x = sch.get_loops(acc)[-3:]
    sch.reorder(a_y, a_x, a_j)     # taps outer (unrolled), the row's pixels inner (vectorized by LLVM)
    sch.decompose_reduction(acc, a_y)
    for loop in (a_y, a_x):
        sch.unroll(loop)
    return sch.mod
