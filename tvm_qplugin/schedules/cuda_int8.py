"""CUDA schedule rules for the integer kernels: ``__dp4a`` GEMMs, dlight's fallback for the rest.

A rule follows TVM dlight's contract: ``apply(func, target) -> PrimFunc | None`` (None: "not
mine"); every ``apply`` checks ``target.kind == "cuda"`` first, so a rule never touches a CPU
build even if it ends up in a list shared with the x86 rules.

The GEMM-shaped kernels (``dense_requant``, ``matmul_requant``, ``conv2d_requant`` with groups 1)
share one strategy, :func:`_dp4a_gemm`:

1. One thread per output element: output rows x columns tiled over ``blockIdx`` / ``threadIdx``
   with tile sizes that divide the extents (no boundary predicates); batch dims on ``blockIdx.z``.
2. The reduction split into chunks of ``4 * KCHUNK``; per chunk both operand tiles are copied
   into shared memory cooperatively by the block's threads, with the reduced axis made the
   innermost (contiguous) one of the shared buffer (``transform_layout``) where the kernel's own
   layout does not have it innermost (``b[k, n]`` of a matmul, ``x[c, h, w]`` / ``w[o, c, kh, kw]``
   of a conv).
3. The innermost 4 reduction steps tensorized with ``__dp4a`` (our ``intrin_cuda``
   ``qplugin_dp4a_s8s8s32`` / ``qplugin_dp4a_u8s8s32`` / ...): four 8-bit products summed into int32, exact.
4. The accumulator lives in a register (``local``) and the requant epilogue (bias, dyadic
   multiply, shift, clamp) runs right after it in the same thread: the int32 sum never goes to
   global memory.

Which kernels get ``__dp4a``: 8-bit operands (int8 / uint8: ``dp4a`` exists for s8/u8 only),
int32 accumulation, a reduction length divisible by 4. int16 activations (and the int64
chunked accumulation of ops/conv.py ``chunked_dot``), depthwise / grouped convs, and every other
kernel (elementwise, pools, GELU) go to :data:`FALLBACK`: dlight's
``gpu.Fallback`` binds the fused spatial loops to ``blockIdx.x`` / ``threadIdx.x`` and keeps
each reduction serial in its thread -- plain int32/int64 multiply-adds, correct for any dtype.
Softmax and LayerNorm go to cuda_rows.py (one block per row) before that: the fallback inlines
LayerNorm's Newton square-root stages into one exponentially large expression.

Note: tensor-core ``mma.sync`` s8 (sm_80+) is cuda_mma.py's, tried first; ``__dp4a`` is what every
sm_61+ part has, so it serves sm_75 and the shapes cuda_mma declines.
"""
from __future__ import annotations

import tvm
from tvm.s_tir import dlight
from tvm.s_tir import schedule as s_tir_schedule

from ..ops import op_of
from .intrin_cuda import dp4a_intrin_name
from ..passes.verify_tir import _dtype_of

DP4A_OPERANDS = ("int8", "uint8")
THREADS_X = (32, 16, 8, 4, 2, 1)   # output columns per block (tile sizes tried, largest first)
THREADS_Y = (8, 4, 2, 1)           # output rows per block
KCHUNKS = (8, 4, 2, 1)             # groups of 4 reduction steps per shared-memory stage
SCHEDULED_ATTR = "tirx.is_scheduled"  # dlight's ApplyDefaultSchedule skips functions carrying it


def _divisor(extent: int, options: tuple[int, ...]) -> int:
    return next(t for t in options if extent % t == 0)


def _cooperative_copy(sch: s_tir_schedule.Schedule, block, under, ty: int, tx: int) -> None:
    """Spread a shared-memory copy block (its loops below loop ``under``) over the ``ty x tx``
    threads of its thread block."""
    loops = sch.get_loops(block)
    at = next(n for n, lp in enumerate(loops) if sch.get(lp).same_as(sch.get(under)))
    loops = loops[at + 1:]
    fused = sch.fuse(*loops) if len(loops) > 1 else loops[0]
    _, y, x = sch.split(fused, [None, ty, tx])
    sch.bind(y, "threadIdx.y")
    sch.bind(x, "threadIdx.x")


