"""Per-kernel latency of a compiled integer model: where the time goes.

The Relax VM calls every integer kernel through ``call_tir``; an instrument (``vm.set_instrument``)
timestamps each call, so one run gives each kernel's wall time with the real shapes, order and
memory of the model. The figures fill ``report.json`` → ``layers[].latency_us`` and the
``kernels`` table (time per integer op kind), which tells a user which schedule to write or tune.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numpy as np
import tvm
from tvm import relax

from .ops import op_of
from .schedules.x86_narrowing import built_module


def instrumented_runs(art, runs: int) -> list[list[tuple[str, float]]]:
    """Per run, every VM call in order as ``(symbol, microseconds)``."""
    vm = relax.VirtualMachine(art.library if art.library is not None else art.executable, tvm.cpu())
    calls: list[tuple[str, float]] = []
    started: dict[str, list[float]] = defaultdict(list)

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            started[symbol].append(time.perf_counter())
        else:
            calls.append((symbol, (time.perf_counter() - started[symbol].pop()) * 1e6))
        return 0  # VMInstrumentReturnKind.NO_OP

    if art.int_io:
        args = [tvm.runtime.tensor(s.quantize(np.zeros(s.shape, s.host_dtype))) for s in art.inputs]
    else:
        args = [tvm.runtime.tensor(np.zeros(s.shape, s.host_dtype)) for s in art.inputs]
    vm["main"](*args)  # warm up without the instrument
    vm.set_instrument(instrument)
    out = []
    for _ in range(runs):
        calls.clear()
        vm["main"](*args)
        out.append(list(calls))
    return out


def kernel_times(runs: list[list[tuple[str, float]]]) -> dict[str, float]:
    """Median microseconds per kernel symbol (all its calls in one run summed) over the
    :func:`instrumented_runs`."""
    per_run: dict[str, list[float]] = defaultdict(list)
    for calls in runs:
        sums: dict[str, float] = defaultdict(float)
        for sym, us in calls:
            sums[sym] += us
        for sym, us in sums.items():
            per_run[sym].append(us)
    return {sym: float(np.median(ts)) for sym, ts in per_run.items()}


def binding_times(art, runs: list[list[tuple[str, float]]]) -> dict[relax.Var, float]:
    """Median microseconds of each integer kernel *call* of the integer function over the
    :func:`instrumented_runs`, keyed by the Relax var it binds (shared kernels are told apart by
    call order, which the VM keeps)."""
    func = built_module(art)[art.integer_function]  # the calls the library makes (schedules/x86_narrowing.py)
    order = [(b.var, b.value.args[0].name_hint) for blk in func.body.blocks for b in blk.bindings
             if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.call_tir"]
    kernels = {name for _, name in order}
    names = [name for _, name in order]
    samples: dict[relax.Var, list[float]] = defaultdict(list)
    for calls in runs:
        seq = [(sym, us) for sym, us in calls if sym in kernels]
        # main may add its own quantize / dequantize calls around the integer function's
        start = next((o for o in range(len(seq) - len(names) + 1)
                      if [sym for sym, _ in seq[o : o + len(names)]] == names), None)
        if start is None:
            return {}
        for (var, _), (_, us) in zip(order, seq[start:]):
            samples[var].append(us)
    return {var: float(np.median(ts)) for var, ts in samples.items()}


def by_op(art, times: dict[str, float]) -> list[dict]:
    """Kernel time summed per integer op kind, largest first, with its share of the total."""
    ops = {}
    for gv, func in built_module(art).functions.items():
        if isinstance(func, tvm.tirx.PrimFunc) and op_of(func) is not None:
            ops[gv.name_hint] = op_of(func)[0]
    sums: dict[str, list] = defaultdict(lambda: [0.0, 0])
    for sym, us in times.items():
        op = ops.get(sym)
        if op is None:  # VM builtins, the nested integer function itself
            continue
        sums[op][0] += us
        sums[op][1] += 1
    total = sum(us for us, _ in sums.values()) or 1.0
    rows = [{"op": op, "us": round(us, 1), "kernels": n, "share": round(us / total, 4)} for op, (us, n) in sums.items()]
    return sorted(rows, key=lambda r: -r["us"])
