"""``im2col-sdot``: a small-channel conv (MobileNetV2's 3x3 stem: 3 input channels, stride 2) as a
TensorIR kernel on boards with the dot product (issue 11: the stem was the last conv kind in
hand-written C on aarch64, ~5.8 instructions/MAC).

The conv is a GEMM of its output pixels (m = oh ow) by the taps (K = c kh kw: 27, padded to 28) by the
output channels; what the hand-written kernel spends per tap -- a bounds check, a scalar multiply --
becomes, once per call:

1. x copied into a zero-padded block (the conv's own padding, plus 16 bytes of slack after it for the
   last strided load), so that no tap checks a bound;
2. the im2col written straight into the pixel-lane kernel's packed layout (:mod:`.tir_kernels_sdot_px`:
   blocks of 16 pixels ``[K/4][16 pixels][4 taps]``): per 16 pixels of an output row and 4 taps, 4
   loads of 16 pixels (with the stride: ``ld2`` at stride 2) and one ``st4``; the padding tap k = 27
   reads tap 26 again (its weights are 0);
3. then :mod:`.tir_kernels_sdot_px`'s tiles: ``sdot`` by element, 8 channels x 8 pixels, each channel's
   requantization baked in, y stored channel-major.

Offered (:func:`im2col_applies`) for one image, groups 1, no dilation, int8 input (its zero padding
is the flipped domain's too), output rows of whole 16-pixel blocks, K <= :data:`IM2COL_MAX_K`, 4 | n,
every shift >= 31, 8/16-bit outputs; measured against the hand-written kernel by
:mod:`.kernel_choice` like every candidate.
"""
from __future__ import annotations

import tvm
from tvm.script import tirx as T

from .tir_kernels_sdot_px import _RANGE, PX_MAX_NK, px_module

IM2COL_SCHEDULES = ("im2col-sdot",)
IM2COL_MAX_K = 64    # taps per output (c kh kw): the small-channel convs; wider ones are GEMMs of their own


def conv_geometry(s) -> tuple:
    """``(c, h, w, kh, kw, sh, sw, pt, pl, pb, pr, oh, ow)`` of a conv2d_requant step (one home: the
    spec and :func:`im2col_step`)."""
    x, p = s.args[0], s.params
    _, c, h, w = (int(v) for v in x.shape)
    _, _, kh, kw = (int(v) for v in s.args[1].shape)
    _, _, oh, ow = (int(v) for v in s.out.shape)
    (sh, sw), (pt, pl, pb, pr) = p["strides"], p["padding"]
    return (c, h, w, kh, kw, int(sh), int(sw), int(pt), int(pl), int(pb), int(pr), oh, ow)


def im2col_step(s) -> bool:
    """A conv2d_requant step this kernel can take, shapes only (the spec's :func:`im2col_applies`
    adds the requantization): one image, groups 1, a kernel larger than 1x1, no dilation, int8 x,
    output rows in 16-pixel blocks, K <= IM2COL_MAX_K, 4 | n."""
    if s.op != "conv2d_requant" or s.args[0].dtype != "int8" or int(s.args[0].shape[0]) != 1:
        return False
    p = s.params
    c, _, _, kh, kw, *_, ow = conv_geometry(s)
    n = int(s.args[1].shape[0])
    return (p["groups"] == 1 and tuple(p["dilation"]) == (1, 1) and (kh, kw) != (1, 1) and ow % 16 == 0
            and c * kh * kw <= IM2COL_MAX_K and n % 4 == 0)


def im2col_applies(sp) -> bool:
    """The spec side: a conv geometry, every shift >= 31 (the pixel-lane requantization), 8/16-bit out."""
    return (bool(sp.conv) and sp.n % 4 == 0 and sp.n * sp.kp <= PX_MAX_NK and sp.out_dtype in _RANGE
            and len(sp.shifts) == sp.n and min(sp.shifts) >= 31 and sp.x_dtype == "int8")


def _padded(sp) -> tuple:
    """(rows, row bytes, total bytes) of the zero-padded copy of x: the conv's padding, 16 spare bytes."""
    c, h, w, pt, pl, pb, pr = (sp.conv[i] for i in (0, 1, 2, 7, 8, 9, 10))
    hp, wp = h + pt + pb, w + pl + pr
    return hp, wp, (c * hp * wp + 16 + 15) // 16 * 16


def im2col_workspace_bytes(sp) -> int:
    """The packed im2col (m kp) and the padded copy of x."""
    return sp.m * sp.kp + _padded(sp)[2] + 64


def im2col_module(sp) -> tvm.IRModule:
    """The IRModule of one ``im2col-sdot`` kernel (``main``), x (c, h, w) and y (n, oh ow) channel-major."""
    c, h, w, kh, kw, sh, sw, pt, pl, _pb, _pr, oh, ow = sp.conv
    hp, wp, xp_bytes = _padded(sp)
    k = sp.k

    def pack(X, XT, xt_at, kb):
        XP = T.alloc_buffer((xp_bytes,), "int8")
        with T.serial(0, xp_bytes // 16) as i:   # zero, then the interior
            T.buffer_store(XP, T.Broadcast(T.int8(0), 16), [T.Ramp(i * 16, 1, 16)])
        with T.grid(c, h) as (ci, y):
            if w % 16 == 0:
                for x16 in range(w // 16):
                    T.buffer_store(XP, X[T.Ramp((ci * h + y) * w + 16 * x16, 1, 16)],
                                   [T.Ramp((ci * hp + y + pt) * wp + pl + 16 * x16, 1, 16)])
            else:
                with T.serial(0, w) as xx:
                    T.buffer_store(XP, X[(ci * h + y) * w + xx], [(ci * hp + y + pt) * wp + pl + xx])
        with T.serial(0, oh) as oy:   # per 16 pixels of an output row and 4 taps: 4 (strided) loads, one st4
            for bx in range(ow // 16):
                block = oy * (ow // 16) + bx
                for g in range(kb):
                    taps = [min(4 * g + j, k - 1) for j in range(4)]   # the padding tap repeats the last (w = 0)
                    vs = []
                    for t in taps:
                        ci, r = divmod(t, kh * kw)
                        ky, kx = divmod(r, kw)
                        at = (ci * hp + oy * sh + ky) * wp + bx * 16 * sw + kx
                        # every sw-th byte of sw whole 16-byte loads (uzp1 at stride 2); a strided Ramp gathers by
                        # lane, and so does one wide load, which LLVM shortens to the bytes used
                        run = [XP[T.Ramp(at + 16 * i, 1, 16)] for i in range(sw)]
                        vs.append(run[0] if sw == 1 else T.Shuffle(run, list(range(0, 16 * sw, sw))))
                    T.buffer_store(XT, T.Shuffle(vs, [j * 16 + p for p in range(16) for j in range(4)]),
                                   [T.Ramp(xt_at(block, g), 1, 64)])

    return px_module(sp, pack=pack, x_size=c * h * w)
