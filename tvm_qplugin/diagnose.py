"""Per-tensor quantization error: where in the graph the integer model departs from fp32.

For one batch, the float graph (every intermediate exposed, calibrate.FloatRunner) and the
integer graph (the NumPy reference, every intermediate kept) run side by side; each quantized
tensor's integer twin (``IntegerModule.tensors``) is dequantized and compared with the float
tensor. The figure is the signal-to-quantization-noise ratio

    SQNR = 10 log10( sum f**2 / sum (f - s q)**2 )  dB

accumulated over the batch. Errors compound along the graph, so the first tensor whose SQNR
drops sharply is the one to look at (its range, its bits, its algorithm). This is what
``report.json`` lists under ``tensors`` and what ``tvm-qplugin compile`` prints as the worst few.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from tvm import relax

from .calibrate import FloatRunner
from .passes.integerize import IntegerModule

# ops that only move integers around: their error is their input's, listing them is noise
_LAYOUT = {"reshape", "permute_dims", "squeeze", "expand_dims", "flatten", "broadcast_to", "concat", "take"}


@dataclass(frozen=True)
class TensorError:
    name: str          # the float Relax variable (ONNX-derived name)
    op: str            # the float op(s) that produced it, fused ones joined by "+" ("input" for graph inputs)
    dtype: str         # integer dtype of its twin
    scale: float
    sqnr_db: float     # inf when the integer tensor reproduces fp32 exactly

    def to_json(self) -> dict:
        return {"name": self.name, "op": self.op, "dtype": self.dtype, "scale": self.scale,
                "sqnr_db": None if math.isinf(self.sqnr_db) else round(self.sqnr_db, 2)}


def sqnr_db(ref: np.ndarray, approx: np.ndarray) -> float:
    """SQNR of ``approx`` against ``ref``; masked entries (float attention masks put -inf or the
    float minimum where the integer graph puts its dtype minimum) are left out."""
    keep = np.abs(ref) < 1e30
    ref, approx = ref[keep], approx[keep]
    ref = ref.astype(np.float64)
    noise = float(np.sum((ref - approx.astype(np.float64)) ** 2))
    signal = float(np.sum(ref**2))
    if noise == 0.0:
        return math.inf
    return 10.0 * math.log10(max(signal, 1e-30) / noise)


def tensor_errors(runner: FloatRunner, imod: IntegerModule, batch: dict[str, np.ndarray],
                  env: dict[relax.Var, object]) -> list[TensorError]:
    """SQNR of every quantized tensor on ``batch``; ``env`` holds the integer function's
    intermediates on the same batch (``ReferenceInterpreter.run(..., env=env)``)."""
    taps, _ = runner.run(batch)
    floats = dict(zip(runner.observed, taps))
    out = []
    for t in imod.tensors:
        if t.float_var not in floats or t.int_var not in env or t.ops in _LAYOUT:
            continue
        approx = np.asarray(env[t.int_var]).astype(np.float64) * t.qtype.scale
        out.append(TensorError(t.float_var.name, t.ops, t.qtype.dtype, t.qtype.scale,
                               sqnr_db(floats[t.float_var], approx)))
    return out
