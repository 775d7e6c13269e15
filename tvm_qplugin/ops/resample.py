"""Integer data movement with index maps: nearest / bilinear resize, strided slices, constant padding.

Both move integers without arithmetic on them (same scale in and out). Their index arithmetic is
integer too: nearest resize reads two index vectors computed at compile time (the ONNX
coordinate-transform and rounding rules run in float64 *then*, not in the kernel: TOPI's resize
computes coordinates in float32 at run time, which the integer-only checker refuses).
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..quant import requantize_ref
from .registry import IntegerOp, register_op
from .requant import i64, requant


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


@register_op
class ResizeBilinear(IntegerOp):
    """``y[n, c, i, j] = requant(sum_{a, b} rw[i, a] * cw[j, b] * x[n, c, rows[i, a], cols[j, b]])``
    (NCHW): the two taps per axis and their integer weights come from compile time.

    x : int8 / uint8 / int16. rows, cols : (OH, 2) / (OW, 2) int32 source indices. rw, cw : the same
    shapes, int32 weights summing to ``2**q`` per output row / column (q <= 12: the int64
    accumulator times the multiplier stays below 2**62 with the rule's mantissa).
    """

    name = "resize_bilinear"

    def compute(self, x, rows, rw, cols, cw, *, multiplier, shift, qmin, qmax, out_dtype):
        n, c = (int(d) for d in x.shape[:2])
        oh, ow = int(rows.shape[0]), int(cols.shape[0])

        def f(b, ch, i, j):
            acc = tirx.const(0, "int64")
            for a in range(2):
                row = tirx.const(0, "int64")
                for k in range(2):
                    row = row + i64(cw[j, k]) * i64(x[b, ch, rows[i, a], cols[j, k]])
                acc = acc + i64(rw[i, a]) * row
            return requant(acc, multiplier, shift, qmin, qmax, out_dtype)

        return te.compute((n, c, oh, ow), f, name="y")

    def reference(self, x, rows, rw, cols, cw, *, multiplier, shift, qmin, qmax, out_dtype):
        xv = x.astype(np.int64)
        acc = np.zeros((*x.shape[:2], rows.shape[0], cols.shape[0]), np.int64)
        for a in range(2):
            for k in range(2):
                taps = xv[:, :, rows[:, a].astype(np.int64)][:, :, :, cols[:, k].astype(np.int64)]
                acc += rw[:, a].astype(np.int64)[:, None] * cw[:, k].astype(np.int64)[None, :] * taps
        return requantize_ref(acc, multiplier, shift, qmin, qmax, out_dtype)


@register_op
class ZeroInsert(IntegerOp):
    """``y[n, c, i * sh, j * sw] = x[n, c, i, j]``, zeros elsewhere: the transposed convolution's
    input dilation (NCHW). Output (N, C, (H - 1) * sh + 1, (W - 1) * sw + 1).
    """

    name = "zero_insert"

    def compute(self, x, *, strides):
        n, c, h, w = (int(d) for d in x.shape)
        sh, sw = strides
        shape = (n, c, (h - 1) * sh + 1, (w - 1) * sw + 1)
        return te.compute(shape, lambda b, ch, i, j: tirx.if_then_else(
            tirx.all(i % sh == 0, j % sw == 0), x[b, ch, i // sh, j // sw], tirx.const(0, x.dtype)), name="y")

    def reference(self, x, *, strides):
        n, c, h, w = x.shape
        sh, sw = strides
        y = np.zeros((n, c, (h - 1) * sh + 1, (w - 1) * sw + 1), x.dtype)
        y[:, :, ::sh, ::sw] = x
        return y