def _dp4a_gemm(sch, batch, row, col, red, operands, intrin: str, other_red=()) -> None:
    """Steps 1-4 of the module doc on the ``acc`` block.

    ``batch``: loops fused into ``blockIdx.z``; ``row`` / ``col``: the loops tiled over
    ``blockIdx.y x threadIdx.y`` / ``blockIdx.x x threadIdx.x`` (one each: a split of a fused
    loop gives bindings ``tensorize`` cannot blockize); ``red``: the reduction
    loop to tensorize (its extent divisible by 4), already innermost; ``other_red``: the kernel's
    other reduction loops (a conv's ry, rx), kept serial outside the chunks; ``operands``: for each read
    buffer of ``acc`` (index), the layout map putting the reduced axis last (or None), and the name
    of the kernel's own stage producing it (or None: a ``cache_read`` copies it).
    """
    acc, y = sch.get_sblock("acc"), sch.get_sblock("y")
    sch.reorder(*batch, row, col)
    if batch:
        sch.bind(sch.fuse(*batch) if len(batch) > 1 else batch[0], "blockIdx.z")
    ty, tx = _divisor(sch.get(row).extent.value, THREADS_Y), _divisor(sch.get(col).extent.value, THREADS_X)
    kchunk = _divisor(sch.get(red).extent.value // 4, KCHUNKS)
    ro, ri = sch.split(row, [None, ty])
    co, ci = sch.split(col, [None, tx])
    ko, kk, k4 = sch.split(red, [None, kchunk, 4])
    sch.reorder(ro, co, ri, ci, *other_red, ko, kk, k4)
    sch.bind(ro, "blockIdx.y")
    sch.bind(co, "blockIdx.x")
    sch.bind(ri, "threadIdx.y")
    sch.bind(ci, "threadIdx.x")
    sch.reverse_compute_at(y, ci)
    for index, layout, producer in operands:
        if producer is None:
            shared = sch.cache_read(acc, index, "shared")
        else:  # a stage of the kernel itself (the zero-padded input): computed into shared memory
            shared = sch.get_sblock(producer)
            sch.set_scope(shared, 0, "shared")
        sch.compute_at(shared, ko)
        if layout is not None:
            sch.transform_layout(shared, ("write", 0), layout)
        _cooperative_copy(sch, shared, ko, ty, tx)
    sch.set_scope(acc, 0, "local")
    sch.decompose_reduction(acc, other_red[0] if other_red else ko)
    sch.tensorize(k4, intrin)


class CudaKernelRule:
    """A rule for one integer op (``op``) on CUDA targets; subclasses write :meth:`schedule`."""

    op = ""

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target):
        if target.kind.name != "cuda":
            return None
        described = op_of(func)
        if described is None or described[0] != self.op:
            return None
        sch = s_tir_schedule.Schedule(func)
        if not self.schedule(sch, described[1]):
            return None
        return sch.mod["main"].with_attr(SCHEDULED_ATTR, True)

    def schedule(self, sch: s_tir_schedule.Schedule, params: dict) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


def _operand_dtypes(sch, block) -> list[str]:
    """Element dtypes of the buffers ``block`` reads, in read order."""
    return [_dtype_of(region.source.ty) for region in sch.get(block).reads]


def _dp4a_of(sch, acc, reduction) -> str | None:
    """The dp4a intrinsic for the ``acc`` block's two operands, or None unless both are 8-bit and
    the 4-wide ``reduction`` loop divides evenly."""
    a_dtype, b_dtype = _operand_dtypes(sch, acc)
    if a_dtype not in DP4A_OPERANDS or b_dtype not in DP4A_OPERANDS or sch.get(reduction).extent.value % 4:
        return None
    return dp4a_intrin_name(a_dtype, b_dtype)


