"""Per-layer sensitivity to a narrower width: HAWQ-V2/V3 Hessian traces and ZeroQ's direct measure.

1. **Hessian (HAWQ-V2)**. The loss is the float model's cross-entropy on real calibration data
   (against the labels when the data has them, else against the float model's own softmax, so
   the loss is KL(p_float || p) + const and its Hessian at the float weights is the Fisher). Per
   layer ``l``, ``Tr(H_ll)`` is estimated by Hutchinson: ``E[v^T H v]`` over Rademacher ``v``;
   one Hessian-vector product (double backward through the PyTorch twin of the ONNX graph,
   torch_graph.py) serves every layer at once, since the block ``v_l^T (H v)_l`` has expectation
   ``Tr(H_ll)`` when the blocks of ``v`` are independent. The same probe also perturbs each
   layer's input activation (``x + d``, ``d = 0``), which gives the activation traces. That
   block estimate also carries every other block's cross terms as noise, so the top layers still
   unresolved after a short pilot are then probed alone (``_hessian``: two phases).
   ``Omega = Tr/n * ||Q(W) - W||^2`` per candidate width (HAWQ-V3's objective), likewise for the
   input activation with its calibrated range. ``Q`` at 4 bits is the compiler's min-MSE grid
   rounded to nearest: HAWQ's ``||Q(W) - W||^2`` treats weight errors as isotropic, while the
   compiler's error-feedback rounding trades a larger weight error for a smaller output error,
   which only an output measure sees.
2. **Direct (ZeroQ)**. Lower only that layer's weight (or input activation) and measure the
   output: KL(p_float || p_q) for a classifier (MSE otherwise), and the output SQNR in dB. The
   int4 weight is the compiler's, error feedback included (fake_quant.py), rounded on the input
   second moments of *other* calibration samples than the ones the KL is measured on (those after
   the first ``samples``, at most the compiler's MOMENT_SAMPLES; the same ones only when there
   are no others). Why: error feedback fits the rounding to the moments' samples, so measured on
   those same samples a layer whose moments have low rank looks free -- MobileNetV2's classifier
   (1 280 inputs, one row per sample) at 4 bits measured KL 3.0e-5 on the 8 samples its moments
   came from and 9.9e-4 (33x) with moments from the 56 others, `node_Conv_909` 1.8e-4 vs 1.3e-3;
   the compiled model meets inputs its moments never saw.

Note: finite differences of gradients were the alternative to double backward; they need a step
size per layer (weights differ by orders of magnitude) and lose digits, while autograd's HVP is
exact to float rounding, which the test against an explicitly built Hessian checks.

Results are cached on disk per (model bytes, calibration samples, settings) hash.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..quant.int4_inputs import MOMENT_SAMPLES
from .fake_quant import A_BITS, W_BITS, layer_input_moments, quantize_activation, quantize_weight
from .torch_graph import TorchGraph, load_torch_graph, one_torch_thread

log = logging.getLogger(__name__)
CACHE_VERSION = 4   # 2: focused probes on the top layers after a whole-model pilot; 3: the compiler's int4 grid;
                    # 4: the direct measure's int4 rounded on the moments of other samples
PILOT_PROBES = 32   # whole-model probes before the focused phase (they also rank the top layers)


@dataclass
class Sensitivity:
    """Per-layer figures, all keyed by ONNX node name (widths as string keys, JSON-friendly)."""

    layers: list[dict]                          # name, op, params, macs, input, output
    probes: int                                 # Hutchinson probes used
    samples: int
    top_layers: list = field(default_factory=list)     # where the spread target is checked
    focused_layers: list = field(default_factory=list)  # top layers probed alone after the pilot
    probes_per_layer: dict = field(default_factory=dict)  # name -> probes its weight trace is the mean of
    trace_w: dict = field(default_factory=dict)        # mean Hutchinson estimate of Tr(H_ll)
    trace_w_spread: dict = field(default_factory=dict)  # relative standard error of that mean
    trace_a: dict = field(default_factory=dict)
    trace_a_spread: dict = field(default_factory=dict)
    omega_w: dict = field(default_factory=dict)        # name -> {bits: Omega}
    omega_a: dict = field(default_factory=dict)
    direct_w: dict = field(default_factory=dict)       # name -> {bits: KL or MSE}
    direct_a: dict = field(default_factory=dict)
    sqnr_w: dict = field(default_factory=dict)         # name -> {bits: output SQNR dB}
    act_range: dict = field(default_factory=dict)      # name -> [lo, hi] of the layer input
    moment_samples: list = field(default_factory=list)  # [start, stop) of the direct measure's int4 moments
    timing_s: dict = field(default_factory=dict)

    def cost(self, name: str, w_bits: int, a_bits: int, method: str = "hessian") -> float:
        """The ILP's objective term for one layer at ``(w_bits, a_bits)``."""
        w, a = (self.omega_w, self.omega_a) if method == "hessian" else (self.direct_w, self.direct_a)
        return float(w[name][str(w_bits)] + a[name][str(a_bits)])

    def to_json(self) -> dict:
        return asdict(self)


