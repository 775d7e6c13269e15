"""From sensitivities (and measured latencies) to the compiler's ``layer_bits`` mapping.

``resolve_layer_bits`` is the one entry point the compiler's ``precision="mixed"`` hook calls:
float model + calibration data + budget -> ``{onnx_node_name: (w_bits, a_bits)}``.

Its default objective, ``method="auto"``, solves the ILP once per sensitivity measure (HAWQ-V3's
Omega, ZeroQ's direct KL) and keeps the plan that does better on calibration samples the
sensitivities did not see (simulated in float, simulate.py). Why not Omega alone: the Hutchinson
block traces come from one HVP for all layers, so a layer with few parameters (MobileNetV2's
depthwise convs: 288-8640 weights next to blocks of 10^5-10^6) gets the cross terms of the big
blocks as noise; at 128 probes six of its depthwise traces are not resolved from 0 (relative
spread 1.6-15), their Omega is 0 and the ILP lowers exactly the layers int4 hurts most. The
direct measure lowers each layer alone and has no such noise, but misses what Omega captures
where traces are resolved (the digits CNN). A held-out check is the arbiter both agree on
(top-1; equal top-1 goes to the lower KL to fp32). ``refine=True`` then searches around the
chosen plan by measured swaps at the same budget on the same held-out samples (refine.py): the
ILP's objective is a sum of per-layer terms and cannot see layers that interact.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import onnx

from ..errors import QPluginError
from .ilp import OPTIONS, Plan, Problem, parse_budget, solve
from .latency import as_matrix, latency_table
from .sensitivity import Sensitivity, sensitivity
from .ties import activation_ties
from .torch_graph import Layer

log = logging.getLogger(__name__)
METHODS = ("hessian", "direct")   # the sensitivity measures build_problem takes
PLAN_METHODS = ("auto", *METHODS)  # what plan_model takes: "auto" picks one per model, held out
HELD_OUT_MAX = 64  # held-out calibration samples the "auto" check simulates (float, both plans)


def build_problem(sens: Sensitivity, model: onnx.ModelProto, method: str = "hessian",
                  latency_reports: dict | None = None) -> Problem:
    """The ILP instance of a model: costs from ``sens`` (``method``), sizes and BOPs from the
    layer shapes, latencies from the reports of compiles at each width, ties from the graph."""
    if method not in METHODS:
        raise QPluginError(f"sensitivity method {method!r}: choose one of {', '.join(METHODS)}")
    names = [layer["name"] for layer in sens.layers]
    cost = np.array([[sens.cost(n, w, a, method) for w, a in OPTIONS] for n in names])
    params = np.array([layer["params"] for layer in sens.layers], dtype=np.float64)
    macs = np.array([layer["macs"] for layer in sens.layers], dtype=np.float64)
    size = np.stack([np.ceil(params * w / 8) for w, _ in OPTIONS], axis=1)  # int4: two per byte
    bops = np.stack([macs * w * a for w, a in OPTIONS], axis=1)
    fixed = {"size": float(sum(4 * layer.get("bias", 0) for layer in sens.layers))}  # int32 biases
    latency = None
    if latency_reports:
        per_layer, overhead = latency_table(latency_reports, names, [int(m) for m in macs])
        latency, fixed["latency"] = as_matrix(per_layer, list(OPTIONS), len(names)), overhead
    layers = [Layer(d["name"], d["op"], (d["params"],), d["input"], d["output"], d["macs"]) for d in sens.layers]
    return Problem(names, list(OPTIONS), cost, size, bops, latency, fixed, activation_ties(model, layers))


def resolve_layer_bits(model, calib: dict, budget, labels=None, method: str = "auto",
                       latency_reports: dict | None = None, a_bits: tuple | None = None,
                       other_bytes: float | None = None, **sensitivity_options) -> dict:
    """``{onnx_node_name: (w_bits, a_bits)}`` for ``precision="mixed"``.

    Parameters
    ----------
    model : path of the float ONNX model
    calib : input name -> calibration samples (first axis), real data
    budget : ``--budget`` text or a Budget (size / bops / latency; ``size=60%`` of uniform int8)
    labels : optional labels of ``calib`` (the Hessian loss is then the task loss)
    method : ``auto`` (the default: the better of the two on held-out calibration samples, see the
        module docstring), ``hessian`` (HAWQ-V3's Omega) or ``direct`` (ZeroQ's output KL)
    latency_reports : ``{(w_bits, a_bits): report.json}`` of compiles at each width (measured latency)
    a_bits : the activation widths the plan may use (None: every width of the ILP); the compiler
        passes the ones its kernels have
    other_bytes : bytes no choice changes (the compiler's biases, multipliers, shifts, tables);
        None: the int32 biases alone
    """
    return plan_model(model, calib, budget, labels, method, latency_reports, a_bits, other_bytes,
                      **sensitivity_options)[0].bits


def plan_model(model, calib: dict, budget, labels=None, method: str = "auto", latency_reports=None,
               a_bits: tuple | None = None, other_bytes: float | None = None, refine: bool = False,
               **sensitivity_options) -> tuple[Plan, Problem, Sensitivity]:
    """The plan with what it was made from (for the report). ``refine``: after the ILP, measured
    swaps at the same budget on the held-out calibration samples (refine.py); ``Plan.refinement``
    says what they did. Off by default: on MobileNetV2 (the one model where it moved the plan)
    the 10 % lower held-out KL did not carry over to the 256 evaluation crops (compiled: KL to
    fp32 0.0423 vs 0.0403, one crop less agreement; docs/mixed-precision.md "Mixed precision")."""
    if method not in PLAN_METHODS:
        raise QPluginError(f"sensitivity method {method!r}: choose one of {', '.join(PLAN_METHODS)}")
    sens = sensitivity(model, calib, labels, **sensitivity_options)
    onnx_model = onnx.load(str(model))
    plans, limits = {}, {}
    for m in (METHODS if method == "auto" else (method,)):
        problem = build_problem(sens, onnx_model, m, latency_reports)
        if a_bits is not None:
            problem = problem.restricted(a_bits=a_bits)
        if other_bytes is not None:
            problem.fixed["size"] = float(other_bytes)
        limits[m] = parse_budget(budget, problem)
        if not limits[m]:
            raise QPluginError("--precision mixed needs a --budget with size=, bops= or latency= (e.g. size=60%): "
                               "without one the least-sensitive choice is uniform w8a16")
        plans[m] = (solve(problem, limits[m]), problem)
    held = None
    if method == "auto" or refine:  # refine: any layer may go to 4 bits, so the moments of all
        held = HeldOut(model, calib, sens, None if refine else [p.bits for p, _ in plans.values()])
    chosen = method if method != "auto" else choose_by_held_out(model, calib, labels, sens, plans, held)
    plan, problem = plans[chosen]
    log.info("mixed precision (%s): %s", chosen, ", ".join(f"{n}=w{w}a{a}" for n, (w, a) in plan.bits.items()))
    if refine:
        from .refine import refine as refine_plan

        t = time.perf_counter()
        bits, done = refine_plan(problem, limits[chosen], plan.bits, held.loss)
        choice = np.array([problem.options.index(bits[n]) for n in problem.names])
        plan = Plan(bits, problem.totals(choice), plan.solve_s,
                    {**done.to_json(), "samples": held.count, "seconds": round(time.perf_counter() - t, 1)})
        log.info("mixed precision: refined on %d held-out calibration samples, KL to fp32 %.5f -> %.5f, "
                 "%d move(s), %d simulations", held.count, done.start_loss, done.loss, len(done.moves), done.evaluations)
    return plan, problem, sens


class HeldOut:
    """The calibration samples the sensitivities did not see (after the first ``sens.samples``, at
    most HELD_OUT_MAX; all of them when none are left), with the float model's outputs there and
    what simulating a plan on them needs: the arbiter of ``auto`` and the refinement's data."""

    def __init__(self, model, calib: dict, sens: Sensitivity, plans: list[dict] | None = None):
        from .simulate import simulated_outputs
        from .torch_graph import load_torch_graph

        self.g, self.sens = load_torch_graph(model), sens
        count = len(next(iter(calib.values())))
        self.start = sens.samples if count > sens.samples else 0
        self.stop = min(count, self.start + HELD_OUT_MAX)
        self.count = self.stop - self.start
        self.inputs = {n: np.asarray(calib[n][self.start:self.stop]) for n in self.g.input_names}
        self.reference = simulated_outputs(self.g, {}, {}, self.inputs)
        # int4 rounded as the compiler rounds it: the moments of every layer a plan may lower
        every = [{layer["name"]: (4, 8) for layer in sens.layers}] if plans is None else plans
        self.moments = int4_moments(self.g, calib, sens, every)
        self.weights: dict = {}  # (layer, w_bits) -> quantized weight, shared by every simulation

    def outputs(self, bits: dict) -> np.ndarray:
        from .simulate import simulated_outputs

        return simulated_outputs(self.g, bits, self.sens.act_range, self.inputs, moments=self.moments,
                                 weight_cache=self.weights)

    def loss(self, bits: dict) -> np.ndarray:
        """Per held-out sample, KL to the float model's outputs (MSE for non-classifiers)."""
        from .simulate import output_distance

        return output_distance(self.outputs(bits), self.reference)


def choose_by_held_out(model, calib: dict, labels, sens: Sensitivity, plans: dict,
                       held: HeldOut | None = None) -> str:
    """The method whose plan scores best, simulated, on the held-out calibration samples
    (:class:`HeldOut`): top-1 against ``labels`` when given, else agreement with the float model;
    equal top-1 (a few dozen samples resolve little) goes to the lower mean KL to the float model's
    outputs, the finer measure of the same samples; an exact tie to the first method."""
    from .simulate import output_distance, top1

    held = held or HeldOut(model, calib, sens, [p.bits for p, _ in plans.values()])
    reference = np.asarray(labels[held.start:held.stop]) if labels is not None else held.reference
    scores = {}
    for m, (p, _) in plans.items():
        out = held.outputs(p.bits)
        scores[m] = (top1(out, reference), float(output_distance(out, held.reference).mean()))
    best = max(scores, key=lambda m: (scores[m][0], -scores[m][1], -list(scores).index(m)))
    log.info("mixed precision: held-out check on %d calibration samples (%s; then KL to fp32): %s -> %s", held.count,
             "labels" if labels is not None else "agreement with fp32",
             ", ".join(f"{m} {a:.3f} / KL {k:.5f}" for m, (a, k) in scores.items()), best)
    return best


def int4_moments(g, calib: dict, sens: Sensitivity, plans: list[dict]) -> dict:
    """Input second moments, on the samples the sensitivities used, of every layer some plan in
    ``plans`` puts at 4 bits: what the simulation needs to round int4 as the compiler does."""
    from .fake_quant import layer_input_moments

    names = {n for bits in plans for n, (w, _) in bits.items() if w == 4}
    if not names:
        return {}
    return layer_input_moments(g, {n: np.asarray(calib[n][: sens.samples]) for n in g.input_names}, names)


def random_plans(problem: Problem, size: float, count: int, seed: int = 0) -> list[dict]:
    """``count`` random weight widths of at most ``size`` bytes, activations at 8 bits: layers in a
    random order go to 4 bits until the size fits -- the baseline issue 13's acceptance compares
    the ILP's plan with (benchmarks/mixed_precision.py, tests/test_mixed_mobilenet_v2.py)."""
    rng = np.random.default_rng(seed)
    i8, i4 = problem.options.index((8, 8)), problem.options.index((4, 8))
    plans = []
    for _ in range(count):
        bits = {n: (8, 8) for n in problem.names}
        total = problem.uniform(8, 8)["size"]
        for layer in rng.permutation(len(problem.names)):
            if total <= size:
                break
            bits[problem.names[layer]] = (4, 8)
            total -= problem.size[layer, i8] - problem.size[layer, i4]
        plans.append(bits)
    return plans


def search(model, calib: dict, budget=None, labels=None, evaluation: dict | None = None, eval_labels=None,
           method: str = "hessian", a_bits: tuple[int, ...] = (8,), front_points: int = 9,
           latency_reports: dict | None = None, **sensitivity_options) -> dict:
    """Sensitivity, the Pareto front over weight size, the uniform int8 / int4 points and (with a
    ``budget``) the chosen plan, with simulated accuracy on ``evaluation`` (labels, else agreement
    with fp32): what ``sensitivity.json`` and report.html's mixed-precision sections hold."""
    import time

    from .ilp import pareto_front
    from .simulate import simulated_outputs, top1
    from .torch_graph import load_torch_graph

    t0 = time.perf_counter()
    sens = sensitivity(model, calib, labels, **sensitivity_options)
    g = load_torch_graph(model)
    problem = build_problem(sens, g.model, method, latency_reports).restricted(a_bits=a_bits)
    reference = None
    if evaluation is not None:
        reference = eval_labels if eval_labels is not None else simulated_outputs(g, {}, {}, evaluation)
        moments = int4_moments(g, calib, sens, [{n: (4, 8) for n in problem.names}])

    def point(bits: dict, totals: dict) -> dict:
        p = {k: totals.get(k) for k in ("size", "bops", "latency", "cost")}
        if reference is not None:
            p["acc"] = top1(simulated_outputs(g, bits, sens.act_range, evaluation, moments=moments), reference)
        return p

    out = {"model": str(model), "method": method, "a_bits": list(a_bits),
           "metric": "accuracy (simulated)" if eval_labels is not None else "top-1 agreement with fp32 (simulated)",
           "sensitivity": sens.to_json()}
    a = a_bits[0]
    out["uniform"] = {f"int{w}": point({n: (w, a) for n in problem.names}, problem.uniform(w, a)) for w in (8, 4)}
    lo, hi = out["uniform"]["int4"]["size"], out["uniform"]["int8"]["size"]
    t = time.perf_counter()
    front = pareto_front(problem, [lo + (hi - lo) * i / (front_points - 1) for i in range(front_points)])
    out["front_solve_s"] = round(time.perf_counter() - t, 3)
    out["front"] = [dict(point(p.bits, p.totals), bits={k: list(v) for k, v in p.bits.items()}) for p in front]
    if budget:
        plan = solve(problem, parse_budget(budget, problem))
        out["plan"] = dict(point(plan.bits, plan.totals), bits={k: list(v) for k, v in plan.bits.items()},
                           budget=str(budget), solve_s=round(plan.solve_s, 4))
    out["timing_s"] = {**sens.timing_s, "total": round(time.perf_counter() - t0, 2)}
    return out
