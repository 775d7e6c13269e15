"""Activation x activation ``matmul_requant`` (attention ``Q Kᵀ``, ``P V``) on the x86 int16 dot
instruction: ``vpdpwssd`` (AVX-512 VNNI, 16 lanes) or ``vpmaddwd`` (AVX2, 8 lanes).

No operand is a constant, so nothing is prepacked at build time: the kernel's definition is
rebuilt in TE with its own packing stages -- the same parameters, the same integers (each stage
is a copy, a widening or an exact split; the requantization is the op's own ``requant``).

1. ``b_packed[bt, N/L, K/2, L, 2]``: per batch x head, b's ``K x N`` values regrouped so that a
   vector load gives ``L`` columns x 2 reduction steps (int8 / uint8 widened to int16) -- K*N
   copies against the M*K*N multiply-adds they feed, computed under the batch loop.
2. a is broadcast two int16 at a time straight from its rows (``k`` is contiguous in a).
3. ``mr x nr`` accumulator vectors (rows x column vectors) stay in registers over the K loop;
   the tile is requantized from registers right after it. Batch x heads run in parallel.

int64 accumulation (``acc_bits=64``: int16 Q and K, where one pair of products can already
reach 2**31) is kept exact with int32 sums: a = 256 a_hi + a_lo with a_hi = a >> 8 in
[-128, 127] and a_lo = a & 255 in [0, 255] (``a_split``: rows 2i and 2i + 1, an M*K stage), so

    acc = 256 * sum_k a_hi b + sum_k a_lo b,   |sum a_hi b| <= 128 K max|b|,  |sum a_lo b| <= 255 K max|b|

both int32-exact for ``255 * K * max|b| < 2**31`` (K <= 256 for int16 b; MiniLM's K is 32), widened
and combined in int64 in the epilogue. Twice the dot instructions of an int32 matmul, against
an int64 multiply-add loop (``vpmullq``: 3 uops, 8 lanes) otherwise.
Note: the int32 case relies on the op's own proof (``matmul_requant`` refuses ``acc_bits=32``
unless its bound -- e.g. softmax rows summing to one -- is below 2**31); the dot instructions
wrap modulo 2**32 and never saturate, so every partial sum may pass 2**31 as long as the result
does not.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import te, tirx
from tvm.s_tir import schedule as s_tir_schedule

from ..ops import op_of
from ..ops.matmul import OPERAND_DTYPES
from ..ops.registry import OP_ATTR, PARAMS_ATTR
from ..ops.requant import requant
from ..quant import abs_max
from .intrin_x86 import dot_intrin, dot_term, select_isa
from .packing import PACKED_ATTR
from .x86_conv_tiles import _largest_divisor
from .x86_int8 import _ravel, _unravel

SPLIT_BITS = 8  # a = (a >> 8) * 256 + (a & 255)


def _split_fits_int32(k: int, b_dtype: str) -> bool:
    """Both halves' int32 sums are exact: ``255 * K * max|b| < 2**31`` (module docstring)."""
    return ((1 << SPLIT_BITS) - 1) * k * abs_max(b_dtype) < 2**31


