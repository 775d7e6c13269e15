"""This CPU's int8 multiply-accumulate peak, measured (not a datasheet guess): the ceiling that
``report.json`` → ``layers[].fraction_of_peak`` and the kernel benchmarks compare a kernel's
GMAC/s against.

A register-only loop of one ISA's dot instruction, built through the same tensor intrinsics the
kernels use (schedules/intrin_x86.py): each thread runs ``chains`` independent accumulator
vectors, :data:`ITERS` dot instructions each (one broadcast operand per chain, so no two compute
the same product), on operands loaded once (LLVM hoists them out of the loop: nothing in it
touches memory), so the figure is the instruction's throughput x the vector width.

Note: AVX2's ``vpmaddwd`` does not accumulate, so with loop-invariant operands LLVM would hoist
the multiply out of the loop (a "peak" of 2 TMAC/s); there the packed operand cycles through 16
vectors (1 KB, L1-resident), one load per instruction as in a kernel's inner loop.

The measurement takes well under a second; :func:`layer_peak_gmacs` memoizes it per process
(target ISA, activation width, threads) -- a figure cached across processes would outlive a
change of machine, which this project's build machines do from day to day.
"""
from __future__ import annotations

import functools

import numpy as np
import tvm
from tvm import te
from tvm.s_tir import schedule as s_tir_schedule

from .schedules.intrin_x86 import (
    DotIsa,
    byte_pair_isa,
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
    acc = te.compute((threads, chains, lanes),
                     lambda t, j, i: te.sum(dot_term(a[j, k], b[it % cycle, i, k], 0), axis=[it, k]), name="acc")
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
    lib = tvm.tirx.build(_peak_kernel(isa, threads, chains, act_dtype).with_attr("global_symbol", "main"),
                         target=target)
    args = [tvm.runtime.tensor(np.ones((chains, isa.kp), act_dtype)),
            tvm.runtime.tensor(np.ones((_cycle(isa), isa.lanes, isa.kp), isa.packed_dtype)),
            tvm.runtime.tensor(np.zeros((threads, chains, isa.lanes), "int32"))]
    seconds = lib.time_evaluator("main", tvm.cpu(), number=3, repeat=repeat)(*args).median
    if int(args[2].numpy()[0, 0, 0]) != ITERS * isa.kp:
        raise RuntimeError("int8 peak loop did not run: its accumulator is wrong")
    return threads * chains * isa.lanes * isa.kp * ITERS / seconds / 1e9


def runtime_threads() -> int:
    """Threads TVM's runtime runs parallel loops on (``TVM_NUM_THREADS``, else the cores)."""
    return int(tvm.get_global_func("runtime.NumThreads")())


@functools.lru_cache(maxsize=None)
def _memo_peak(target_json: str, act_dtype: str, threads: int) -> float | None:
    target = tvm.target.Target(target_json)
    isa = select_isa(target, act_dtype)
    isa = byte_pair_isa(isa, act_dtype) or isa  # AVX2's 8-bit peak: vpmaddubsw, where the weights allow it
    return None if isa is None else peak_gmacs(target, isa, threads)


def layer_peak_gmacs(target: tvm.target.Target, a_bits: int, threads: int | None = None) -> float | None:
    """The measured peak (GMAC/s, ``threads`` cores) of the dot instruction ``target``'s int8
    kernels use for ``a_bits``-wide activations against int8 weights; None where the target has
    none (not x86 / no AVX2) or the width has no dot kernel."""
    act_dtype = {8: "uint8", 16: "int16"}.get(a_bits)
    if act_dtype is None or target.kind.name != "llvm":
        return None
    return _memo_peak(str(target), act_dtype, threads or runtime_threads())


def operand_bits(mod: tvm.IRModule, func_name: str) -> dict:
    """``{relax var: bits}`` of the activation operand each kernel call of ``func_name`` reads
    (its first argument's dtype: 8 or 16). This, not a layer's planned ``a_bits``, picks the dot
    instruction: MobileNetV2's expansion convs are 8-bit layers that read the int16 residual
    stream, so on AVX-512 they run on ``vpdpwssd`` (half ``vpdpbusd``'s rate), and their fraction
    of peak measured against ``vpdpbusd`` read half what it is."""
    from tvm import relax

    bits = {}
    for block in mod[func_name].body.blocks:
        for binding in block.bindings:
            call = binding.value
            if isinstance(call, relax.Call) and getattr(call.op, "name", "") == "relax.call_tir":
                first = call.args[1].fields[0].ty if len(call.args[1].fields) else None
                dtype = getattr(getattr(first, "dtype", None), "dtype", getattr(first, "dtype", None))
                width = {"int8": 8, "uint8": 8, "int16": 16}.get(str(dtype))
                if width is not None:
                    bits[binding.var] = width
    return bits


def cpu_name() -> str:
    """The CPU model (``/proc/cpuinfo``), which every peak and latency figure must name."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return "unknown"
