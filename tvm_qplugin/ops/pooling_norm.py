"""Sentence-embedding heads: masked mean pooling and L2 normalisation, integer-only.

* ``masked_mean_requant`` -- ``sum_t x[b, t, :] * keep[b, t] / count[b]`` with a data-dependent
  ``count = sum_t keep[b, t]``. The count takes only ``T + 1`` values (``T``, the static
  sequence length), so the division is a compile-time table: ``table[n]`` is the dyadic
  mantissa of ``s_in / (s_out n)`` on one shared shift (the integer reciprocal of each possible
  count, correctly rounded), and the kernel is one int64 sum, one table load and one rounding:
  no division at run time, and the same single rounding as every other requant.
* ``l2_normalize_int`` -- ``x / ||x||`` over the last axis: ``V = sum I**2`` (int64) shifted up
  by an even ``2s`` to 54-55 bits, ``k = isqrt(V << 2s)`` (~27 bits whatever the row's norm: a
  small vector's isqrt alone would have a few bits) and the normalised reciprocal
  ``f = floor(2**(30+e) / k)`` (``e = bitlen(k)``), both by the division-free Newton iterations
  of I-LayerNorm (:mod:`.int_core`, exact after their fix-up), ``y = round(f I / 2**(30+e-s-15))``:
  int16 at scale 2**-15 whatever the input scale (the scale cancels in ``x / ||x||``).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
from tvm import te, tirx

from ..quant import abs_max, dyadic, round_shift_ref
from ..quant import nonlinear_consts as nc
from .int_core import (check_int_dtype, i64, indicator, np_bitlen, np_isqrt, np_pre, np_recip_norm, stage, te_bitlen,
                       te_isqrt_newton, te_pre_bounded, te_recip_norm)
from .registry import IntegerOp, register_op
from .requant import clamp_cast, round_shift

L2_OUT_DTYPE = "int16"
L2_OUT_FRAC_BITS = 15          # l2_normalize_int's output scale is 2**-15
L2_MAX_C = 2**25               # C * (2**15)**2 < 2**56: the isqrt's exact range
L2_SSQ_BITS = 55               # each row's sum of squares is shifted up (by an even amount) to this many bits


def masked_mean_table(ratio: float, seq_len: int, in_dtype: str) -> tuple[np.ndarray, int]:
    """``(table, shift)`` for ``masked_mean_requant``: ``table[n] ~ ratio / n * 2**shift`` (round half up,
    ``table[0] = 0``: an all-masked row sums to 0) for counts ``0..seq_len``; ``ratio = s_in / s_out``.

    The shift is the dyadic one of ``ratio`` (31-bit mantissa), lowered until ``|acc| * table[1]``
    fits int64 for the largest sum ``seq_len * abs_max(in_dtype)`` (ValueError where no shift does).
    """
    d = dyadic(ratio)
    shift = d.shift
    acc_max = seq_len * abs_max(in_dtype)
    while shift > 0 and acc_max * abs(d.multiplier) * 2 ** (shift - d.shift) >= 2**62:
        shift -= 1
    if acc_max * abs(d.multiplier) * 2 ** (shift - d.shift) >= 2**62:
        raise ValueError(f"masked_mean_requant: sums up to {acc_max} times a scale ratio of {ratio:.3g} overflow int64; "
                         "narrow the input first")
    exact = Fraction(ratio) * 2**shift
    table = [0] + [int((exact / n + Fraction(1, 2)) // 1) for n in range(1, seq_len + 1)]
    return np.array(table, np.int64), shift


@register_op
class MaskedMeanRequant(IntegerOp):
    """``y[b, d] = clamp((sum_t x[b, t, d] keep[b, t]) * table[count[b]] + r) >> shift)``.

    x : int8 / uint8 / int16 / int32 (B, T, D). mask : any integer or bool dtype (B, T); a token
    counts when its mask is non-zero (attention masks are 0 / 1). table : int64 (T + 1,) from
    :func:`masked_mean_table`. Sums are int64; ``|sum| * table[n] < 2**62`` holds by construction.
    """

    name = "masked_mean_requant"

    def compute(self, x, mask, table, *, shift, qmin, qmax, out_dtype):
        check_int_dtype(x, self.name, ("int8", "uint8", "int16", "int32"))
        b, t, d = (int(v) for v in x.shape)
        if tuple(int(v) for v in mask.shape) != (b, t) or tuple(int(v) for v in table.shape) != (t + 1,):
            raise ValueError(f"{self.name}: mask {tuple(mask.shape)} / table {tuple(table.shape)} do not fit x {(b, t, d)}")
        zero = tirx.const(0, "int64")

        def keep(i, k):  # through int64: LLVM cannot compare bools, and int32 would truncate int64 masks
            return mask[i, k].astype("int64") != zero

        kt = te.reduce_axis((0, t), "kt")
        count = te.compute((b,), lambda i: te.sum(indicator(keep(i, kt)), axis=kt), name="count")
        ks = te.reduce_axis((0, t), "ks")
        acc = te.compute((b, d), lambda i, j: te.sum(tirx.if_then_else(keep(i, ks), x[i, ks, j].astype("int64"), zero),
                                                     axis=ks), name="acc")
        return te.compute((b, d), lambda i, j: clamp_cast(round_shift(acc[i, j] * table[count[i]], shift), qmin, qmax,
                                                            out_dtype), name="y")

    def reference(self, x, mask, table, *, shift, qmin, qmax, out_dtype):
        keep = (mask != 0).astype(np.int64)
        acc = (x.astype(np.int64) * keep[:, :, None]).sum(axis=1)
        m = table.astype(np.int64)[keep.sum(axis=1)][:, None]
        return np.clip(round_shift_ref(acc * m, shift), qmin, qmax).astype(out_dtype)


@register_op
class L2NormalizeInt(IntegerOp):
    """``y = x / ||x||_2`` over the last axis, int16 at scale 2**-15 (a lone non-zero entry, 1.0,
    saturates to 32767).

    x : int8 / int16 / int32 (..., C), C <= 2**25, any scale. ``pre_shift``
    (:func:`~tvm_qplugin.quant.nonlinear_consts.layernorm_pre_shift`) brings it to ``I`` in
    +-2**15 as for LayerNorm. ``V = max(sum I**2, 1)``, ``s = max(55 - bitlen(V), 0) >> 1``,
    ``k = isqrt(V << 2s)``, ``e = bitlen(k)``, ``f = floor(2**(30+e) / k)`` in (2**30, 2**31],
    ``y = clamp((f I + r) >> (15 + e - s))``.
    An all-zero row gives 0 (torch's ``F.normalize`` with its eps gives 0 too).
    """

    name = "l2_normalize_int"

    def divisions(self, params: dict) -> int:
        return 0

    def compute(self, x, *, pre_shift):
        check_int_dtype(x, self.name)
        lead, c = tuple(int(v) for v in x.shape[:-1]), int(x.shape[-1])
        if c > L2_MAX_C:
            raise ValueError(f"{self.name}: {c} channels > {L2_MAX_C} (the sum of squares must stay below 2**56)")
        qmin, qmax = -abs_max(L2_OUT_DTYPE), abs_max(L2_OUT_DTYPE) - 1

        def xi(*i):
            return te_pre_bounded(x(*i), pre_shift, str(x.dtype))

        kc = te.reduce_axis((0, c), "kc")
        ssq = te.compute(lead, lambda *i: te.sum(xi(*i, kc) * xi(*i, kc), axis=kc), name="row_ssq")
        v = stage(ssq, lambda *i: tirx.max(ssq(*i), i64(1)), "row_ssq_pos")
        s = stage(v, lambda *i: tirx.max(i64(L2_SSQ_BITS) - te_bitlen(v(*i), 62), i64(0)) >> i64(1), "row_norm_shift")
        k = te_isqrt_newton(stage(v, lambda *i: v(*i) << (s(*i) + s(*i)), "row_ssq_norm"), "row_norm")
        f, e = te_recip_norm(k, True, "row_inv_norm")
        return te.compute(x.shape, lambda *i: clamp_cast(round_shift(
            f(*i[:-1]) * xi(*i), e(*i[:-1]) - s(*i[:-1]) + i64(30 - L2_OUT_FRAC_BITS)), qmin, qmax, L2_OUT_DTYPE), name="y")

    def reference(self, x, *, pre_shift):
        i = np_pre(x.astype(np.int64), pre_shift)
        if x.dtype == np.int32:
            i = np.clip(i, -nc.LN_MAX_ABS, nc.LN_MAX_ABS)
        v = np.maximum((i * i).sum(axis=-1, keepdims=True), 1)
        s = np.maximum(L2_SSQ_BITS - np_bitlen(v), 0) >> 1
        f, e = np_recip_norm(np_isqrt(v << (2 * s)), division_free=True)
        y = round_shift_ref(f * i, e - s + (30 - L2_OUT_FRAC_BITS))
        return np.clip(y, -abs_max(L2_OUT_DTYPE), abs_max(L2_OUT_DTYPE) - 1).astype(L2_OUT_DTYPE)