def sensitivity(model: str | Path, calib: dict, labels: np.ndarray | None = None, probes: int = 256,
                samples: int = 32, seed: int = 0, direct: bool = True, cache: bool = True,
                target_spread: float = 0.1) -> Sensitivity:
    """Hessian traces, Omega and (``direct``) the direct measure of every layer of ``model``.

    Parameters
    ----------
    model : path of the float ONNX model
    calib : input name -> array, first axis counting samples (real calibration data)
    labels : int per sample, optional; without them the loss is the KL to the float outputs
    probes : the most Rademacher probes of the Hutchinson estimator; it stops (in blocks of 16)
        once the relative standard error of the top layers' traces is below ``target_spread``
    samples : calibration samples in the loss (the first ``samples``)
    """
    key = _cache_key(model, calib, labels, probes, samples, seed, direct, target_spread)
    path = cache_dir() / f"sensitivity-{key}.json"
    if cache and path.is_file():
        return Sensitivity(**json.loads(path.read_text()))
    import torch

    torch.manual_seed(seed)
    with one_torch_thread():
        g = load_torch_graph(model)
        s = _measure(g, calib, labels, probes, samples, seed, direct, target_spread)
    if cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(s.to_json()))
        tmp.replace(path)
    return s


def _measure(g: TorchGraph, calib: dict, labels, probes, samples, seed, direct, target_spread) -> Sensitivity:
    inputs = {n: np.array(calib[n][:samples], dtype=np.float32) for n in g.input_names}
    lab = None if labels is None else np.asarray(labels[:samples])
    s = Sensitivity([{"name": layer.name, "op": layer.op, "params": layer.params, "bias": layer.bias,
                      "macs": layer.macs, "input": layer.input, "output": layer.output} for layer in g.layers], probes,
                    len(next(iter(inputs.values()))))
    t = time.perf_counter()
    _hessian(g, inputs, lab, probes, s, target_spread, seed)
    s.timing_s["hessian"] = round(time.perf_counter() - t, 2)
    if direct:
        t = time.perf_counter()
        _direct(g, inputs, s, moment_inputs(calib, g.input_names, samples, s))
        s.timing_s["direct"] = round(time.perf_counter() - t, 2)
    return s


def hutchinson_traces(g: TorchGraph, inputs: dict, labels, probes: int, seed: int = 0,
                      enough=lambda w_rows, a_rows: False, block: int = 16):
    """``(w_rows, a_rows, taps)``: per probe, per layer, ``v_l^T (H v)_l`` for the weights and for
    the input activations (``probes x layers`` arrays); ``taps``: each layer's float input.
    Stops early, at a multiple of ``block`` probes, once ``enough(w_rows, a_rows)``."""
    hvp = _HessianProbes(g, inputs, labels, seed)
    w_rows, a_rows = hvp.rows(probes, enough=enough, block=block)
    return w_rows, a_rows, hvp.taps


class _HessianProbes:
    """The gradient graph of the loss, kept for Hessian-vector products with Rademacher probes.

    ``rows(count, only=...)`` probes only the weights of the layers ``only`` (``v`` is zero on every
    other block and on the activations): a layer's estimate then carries the cross terms
    ``v_l^T H_lk v_k`` of those layers alone, not of the whole model -- on MobileNetV2 the
    small layers' estimates are swamped by the big blocks' cross terms otherwise."""

    def __init__(self, g: TorchGraph, inputs: dict, labels, seed: int):
        import torch

        taps: dict = {}
        with torch.no_grad():
            ref = g.run(inputs, taps=taps)[0]
        deltas = {n: torch.zeros_like(x, requires_grad=True) for n, x in taps.items()}
        out = g.run(inputs, perturb={n: (lambda x, d=d: x + d) for n, d in deltas.items()})[0]
        self.names = [layer.name for layer in g.layers]
        self.leaves = [g.weights[n] for n in self.names] + [deltas[n] for n in self.names]
        self.grads = torch.autograd.grad(_loss(out, ref, labels), self.leaves, create_graph=True)
        self.gen = torch.Generator().manual_seed(seed)
        self.taps = {n: x.detach() for n, x in taps.items()}

    def _hvp(self, live: list[int], vs: list):
        """``(H v)`` on the leaves ``live`` only, ``v`` zero elsewhere: the double backward starts
        from those leaves' gradients alone and ends at those leaves, so autograd skips the rest of
        the second-order graph (exact: the blocks left out would multiply a zero ``v`` or are not
        read) -- a focused probe of a layer near the output is a fraction of a whole-model HVP."""
        import torch

        return torch.autograd.grad([self.grads[i] for i in live], [self.leaves[i] for i in live],
                                   grad_outputs=vs, retain_graph=True, allow_unused=True)

    def rows(self, count: int, only=None, enough=lambda w_rows, a_rows: False, block: int = 16):
        import torch

        n = len(self.names)
        live = list(range(2 * n)) if only is None else sorted({int(i) for i in only})
        rows = []
        for p in range(count):
            vs = {i: torch.randint(0, 2, self.leaves[i].shape, generator=self.gen).to(self.leaves[i].dtype) * 2 - 1
                  for i in live}
            hv = self._hvp(live, [vs[i] for i in live])
            row = np.full(2 * n, np.nan)
            row[live] = [0.0 if h is None else float((vs[i] * h).sum()) for i, h in zip(live, hv)]
            rows.append(row)
            if (p + 1) % block == 0 and enough(np.array(rows)[:, :n], np.array(rows)[:, n:]):
                break
        rows = np.array(rows).reshape(-1, 2 * n)
        return rows[:, :n], rows[:, n:]


