"""One integer module built several ways for the side-by-side benchmarks: tensorized or not, for
the native target and for an ISA-restricted one (AVX2 on an AVX-512 machine), timed interleaved."""
from __future__ import annotations

import time

import numpy as np
import tvm
from tvm import relax

from tvm_qplugin.build import build, relax_pipeline
from tvm_qplugin.schedules import apply_default_schedules

AVX2_TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "znver3"})  # AVX2, no AVX-512 / VNNI


def untensorized(mod: tvm.IRModule, target: tvm.target.Target):
    """The build without weight prepacking: the plain schedule rules only (the state before the
    tensorized kernels)."""
    scheduled, _ = apply_default_schedules(mod, target)
    return tvm.compile(scheduled, target=target, relax_pipeline=relax_pipeline(target))


def build_variants(mod: tvm.IRModule, targets: dict) -> dict:
    """``{"_<target>" / "_<target>_untensorized": VirtualMachine}``; the native one is ``""``."""
    vms = {}
    for name, target in targets.items():
        suffix = "" if name == "native" else f"_{name}"
        vms[suffix] = relax.VirtualMachine(build(mod, target)[0], tvm.cpu())
        vms[f"{suffix}_untensorized"] = relax.VirtualMachine(untensorized(mod, target), tvm.cpu())
    return vms


def assert_same_outputs(vms: dict, func: str, *args) -> None:
    """Every build of the integer module gives the same integers (the compile checked the native
    one against the NumPy reference)."""
    outs = {name: vm[func](*args).numpy() for name, vm in vms.items()}
    first = next(iter(outs.values()))
    for name, out in outs.items():
        assert np.array_equal(out, first), f"build variant {name or 'native'!r} differs from the others"


def interleaved_median_ms(calls: dict, runs: int) -> dict:
    """Median milliseconds per call, the calls taken round-robin so that machine noise (this
    machine is shared) falls on all of them alike."""
    for fn in calls.values():
        fn()
    times = {name: [] for name in calls}
    for _ in range(runs):
        for name, fn in calls.items():
            t = time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - t) * 1e3)
    return {name: float(np.median(ts)) for name, ts in times.items()}
