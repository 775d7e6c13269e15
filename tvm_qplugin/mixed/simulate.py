"""Accuracy of a per-layer width plan, simulated in float (fake quantization of each layer's weight
and input activation, fake_quant.py), for the Pareto plots and the benchmark.

The integer build is what ships and is verified bit-exactly; this simulation only ranks plans
before anything is compiled (a compile per candidate would take minutes each).
"""
from __future__ import annotations

import numpy as np

from .fake_quant import quantize_activation, quantize_weight
from .torch_graph import TorchGraph


def simulated_outputs(g: TorchGraph, bits: dict, act_range: dict, inputs: dict, batch: int = 32,
                      moments: dict | None = None, weight_cache: dict | None = None) -> np.ndarray:
    """The first output of ``g`` on ``inputs`` with every layer at ``bits[name] = (w_bits, a_bits)``
    (a layer missing from ``bits`` stays float). ``moments``: per layer, the input second moments of
    the *calibration* data (fake_quant.layer_input_moments), so that int4 layers are rounded as the
    compiler rounds them; without them int4 is rounded to nearest. ``weight_cache``: a dict kept by
    the caller across calls with the same ``moments`` (``(name, w_bits)`` -> quantized weight), for
    searches that simulate many plans (refine.py)."""
    import torch

    moments = moments or {}
    cache = {} if weight_cache is None else weight_cache

    def weight(n: str, op: str):
        if n not in bits:
            return g.weights[n]
        key = (n, bits[n][0])
        if key not in cache:
            cache[key] = quantize_weight(g.weights[n].detach(), bits[n][0], op, moments.get(n))
        return cache[key]

    weights = {layer.name: weight(layer.name, layer.op) for layer in g.layers}
    perturb = {n: (lambda x, b=b, r=act_range[n]: quantize_activation(x, b[1], r[0], r[1])) for n, b in bits.items()}
    n = len(next(iter(inputs.values())))
    outs = []
    with torch.no_grad():
        for i in range(0, n, batch):
            chunk = {k: np.asarray(v[i : i + batch], dtype=np.float32) for k, v in inputs.items()}
            outs.append(g.run(chunk, weights=weights, perturb=perturb)[0].numpy())
    return np.concatenate(outs)


def top1(outputs: np.ndarray, reference: np.ndarray) -> float:
    """Top-1 accuracy against labels (1-D ``reference``) or top-1 agreement with float logits (2-D)."""
    want = reference if reference.ndim == 1 else reference.argmax(axis=1)
    return float((outputs.argmax(axis=1) == want).mean())


def output_distance(outputs: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per sample: KL(p_ref || p_out) of the softmax of 2-D ``(samples, classes)`` logits, else the
    mean squared error -- the loss the plan refinement (refine.py) lowers."""
    out, ref = np.asarray(outputs, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if ref.ndim == 2 and ref.shape[1] > 1:
        lp = ref - ref.max(axis=1, keepdims=True)
        lp -= np.log(np.exp(lp).sum(axis=1, keepdims=True))
        lq = out - out.max(axis=1, keepdims=True)
        lq -= np.log(np.exp(lq).sum(axis=1, keepdims=True))
        return (np.exp(lp) * (lp - lq)).sum(axis=1)
    return ((out - ref) ** 2).reshape(len(out), -1).mean(axis=1)
