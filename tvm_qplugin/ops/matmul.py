"""Integer activation x activation matmul (attention ``Q Kᵀ`` and ``P V``) with dyadic requant.

``acc = sum_k a[..., m, k] * b[..., k, n]`` in int32, then the per-tensor rule of
quant/dyadic.py and a clamp. Batch dims broadcast with NumPy rules.

int32 accumulation is exact while ``K * max|a| * max|b| < 2**31`` with the dtype bounds
(asserted at build time): int8 x int8 K <= 131071; uint8 x int8 K <= 65793;
uint8 x uint8 K <= 33025; int16 x int8 K <= 511; int16 x uint8 K <= 256; int16 x int16 K <= 1
(narrow int16 operands to int8 first, as ``narrow_for_accumulation`` does for conv/dense).
"""
from __future__ import annotations

import numpy as np
from tvm import te

from ..quant import requantize_ref
from .conv import _exact_matmul
from .registry import IntegerOp, register_op
from .requant import broadcast_index, requant

_ABS_MAX = {"int8": 128, "uint8": 255, "int16": 32768}


def _check_k(a_dtype: str, b_dtype: str, k: int) -> None:
    if a_dtype not in _ABS_MAX or b_dtype not in _ABS_MAX:
        raise ValueError(f"matmul_requant: operand dtypes {a_dtype}, {b_dtype} not in {sorted(_ABS_MAX)}")
    bound = k * _ABS_MAX[a_dtype] * _ABS_MAX[b_dtype]
    if bound >= 2**31:
        raise ValueError(f"matmul_requant: K={k} with {a_dtype} x {b_dtype} can overflow the int32 accumulator "
                         f"(K * |a|max * |b|max = {bound} >= 2**31); narrow an operand to int8 first")


@register_op
class MatmulRequant(IntegerOp):
    """``y = clamp((a @ b) * multiplier + r) >> shift)``.

    a : int8/uint8/int16 (..., M, K). b : int8/uint8/int16 (..., K, N); batch dims broadcast.
    multiplier : int32 value. shift : [0, 62]. Output ``out_dtype`` (batch..., M, N) in [qmin, qmax].
    """

    name = "matmul_requant"
    division_ops = 0

    def divisions(self, params: dict) -> int:
        return 0

    def compute(self, a, b, *, multiplier, shift, qmin, qmax, out_dtype):
        m, k = (int(d) for d in a.shape[-2:])
        k2, n = (int(d) for d in b.shape[-2:])
        if k != k2:
            raise ValueError(f"matmul_requant: inner dims differ, a {tuple(a.shape)} b {tuple(b.shape)}")
        _check_k(str(a.dtype), str(b.dtype), k)
        batch = tuple(np.broadcast_shapes(tuple(int(d) for d in a.shape[:-2]), tuple(int(d) for d in b.shape[:-2])))
        out_shape = (*batch, m, n)
        r = te.reduce_axis((0, k), "k")

        def acc_fn(*i):
            bi = i[:-2]
            ai = broadcast_index(a.shape[:-2], batch, bi) if len(a.shape) > 2 else []
            bj = broadcast_index(b.shape[:-2], batch, bi) if len(b.shape) > 2 else []
            return te.sum(a(*ai, i[-2], r).astype("int32") * b(*bj, r, i[-1]).astype("int32"), axis=r)

        acc = te.compute(out_shape, acc_fn, name="acc")
        return te.compute(out_shape, lambda *i: requant(acc(*i), multiplier, shift, qmin, qmax, out_dtype), name="y")

    def reference(self, a, b, *, multiplier, shift, qmin, qmax, out_dtype):
        _check_k(str(a.dtype), str(b.dtype), a.shape[-1])
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a3 = np.broadcast_to(a, (*batch, *a.shape[-2:])).reshape(-1, *a.shape[-2:])
        b3 = np.broadcast_to(b, (*batch, *b.shape[-2:])).reshape(-1, *b.shape[-2:])
        acc = np.stack([_exact_matmul(x, y) for x, y in zip(a3, b3)]) if a3.shape[0] else np.zeros((0, a.shape[-2], b.shape[-1]), np.int64)
        acc = acc.reshape(*batch, a.shape[-2], b.shape[-1])
        return requantize_ref(acc, multiplier, shift, qmin, qmax, out_dtype)