def relative_spread(rows: np.ndarray) -> np.ndarray:
    """Per column: the standard error of the Hutchinson mean over its absolute value."""
    mean = rows.mean(axis=0)
    err = rows.std(axis=0, ddof=1) / np.sqrt(len(rows)) if len(rows) > 1 else np.full(rows.shape[1], np.inf)
    return np.where(mean != 0, err / np.maximum(np.abs(mean), 1e-300), np.inf)


def top_layers(w_rows: np.ndarray, params: np.ndarray, share: float = 0.25) -> np.ndarray:
    """Indices of the layers that dominate the objective: the top ``share`` (at least 3) by
    ``Tr/n`` -- the factor of Omega that the estimator supplies."""
    score = w_rows.mean(axis=0) / params
    k = min(len(score), max(3, int(np.ceil(share * len(score)))))
    return np.argsort(-score)[:k]


def _hessian(g: TorchGraph, inputs: dict, labels, probes: int, s: Sensitivity, target_spread: float,
             seed: int = 0) -> None:
    """Two phases. Whole-model probes (every layer's block at once, and the activations) until the
    top layers are resolved or PILOT_PROBES are spent; then, for each top layer still unresolved,
    probes on that layer's weights alone (no cross terms of other blocks), ``block`` at a time,
    round robin over the layers not yet below ``target_spread``, until all are or ``probes`` HVPs
    are spent in all; those layers' traces come from their focused probes only (the pilot's carry
    the whole model's cross terms). Cost: the pilot plus what the unresolved top layers need, not
    a probe per layer for all 53 of MobileNetV2's layers."""
    block = 16
    import torch

    params = np.array([layer.params for layer in g.layers], dtype=np.float64)

    def resolved(w_rows, idx) -> bool:
        return bool(np.all(relative_spread(w_rows[:, idx]) < target_spread))

    hvp = _HessianProbes(g, inputs, labels, seed)
    w_rows, a_rows = hvp.rows(min(probes, PILOT_PROBES), enough=lambda w, a: resolved(w, top_layers(w, params)))
    top = top_layers(w_rows, params)
    focus = [int(i) for i in top if relative_spread(w_rows[:, [i]])[0] >= target_spread]
    cols = [w_rows[:, i] for i in range(len(g.layers))]   # each layer's probe values
    total = len(w_rows)
    focused = {i: np.empty(0) for i in focus}
    log.info("Hutchinson pilot: %d whole-model probes; %d of the %d top layers above %.0f %% spread, probed alone next",
             total, len(focus), len(top), 100 * target_spread)
    while total + block <= probes:  # round robin over the unresolved ones, one layer per HVP
        todo = [i for i, c in focused.items() if len(c) < 2 or relative_spread(c[:, None])[0] >= target_spread]
        if not todo:
            break
        for i in todo[: max(1, (probes - total) // block)]:
            f_rows, _ = hvp.rows(block, only=[i])
            focused[i] = np.concatenate([focused[i], f_rows[:, i]])
            total += block
        log.info("Hutchinson focused: %d HVPs; still above %.0f %%: %d of %d", total, 100 * target_spread,
                 sum(relative_spread(c[:, None])[0] >= target_spread for c in focused.values()), len(focused))
    for i, c in focused.items():  # a focused layer's estimate: its focused probes only
        if len(c):
            cols[i] = c
    s.focused_layers = [g.layers[i].name for i, c in focused.items() if len(c)]
    s.probes = total
    s.top_layers = [g.layers[i].name for i in top]
    a_spread = relative_spread(a_rows)
    for i, layer in enumerate(g.layers):
        n = layer.name
        w = g.weights[n].detach()
        x = hvp.taps[n]
        lo, hi = float(x.min()), float(x.max())
        s.act_range[n] = [lo, hi]
        s.probes_per_layer[n] = len(cols[i])
        s.trace_w[n], s.trace_w_spread[n] = float(cols[i].mean()), float(relative_spread(cols[i][:, None])[0])
        s.trace_a[n], s.trace_a_spread[n] = float(a_rows[:, i].mean()), float(a_spread[i])
        with torch.no_grad():
            s.omega_w[n] = {str(b): max(s.trace_w[n], 0.0) / w.numel()
                            * float(((quantize_weight(w, b, layer.op) - w) ** 2).sum()) for b in W_BITS}
            s.omega_a[n] = {str(b): max(s.trace_a[n], 0.0) / x.numel()
                            * float(((quantize_activation(x, b, lo, hi) - x) ** 2).sum()) for b in A_BITS}


def moment_inputs(calib: dict, input_names, samples: int, s: Sensitivity | None = None) -> dict:
    """The calibration samples the direct measure's int4 rounding takes its moments from: those
    after the first ``samples`` (the ones the KL is measured on), at most MOMENT_SAMPLES as the
    compiler; the first ``samples`` themselves only when the data has no others (then the measure
    is in-sample, and says so in ``s.moment_samples``)."""
    count = len(next(iter(calib.values())))
    start, stop = (samples, min(count, samples + MOMENT_SAMPLES)) if count > samples else (0, count)
    if s is not None:
        s.moment_samples = [start, stop]
    if start == 0:
        log.warning("direct measure: no calibration samples beyond the %d it measures on; int4 is rounded on the "
                    "moments of those same samples (in-sample: low-rank layers look cheaper than they are)", samples)
    return {n: np.array(calib[n][start:stop], dtype=np.float32) for n in input_names}


def _direct(g: TorchGraph, inputs: dict, s: Sensitivity, moment_data: dict | None = None) -> None:
    """ZeroQ's measure: the output change when only one layer's weight or input is lowered, on
    ``inputs``; int4 rounded as the compiler rounds it (error feedback) on the moments of
    ``moment_data`` (other samples: module docstring, point 2; default ``inputs``)."""
    import torch

    moments = layer_input_moments(g, inputs if moment_data is None else moment_data)
    with torch.no_grad():
        ref = g.run(inputs)[0]
        for layer in g.layers:
            n = layer.name
            s.direct_w[n], s.sqnr_w[n], s.direct_a[n] = {}, {}, {}
            for b in W_BITS:
                weights = dict(g.weights)
                weights[n] = quantize_weight(g.weights[n], b, layer.op, moments.get(n))
                out = g.run(inputs, weights=weights)[0]
                s.direct_w[n][str(b)] = _distance(ref, out)
                s.sqnr_w[n][str(b)] = _sqnr_db(ref, out)
            lo, hi = s.act_range[n]
            for b in A_BITS:
                out = g.run(inputs, perturb={n: lambda x, b=b, lo=lo, hi=hi: quantize_activation(x, b, lo, hi)})[0]
                s.direct_a[n][str(b)] = _distance(ref, out)


def _loss(out, ref, labels):
    """Cross-entropy to the labels, else to the float model's softmax (a classifier), else MSE."""
    import torch.nn.functional as F

    if out.dim() == 2 and labels is not None:
        import torch

        return F.cross_entropy(out, torch.as_tensor(labels, dtype=torch.long))
    if out.dim() == 2:
        return -(ref.softmax(-1) * out.log_softmax(-1)).sum(-1).mean()
    return ((out - ref) ** 2).mean()


def _distance(ref, out) -> float:
    """KL(p_ref || p_out), mean over samples, for logits; MSE for any other output."""
    if ref.dim() == 2:
        p = ref.log_softmax(-1)
        return float((p.exp() * (p - out.log_softmax(-1))).sum(-1).mean())
    return float(((out - ref) ** 2).mean())


def _sqnr_db(ref, out) -> float:
    noise = float(((out - ref) ** 2).sum())
    return float("inf") if noise == 0 else 10 * np.log10(float((ref**2).sum()) / noise)


def cache_dir() -> Path:
    """``$TVM_QPLUGIN_CACHE`` or ``~/.cache/tvm_qplugin``: where sensitivities are kept."""
    return Path(os.environ.get("TVM_QPLUGIN_CACHE") or Path.home() / ".cache" / "tvm_qplugin") / "mixed"


def _cache_key(model, calib: dict, labels, *settings) -> str:
    h = hashlib.sha256(f"v{CACHE_VERSION}:{settings}".encode())
    h.update(Path(model).read_bytes())
    for name in sorted(calib):
        a = np.ascontiguousarray(calib[name])
        h.update(f"{name}:{a.shape}:{a.dtype}".encode())
        h.update(a.tobytes())
    if labels is not None:
        h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()[:24]
