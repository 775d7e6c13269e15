"""Conv2d and dense (matmul with constant weight): per-channel symmetric int8 weights, int32 bias
at ``s_in * s_w``, fused bias/ReLU/Clip, per-channel dyadic requantization (HAWQ-V3)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from tvm import relax

from ...ops import const
from ...ops.int4_linear import weight_operand
from ...quant import abs_max, dyadic
from ...quant.accumulator import accumulator_for
from ...quant.int4 import narrow_input, quantize_weight_int4
from ..graph import Binding, shape_of
from .base import IntegerRule, LayerInfo, QValue, clamp_bounds, register_rule

if TYPE_CHECKING:
    from ..integerize import IntegerizeContext

INT32_MAX = 2**31 - 1


def quantize_weight_per_channel(w: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8: ``w ~= w_q * scale[c]``, scale = max|w_c| / 127."""
    red = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=red).astype(np.float64)
    scale = np.where(amax > 0, amax / 127.0, 1.0)
    shape = [1] * w.ndim
    shape[axis] = -1
    wq = np.clip(np.floor(w / scale.reshape(shape) + 0.5), -127, 127).astype(np.int8)
    return wq, scale


def quantize_weight(w: np.ndarray, axis: int, bits: int, input_moments=None) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel symmetric weights at ``bits`` (8: max scaling; 4: min-MSE clip, rounded with
    error feedback against ``input_moments`` when calibrated, quant/int4.py)."""
    return quantize_weight_int4(w, axis, input_moments) if bits == 4 else quantize_weight_per_channel(w, axis)


def requant_params(in_scale: float, w_scale: np.ndarray, out_scale: float,
                   mantissa_bits: int = 31) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel dyadic (b, c) for ``in_scale * w_scale / out_scale``."""
    ds = [dyadic(float(in_scale * s / out_scale), mantissa_bits=mantissa_bits) for s in w_scale]
    return (np.array([d.multiplier for d in ds], dtype=np.int64), np.array([d.shift for d in ds], dtype=np.int64))


def quantize_bias(bias: np.ndarray | None, n: int, acc_scale: np.ndarray) -> np.ndarray:
    if bias is None:
        return np.zeros(n, dtype=np.int32)
    return np.clip(np.floor(bias / acc_scale + 0.5), -INT32_MAX, INT32_MAX).astype(np.int32)


