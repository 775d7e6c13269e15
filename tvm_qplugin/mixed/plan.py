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
where traces are resolved (the digits CNN). A held-out check is the arbiter both agree on.
"""
from __future__ import annotations

import logging

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
               a_bits: tuple | None = None, other_bytes: float | None = None,
               **sensitivity_options) -> tuple[Plan, Problem, Sensitivity]:
    """The plan with what it was made from (for the report)."""
    if method not in PLAN_METHODS:
        raise QPluginError(f"sensitivity method {method!r}: choose one of {', '.join(PLAN_METHODS)}")
    sens = sensitivity(model, calib, labels, **sensitivity_options)
    onnx_model = onnx.load(str(model))
    plans = {}
    for m in (METHODS if method == "auto" else (method,)):
        problem = build_problem(sens, onnx_model, m, latency_reports)
        if a_bits is not None:
            problem = problem.restricted(a_bits=a_bits)
        if other_bytes is not None:
            problem.fixed["size"] = float(other_bytes)
        limits = parse_budget(budget, problem)
        if not limits:
            raise QPluginError("--precision mixed needs a --budget with size=, bops= or latency= (e.g. size=60%): "
                               "without one the least-sensitive choice is uniform w8a16")
        plans[m] = (solve(problem, limits), problem)
    chosen = method if method != "auto" else choose_by_held_out(model, calib, labels, sens, plans)
    plan, problem = plans[chosen]
    log.info("mixed precision (%s): %s", chosen, ", ".join(f"{n}=w{w}a{a}" for n, (w, a) in plan.bits.items()))
    return plan, problem, sens


def choose_by_held_out(model, calib: dict, labels, sens: Sensitivity, plans: dict) -> str:
    """The method whose plan scores best, simulated, on the calibration samples after the ones the
    sensitivities used (at most HELD_OUT_MAX; all of them when none are left): top-1 against
    ``labels`` when given, else agreement with the float model. Ties go to the first method."""
    from .simulate import simulated_outputs, top1
    from .torch_graph import load_torch_graph

    g = load_torch_graph(model)
    count = len(next(iter(calib.values())))
    start = sens.samples if count > sens.samples else 0
    stop = min(count, start + HELD_OUT_MAX)
    inputs = {n: np.asarray(calib[n][start:stop]) for n in g.input_names}
    reference = np.asarray(labels[start:stop]) if labels is not None else simulated_outputs(g, {}, {}, inputs)
    moments = int4_moments(g, calib, sens, [p.bits for p, _ in plans.values()])
    scores = {m: top1(simulated_outputs(g, p.bits, sens.act_range, inputs, moments=moments), reference)
              for m, (p, _) in plans.items()}
    best = max(scores, key=lambda m: (scores[m], -list(scores).index(m)))
    log.info("mixed precision: held-out check on %d calibration samples (%s): %s -> %s", stop - start,
             "labels" if labels is not None else "agreement with fp32",
             ", ".join(f"{m} {v:.3f}" for m, v in scores.items()), best)
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
