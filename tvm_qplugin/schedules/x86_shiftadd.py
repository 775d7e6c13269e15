"""CPU schedules of the shift/add kernels (ops/shiftadd.py).

Why: as TE writes them, every reduction runs innermost and one thread runs the whole kernel.
For add attention that puts the key loop ``m`` inside the feature loops: ``kv[i, j]`` re-reads
the key codes and ``v`` with a stride of ``dv`` for each (i, j), and at 512 tokens the kernel ran
17x slower than the int8 softmax path.

AddAttentionPerHead (``add_attention``):
1. The output's batch (and head) axes are fused into one loop that runs in parallel; every
   stage -- codes, KᵀV, Σv, key counts, numerators, row sums -- is computed under it, so one
   head's intermediates (d x dv int32) stay in cache.
2. ``kv`` runs keys outermost: for each key, its d code bits select whole rows of ``v`` that
   are added into ``kv`` rows, unit stride along ``dv`` (LLVM vectorizes the adds).
3. ``num`` runs the feature loop outside the ``dv`` loop the same way.

ShiftDenseRows (``shift_dense_requant``): rows in parallel; per block of 16 output channels the
code loop runs outside the channels, which are vectorized: each step shifts one broadcast input
by 16 per-lane amounts (``vpsllvd``) and adds or subtracts. Unscheduled, one scalar term at a time
took 0.5 s for MiniLM's 128 x 384 -> 384 (the int8 VNNI dense: 0.18 ms).

Note: no loop here multiplies; the multiply-free check (passes/verify_tir.py) runs on the
scheduled kernels, after these rules.
"""
from __future__ import annotations

from .x86 import CpuKernelRule, fuse_loops


class AddAttentionPerHead(CpuKernelRule):
    """``add_attention``: per-head parallel loop, keys-outer masked sums (module docstring)."""

    op = "add_attention"

    def schedule(self, sch, p):
        y = sch.get_sblock("y")
        *lead, _n, _j = sch.get_loops(y)
        if not lead:
            return False
        heads = fuse_loops(sch, lead)
        sch.parallel(heads)
        root = sch.get_sblock("root")
        producers = [b for b in sch.get_child_blocks(root) if sch.get(b).name_hint != "y"]
        for block in reversed(producers):
            sch.compute_at(block, heads, preserve_unit_loops=True)
        kv = sch.get_sblock("kv")
        i, j, m = sch.get_loops(kv)[-3:]
        sch.reorder(m, i, j)
        num = sch.get_sblock("num")
        _t, j2, i2 = sch.get_loops(num)[-3:]
        sch.reorder(i2, j2)
        return True


class ShiftDenseRows(CpuKernelRule):
    """``shift_dense_requant``: rows in parallel, output channels innermost and vectorized
    (module docstring)."""

    op = "shift_dense_requant"
    lanes = 16

    def schedule(self, sch, p):
        acc = sch.get_sblock("acc")
        *rows, j, kb, half = sch.get_loops(acc)
        if sch.get(j).extent.value % self.lanes:
            return False
        # the codes transposed once per call (kb, j), so that the channel loop reads them unit-stride
        codes_param = sch.mod["main"].params[1].name  # (x, codes, bias, multiplier, shift)
        read = next(i for i, r in enumerate(sch.get(acc).reads) if r.source.name == codes_param)
        codes = sch.cache_read(acc, read, "global")
        sch.transform_layout(codes, ("write", 0), lambda jj, kk: (kk, jj))
        if rows:
            sch.parallel(fuse_loops(sch, rows))
        jo, ji = sch.split(j, [None, self.lanes])
        sch.reorder(jo, kb, half, ji)
        # TIR refuses vectorize on a reduction update; LLVM's loop vectorizer takes the unit-stride
        # channel loop once the init is split off
        sch.decompose_reduction(acc, kb)
        return True