def bias_correction(ctx: IntegerizeContext, x_var, w: np.ndarray, wq: np.ndarray, w_scale: np.ndarray,
                    groups: int = 1) -> np.ndarray | None:
    """Expected output shift caused by weight rounding, ``(W_q - W) . E[x]`` per output channel
    (Nagel et al., data-free quantization), from the calibrated per-channel input means.
    Subtracting it from the bias removes the systematic part of the weight error; it matters most
    for depthwise layers, whose 9 taps per channel average nothing out."""
    means = ctx.ranges.channel_means.get(x_var) if hasattr(ctx.ranges, "channel_means") else None
    if means is None or (w.ndim == 2 and means.shape[0] != w.shape[1]):
        return None  # (dense on a 4-D input: calibrate.py's means are along axis 1, not the K axis)
    err = wq.astype(np.float64) * w_scale.reshape((-1,) + (1,) * (w.ndim - 1)) - w
    if w.ndim == 4:  # (O, C/g, KH, KW): input channel of (o, c) is (o // (O/g)) * C/g + c
        o, cg = w.shape[:2]
        in_ch = (np.arange(o)[:, None] // (o // groups)) * cg + np.arange(cg)[None, :]
        return (err.sum(axis=(2, 3)) * means[in_ch]).sum(axis=1)
    return err @ means  # dense: (N, K) . (K,)


def _fused(ctx: IntegerizeContext, b: Binding, x: QValue, wq, w_scale, channel_axis, correction=None,
           mantissa_bits: int = 31):
    ep = ctx.epilogue(b.var, channel_axis)
    if correction is not None:
        ep.bias = (ep.bias if ep.bias is not None else 0.0) - correction
    out_qt = ctx.out_qtype(ep.var, ep.nonneg)
    mult, shift = requant_params(x.qtype.scale, w_scale, out_qt.scale, mantissa_bits)
    bias = quantize_bias(ep.bias, wq.shape[0], x.qtype.scale * w_scale)
    qmin, qmax = clamp_bounds(out_qt, ep.lo, ep.hi)
    return ep, out_qt, mult, shift, bias, qmin, qmax


@register_rule
class QConv2D(IntegerRule):
    """conv2d(x, W) [+ b] [-> relu/clip] -> conv2d_requant(x_q, W_q, b_q) (ops/conv.py)."""

    ops = ("relax.nn.conv2d",)

    def check(self, ctx, b):
        if ctx.const(b.args[1]) is None:
            return "weight is not a constant"
        a = b.attrs
        if str(a.data_layout) != "NCHW" or str(a.kernel_layout) != "OIHW":
            return f"layout {a.data_layout}/{a.kernel_layout} (NCHW/OIHW supported)"
        return None

    def rewrite(self, ctx, b):
        w = ctx.const(b.args[1])
        w_bits, a_bits = ctx.config.bits_of(b.name)
        x = ctx.narrow_for_accumulation(ctx.q(b.args[0]), int(np.prod(w.shape[1:])))
        x, wide = ctx.read_width(x, b.name)
        x = narrow_input(ctx, x, a_bits)
        wq, w_scale = quantize_weight(w, 0, w_bits, getattr(ctx.ranges, "input_moments", {}).get(b.name))
        corr = bias_correction(ctx, b.args[0], w, wq, w_scale, int(b.attrs.groups)) if ctx.config.bias_correction else None
        ep, out_qt, mult, shift, bias, qmin, qmax = _fused(ctx, b, x, wq, w_scale, 1, corr)
        a = b.attrs
        pad = [int(p) for p in a.padding]
        op, w_stored, w_params = weight_operand("conv2d_requant", wq, w_bits)
        y = ctx.emit(op, [x.expr, const(w_stored), const(bias), const(mult), const(shift)],
                     strides=[int(s) for s in a.strides], padding=pad, dilation=[int(d) for d in a.dilation],
                     groups=int(a.groups), qmin=qmin, qmax=qmax, out_dtype=out_qt.dtype, **w_params)
        o, cg, kh, kw = w.shape
        n, _, oh, ow = shape_of(b.var)
        ctx.layers.append(LayerInfo(b.name, "conv2d", w_bits, a_bits, n * o * oh * ow * cg * kh * kw, var=y,
                                    **_wide_facts(wide, x)))
        return _finish(ctx, b, ep, y, out_qt)


@register_rule
class QDense(IntegerRule):
    """matmul(x, W) with constant 2-D W (K, N) [+ b] [-> relu/clip] -> dense_requant (ops/conv.py)."""

    ops = ("relax.matmul",)

    def check(self, ctx, b):
        w = ctx.const(b.args[1])
        if w is None:
            return "second operand is not a constant (activation x activation rule)"
        if w.ndim != 2:
            return f"constant operand has rank {w.ndim} (2-D weights supported)"
        return None

    def rewrite(self, ctx, b):
        w = ctx.const(b.args[1]).T  # (N, K)
        w_bits, a_bits = ctx.config.bits_of(b.name)
        x, wide = ctx.read_width(ctx.q(b.args[0]), b.name)
        x = narrow_input(ctx, x, a_bits)
        # a wide (int16) input keeps its precision: accumulate in int64 when int32 could overflow,
        # with the multiplier's mantissa cut so that acc * b stays inside int64
        acc_bits, mantissa = accumulator_for(w.shape[1] * max(abs(x.qtype.qmin), x.qtype.qmax) * abs_max("int8"))
        wq, w_scale = quantize_weight(w, 0, w_bits, getattr(ctx.ranges, "input_moments", {}).get(b.name))
        corr = bias_correction(ctx, b.args[0], w, wq, w_scale) if ctx.config.bias_correction else None
        ep, out_qt, mult, shift, bias, qmin, qmax = _fused(ctx, b, x, wq, w_scale, -1, corr, mantissa)
        extra = {"acc_bits": 64} if acc_bits == 64 else {}
        op, w_stored, w_params = weight_operand("dense_requant", wq, w_bits)
        y = ctx.emit(op, [x.expr, const(w_stored), const(bias), const(mult), const(shift)],
                     qmin=qmin, qmax=qmax, out_dtype=out_qt.dtype, **extra, **w_params)
        rows = int(np.prod(shape_of(b.var)[:-1]))
        ctx.layers.append(LayerInfo(b.name, "dense", w_bits, a_bits, rows * w.shape[0] * w.shape[1], var=y,
                                    **_wide_facts(wide, x)))
        return _finish(ctx, b, ep, y, out_qt)


def _wide_facts(wide: QValue | None, read: QValue) -> dict:
    """LayerInfo's ``wide_input`` / ``wide_read_bits`` for a layer whose input was int16 (``wide``)
    and that reads ``read``."""
    if wide is None:
        return {}
    return {"wide_input": wide.qtype, "wide_read_bits": 16 if read.qtype.dtype == "int16" else 8}


def _finish(ctx, b, ep, y, out_qt) -> QValue:
    qv = QValue(y, out_qt, ep.nonneg)
    if ep.var is not b.var:
        ctx.values[ep.var] = qv
    return qv


_ = relax
