"""One integer module built several ways for the side-by-side benchmarks: tensorized or not, for
the native target and for an ISA-restricted one (AVX2 on an AVX-512 machine), timed interleaved."""
from __future__ import annotations

import contextlib
import time

import numpy as np
import tvm
from tvm import relax

from common import timed_ms
from tvm_qplugin.build import build, relax_pipeline
from tvm_qplugin.schedules import apply_default_schedules

AVX2_TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "znver3", "mattr": ["-sse4a"]})  # AVX2, no AVX-512 / VNNI; no AMD-only SSE4a (runs on Intel too)


def untensorized(mod: tvm.IRModule, target: tvm.target.Target):
    """The build without weight prepacking: the plain schedule rules only (the state before the
    tensorized kernels)."""
    scheduled, _ = apply_default_schedules(mod, target)
    return tvm.compile(scheduled, target=target, relax_pipeline=relax_pipeline(target))


def build_variants(mod: tvm.IRModule, targets: dict, with_untensorized: bool = True) -> dict:
    """``{"_<target>" / "_<target>_untensorized": VirtualMachine}``; the native one is ``""``.
    Built with the shipped tuning database of each target's ISA, as ``compile`` builds them."""
    from tvm_qplugin.targets import get_board
    from tvm_qplugin.tuning.apply import resolve_tuning

    vms = {}
    for name, target in targets.items():
        suffix = "" if name == "native" else f"_{name}"
        tuning = resolve_tuning(None, get_board("x86-host"), target)
        vms[suffix] = relax.VirtualMachine(build(mod, target, tuning=tuning)[0], tvm.cpu())
        if with_untensorized:
            vms[f"{suffix}_untensorized"] = relax.VirtualMachine(untensorized(mod, target), tvm.cpu())
    return vms


@contextlib.contextmanager
def vpmaddwd_only():
    """Builds inside it run every AVX2 8-bit conv / dense on ``vpmaddwd`` over widened operands --
    the AVX2 kernels before ``vpmaddubsw`` (x86_int8's byte-pair rules switched off): the "before"
    of that change, in the same process as the "after"."""
    from tvm_qplugin.schedules.x86_int8 import Conv2DTensorized, DenseTensorized

    saved = {rule: rule.byte_pairs for rule in (Conv2DTensorized, DenseTensorized)}
    for rule in saved:
        rule.byte_pairs = False
    try:
        yield
    finally:
        for rule, value in saved.items():
            rule.byte_pairs = value


def assert_same_outputs(vms: dict, func: str, *args) -> None:
    """Every build of the integer module gives the same integers (the compile checked the native
    one against the NumPy reference)."""
    outs = {name: vm[func](*args).numpy() for name, vm in vms.items()}
    first = next(iter(outs.values()))
    for name, out in outs.items():
        assert np.array_equal(out, first), f"build variant {name or 'native'!r} differs from the others"


def interleaved_median_ms(calls: dict, runs: int, clock=time.perf_counter) -> dict:
    """Median milliseconds per call, the calls taken round-robin so that machine noise (this
    machine is shared) falls on all of them alike. ``clock=time.thread_time``: the calling
    thread's CPU time, which another job's share of a loaded machine does not enter -- the figure
    of 1-thread runs, where TVM and ONNX Runtime (intra-op 1) compute on the calling thread."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(runs):
        for name, fn in calls.items():
            t = clock()
            fn()
            times[name].append((clock() - t) * 1e3)
    return {name: float(np.median(ts)) for name, ts in times.items()}


def rounds_of_blocks(calls: dict, rounds: int, runs: int, reference: str) -> tuple[dict, dict]:
    """Median milliseconds per call over ``rounds`` rounds in which each call runs ``runs`` times
    in a block (after one warm-up), the calls in turn; and, per call, the median over rounds of
    its round median divided by ``reference``'s (> 1: ``reference`` is faster). Blocks, not
    call-by-call alternation: ONNX Runtime's spinning thread pool and TVM's slow each other down
    when their calls alternate on 2 cores."""
    times = {name: [] for name in calls}
    per_round = {name: [] for name in calls}
    for _ in range(rounds):
        for name, fn in calls.items():
            ts = timed_ms(fn, runs)
            times[name] += ts
            per_round[name].append(float(np.median(ts)))
    ref = np.array(per_round[reference])
    ratios = {name: float(np.median(np.array(r) / ref)) for name, r in per_round.items() if name != reference}
    return {name: round(float(np.median(ts)), 3) for name, ts in times.items()}, ratios
