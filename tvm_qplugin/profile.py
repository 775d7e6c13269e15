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


def kernel_times(art, runs: int = 3) -> dict[str, float]:
    """Median microseconds per kernel symbol over ``runs`` runs (of the float ``main`` or the integer one)."""
    vm = relax.VirtualMachine(art.library if art.library is not None else art.executable, tvm.cpu())
    samples: dict[str, list[float]] = defaultdict(list)
    started: dict[str, float] = {}

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            started[symbol] = time.perf_counter()
        else:
            samples[symbol].append((time.perf_counter() - started.pop(symbol)) * 1e6)
        return 0  # VMInstrumentReturnKind.NO_OP

    if art.int_io:
        args = [tvm.runtime.tensor(s.quantize(np.zeros(s.shape, s.host_dtype))) for s in art.inputs]
    else:
        args = [tvm.runtime.tensor(np.zeros(s.shape, s.host_dtype)) for s in art.inputs]
    vm["main"](*args)  # warm up without the instrument
    vm.set_instrument(instrument)
    per_run: dict[str, list[float]] = defaultdict(list)
    for _ in range(runs):
        samples.clear()
        vm["main"](*args)
        for sym, ts in samples.items():
            per_run[sym].append(sum(ts))
    return {sym: float(np.median(ts)) for sym, ts in per_run.items()}


def by_op(art, times: dict[str, float]) -> list[dict]:
    """Kernel time summed per integer op kind, largest first, with its share of the total."""
    ops = {}
    for gv, func in art.integer_mod.functions.items():
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
