"""``--wide-inputs 16 | 8 | auto``: the width at which a conv / dense reads an int16 input.

The residual stream is int16 (docs/architecture.md "Residual stream at int16"): the linear
bottlenecks and residual sums keep 16 bits for the adds and the skip path. A conv that reads such
a tensor then multiplies words (``vpdpwssd``: half ``vpdpbusd``'s rate, twice the bytes); on
MobileNetV2 its 17 expansion convs take about a third of the conv time. Reading the stream at
8 bits is a per-consumer choice -- a requantize in front of that one kernel, the stream itself
stays int16 -- and it costs precision, so ``auto`` measures it instead of guessing:

* per consumer, the model output with only that input narrowed to the 8-bit grid the compile
  would give it (symmetric over the int16 tensor's range), everything else float: its divergence
  from the float output (KL of the softmax for a classifier, MSE otherwise -- the direct measure
  of mixed/sensitivity.py, on the PyTorch twin of the ONNX graph) and its top-1 flips;
* a consumer is *harmless* when its divergence is below ``PER_TENSOR_SHARE`` of what the whole
  int8 plan already costs (today's plan simulated with fake quantization, mixed/simulate.py).
  Its top-1 flips are reported, not gated on: against float logits a single sample on a
  knife edge flips under any perturbation (1-2 of 64 for inputs whose KL moves by 3e-5);
* harmless consumers are taken, the most MACs per unit of divergence first, while their summed
  divergence stays below ``TOTAL_SHARE`` of today's; the plan is then simulated whole (every
  chosen input narrowed at once, weights and other activations quantized as today) and must stay
  within ``TOTAL_SHARE`` of today's divergence and within one sample of today's top-1 agreement
  with float (the resolution of the measure), else its costliest member goes back to 16.

The integer build of the chosen plan is then verified bit-exactly like any other; this float
simulation only decides the plan (an integer build per candidate would take minutes). The
consumers and their ranges come from the all-16 integerization (:func:`consumers_of`); the plan's
own integerization then reuses that one's kernels (compiler.integer_front with
ops/registry.reuse_kernels), so only the narrowed consumers' kernels are built a second time, and
the x86 build reads each narrowing in its conv's gather (schedules/x86_narrowing.py).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ..errors import QPluginError

log = logging.getLogger(__name__)

WIDE_INPUT_POLICIES = ("16", "8", "auto")
PER_TENSOR_SHARE = 0.005  # one narrowed input may add at most 0.5 % of the int8 plan's own divergence
TOTAL_SHARE = 0.01       # all narrowed inputs together at most 1 %
MEASURE_SAMPLES = 64      # calibration samples in the measurement (MobileNetV2's calibration set is 64)


def parse_wide_inputs(value) -> str:
    """``16`` / ``8`` / ``auto`` (int or text) as the policy's text form; anything else refused in one line."""
    text = str(value).strip().lower()
    if text not in WIDE_INPUT_POLICIES:
        raise QPluginError(f"--wide-inputs {value!r}: choose one of {' | '.join(WIDE_INPUT_POLICIES)} (the width a "
                           "conv / dense reads of the int16 residual stream; auto: narrow where measured harmless)")
    return text


@dataclass
class Consumer:
    """A conv / dense layer whose input is int16: its Relax binding, ONNX node, MACs and the real
    half-range of the int16 tensor (``scale * qmax``: the 8-bit grid narrowing would give it)."""

    var_name: str
    onnx_node: str
    macs: int
    amax: float
    bits: int = 16               # what the plan reads
    reason: str = ""
    divergence_8: float | None = None   # model output vs float, this input alone at 8 / 16 bits
    divergence_16: float | None = None
    top1_flips_8: int | None = None     # samples whose top-1 differs from float (classifier only)
    top1_flips_16: int | None = None

    def to_json(self) -> dict:
        return {"layer": self.var_name, "onnx_node": self.onnx_node, "bits": self.bits, "reason": self.reason,
                "macs": self.macs, "divergence": {"16": _round(self.divergence_16), "8": _round(self.divergence_8)},
                "top1_flips": {"16": self.top1_flips_16, "8": self.top1_flips_8}}


def consumers_of(imod, layers) -> list[Consumer]:
    """The layers of the integer module ``imod`` (integerized with every wide input at 16 bits)
    that read an int16 tensor, with the ONNX names of ``layers`` (quant/precision.WeightedLayer)."""
    onnx = {layer.var_name: layer.onnx_node for layer in layers}
    return [Consumer(info.name, onnx.get(info.name, info.name), info.macs,
                     info.wide_input.scale * info.wide_input.qmax)
            for info in imod.layers if info.wide_input is not None]


@dataclass
class WidePlan:
    """The ``auto`` decision: the consumers with their measurements, and the whole-plan check."""

    consumers: list[Consumer]
    samples: int = 0
    metric: str = "kl"                   # "kl" (classifier logits) | "mse"
    divergence_plan_16: float | None = None   # today's int8 plan, simulated
    divergence_plan: float | None = None      # with the chosen inputs narrowed
    top1_agreement_16: float | None = None
    top1_agreement: float | None = None
    measured: bool = True
    note: str = ""

    @property
    def narrowed(self) -> tuple[str, ...]:
        return tuple(c.var_name for c in self.consumers if c.bits == 8)

    def to_json(self) -> dict:
        return {"samples": self.samples, "metric": self.metric, "measured": self.measured, "note": self.note,
                "per_tensor_share": PER_TENSOR_SHARE, "total_share": TOTAL_SHARE,
                "plan": {"divergence_all_16": _round(self.divergence_plan_16), "divergence": _round(self.divergence_plan),
                         "top1_agreement_all_16": self.top1_agreement_16, "top1_agreement": self.top1_agreement}}


