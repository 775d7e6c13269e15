"""CPU (LLVM) schedule rules for the integer kernels."""
from __future__ import annotations

import tvm
from tvm.s_tir import schedule as s_tir_schedule

from ..ops import op_of
from ..quant.scheme import variant_of
from .packing import PACKED_ATTR


def fuse_loops(sch: s_tir_schedule.Schedule, loops):
    """One loop over ``loops`` (the loop itself when there is only one)."""
    return sch.fuse(*loops) if len(loops) > 1 else loops[0]


class CpuKernelRule:
    """A schedule rule for one integer op (``op``) on LLVM targets: :meth:`apply` checks the target
    and the kernel's ``qplugin.op`` tag, subclasses write :meth:`schedule` (None: "not mine")."""

    op = ""

    def apply(self, func: tvm.tirx.PrimFunc, target: tvm.target.Target):
        if target.kind.name != "llvm":
            return None
        described = op_of(func)
        if described is None or described[0] != self.op or PACKED_ATTR in func.attrs:
            return None  # packed kernels have their own block structure (schedules/x86_int8.py)
        sch = s_tir_schedule.Schedule(func)
        return sch.mod["main"] if self.schedule(sch, described[1]) else None

    def schedule(self, sch: s_tir_schedule.Schedule, params: dict) -> bool:  # pragma: no cover - interface
        raise NotImplementedError


class Conv2D1x1Reorder(CpuKernelRule):
    """Pointwise (1x1, stride 1, groups 1, no padding) ``conv2d_requant`` on CPU.

    1. Fuse the output rows and columns into one contiguous spatial loop.
    2. Move the input-channel reduction outside it, so the innermost loop streams one input
       plane and one accumulator row with unit stride (LLVM vectorizes it).
    3. Parallelize over output channels.

    Note: the unscheduled kernel reduces over input channels innermost, striding H*W bytes per
    step; on MobileNetV2's 7x7 960->160 layer that runs at 0.9 GMAC/s versus 26 GMAC/s here.
    Padding is not inlined: the boundary test in the inner loop costs more than the copy.
    """

    op = "conv2d_requant"

    def schedule(self, sch, p):
        if p["groups"] != 1 or any(p["padding"]) or p["strides"] != [1, 1]:
            return False
        acc = sch.get_sblock("acc")
        n, oc, i, j, rc, ry, rx = sch.get_loops(acc)
        if sch.get(ry).extent.value != 1 or sch.get(rx).extent.value != 1:
            return False
        spatial = sch.fuse(i, j)
        sch.reorder(n, oc, rc, ry, rx, spatial)
        sch.parallel(sch.fuse(n, oc))
        sch.decompose_reduction(acc, rc)
        return True


class DenseRowBlocks(CpuKernelRule):
    """``dense_requant`` on CPU: rows in parallel blocks, requantization fused under them.

    * int32 accumulation: rows fused and split into blocks of 4, output channels into blocks of
      4; within a block the k-dot-products vectorize (``vpdpwssd`` / ``vpdpbusd`` on AVX-512),
      the requantization of each 4x4 tile runs right after it while it is in registers/L1.
      MiniLM's 1024x384x1536: 53 -> 75 GMAC/s.
    * int64 accumulation (ops/conv.py ``chunked_dot``: int32 partial sums over chunks): the
      partial sums in parallel over rows, the int64 chunk sum in parallel. 1024x1536x384:
      11.5 -> 9.2 ms (23 GMAC/s with a plain int64 loop).
    """

    op = "dense_requant"
    ROWS, COLS = 4, 4

    def schedule(self, sch, p):
        if p.get("acc_bits", 32) == 64:
            part = sch.get_sblock("acc_part")
            c, *lead, j, k = sch.get_loops(part)
            rows = fuse_loops(sch, lead)
            sch.reorder(rows, c, j, k)
            sch.parallel(rows)
            sch.decompose_reduction(part, k)
            *alead, _aj, _ac = sch.get_loops(sch.get_sblock("acc"))
            sch.parallel(fuse_loops(sch, alead))
            return True
        acc, y = sch.get_sblock("acc"), sch.get_sblock("y")
        *lead, j, k = sch.get_loops(acc)
        rows = fuse_loops(sch, lead)
        if sch.get(rows).extent.value % self.ROWS or sch.get(j).extent.value % self.COLS:
            return False
        ro, ri = sch.split(rows, [None, self.ROWS])
        jo, ji = sch.split(j, [None, self.COLS])
        sch.reorder(ro, jo, ri, ji, k)
        sch.parallel(ro)
        sch.reverse_compute_at(y, jo)
        sch.decompose_reduction(acc, k)
        return True


class MatmulRequantIKJ(CpuKernelRule):
    """Activation x activation ``matmul_requant`` (attention ``Q Kᵀ``, ``P V``) on CPU.

    The TE kernel reduces over k innermost, reading ``b[..., k, j]`` with a stride of a whole
    row per step. Reordered to ``i, k, j``, the output row and b's row stream with unit stride
    and LLVM vectorizes j; batch x rows run in parallel.
    """

    op = "matmul_requant"

    def schedule(self, sch, p):
        acc = sch.get_sblock("acc")
        *lead, j, k = sch.get_loops(acc)
        sch.reorder(*lead, k, j)
        sch.parallel(fuse_loops(sch, lead))
        sch.decompose_reduction(acc, k)
        return True


class GeluInlineStages(CpuKernelRule):
    """``gelu_int`` on CPU: fold its single-use stages into their consumer.

    TE writes each step of the integer GELU as its own int64 stage (``ops/int_core.stage``),
    i.e. one pass over memory each. The exponential sum, the division reciprocal, the sigmoid
    (and i-GELU's erf factor) are each used once, so they inline into the output expression
    without duplicating work; the exponential (used twice) and the Newton reciprocal steps of the
    division-free variant (each used twice: inlining them would double the work per step) stay
    stages. MiniLM's 1024x1536 GELU, division-free: 9.6 -> 8.1 ms; ivit / ibert gain nothing
    measurable (5.7 / 4.9 ms), their costly step -- the cubic argument -- is already an
    expression inside the exponential's stage.
    """

    op = "gelu_int"
    SINGLE_USE = ("exp_sum", "recip", "sigmoid", "erf_plus_one")

    def schedule(self, sch, p):
        names = {sch.get(b).name_hint for b in sch.get_child_blocks(sch.get_sblock("root"))}
        newton = variant_of(p["variant"]).division_free
        inlined = 0
        for name in self.SINGLE_USE:
            if name in names and not (newton and name == "recip"):
                sch.compute_inline(sch.get_sblock(name))
                inlined += 1
        return inlined > 0
