"""Small-window convolutions (the 3x3 stem) as Cortex-M TensorIR GEMMs: candidates of
:mod:`.tir_kernels_cortexm_choice` beside the hand-written im2col GEMM (issue 11, deliverable 1).

A 3x3 conv2d_requant of one image, groups 1, no dilation, whose window holds at most
:data:`IM2COL_MAX_TAPS` taps (``c * 9``: 27 on RGB, 9 on a grey image) is
:mod:`.tir_kernels_cortexm`'s GEMM over its output pixels -- ``m = oh * ow``, ``k = c * kh * kw``
(the package's own weight rows: OIHW flattened, padded to ``kp``), ``n`` output channels, NCHW
output -- whose per-tile packing of x gathers each pixel's window instead of reading a column:
tap ``kk = (ci, ky, kx)`` of pixel ``i = (oy, ox)`` is ``x[ci, oy*sh + ky - pt, ox*sw + kx - pl]``,
0 outside the map (flipped to -128 with the rest of a uint8 input: the bias's ``128 * sum(w)``
cancels it, as for every other tap). The packing loops over the window are unrolled, so each tap's
(ci, ky, kx) is a constant and costs its bounds check, a load and a store; the GEMM and the
requantization are the ``smlad`` / ``mve`` kernels' own.

Note: the packing and :class:`Im2colSpec` take any window; only 3x3 ones are candidates, so that a
model without such a stem (the digits ViT's 2x2 patch embedding) keeps its compile as it was -- no
choice firmware runs -- and its measured figures.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm.script import tirx as T

from .tir_kernels import DenseSpec

IM2COL_MAX_TAPS = 32   # windows up to this many taps (the packed row: 2 MVE vectors, 8 SMLAD words)


@dataclass(frozen=True)
class Im2colSpec(DenseSpec):
    """A small-window conv as a GEMM (module doc): the DenseSpec of ``y (n, oh*ow) = w (n, kp) .
    im2col(x)`` plus the geometry the packing reads x (c, h, w) with."""

    c: int = 0
    h: int = 0
    w: int = 0
    kh: int = 0
    kw: int = 0
    sh: int = 1
    sw: int = 1
    pt: int = 0
    pl: int = 0
    ow: int = 1


def is_im2col_conv(s) -> bool:
    """A step these kernels take: one image, groups 1, no dilation, a 3x3 window of at most
    :data:`IM2COL_MAX_TAPS` taps, constant weights and requantization."""
    if s.op != "conv2d_requant" or s.args[0].shape[0] != 1 or s.params["groups"] != 1:
        return False
    _, c, kh, kw = (int(d) for d in s.args[1].shape)
    return ((kh, kw) == (3, 3) and c * kh * kw <= IM2COL_MAX_TAPS and tuple(s.params["dilation"]) == (1, 1)
            and all(a.val.kind == "const" for a in s.args[1:]))


def im2col_spec(s, schedule: str = "smlad") -> Im2colSpec:
    """The kernel of package step ``s`` (:func:`is_im2col_conv`): shapes, dtypes, clamp and
    requantization variant as :func:`.tir_kernels.step_spec` gives a pointwise conv's."""
    from ..errors import UnsupportedOpError
    from .kernels_c import conv_dims
    from .tir_kernels import OUT_DTYPES, shift_range

    x = s.args[0]
    if not is_im2col_conv(s) or x.dtype not in ("uint8", "int8") or s.out.dtype not in OUT_DTYPES:
        raise UnsupportedOpError(f"TIR kernel: {s.name}: {s.op} {x.dtype} -> {s.out.dtype} is no 8-bit small-window "
                                 f"conv of one image (groups 1, <= {IM2COL_MAX_TAPS} taps): no im2col TIR kernel")
    d = conv_dims(s)
    o, c, kh, kw = (int(v) for v in s.args[1].shape)
    k = c * kh * kw
    shifts = shift_range(s.args[4].val.const)
    return Im2colSpec(f"qk_tir_conv_{s.index}", int(d["oh"]) * int(d["ow"]), k, (k + 3) // 4 * 4, o, x.dtype,
                      s.out.dtype, int(s.params["qmin"]), int(s.params["qmax"]), schedule, True, shifts[0] >= 33,
                      shifts, c=c, h=int(d["h"]), w=int(d["w"]), kh=kh, kw=kw, sh=int(d["sh"]), sw=int(d["sw"]),
                      pt=int(d["pt"]), pl=int(d["pl"]), ow=int(d["ow"]))


def im2col_tap(sp: Im2colSpec, X, i, kk):
    """Tap ``kk`` of output pixel ``i``'s window in x's own dtype, 0 outside the map."""
    win = sp.kh * sp.kw
    iy = i // sp.ow * sp.sh + kk % win // sp.kw - sp.pt
    ix = i % sp.ow * sp.sw + kk % sp.kw - sp.pl
    inside = T.And(T.And(iy >= 0, iy < sp.h), T.And(ix >= 0, ix < sp.w))
    at = (T.min(kk // win, sp.c - 1) * sp.h + T.min(T.max(iy, 0), sp.h - 1)) * sp.w + T.min(T.max(ix, 0), sp.w - 1)
    return T.if_then_else(inside, X[at], T.Cast(sp.x_dtype, 0))
