"""This CPU's int8 multiply-accumulate peak, measured (not a datasheet guess): a register-only loop
of one ISA's dot instruction, built through the same tensor intrinsics the kernels use.

Each thread runs ``chains`` independent accumulator vectors, ``ITERS`` dot instructions each (one
broadcast operand per chain, so no two compute the same product), on operands loaded once (LLVM hoists them out of the loop: nothing in it touches memory), so the
figure is the instruction's throughput x the vector width -- the ceiling a kernel's GMAC/s is
measured against. Prints one JSON object; `import` it for :func:`peak_gmacs`.

Note: AVX2's ``vpmaddwd`` does not accumulate, so with loop-invariant operands LLVM hoists the
multiply out of the loop (a "peak" of 2 TMAC/s); there the packed operand cycles through 16
vectors (1 KB, L1-resident), one load per instruction as in a kernel's inner loop.

Run: `.venv/bin/python benchmarks/int8_peak.py [--threads N]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import schedule as s_tir_schedule

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tvm_qplugin.schedules.intrin_x86 import (
    AVX2,
    VNNI,
    VNNI16,
    DotIsa,
    dot_intrin,
    dot_term,
    select_isa,
)

ITERS = 20000


def _cycle(isa: DotIsa) -> int:
    return 1 if isa.accumulates else 16


def _peak_kernel(isa: DotIsa, threads: int, chains: int, act_dtype: str):
    """``acc[t, j, :] = sum over ITERS of dot(a, b)``: ``threads x chains`` independent vectors."""
    lanes, kp, cycle = isa.lanes, isa.kp, _cycle(isa)
    a = te.placeholder((chains, kp), act_dtype, name="a")  # one broadcast operand per chain: no common product
    b = te.placeholder((cycle, lanes, kp), isa.packed_dtype, name="b")
    it, k = te.reduce_axis((0, ITERS), "it"), te.reduce_axis((0, kp), "k")
    acc = te.compute((threads, chains, lanes), lambda t, j, i: te.sum(dot_term(a[j, k], b[it % cycle, i, k], 0), axis=[it, k]),
                     name="acc")
    out = te.compute((threads, chains, lanes), lambda *i: acc(*i), name="out")
    sch = s_tir_schedule.Schedule(te.create_prim_func([a, b, out]))
    blk = sch.get_sblock("acc")
    sch.set_scope(blk, 0, "local")
    t, j, i, r_it, r_k = sch.get_loops(blk)
    sch.reorder(t, r_it, j, i, r_k)
    sch.parallel(t)
    sch.reverse_compute_at(sch.get_sblock("out"), t)
    sch.decompose_reduction(blk, r_it)
    sch.tensorize(i, dot_intrin(isa, act_dtype, "a", 0))
    sch.unroll(j)
    return sch.mod["main"]


def peak_gmacs(target: tvm.target.Target, isa: DotIsa, threads: int = 1, chains: int | None = None,
               act_dtype: str | None = None, repeat: int = 7) -> float:
    """Median GMAC/s of ``threads`` cores issuing ``isa``'s dot instruction back to back."""
    chains = chains or (12 if isa.vector_bits == 512 else 6)  # chains accumulators + chains operands in registers
    act_dtype = act_dtype or ("uint8" if isa.kp == 4 else "int16")
    lib = tvm.tirx.build(_peak_kernel(isa, threads, chains, act_dtype).with_attr("global_symbol", "main"), target=target)
    args = [tvm.runtime.tensor(np.ones((chains, isa.kp), act_dtype)), tvm.runtime.tensor(np.ones((_cycle(isa), isa.lanes, isa.kp), isa.packed_dtype)),
            tvm.runtime.tensor(np.zeros((threads, chains, isa.lanes), "int32"))]
    seconds = lib.time_evaluator("main", tvm.cpu(), number=3, repeat=repeat)(*args).median
    assert int(args[2].numpy()[0, 0, 0]) == ITERS * isa.kp, "peak loop did not run"
    return threads * chains * isa.lanes * isa.kp * ITERS / seconds / 1e9


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    native = tvm.target.Target.from_device(tvm.cpu())
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})
    res = {"cpu": _cpu_name(), "target": str(native.attrs.get("mcpu", "")), "gmacs": {}}
    cases = [("avx2 vpmaddwd (s16 pairs)", avx2, AVX2)]
    if select_isa(native, "uint8") is VNNI:
        cases = [("avx512 vpdpbusd (u8 x s8)", native, VNNI), ("avx512 vpdpwssd (s16)", native, VNNI16), *cases]
    for name, target, isa in cases:
        res["gmacs"][name] = {f"{t} thread{'s' if t > 1 else ''}": round(peak_gmacs(target, isa, t), 1)
                              for t in sorted({1, args.threads})}
    res["note"] = "register-only loop of the dot instruction; a shared, noisy machine lowers these figures"
    print(json.dumps(res, indent=2))


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"


if __name__ == "__main__":
    main()
