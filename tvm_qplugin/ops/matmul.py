"""Integer activation x activation matmul (attention ``Q Kᵀ`` and ``P V``) with dyadic requant.

``acc = sum_k a[..., m, k] * b[..., k, n]`` in int32 or int64 (``acc_bits``), then the
per-tensor rule of quant/dyadic.py and a clamp. Batch dims broadcast with NumPy rules.

int32 accumulation is exact while ``|acc| < 2**31``, asserted at build time from
``min(K * max|a|, a_row_sum) * max|b|`` with dtype bounds: e.g. int8 x int8 K <= 131071,
int16 x int8 K <= 511. ``a_row_sum`` is a caller-proven bound on ``sum_k |a[..., m, k]|``:
softmax probabilities sum to one, so int16 probabilities (2**-15) times int16 values fit int32
for any K. Otherwise ``acc_bits=64`` keeps both operands wide (attention ``Q Kᵀ`` on int16 Q, K),
with the multiplier's mantissa cut so ``acc * multiplier`` stays inside int64.
"""
from __future__ import annotations

import numpy as np
from tvm import te

from ..quant import abs_max, requantize_ref
from .conv import _exact_matmul
from .registry import IntegerOp, register_op
from .requant import broadcast_index, requant

OPERAND_DTYPES = ("int8", "uint8", "int16")  # activation x activation operands the kernel takes


def acc_bound(a_dtype: str, b_dtype: str, k: int, a_row_sum: int | None = None) -> int:
    """Largest ``|acc|`` the operand dtypes (and the optional row-sum bound of ``a``) allow."""
    if a_dtype not in OPERAND_DTYPES or b_dtype not in OPERAND_DTYPES:
        raise ValueError(f"matmul_requant: operand dtypes {a_dtype}, {b_dtype} not in {OPERAND_DTYPES}")
    rows = k * abs_max(a_dtype) if a_row_sum is None else min(k * abs_max(a_dtype), a_row_sum)
    return rows * abs_max(b_dtype)


def _check(a_dtype: str, b_dtype: str, k: int, acc_bits: int, a_row_sum, multiplier: int) -> None:
    bound = acc_bound(a_dtype, b_dtype, k, a_row_sum)
    if acc_bits == 32 and bound >= 2**31:
        raise ValueError(f"matmul_requant: K={k} with {a_dtype} x {b_dtype} can overflow the int32 accumulator "
                         f"(bound {bound} >= 2**31); use acc_bits=64 or narrow an operand to int8 first")
    if acc_bits not in (32, 64):
        raise ValueError(f"matmul_requant: acc_bits={acc_bits}, expected 32 or 64")
    if bound * abs(int(multiplier)) >= 2**62:
        raise ValueError(f"matmul_requant: |acc| <= {bound} times multiplier {multiplier} can overflow int64")


@register_op
class MatmulRequant(IntegerOp):
    """``y = clamp((a @ b) * multiplier + r) >> shift)``.

    a : int8/uint8/int16 (..., M, K). b : int8/uint8/int16 (..., K, N); batch dims broadcast.
    multiplier : int32 value. shift : [0, 62]. Output ``out_dtype`` (batch..., M, N) in [qmin, qmax].
    acc_bits : 32 or 64. a_row_sum : proven bound on ``sum_k |a|`` (module doc), or None.
    """

    name = "matmul_requant"
    division_ops = 0

    def divisions(self, params: dict) -> int:
        return 0

    def compute(self, a, b, *, multiplier, shift, qmin, qmax, out_dtype, acc_bits=32, a_row_sum=None):
        m, k = (int(d) for d in a.shape[-2:])
        k2, n = (int(d) for d in b.shape[-2:])
        if k != k2:
            raise ValueError(f"matmul_requant: inner dims differ, a {tuple(a.shape)} b {tuple(b.shape)}")
        _check(str(a.dtype), str(b.dtype), k, acc_bits, a_row_sum, multiplier)
        acc_t = f"int{acc_bits}"
        batch = tuple(np.broadcast_shapes(tuple(int(d) for d in a.shape[:-2]), tuple(int(d) for d in b.shape[:-2])))
        out_shape = (*batch, m, n)
        r = te.reduce_axis((0, k), "k")

        def acc_fn(*i):
            bi = i[:-2]
            ai = broadcast_index(a.shape[:-2], batch, bi) if len(a.shape) > 2 else []
            bj = broadcast_index(b.shape[:-2], batch, bi) if len(b.shape) > 2 else []
            return te.sum(a(*ai, i[-2], r).astype(acc_t) * b(*bj, r, i[-1]).astype(acc_t), axis=r)

        acc = te.compute(out_shape, acc_fn, name="acc")
        return te.compute(out_shape, lambda *i: requant(acc(*i), multiplier, shift, qmin, qmax, out_dtype), name="y")

    def reference(self, a, b, *, multiplier, shift, qmin, qmax, out_dtype, acc_bits=32, a_row_sum=None):
        _check(str(a.dtype), str(b.dtype), a.shape[-1], acc_bits, a_row_sum, multiplier)
        batch = np.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        a3 = np.broadcast_to(a, (*batch, *a.shape[-2:])).reshape(-1, *a.shape[-2:])
        b3 = np.broadcast_to(b, (*batch, *b.shape[-2:])).reshape(-1, *b.shape[-2:])
        acc = np.stack([_exact_matmul(x, y) for x, y in zip(a3, b3)]) if a3.shape[0] else np.zeros((0, a.shape[-2], b.shape[-1]), np.int64)
        acc = acc.reshape(*batch, a.shape[-2], b.shape[-1])
        return requantize_ref(acc, multiplier, shift, qmin, qmax, out_dtype)
