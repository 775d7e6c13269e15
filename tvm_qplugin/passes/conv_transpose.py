"""ConvTransposeToConv: ``conv2d_transpose(x, W)`` -> zero insertion, then an ordinary ``conv2d``.

A transposed convolution with stride ``s`` is a stride-1 convolution over the input with ``s - 1``
zeros inserted between neighbours, padded by ``d (K - 1) - p`` (plus ``output_padding`` at the
bottom/right), with the kernel flipped spatially and its in/out channel axes swapped (per group):

    y[o, i] = sum_c sum_k x[c, m] W[c, o, k]  where i = m s + k d - p
            = sum_c sum_k' u[c, i + k' d - (d (K-1) - p)] W'[o, c, k'],  W'[o, c, k'] = W[c, o, K-1-k']

The conv2d then takes every existing conv path (per-channel weights, fused bias / ReLU, BN folding,
C kernels). The zero insertion stays a ``conv2d_transpose`` with an all-ones depthwise 1x1 kernel
(valid float Relax for calibration), which rules/resample.py's QZeroInsert maps to the
``zero_insert`` integer op. A padding larger than ``d (K - 1)`` (a crop) is left alone (refused).
"""
from __future__ import annotations

import numpy as np
from tvm import relax

from ..ops import const
from .graph import Binding, const_value, shape_of
from .rewriter import FunctionRewriter, function_pass


def is_zero_insert(b: Binding) -> bool:
    """``conv2d_transpose`` that only inserts zeros: all-ones (C, 1, 1, 1) kernel, groups = C, no padding."""
    w = const_value(b.args[1])
    a = b.attrs
    return (w is not None and w.ndim == 4 and w.shape[1:] == (1, 1, 1) and int(a.groups) == w.shape[0]
            and bool(np.all(w == 1)) and all(int(p) == 0 for p in a.padding)
            and all(int(p) == 0 for p in a.output_padding) and all(int(d) == 1 for d in a.dilation))


def flipped_conv_weight(w: np.ndarray, groups: int) -> np.ndarray:
    """IOHW transposed-conv weights (C, O/g, KH, KW) -> OIHW conv weights (O, C/g, KH, KW), flipped."""
    c, og, kh, kw = w.shape
    wg = w.reshape(groups, c // groups, og, kh, kw).transpose(0, 2, 1, 3, 4).reshape(groups * og, c // groups, kh, kw)
    return np.ascontiguousarray(wg[:, :, ::-1, ::-1])


def _conv_transpose_to_conv(rw: FunctionRewriter):
    def rewrite(b: Binding):
        if b.op_name != "relax.nn.conv2d_transpose" or is_zero_insert(b):
            return None
        w, a = const_value(b.args[1]), b.attrs
        if w is None or str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "IOHW":
            return None
        (sh, sw), (dh, dw) = (int(v) for v in a.strides), (int(v) for v in a.dilation)
        pt, pl, pb, pr = (int(v) for v in a.padding)
        oph, opw = (int(v) for v in a.output_padding)
        groups, (c, _, kh, kw) = int(a.groups), w.shape
        pads = [dh * (kh - 1) - pt, dw * (kw - 1) - pl, dh * (kh - 1) - pb + oph, dw * (kw - 1) - pr + opw]
        if min(pads) < 0:
            return None
        x = rw.arg(b.args[0])
        if (sh, sw) != (1, 1):
            ones = const(np.ones((c, 1, 1, 1), dtype=w.dtype))
            x = rw.bb.emit(relax.op.nn.conv2d_transpose(x, ones, strides=[sh, sw], groups=c))
        y = relax.op.nn.conv2d(x, const(flipped_conv_weight(w, groups)), strides=[1, 1], padding=pads,
                               dilation=[dh, dw], groups=groups)
        out = shape_of(b.var)
        assert tuple(int(v) for v in rw.bb.normalize(y).ty.shape) == out, "ConvTransposeToConv: output shape changed"
        return y

    return rewrite


ConvTransposeToConv = function_pass(_conv_transpose_to_conv, "ConvTransposeToConv")