class DenseDp4a(CudaKernelRule):
    """``dense_requant`` (x[..., k] . w[n, k]): both operands already contiguous along k."""

    op = "dense_requant"

    def schedule(self, sch, p):
        if p.get("acc_bits", 32) != 32:
            return False
        acc = sch.get_sblock("acc")
        *lead, j, k = sch.get_loops(acc)
        intrin = _dp4a_of(sch, acc, k)
        if intrin is None:
            return False
        _dp4a_gemm(sch, lead[:-1], lead[-1], j, k, [(0, None, None), (1, None, None)], intrin)
        return True


class MatmulDp4a(CudaKernelRule):
    """``matmul_requant`` (a[..., m, k] @ b[..., k, n]): b's shared tile is stored k-innermost."""

    op = "matmul_requant"

    def schedule(self, sch, p):
        if p.get("acc_bits", 32) != 32:
            return False
        acc = sch.get_sblock("acc")
        *lead, i, j, k = sch.get_loops(acc)
        intrin = _dp4a_of(sch, acc, k)
        if intrin is None:
            return False
        b_rank = len(sch.get(acc).reads[1].region)
        swap_last = lambda *ix: (*ix[:-2], ix[-1], ix[-2])
        _dp4a_gemm(sch, lead, i, j, k, [(0, None, None), (1, swap_last if b_rank >= 2 else None, None)], intrin)
        return True


class Conv2DDp4a(CudaKernelRule):
    """``conv2d_requant`` with groups 1 (implicit GEMM): batch x output rows over ``blockIdx.z``,
    output channels x output columns tiled over the threads, reduction over (ry, rx, rc) with rc innermost; the shared tiles of the
    (padded) input and of the weights are stored channel-innermost (NHWC / OHWI)."""

    op = "conv2d_requant"

    def schedule(self, sch, p):
        if p["groups"] != 1:
            return False
        acc = sch.get_sblock("acc")
        n, oc, i, j, rc, ry, rx = sch.get_loops(acc)
        intrin = _dp4a_of(sch, acc, rc)
        if intrin is None:
            return False
        names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
        pad = "x_pad" if "x_pad" in names else None  # zero padding computed straight into the shared tile
        sch.reorder(ry, rx, rc)
        to_nhwc = lambda b, c, h, w: (b, h, w, c)
        _dp4a_gemm(sch, [n, i], oc, j, rc, [(0, to_nhwc, pad), (1, to_nhwc, None)], intrin, other_red=(ry, rx))
        return True


RULES = [DenseDp4a(), MatmulDp4a(), Conv2DDp4a()]
FALLBACK = dlight.ApplyDefaultSchedule(dlight.gpu.Fallback())


def apply_cuda_schedules(mod: tvm.IRModule, target: tvm.target.Target) -> tuple[tvm.IRModule, list[str]]:
    """Schedule the integer kernels cuda_mma.py's tensor-core rule (sm_80+) or :data:`RULES` take;
    returns the module and the names of the ``__dp4a`` kernels (build_cuda lists the mma ones).
    The row kernels (softmax / LayerNorm) get cuda_rows.py's one-block-per-row schedules first and
    the int16 GEMMs cuda_int16.py's register tiles last (neither listed: no dp4a in them); the rest
    (and the layout kernels LegalizeOps adds later) is for :data:`FALLBACK`."""
    from . import apply_rules
    from .cuda_int16 import INT16_RULES
    from .cuda_mma import MMA_RULES, is_mma_kernel
    from .cuda_rows import ROW_RULES

    mod, _rows = apply_rules(mod, target, ROW_RULES)
    mod, taken = apply_rules(mod, target, [*MMA_RULES, *RULES])  # tensor cores first where they apply (sm_80+)
    mod, _int16 = apply_rules(mod, target, INT16_RULES)  # not listed: no dp4a (cuda_int16.int16_gemm_kernels)
    return mod, [name for name in taken if not is_mma_kernel(mod[name])]
