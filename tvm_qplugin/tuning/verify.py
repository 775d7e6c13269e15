"""Correctness is part of tuning: every candidate is run against its op's NumPy twin.

MetaSchedule measures speed, never correctness; a tensorized or reordered kernel can be fast and
wrong (TVM_NOTES.md: the stock VNNI intrinsic with a non-contiguous weight tile). Before a
candidate may enter the database, :class:`KernelCheck` runs the very module that was built and
timed on fixed inputs and compares its output, bit for bit, with ``OPS[op].reference`` called with
the kernel's ``qplugin.params``:

* constant arguments (weights, bias, multipliers, shifts) are the model's own, from the call site;
* activations are random over their dtype's whole range, and a second case holds only the dtype
  extremes and zero (where saturating instructions such as ``vpmaddubsw`` go wrong).

A packed task (tasks.py) draws its cases on the plain kernel's arguments -- what the twin reads --
and runs the candidate on them packed as compile packs them (``packing.pack_call_args``).

A case the *unscheduled* kernel itself fails (an op whose TE definition assumes a narrower input
range than its dtype) is dropped at task start (:meth:`KernelCheck.keep_cases_passing`): the check
compares a candidate with what the default build computes on the inputs the model can produce.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import tvm

from ..ops import OPS
from .tasks import KernelTask, arg_infos

Run = Callable[[list[np.ndarray]], np.ndarray]


def _activation(info, rng: np.random.Generator, extremes: bool) -> np.ndarray:
    shape, dtype = tuple(int(d) for d in info.shape), np.dtype(str(info.dtype))
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    lo, hi = np.iinfo(dtype).min, np.iinfo(dtype).max
    if extremes:
        return rng.choice(np.array([lo, hi, 0], dtype=dtype), size=shape)
    return rng.integers(lo, hi, size=shape, endpoint=True, dtype=dtype)


def run_module(rt_mod, inputs: list[np.ndarray], out_info, device=None) -> np.ndarray:
    """Call the built kernel ``main`` on ``inputs`` and return its output (``device``: a local or
    RPC device; default the local CPU)."""
    dev = device if device is not None else tvm.cpu()
    args = [tvm.runtime.tensor(a, device=dev) for a in inputs]
    out = tvm.runtime.empty(tuple(int(d) for d in out_info.shape), str(out_info.dtype), device=dev)
    rt_mod["main"](*args, out)
    return out.numpy()


class KernelCheck:
    """The fixed inputs and the NumPy reference outputs one task's candidates must reproduce."""

    def __init__(self, task: KernelTask, seed: int = 0):
        rng = np.random.default_rng(seed)
        infos = arg_infos(task.plain or task.func)
        self.op = task.op
        self.out_info = infos[-1]
        plain_cases = []
        for extremes in (False, True):
            plain_cases.append([c if c is not None else _activation(info, rng, extremes)
                                for c, info in zip(task.constants, infos[:-1])])
        reference = OPS[task.op].reference
        self.expected = [np.asarray(reference(*case, **task.params)) for case in plain_cases]
        self.cases: list[list[np.ndarray]] = plain_cases  # as the tuned kernel takes them
        if task.packing is not None:
            from ..schedules.packing import pack_call_args

            self.cases = [pack_call_args(case, task.packing) for case in plain_cases]

    def mismatch(self, run: Run) -> str | None:
        """None when ``run`` reproduces every case bit for bit, else where it first differs."""
        for i, (case, want) in enumerate(zip(self.cases, self.expected)):
            got = run(case)
            if got.shape != want.shape or got.dtype != want.dtype:
                return f"case {i}: output {got.dtype}{list(got.shape)}, reference {want.dtype}{list(want.shape)}"
            bad = np.argwhere(got != want)
            if bad.size:
                p = tuple(int(v) for v in bad[0])
                return f"case {i}: {len(bad)} of {got.size} elements differ, first at {p}: {got[p]} != {want[p]}"
        return None

    def keep_cases_passing(self, run: Run) -> int:
        """Drop the cases the unscheduled kernel (``run``) does not reproduce; returns how many remain."""
        kept = [(c, w) for c, w in zip(self.cases, self.expected) if self._agrees(run, c, w)]
        self.cases = [c for c, _ in kept]
        self.expected = [w for _, w in kept]
        return len(self.cases)

    @staticmethod
    def _agrees(run: Run, case, want) -> bool:
        got = run(case)
        return got.shape == want.shape and got.dtype == want.dtype and bool(np.array_equal(got, want))