class MatmulTensorized:
    """``matmul_requant`` on the int16 dot instruction (module docstring); a dlight-style rule whose
    :meth:`apply` returns the rebuilt, scheduled kernel or None ("not mine")."""

    op = "matmul_requant"

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target):
        described = op_of(func)
        if target.kind.name != "llvm" or described is None or described[0] != self.op or PACKED_ATTR in func.attrs:
            return None
        plan = self.plan(func, target, described[1])
        if plan is None:
            return None
        new = self.definition(plan, described[1])
        for key in (OP_ATTR, PARAMS_ATTR):
            new = new.with_attr(key, func.attrs[key])
        sch = s_tir_schedule.Schedule(new)
        self.schedule(sch, plan)
        return sch.mod["main"]

    @staticmethod
    def plan(func, target, params) -> dict | None:
        """Shapes, ISA and tile of the kernel, or None when it is not this rule's."""
        (a_shape, a_dt), (b_shape, b_dt) = ((tuple(int(d) for d in p.ty.shape), str(p.ty.dtype)) for p in func.params[:2])
        isa = select_isa(target, "int16")
        if isa is None or a_dt not in OPERAND_DTYPES or b_dt not in OPERAND_DTYPES:
            return None
        if len(a_shape) < 3 or a_shape[:-2] != b_shape[:-2]:
            return None  # broadcast batch dims (or a plain 2-D product) stay with the plain rule
        m, k = a_shape[-2:]
        n = b_shape[-1]
        split = params.get("acc_bits", 32) == 64
        if n % isa.lanes or k % isa.kp or (split and (a_dt != "int16" or not _split_fits_int32(k, b_dt))):
            return None
        halves = 2 if split else 1
        wide = isa.vector_bits == 512
        nr = _largest_divisor(n // isa.lanes, ((4, 2, 1) if halves == 1 else (2, 1)) if wide else (2, 1))
        mr = _largest_divisor(m, (4, 3, 2, 1) if wide else ((3, 2, 1) if halves * nr <= 2 else (2, 1)))
        return {"isa": isa, "batch": a_shape[:-2], "m": m, "k": k, "n": n, "a_dtype": a_dt, "b_dtype": b_dt,
                "split": split, "mr": mr, "nr": nr}

    @staticmethod
    def definition(plan, params) -> tvm.tirx.PrimFunc:
        isa, batch, m, k, n = plan["isa"], plan["batch"], plan["m"], plan["k"], plan["n"]
        lanes, kp = isa.lanes, isa.kp
        bt_count = int(np.prod(batch))
        a = te.placeholder((*batch, m, k), plan["a_dtype"], name="a")
        b = te.placeholder((*batch, k, n), plan["b_dtype"], name="b")
        b_packed = te.compute((bt_count, n // lanes, k // kp, lanes, kp), lambda bt, no, ko, ni, ki: b[
            (*_unravel(bt, batch), ko * kp + ki, no * lanes + ni)].astype("int16"), name="b_packed")
        rk = te.reduce_axis((0, k), "k")
        if plan["split"]:  # rows 2i (a_hi) and 2i + 1 (a_lo): one accumulator block, affine reads in y
            def half(bt, r, kk):
                v = a[(*_unravel(bt, batch), r // 2, kk)]
                return tirx.if_then_else(r % 2 == 0, v >> tirx.const(SPLIT_BITS, "int16"),
                                         v & tirx.const((1 << SPLIT_BITS) - 1, "int16"))

            a_split = te.compute((bt_count, 2 * m, k), half, name="a_split")
            acc = te.compute((bt_count, 2 * m, n), lambda bt, r, j: te.sum(dot_term(
                a_split[bt, r, rk], b_packed[bt, j // lanes, rk // kp, j % lanes, rk % kp], 0), axis=rk), name="acc")

            def total(bt, i, j):
                return ((acc[bt, 2 * i, j].astype("int64") << tirx.const(SPLIT_BITS, "int64"))
                        + acc[bt, 2 * i + 1, j].astype("int64"))
        else:
            acc = te.compute((bt_count, m, n), lambda bt, i, j: te.sum(dot_term(
                a[(*_unravel(bt, batch), i, rk)], b_packed[bt, j // lanes, rk // kp, j % lanes, rk % kp], 0), axis=rk),
                name="acc")

            def total(bt, i, j):
                return acc[bt, i, j]
        y = te.compute((*batch, m, n), lambda *i: requant(total(_ravel(i[:-2], batch), i[-2], i[-1]), params["multiplier"],
                                                          params["shift"], params["qmin"], params["qmax"],
                                                          params["out_dtype"]), name="y")
        return te.create_prim_func([a, b, y]).without_attr("global_symbol")

    @staticmethod
    def schedule(sch, plan) -> None:
        isa, batch = plan["isa"], plan["batch"]
        if len(batch) > 1:  # y over (batch x heads, m, n), the accumulator's iteration space
            index_map = tirx.IndexMap.from_func(lambda *i: (_ravel(i[:-2], batch), i[-2], i[-1]), ndim=len(batch) + 2)
            sch.transform_block_layout(sch.get_sblock("y"), index_map)
        acc = sch.get_sblock("acc")
        sch.set_scope(acc, 0, "local")
        bt, i, j, k = sch.get_loops(acc)
        io, ii = sch.split(i, [None, plan["mr"] * (2 if plan["split"] else 1)])
        jo, jr, ji = sch.split(j, [None, plan["nr"], isa.lanes])
        ko, ki = sch.split(k, [None, isa.kp])
        sch.reorder(bt, io, jo, ko, ii, jr, ji, ki)
        sch.parallel(bt)
        tile = sch.fuse(io, jo)
        y = sch.get_sblock("y")
        sch.reverse_compute_at(y, tile)
        *rows, last = sch.get_loops(y)[-2:]
        outer, inner = sch.split(last, [None, isa.lanes])
        sch.vectorize(inner)
        for loop in (*rows, outer):
            sch.unroll(loop)
        for stage in ("a_split", "b_packed") if plan["split"] else ("b_packed",):
            sch.compute_at(sch.get_sblock(stage), bt, preserve_unit_loops=True)
        init = sch.decompose_reduction(acc, ko)
        sch.vectorize(sch.get_loops(init)[-1])
        a_dtype = "int16" if plan["split"] else plan["a_dtype"]
        sch.tensorize(ji, dot_intrin(isa, a_dtype, "a", 0))
        sch.unroll(ii)
        sch.unroll(jr)
