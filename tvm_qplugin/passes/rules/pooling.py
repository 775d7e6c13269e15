"""Max/average pooling and mean reductions (sum + dyadic 1/N)."""
from __future__ import annotations

import numpy as np

from ...ops import const
from ...quant import dyadic
from ..graph import shape_of
from .base import IntegerRule, QValue, register_rule


@register_rule
class QMaxPool2D(IntegerRule):
    """max_pool2d on integers: same type in and out (max commutes with a positive scale)."""

    ops = ("relax.nn.max_pool2d",)

    def check(self, ctx, b):
        return None if str(b.attrs.layout) == "NCHW" else f"layout {b.attrs.layout} (NCHW supported)"

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        a = b.attrs
        pool, strides, dilation = ([int(v) for v in vs] for vs in (a.pool_size, a.strides, a.dilation))
        padding = _explicit_padding(shape_of(b.args[0])[2:], shape_of(b.var)[2:], pool, strides, dilation,
                                    [int(v) for v in a.padding])
        y = ctx.emit("max_pool2d", [x.expr], pool_size=pool, strides=strides, dilation=dilation, padding=padding,
                     ceil_mode=False, pad_value=x.qtype.qmin)
        return QValue(y, x.qtype, x.nonneg)


def _explicit_padding(in_hw, out_hw, pool, strides, dilation, padding) -> list[int]:
    """Floor-mode ``(top, left, bottom, right)`` padding giving exactly Relax's output size ``out_hw``.

    ``ceil_mode`` is resolved here, against the float graph's own output shape: Relax (like
    PyTorch) drops a last window that would start in the bottom/right padding, which a plain
    ``ceil((H + pads - K) / S) + 1`` does not, so the kernel must not recompute the size. The extra
    bottom/right rows hold ``qmin`` and never win the max.
    """
    pads = list(padding)
    for d, (size, out, k, s, dil) in enumerate(zip(in_hw, out_hw, pool, strides, dilation)):
        need = (out - 1) * s + dil * (k - 1) + 1 - size - pads[d]   # bottom/right padding for `out` windows
        pads[d + 2] = max(0, need)
        got = (size + pads[d] + pads[d + 2] - dil * (k - 1) - 1) // s + 1
        if got != out:
            raise AssertionError(f"max_pool2d: cannot reproduce output size {out} (got {got}) with floor padding")
    return pads


@register_rule
class QMean(IntegerRule):
    """mean over axes (ReduceMean, GlobalAveragePool) -> sum_requant with 1/N in the multiplier."""

    ops = ("relax.mean",)

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        shape = shape_of(b.args[0])
        axes = list(range(len(shape))) if b.attrs.axis is None else [int(v) % len(shape) for v in b.attrs.axis]
        count = int(np.prod([shape[i] for i in axes]))
        out_qt = ctx.out_qtype(b.var, x.nonneg)
        d = dyadic(x.qtype.scale / (count * out_qt.scale))
        y = ctx.emit("sum_requant", [x.expr], axes=axes, keepdims=bool(b.attrs.keepdims), multiplier=d.multiplier,
                     shift=d.shift, qmin=out_qt.qmin, qmax=out_qt.qmax, out_dtype=out_qt.dtype)
        return QValue(y, out_qt, x.nonneg)


@register_rule
class QAdaptiveAvgPool2D(IntegerRule):
    """adaptive_avg_pool2d to 1x1 (GlobalAveragePool) -> sum_requant over H, W."""

    ops = ("relax.nn.adaptive_avg_pool2d",)

    def check(self, ctx, b):
        out = shape_of(b.var)
        return None if out[2:] == (1, 1) and str(b.attrs.layout) == "NCHW" else f"output size {out[2:]} (1x1 supported)"

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        n, c, h, w = shape_of(b.args[0])
        out_qt = ctx.out_qtype(b.var, x.nonneg)
        d = dyadic(x.qtype.scale / (h * w * out_qt.scale))
        y = ctx.emit("sum_requant", [x.expr], axes=[2, 3], keepdims=True, multiplier=d.multiplier, shift=d.shift,
                     qmin=out_qt.qmin, qmax=out_qt.qmax, out_dtype=out_qt.dtype)
        return QValue(y, out_qt, x.nonneg)


@register_rule
class QAvgPool2D(IntegerRule):
    """avg_pool2d -> window sum + per-position dyadic 1/count (count excludes padding unless
    count_include_pad), so borders divide by the right count without an integer division."""

    ops = ("relax.nn.avg_pool2d",)

    def check(self, ctx, b):
        a = b.attrs
        if str(a.layout) != "NCHW":
            return f"layout {a.layout} (NCHW supported)"
        if any(int(v) != 1 for v in a.dilation) or bool(a.ceil_mode):
            return "dilation or ceil_mode (not supported)"
        return None

    def rewrite(self, ctx, b):
        x = ctx.q(b.args[0])
        a = b.attrs
        kh, kw = (int(v) for v in a.pool_size)
        sh, sw = (int(v) for v in a.strides)
        pt, pl, pb, pr = (int(v) for v in a.padding)
        _, _, h, w = shape_of(b.args[0])
        _, _, oh, ow = shape_of(b.var)
        out_qt = ctx.out_qtype(b.var, x.nonneg)
        counts = np.empty((oh, ow), dtype=np.float64)
        for i in range(oh):
            rows = kh if a.count_include_pad else min(i * sh - pt + kh, h) - max(i * sh - pt, 0)
            for j in range(ow):
                cols = kw if a.count_include_pad else min(j * sw - pl + kw, w) - max(j * sw - pl, 0)
                counts[i, j] = rows * cols
        ds = [dyadic(x.qtype.scale / (c * out_qt.scale)) for c in counts.ravel()]
        shift = max(d.shift for d in ds)
        mult = np.array([round(d.multiplier * 2.0 ** (shift - d.shift)) for d in ds], dtype=np.int64).reshape(oh, ow)
        y = ctx.emit("avg_pool2d_requant", [x.expr, const(mult)], pool_size=[kh, kw], strides=[sh, sw],
                     padding=[pt, pl, pb, pr], shift=shift, qmin=out_qt.qmin, qmax=out_qt.qmax, out_dtype=out_qt.dtype)
        return QValue(y, out_qt, x.nonneg)