def fixed_plan(consumers: list[Consumer], bits: int) -> WidePlan:
    """``--wide-inputs 16`` or ``8``: every consumer at ``bits``, nothing measured."""
    for c in consumers:
        c.bits, c.reason = bits, f"--wide-inputs {bits}"
    return WidePlan(consumers, measured=False, note=f"--wide-inputs {bits}: not measured")


def auto_plan(model, calib: dict, consumers: list[Consumer]) -> WidePlan:
    """``--wide-inputs auto``: measure every consumer on the calibration inputs ``calib`` and
    choose (module docstring). A model the PyTorch twin cannot run keeps every input at 16 bits."""
    from ..mixed.torch_graph import load_torch_graph, one_torch_thread

    if not consumers:
        return WidePlan(consumers, note="no conv / dense reads an int16 tensor")
    try:
        g = load_torch_graph(model)
        names = {layer.name for layer in g.layers}
        missing = [c.onnx_node for c in consumers if c.onnx_node not in names]
        if missing:
            raise QPluginError(f"layer(s) {', '.join(missing[:3])} not found in the ONNX graph")
        inputs = {n: np.asarray(calib[n][:MEASURE_SAMPLES], dtype=np.float32) for n in g.input_names}
    except (QPluginError, KeyError, OSError, TypeError) as e:
        for c in consumers:
            c.reason = "kept: the float twin could not measure it"
        log.warning("--wide-inputs auto: every int16 input stays 16 bits (not measurable: %s)", e)
        return WidePlan(consumers, measured=False, note=f"not measurable: {' '.join(str(e).split())}")
    with one_torch_thread():
        return _decide(g, inputs, consumers)


def _decide(g, inputs: dict, consumers: list[Consumer]) -> WidePlan:
    import torch

    from ..mixed.fake_quant import quantize_activation
    from ..mixed.sensitivity import _distance
    from ..mixed.simulate import simulated_outputs

    with torch.no_grad():
        taps: dict = {}
        ref = g.run(inputs, taps=taps)[0]
        classifier = ref.dim() == 2
        plan = WidePlan(consumers, samples=len(next(iter(inputs.values()))), metric="kl" if classifier else "mse")

        def flips(out) -> int | None:
            return int((out.argmax(-1) != ref.argmax(-1)).sum()) if classifier else None

        for c in consumers:
            for bits in (16, 8):
                out = g.run(inputs, perturb={c.onnx_node: lambda x, b=bits, a=c.amax: quantize_activation(x, b, -a, a)})[0]
                setattr(c, f"divergence_{bits}", _distance(ref, out))
                setattr(c, f"top1_flips_{bits}", flips(out))

        act_range = {n: (float(x.min()), float(x.max())) for n, x in taps.items()}
        wide = {c.onnx_node: c for c in consumers}

        def simulate(narrowed: set) -> tuple[float, float | None]:
            """Today's int8 plan in fake quantization, the ``narrowed`` consumers' inputs at 8 bits."""
            bits, ranges = {}, dict(act_range)
            for layer in g.layers:
                c = wide.get(layer.name)
                bits[layer.name] = (8, 16 if c is not None and layer.name not in narrowed else 8)
                if c is not None:
                    ranges[layer.name] = (-c.amax, c.amax)
            out = torch.as_tensor(simulated_outputs(g, bits, ranges, inputs))
            agreement = float((out.argmax(-1) == ref.argmax(-1)).float().mean()) if classifier else None
            return _distance(ref, out), agreement

        base, base_top1 = simulate(set())
        plan.divergence_plan_16, plan.top1_agreement_16 = base, base_top1
        harmless = []
        for c in consumers:
            cost = max(c.divergence_8 - c.divergence_16, 0.0)
            if cost > PER_TENSOR_SHARE * base:
                c.reason = f"kept: alone at 8 bits it adds {cost:.3g} {plan.metric}, over {PER_TENSOR_SHARE:.1%} of the " \
                           f"int8 plan's {base:.3g}"
            else:
                harmless.append((cost, c))
        chosen, spent = [], 0.0
        for cost, c in sorted(harmless, key=lambda t: t[0] / max(t[1].macs, 1)):
            if spent + cost > TOTAL_SHARE * base:
                c.reason = f"kept: harmless alone ({cost:.3g} {plan.metric}) but over the total budget " \
                           f"({TOTAL_SHARE:.1%} of {base:.3g})"
                continue
            chosen.append((cost, c))
            spent += cost
        while True:
            div, top1 = simulate({c.onnx_node for _, c in chosen})
            within = div - base <= TOTAL_SHARE * base and (top1 is None or top1 >= base_top1 - 1 / plan.samples)
            if within or not chosen:
                break
            cost, worst = max(chosen, key=lambda t: t[0])
            chosen.remove((cost, worst))
            worst.reason = f"kept: the whole plan with it narrowed left the budget ({div:.3g} {plan.metric} vs " \
                           f"{base:.3g} at 16 bits, top-1 {top1})"
        plan.divergence_plan, plan.top1_agreement = div, top1
        for cost, c in chosen:
            c.bits = 8
            c.reason = f"narrowed: alone at 8 bits it adds {cost:.3g} {plan.metric} (<= {PER_TENSOR_SHARE:.1%} of the " \
                       f"int8 plan's {base:.3g}); the whole plan keeps the budget"
    return plan


def _round(v: float | None) -> float | None:
    return None if v is None else float(f"{v:.4g}")
