"""int4-weight convolution and dense: the int8 ops of ops/conv.py with packed weights widened
inside the kernel.

The weight operand is the ``(rows, ceil(K / 2))`` int8 array of quant/int4.py (two nibbles per
byte, low nibble first); ``w_shape`` names the unpacked shape the kernel restores. In TE the
widening is one stage, ``w_unpacked``, a pure function of the packed bytes:
``(int32(byte) << (28 - 4 * (k % 2))) >> 28`` -- the arithmetic right shift sign-extends the
nibble, exact for all 16 codes. Everything after it (padding, the int32 reduction, the dyadic
requantization) is the int8 op's own definition, so the two can never drift apart. The NumPy
twins widen with masks and a comparison instead (quant/int4.py:unpack_int4), a different
formulation of the same contract.
"""
from __future__ import annotations

import numpy as np
from tvm import te, tirx

from ..quant.int4 import pack_int4, unpack_int4
from .conv import Conv2DRequant, DenseRequant
from .registry import register_op


def unpacked_weight(wp: te.Tensor, w_shape, name: str = "w_unpacked") -> te.Tensor:
    """TE stage widening packed int4 rows ``wp`` to int8 of ``w_shape`` (rows first; the other
    axes are the row's row-major flattening)."""
    inner = [int(d) for d in w_shape[1:]]

    def flat(idx):
        k = tirx.const(0, "int32")
        for i, d in zip(idx, inner):
            k = k * d + i
        return k

    def widen(r, *idx):
        k = flat(idx)
        byte = wp[r, k // 2].astype("int32")
        return ((byte << (28 - 4 * (k % 2))) >> 28).astype("int8")

    return te.compute(tuple(int(d) for d in w_shape), widen, name=name)


def _row_len(w_shape) -> int:
    k = 1
    for d in w_shape[1:]:
        k *= int(d)
    return k


@register_op
class Conv2DRequantW4(Conv2DRequant):
    """``conv2d_requant`` with int4 weights: w packed ``(O, ceil(C/groups*KH*KW / 2))`` int8,
    ``w_shape`` = ``[O, C/groups, KH, KW]``; every other operand and parameter as the int8 op."""

    name = "conv2d_requant_w4"

    def compute(self, x, w, bias, multiplier, shift, *, w_shape, **params):
        return super().compute(x, unpacked_weight(w, w_shape), bias, multiplier, shift, **params)

    def reference(self, x, w, bias, multiplier, shift, *, w_shape, **params):
        wide = unpack_int4(w, _row_len(w_shape)).reshape(w_shape)
        return super().reference(x, wide, bias, multiplier, shift, **params)


@register_op
class DenseRequantW4(DenseRequant):
    """``dense_requant`` with int4 weights: w packed ``(N, ceil(K / 2))`` int8, ``w_shape`` =
    ``[N, K]``; every other operand and parameter as the int8 op."""

    name = "dense_requant_w4"

    def compute(self, x, w, bias, multiplier, shift, *, w_shape, **params):
        return super().compute(x, unpacked_weight(w, w_shape), bias, multiplier, shift, **params)

    def reference(self, x, w, bias, multiplier, shift, *, w_shape, **params):
        return super().reference(x, unpack_int4(w, _row_len(w_shape)), bias, multiplier, shift, **params)


def weight_operand(op: str, wq: np.ndarray, w_bits: int) -> tuple[str, np.ndarray, dict]:
    """How a layer's quantized weights ``wq`` (rows first) are stored at ``w_bits``: the op to emit,
    the constant and the extra parameters -- ``op`` itself with ``wq`` at 8 bits; its ``_w4`` form
    with the packed rows and ``w_shape`` at 4."""
    if w_bits == 8:
        return op, wq, {}
    return f"{op}_w4", pack_int4(wq.reshape(wq.shape[0], -1)), {"w_shape": [int(d) for d in wq.shape]}


def widened_site(site):
    """A ``*_w4`` kernel site (tie_inputs.KernelSite) as its int8 twin sees it: the packed weight
    constant widened to ``w_shape``, ``w_shape`` dropped -- so the int8 ops' exact-tie input
    builders serve the int4 kernels unchanged."""
    import dataclasses

    w_shape = site.params["w_shape"]
    args = list(site.args)
    args[1] = unpack_int4(args[1], _row_len(w_shape)).reshape(w_shape)
    params = {k: v for k, v in site.params.items() if k != "w_shape"}
    return dataclasses.replace(site, op=site.op.removesuffix("_w4"), args=args, params=params)
