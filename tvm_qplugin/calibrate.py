"""Calibration: run the float graph with every intermediate exposed and observe each tensor.

The float model is compiled once with TVM with all bindings of ``main`` returned as outputs,
so the observed tensors are exactly the Relax variables the integerize rules look up (no name
matching between ONNX and Relax). The same compiled module gives the fp32 outputs that the
accuracy report compares against.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from .data import Dataset
from .errors import CalibrationError
from .passes.graph import Graph, dtype_of
from .passes.rewriter import substitute
from .quant.observers import DEFAULT_OBSERVER, Histogram, calibrated_range
from .progress import progress
from .schedules.float_cpu import legalize_and_schedule

log = logging.getLogger(__name__)


@dataclass
class Ranges:
    """Calibrated ``(lo, hi)`` per float Relax variable of the canonical ``main``."""

    by_var: dict[relax.Var, tuple[float, float]]
    histograms: dict[relax.Var, Histogram]
    channel_means: dict[relax.Var, np.ndarray] = field(default_factory=dict)  # axis 1, for bias correction
    input_moments: dict[str, np.ndarray] = field(default_factory=dict)  # int4 layers' (quant/int4_inputs.py)

    def __getitem__(self, var: relax.Var) -> tuple[float, float]:
        return self.by_var[var]


class FloatRunner:
    """The float model compiled with TVM, returning its outputs and (optionally) all intermediates."""

    def __init__(self, mod: tvm.IRModule, target: tvm.target.Target, observe: bool = True):
        graph = Graph(mod["main"])
        self.graph = graph
        self.observed = [graph.params[i] for i in range(len(graph.params))] + [
            b.var for b in graph.bindings if _is_float_tensor(b.var)] if observe else []
        bb = relax.BlockBuilder()
        params = list(graph.params)
        remap: dict = {}
        with bb.function("main", params):
            with bb.dataflow():
                for b in graph.bindings:
                    remap[b.var] = bb.emit(substitute(b.value, remap))
                taps = [remap.get(v, v) for v in self.observed]
                outs = [remap.get(v, v) for v in graph.outputs]
                out = bb.emit_output(relax.Tuple(taps + outs))
            bb.emit_func_output(out)
        self.num_taps = len(taps)
        self.vm = relax.VirtualMachine(tvm.compile(legalize_and_schedule(bb.get(), target), target=target), tvm.cpu())
        self.input_names = [p.name for p in params]

    def run(self, batch: dict[str, np.ndarray], taps: bool = True) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """``(intermediates, outputs)`` for one batch; ``taps=False``: the outputs alone (the
        intermediates list empty, none copied out: an evaluation reads only the outputs)."""
        args = [tvm.runtime.tensor(np.ascontiguousarray(batch[n])) for n in self.input_names]
        res = self.vm["main"](*args)
        # zero-copy views of the VM's result tensors (each array keeps its tensor alive): a
        # MobileNetV2 image's ~150 taps are 80 MB, and copying them out (.numpy()) took as long as
        # running the model
        arrays = [np.from_dlpack(res[i]) for i in range(0 if taps else self.num_taps, len(res))]
        return (arrays[: self.num_taps], arrays[self.num_taps :]) if taps else ([], arrays)


def calibrate(runner: FloatRunner, data: Dataset, method: str = DEFAULT_OBSERVER, limit: int | None = None,
              show_progress: bool = False) -> Ranges:
    """Observe every float tensor over the calibration batches and clip with ``method``."""
    hists = {v: Histogram.empty() for v in runner.observed}
    sums: dict[relax.Var, np.ndarray] = {}
    batches = 0
    for batch in progress(data.batches(limit), total=data.num_batches(limit), desc="calibrate",
                          enabled=show_progress):
        taps, _ = runner.run(batch)
        batches += 1
        for v, a in zip(runner.observed, taps):
            try:
                hists[v].update(a)
            except ValueError as e:
                raise CalibrationError(f"calibration batch {batches}: float tensor {v.name} ({e}); check the "
                                       "calibration data and the model's float behaviour on it") from None
            if a.ndim >= 2:
                red = tuple(i for i in range(a.ndim) if i != (1 if a.ndim == 4 else a.ndim - 1))
                sums[v] = sums.get(v, 0) + a.astype(np.float64).mean(axis=red)
    if batches == 0:
        raise CalibrationError(f"no calibration batch: {len(data)} sample(s) for a model batch of "
                               f"{data.specs[0].batch}")
    ranges = {}
    for v, h in hists.items():
        # inputs keep their full observed range: clipping data at the entry loses information
        ranges[v] = (h.lo, h.hi) if v in runner.graph.params else calibrated_range(h, method)
    _check_ranges(runner, ranges)
    return Ranges(ranges, hists, {v: m / max(batches, 1) for v, m in sums.items()})


def _check_ranges(runner: FloatRunner, ranges: dict) -> None:
    """Refuse degenerate calibration data. An input or output whose calibrated range is zero has no
    quantization scale worth the name: every value it will ever carry rounds to 0, so the integer
    model is silently constant (all-zero calibration data used to pass the bit-exact check with
    0 % agreement). Intermediates can legitimately be zero (an additive attention mask over
    unpadded rows), so for them it is a warning; so is an input that holds one constant value."""
    def is_zero(v):
        return max(abs(ranges[v][0]), abs(ranges[v][1])) == 0

    ends = [v for v in list(runner.graph.params) + list(runner.graph.outputs) if v in ranges]
    dead = [v.name for v in ends if is_zero(v)]
    if dead:
        raise CalibrationError(f"calibrated range is zero for model input/output {', '.join(dead)}: every "
                               "calibration sample drives it to exactly 0, so it cannot be quantized; calibrate "
                               "with real, varied samples")
    inner = [v.name for v in ranges if v not in ends and is_zero(v)]
    if inner:
        log.warning("calibrated range is zero for %d intermediate tensor(s) (%s): they will quantize to 0",
                    len(inner), ", ".join(inner[:5]))
    flat = [v.name for v in runner.graph.params if v in ranges and ranges[v][0] == ranges[v][1]]
    if flat:
        log.warning("calibration input(s) %s hold one constant value: the ranges will not fit real data; "
                    "calibrate with real, varied samples", ", ".join(flat))


def _is_float_tensor(var: relax.Var) -> bool:
    try:
        return dtype_of(var).startswith("float")
    except (AttributeError, TypeError):
        return False

