"""From sensitivities (and measured latencies) to the compiler's ``layer_bits`` mapping.

``resolve_layer_bits`` is the one entry point the compiler's ``precision="mixed"`` hook calls:
float model + calibration data + budget -> ``{onnx_node_name: (w_bits, a_bits)}``.
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
METHODS = ("hessian", "direct")


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


def resolve_layer_bits(model, calib: dict, budget, labels=None, method: str = "hessian",
                       latency_reports: dict | None = None, a_bits: tuple | None = None,
                       other_bytes: float | None = None, **sensitivity_options) -> dict:
    """``{onnx_node_name: (w_bits, a_bits)}`` for ``precision="mixed"``.

    Parameters
    ----------
    model : path of the float ONNX model
    calib : input name -> calibration samples (first axis), real data
    budget : ``--budget`` text or a Budget (size / bops / latency; ``size=60%`` of uniform int8)
    labels : optional labels of ``calib`` (the Hessian loss is then the task loss)
    method : ``hessian`` (HAWQ-V3's Omega) or ``direct`` (ZeroQ's output KL)
    latency_reports : ``{(w_bits, a_bits): report.json}`` of compiles at each width (measured latency)
    a_bits : the activation widths the plan may use (None: every width of the ILP); the compiler
        passes the ones its kernels have
    other_bytes : bytes no choice changes (the compiler's biases, multipliers, shifts, tables);
        None: the int32 biases alone
    """
    return plan_model(model, calib, budget, labels, method, latency_reports, a_bits, other_bytes,
                      **sensitivity_options)[0].bits


def plan_model(model, calib: dict, budget, labels=None, method: str = "hessian", latency_reports=None,
               a_bits: tuple | None = None, other_bytes: float | None = None,
               **sensitivity_options) -> tuple[Plan, Problem, Sensitivity]:
    """The plan with what it was made from (for the report)."""
    sens = sensitivity(model, calib, labels, **sensitivity_options)
    problem = build_problem(sens, onnx.load(str(model)), method, latency_reports)
    if a_bits is not None:
        problem = problem.restricted(a_bits=a_bits)
    if other_bytes is not None:
        problem.fixed["size"] = float(other_bytes)
    limits = parse_budget(budget, problem)
    if not limits:
        raise QPluginError("--precision mixed needs a --budget with size=, bops= or latency= (e.g. size=60%): "
                           "without one the least-sensitive choice is uniform w8a16")
    plan = solve(problem, limits)
    log.info("mixed precision: %s", ", ".join(f"{n}=w{w}a{a}" for n, (w, a) in plan.bits.items()))
    return plan, problem, sens


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

    def point(bits: dict, totals: dict) -> dict:
        p = {k: totals.get(k) for k in ("size", "bops", "latency", "cost")}
        if reference is not None:
            p["acc"] = top1(simulated_outputs(g, bits, sens.act_range, evaluation), reference)
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
