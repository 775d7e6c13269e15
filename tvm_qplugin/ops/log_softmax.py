"""Integer LogSoftmax over the last axis: ``y = (x - max) - ln(sum exp(x - max))``.

The exponentials and their row sum are softmax_int's (ShiftExp / I-BERT i-exp, ops/int_core.py,
constants from quant/nonlinear_consts.py), so ``S = sum E`` with ``E(0) = E0`` standing for 1.0.
The logarithm is a base-2 one in Q16: ``S`` normalised to ``u = S << (30 - b)`` in ``[2**30,
2**31)`` (``b = bitlen(S) - 1``), its top 8 fraction bits index a 257-entry table
``T[k] = round(log2(1 + k / 256) * 2**16)`` (compile time) and the next 16 bits interpolate linearly
(max error ~3e-6 in log2, far below the output step). With ``A = x - max`` (integer input units) and
``B = log2(S) - log2(E0)`` (Q16), ``y = clamp((A ma - B mb + r) >> shift)``: ``ma = s_in / s_out``
and ``mb = ln 2 / (2**16 s_out)`` on one shared shift, one rounding. No division besides the
exponential's own (none in the division-free variant).
"""
from __future__ import annotations

import math

import numpy as np
from tvm import te

from ..quant import nonlinear_consts as nc
from ..quant import round_shift_ref
from ..quant.scheme import variant_of
from .int_core import (check_int_dtype, i64, np_bitlen, np_ibert_exp, np_pre, np_shiftexp, row_shape, te_bitlen,
                       te_ibert_exp, te_pre, te_shiftexp)
from .registry import IntegerOp, register_op
from .requant import clamp_cast, round_shift

LOG2_INDEX_BITS = 8      # table entries: 2**8 + 1
LOG2_FRAC_BITS = 16      # the logarithm's fixed point (Q16) and the interpolation weight's bits


def log2_table() -> np.ndarray:
    """``T[k] = round(log2(1 + k / 256) * 2**16)``, k = 0..256 (int32; T[256] = 2**16)."""
    k = np.arange(2**LOG2_INDEX_BITS + 1, dtype=np.float64)
    return np.floor(np.log2(1.0 + k / 2**LOG2_INDEX_BITS) * 2**LOG2_FRAC_BITS + 0.5).astype(np.int32)


def _exp_ref(d, ce, kind):
    return np_ibert_exp(d, ce) if kind.exp == "poly" else np_shiftexp(d, ce, kind.division_free)


def log_softmax_consts(in_scale: float, n: int, variant: str, exp_poly: int, length: int):
    """``(exp consts, log2(E0) in Q16)``; refuses an ``n`` whose row sum could overflow int32."""
    ce = nc.exp_consts(variant, in_scale, n, exp_poly)
    if length * ce.e_max > nc.INT32_MAX:
        raise ValueError(f"log_softmax_int: L={length} x e_max={ce.e_max} overflows int32; lower n ({n})")
    e0 = int(_exp_ref(np.zeros(1, np.int64), ce, variant_of(variant))[0])
    return ce, int(math.floor(math.log2(e0) * 2**LOG2_FRAC_BITS + 0.5))


@register_op
class LogSoftmaxInt(IntegerOp):
    """Integer LogSoftmax over the last axis (see the module docstring).

    x : int8 / int16 (..., L) at ``in_scale``. table : :func:`log2_table`. n, variant, exp_poly : as
    softmax_int. ma, mb, shift : the two dyadic multipliers (``|A ma|`` < 2**16 * 2**31 and
    ``|B mb|`` < 2**21 * 2**31 keep the sum inside int64). Output ``out_dtype`` in [qmin, qmax].
    """

    name = "log_softmax_int"

    def divisions(self, params: dict) -> int:
        return 0 if variant_of(params["variant"]).division_free else 1

    def compute(self, x, table, *, in_scale, n, variant, exp_poly, ma, mb, shift, qmin, qmax, out_dtype):
        kind = variant_of(variant)
        check_int_dtype(x, self.name, ("int8", "int16"))
        lead, length = row_shape(x)
        ce, log2_e0 = log_softmax_consts(in_scale, n, variant, exp_poly, length)
        k = te.reduce_axis((0, length), "k")
        mx = te.compute(lead, lambda *i: te.max(x(*i, k).astype("int32"), axis=k), name="row_max")

        def exp_fn(*i):
            d = te_pre(x(*i).astype("int64") - mx(*i[:-1]).astype("int64"), ce.pre_shift)
            return (te_ibert_exp(d, ce) if kind.exp == "poly" else te_shiftexp(d, ce, kind.division_free)).astype("int32")

        e = te.compute(x.shape, exp_fn, name="exp")
        k2 = te.reduce_axis((0, length), "k2")
        total = te.compute(lead, lambda *i: te.sum(e(*i, k2).astype("int64"), axis=k2), name="exp_sum")

        def log2_fn(*i):
            s = total(*i)
            b = te_bitlen(s, 32) - i64(1)
            u = s << (i64(30) - b)
            idx = ((u >> i64(30 - LOG2_INDEX_BITS)) - i64(2**LOG2_INDEX_BITS)).astype("int32")
            fr = (u >> i64(30 - LOG2_INDEX_BITS - LOG2_FRAC_BITS)) & i64(2**LOG2_FRAC_BITS - 1)
            t0, t1 = table[idx].astype("int64"), table[idx + 1].astype("int64")
            return (b << i64(LOG2_FRAC_BITS)) + t0 + (((t1 - t0) * fr) >> i64(LOG2_FRAC_BITS)) - i64(log2_e0)

        lse = te.compute(lead, log2_fn, name="row_log2_sum")

        def out(*i):
            a = x(*i).astype("int64") - mx(*i[:-1]).astype("int64")
            return clamp_cast(round_shift(a * i64(ma) - lse(*i[:-1]) * i64(mb), shift), qmin, qmax, out_dtype)

        return te.compute(x.shape, out, name="y")

    def reference(self, x, table, *, in_scale, n, variant, exp_poly, ma, mb, shift, qmin, qmax, out_dtype):
        kind = variant_of(variant)
        ce, log2_e0 = log_softmax_consts(in_scale, n, variant, exp_poly, x.shape[-1])
        a = x.astype(np.int64) - x.astype(np.int64).max(axis=-1, keepdims=True)
        e = _exp_ref(np_pre(a, ce.pre_shift), ce, kind).astype(np.int32)
        s = e.astype(np.int64).sum(axis=-1, keepdims=True)
        b = np_bitlen(s) - 1
        u = s << (30 - b)
        idx = (u >> (30 - LOG2_INDEX_BITS)) - 2**LOG2_INDEX_BITS
        fr = (u >> (30 - LOG2_INDEX_BITS - LOG2_FRAC_BITS)) & (2**LOG2_FRAC_BITS - 1)
        t = table.astype(np.int64)
        lse = (b << LOG2_FRAC_BITS) + t[idx] + (((t[idx + 1] - t[idx]) * fr) >> LOG2_FRAC_BITS) - log2_e0
        return np.clip(round_shift_ref(a * ma - lse * mb, shift), qmin, qmax).astype(out_dtype)
