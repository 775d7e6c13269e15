"""Integer pooling and reductions.

Max pooling is exact in the integer domain (monotone, same scale). Averages are integer sums
(int32) followed by a dyadic multiply by ``scale_in / (count * scale_out)``: the division by the
window size becomes part of the requantization, so no integer division is emitted.
"""
from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from tvm import te, tirx

from ..quant import requantize_ref
from .registry import IntegerOp, register_op
from .requant import i64, requant


def _pool_out(size, k, s, d, p0, p1, ceil_mode):
    span = size + p0 + p1 - d * (k - 1) - 1
    return (-(-span // s) if ceil_mode else span // s) + 1


@register_op
class MaxPool2D(IntegerOp):
    """NCHW max pooling; padded positions never win (they hold ``qmin`` of the input dtype).

    x : int8/uint8 (N, C, H, W). pool_size, strides, dilation : 2 ints. padding : (t, l, b, r).
    """

    name = "max_pool2d"

    def compute(self, x, *, pool_size, strides, dilation, padding, ceil_mode, pad_value):
        n, c, h, w = (int(d) for d in x.shape)
        (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = pool_size, strides, dilation, padding
        oh = _pool_out(h, kh, sh, dh, pt, pb, ceil_mode)
        ow = _pool_out(w, kw, sw, dw, pl, pr, ceil_mode)
        ry = te.reduce_axis((0, kh), "ry")
        rx = te.reduce_axis((0, kw), "rx")

        def f(b, ch, i, j):
            y = i * sh + ry * dh - pt
            xx = j * sw + rx * dw - pl
            inside = tirx.all(y >= 0, y < h, xx >= 0, xx < w)
            v = tirx.if_then_else(inside, x[b, ch, tirx.min(tirx.max(y, 0), h - 1), tirx.min(tirx.max(xx, 0), w - 1)],
                                  tirx.const(pad_value, x.dtype))
            return te.max(v, axis=[ry, rx])

        return te.compute((n, c, oh, ow), f, name="y")

    def reference(self, x, *, pool_size, strides, dilation, padding, ceil_mode, pad_value):
        n, c, h, w = x.shape
        (kh, kw), (sh, sw), (dh, dw), (pt, pl, pb, pr) = pool_size, strides, dilation, padding
        oh = _pool_out(h, kh, sh, dh, pt, pb, ceil_mode)
        ow = _pool_out(w, kw, sw, dw, pl, pr, ceil_mode)
        # pad generously so ceil_mode windows stay in bounds; padding never wins the max
        extra_h = max(0, (oh - 1) * sh + dh * (kh - 1) + 1 - (h + pt + pb))
        extra_w = max(0, (ow - 1) * sw + dw * (kw - 1) + 1 - (w + pl + pr))
        xp = np.pad(x, ((0, 0), (0, 0), (pt, pb + extra_h), (pl, pr + extra_w)), constant_values=pad_value)
        win = sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        win = win[:, :, ::sh, ::sw, ::dh, ::dw][:, :, :oh, :ow]
        return win.max(axis=(4, 5)).astype(x.dtype)


@register_op
class SumRequant(IntegerOp):
    """Sum over ``axes`` in int32, then per-tensor requantization: mean = sum * (1/N) folded into
    the dyadic multiplier. x : int8/uint8/int16. Covers ReduceMean and GlobalAveragePool.
    """

    name = "sum_requant"

    def compute(self, x, *, axes, keepdims, multiplier, shift, qmin, qmax, out_dtype):
        shape = [int(d) for d in x.shape]
        axes = [a % len(shape) for a in axes]
        red = {a: te.reduce_axis((0, shape[a]), f"r{a}") for a in axes}
        kept = [a for a in range(len(shape)) if a not in axes]
        out_shape = [1 if a in axes else shape[a] for a in range(len(shape))] if keepdims else [shape[a] for a in kept]

        def index(i):
            if keepdims:
                return [red[a] if a in axes else i[a] for a in range(len(shape))]
            it = iter(i)
            return [red[a] if a in axes else next(it) for a in range(len(shape))]

        acc = te.compute(out_shape, lambda *i: te.sum(x(*index(i)).astype("int32"), axis=list(red.values())), name="acc")
        return te.compute(out_shape, lambda *i: requant(acc(*i), multiplier, shift, qmin, qmax, out_dtype), name="y")

    def reference(self, x, *, axes, keepdims, multiplier, shift, qmin, qmax, out_dtype):
        acc = x.astype(np.int64).sum(axis=tuple(axes), keepdims=keepdims)
        return requantize_ref(acc, multiplier, shift, qmin, qmax, out_dtype)


@register_op
class AvgPool2DRequant(IntegerOp):
    """NCHW average pooling: window sum in int32, then a dyadic multiply per output position
    (``multiplier[i, j]`` folds 1/count, where count excludes padding unless count_include_pad).
    """

    name = "avg_pool2d_requant"

    def compute(self, x, multiplier, *, pool_size, strides, padding, shift, qmin, qmax, out_dtype):
        n, c, h, w = (int(d) for d in x.shape)
        (kh, kw), (sh, sw), (pt, pl, _, _) = pool_size, strides, padding
        oh, ow = (int(d) for d in multiplier.shape)
        ry = te.reduce_axis((0, kh), "ry")
        rx = te.reduce_axis((0, kw), "rx")

        def f(b, ch, i, j):
            y = i * sh + ry - pt
            xx = j * sw + rx - pl
            inside = tirx.all(y >= 0, y < h, xx >= 0, xx < w)
            v = tirx.if_then_else(inside, x[b, ch, tirx.min(tirx.max(y, 0), h - 1), tirx.min(tirx.max(xx, 0), w - 1)]
                                  .astype("int32"), tirx.const(0, "int32"))
            return te.sum(v, axis=[ry, rx])

        acc = te.compute((n, c, oh, ow), f, name="acc")
        return te.compute((n, c, oh, ow), lambda b, ch, i, j: requant(acc[b, ch, i, j], multiplier[i, j], shift, qmin,
                                                                        qmax, out_dtype), name="y")

    def reference(self, x, multiplier, *, pool_size, strides, padding, shift, qmin, qmax, out_dtype):
        (kh, kw), (sh, sw), (pt, pl, pb, pr) = pool_size, strides, padding
        oh, ow = multiplier.shape
        xp = np.pad(x.astype(np.int64), ((0, 0), (0, 0), (pt, pb + kh), (pl, pr + kw)))
        win = sliding_window_view(xp, (kh, kw), axis=(2, 3))[:, :, ::sh, ::sw][:, :, :oh, :ow]
        return requantize_ref(win.sum(axis=(4, 5)), multiplier.astype(np.int64), shift, qmin, qmax, out_dtype)


_ = i64
