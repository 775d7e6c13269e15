"""Integer data movement with index maps: nearest-neighbour resize, strided slices, constant padding.

Both move integers without arithmetic on them (same scale in and out). Their index arithmetic is
integer too: nearest resize reads two index vectors computed at compile time (the ONNX
coordinate-transform and rounding rules run in float64 *then*, not in the kernel: TOPI's resize
computes coordinates in float32 at run time, which the integer-only checker refuses).
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from .registry import IntegerOp, register_op


@register_op
class ResizeNearest(IntegerOp):
    """``y[n, c, i, j] = x[n, c, rows[i], cols[j]]`` (NCHW).

    x : any integer dtype (N, C, H, W). rows : (OH,) int32 in [0, H). cols : (OW,) int32 in [0, W).
    """

    name = "resize_nearest"

    def compute(self, x, rows, cols):
        n, c = (int(d) for d in x.shape[:2])
        oh, ow = int(rows.shape[0]), int(cols.shape[0])
        return te.compute((n, c, oh, ow), lambda b, ch, i, j: x[b, ch, rows[i], cols[j]], name="y")

    def reference(self, x, rows, cols):
        return x[:, :, rows.astype(np.int64)][:, :, :, cols.astype(np.int64)]


@register_op
class StridedSlice(IntegerOp):
    """``y[i] = x[begin + i * stride]`` per axis (ONNX Slice after its clamping rules).

    x : any integer dtype. begin, stride : one int per axis (stride may be negative: a reversed
    axis). out_shape : the output shape.
    """

    name = "strided_slice"

    def compute(self, x, *, begin, stride, out_shape):
        return te.compute(tuple(out_shape), lambda *i: x(*[b + k * s for k, b, s in zip(i, begin, stride)]), name="y")

    def reference(self, x, *, begin, stride, out_shape):
        index = tuple(np.asarray(b) + np.arange(n) * s for b, s, n in zip(begin, stride, out_shape))
        return x[np.ix_(*index)]


@register_op
class PadConstant(IntegerOp):
    """``y = x`` shifted by ``before`` inside a frame of ``value`` (ONNX Pad, constant mode).

    x : any integer dtype. before, after : one int >= 0 per axis. value : int in x's dtype range.
    """

    name = "pad_constant"

    def compute(self, x, *, before, after, value):
        shape = [int(d) + b + a for d, b, a in zip(x.shape, before, after)]

        def f(*i):
            inside = tirx.all(*[tirx.all(k >= b, k < b + int(d)) for k, b, d in zip(i, before, x.shape)])
            src = [tirx.min(tirx.max(k - b, 0), int(d) - 1) for k, b, d in zip(i, before, x.shape)]
            return tirx.if_then_else(inside, x(*src), tirx.const(value, x.dtype))

        return te.compute(shape, f, name="y")

    def reference(self, x, *, before, after, value):
        return np.pad(x, list(zip(before, after)), constant_values=x.dtype.type(value))
