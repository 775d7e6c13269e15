"""Is the best record faster than compile's default schedule? Decided at the end of each task by
timing both *interleaved*: same process, same inputs, alternating, several rounds, medians.

Why: the tune used to time the default once at the task's start and each candidate later, alone;
on a shared machine the load between the two decides the comparison (a record 4.1x slower than
the default was applied, docs/tuning.md "Tuning"). Alternating the two in short rounds puts
both under the same load; the median of the rounds drops the rounds a burst hit.
"""
from __future__ import annotations

import logging
import statistics

import tvm

from ..schedules import apply_default_schedules
from .database import TuningDB
from .tasks import KernelTask

log = logging.getLogger(__name__)

ROUNDS = 9          # alternations of (default, best); the median of each side decides
MIN_REPEAT_MS = 20  # each timing repeats the kernel for at least this long


def _fresh(mod: tvm.IRModule) -> tvm.IRModule:
    """A deep copy: replaying a schedule may update the module it is given in place."""
    return tvm.ir.load_json(tvm.ir.save_json(mod))


def built_best(task: KernelTask, tdb: TuningDB, target: tvm.target.Target):
    """The best stored record of ``task`` replayed and built, or None (the database registered the
    intrinsics a packed kernel's trace names when the workload entered it)."""
    sch = tdb.memory.query_schedule(_fresh(task.workload), target, workload_name="main")
    return None if sch is None else tvm.compile(sch.mod, target=target)


def built_default(task: KernelTask, target: tvm.target.Target) -> tuple[tvm.runtime.Module, str]:
    """Compile's schedule without a database (default rule, else the unscheduled kernel), built."""
    mod, n_ruled = apply_default_schedules(_fresh(task.workload), target)
    return tvm.compile(mod, target=target), "default rule" if n_ruled else "unscheduled"


def interleaved_us(modules: list, inputs: list, out_info, rounds: int = ROUNDS) -> list[float]:
    """Median time (us) of each module's ``main`` on ``inputs``, the modules timed in turn per
    round (the first of a round alternates, so neither side always runs right after the other)."""
    dev = tvm.cpu()
    args = [tvm.runtime.tensor(a, device=dev) for a in inputs]
    out = tvm.runtime.empty(tuple(int(d) for d in out_info.shape), str(out_info.dtype), device=dev)
    timers = [(m.jit() if hasattr(m, "jit") else m).time_evaluator("main", dev, number=1, repeat=1,
                                                                   min_repeat_ms=MIN_REPEAT_MS) for m in modules]
    for t in timers:  # warm-up: caches, page faults, the thread pool
        t(*args, out)
    times: list[list[float]] = [[] for _ in modules]
    for r in range(rounds):
        order = range(len(modules)) if r % 2 == 0 else reversed(range(len(modules)))
        for i in order:
            times[i].append(timers[i](*args, out).mean * 1e6)
    return [statistics.median(ts) for ts in times]


def compare_default(task: KernelTask, tdb: TuningDB, target: tvm.target.Target, inputs: list, out_info,
                    rounds: int = ROUNDS) -> tuple[float, float] | None:
    """Time the default schedule and the best record interleaved and store the verdict in the
    database (``defaults.jsonl``); returns ``(default_us, best_us)``, None without a record."""
    best = built_best(task, tdb, target)
    if best is None:
        return None
    default, how = built_default(task, target)
    default_us, best_us = interleaved_us([default, best], inputs, out_info, rounds)
    tdb.record_verdict(task.key, default_us, best_us, rounds, how)
    return default_us, best_us
