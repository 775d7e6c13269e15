"""HAWQ-V3's integer linear program: one ``(w_bits, a_bits)`` per layer, least total sensitivity,
under any mix of weight-size, BOPs and latency budgets (``scipy.optimize.milp``, HiGHS).

Variables: ``x[l, o] in {0, 1}`` for layer ``l`` and option ``o = (w_bits, a_bits)``, one option
per layer (``sum_o x[l, o] = 1``). Objective ``sum cost[l, o] x[l, o]``; each budget is one row
``sum res[l, o] x[l, o] <= limit - fixed`` (``fixed``: what no choice changes -- biases, the
non-layer ops' latency). A tie says two layers share a width (a residual add, a concat: one
quantized domain): ``sum_{o: bits(o) = b} x[i, o] = sum_{o: bits(o) = b} x[j, o]`` for each
width ``b`` but the last.

An infeasible budget is refused with the smallest feasible value of the budget at fault (the
minimum of that resource under the ties and the other budgets), found by the same solver.
"""
from __future__ import annotations

import itertools
import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..budget import Budget
from ..errors import BudgetError, QPluginError
from .fake_quant import A_BITS, W_BITS

log = logging.getLogger(__name__)

OPTIONS = tuple(itertools.product(W_BITS, A_BITS))   # (w_bits, a_bits)
RESOURCES = ("size", "bops", "latency")
UNITS = {"size": "B", "bops": "", "latency": "ms"}


@dataclass
class Problem:
    """Per layer and option: objective and resources. ``latency`` in ms (None: not measured)."""

    names: list[str]
    options: list[tuple[int, int]]
    cost: np.ndarray                       # layers x options
    size: np.ndarray                       # bytes
    bops: np.ndarray                       # MACs * w_bits * a_bits
    latency: np.ndarray | None = None      # ms; np.nan where that option was not measured
    fixed: dict = field(default_factory=dict)   # resource -> what no choice changes
    ties: list[tuple[int, int, str]] = field(default_factory=list)  # (i, j, "w" | "a")

    def resource(self, key: str) -> np.ndarray:
        if key == "latency" and self.latency is None:
            raise QPluginError("--budget latency=...: no per-layer latency was measured for this model; measure it "
                               "(mixed.latency: compile once per width) or drop latency=")
        return getattr(self, key)

    def restricted(self, w_bits=None, a_bits=None) -> "Problem":
        """The same problem with only the options of these widths (e.g. ``a_bits=(8,)``: weights only)."""
        keep = [o for o, (w, a) in enumerate(self.options) if (w_bits is None or w in w_bits)
                and (a_bits is None or a in a_bits)]
        pick = (lambda arr: None if arr is None else arr[:, keep])
        return Problem(self.names, [self.options[o] for o in keep], self.cost[:, keep], self.size[:, keep],
                       self.bops[:, keep], pick(self.latency), dict(self.fixed), list(self.ties))

    def uniform(self, w_bits: int, a_bits: int) -> dict:
        """Totals of every layer at one option: the uniform int8 / int4 points."""
        o = self.options.index((w_bits, a_bits))
        return self.totals(np.full(len(self.names), o))

    def totals(self, choice: np.ndarray) -> dict:
        rows = np.arange(len(self.names))
        out = {"cost": float(self.cost[rows, choice].sum())}
        for key in RESOURCES:
            arr = getattr(self, key)
            if arr is not None:
                out[key] = float(arr[rows, choice].sum()) + self.fixed.get(key, 0.0)
        return out


@dataclass
class Plan:
    """The solver's choice: ``bits`` maps ONNX node name -> (w_bits, a_bits)."""

    bits: dict
    totals: dict
    solve_s: float
    refinement: dict | None = None   # plan.plan_model's measured swaps after the solve (refine.py)

    def to_json(self) -> dict:
        out = {"bits": {k: list(v) for k, v in self.bits.items()}, "totals": self.totals,
               "solve_s": round(self.solve_s, 4)}
        return {**out, "refinement": self.refinement} if self.refinement is not None else out


def parse_budget(text: str | Budget | None, problem: Problem) -> dict:
    """``--budget`` for mixed precision -> ``{resource: limit}`` in the units of ``Problem``.

    Budget.parse's syntax (``size=512KB,bops=3G,latency=5ms``), plus a share of the uniform
    int8 model: ``size=60%`` is 60 % of the w8a8 weight bytes (likewise bops, latency). ``ram``
    is the C package's arena, not a per-layer choice: left to the compile's own check."""
    if isinstance(text, Budget):
        return {k: v for k, v in text.items() if k in RESOURCES}
    limits, rest = {}, []
    base = problem.uniform(8, 8)
    for item in (text or "").split(","):
        key, _, raw = item.strip().partition("=")
        if raw.strip().endswith("%"):
            try:
                share = float(raw.strip()[:-1]) / 100
            except ValueError:
                share = -1.0
            if key.strip() not in RESOURCES or not share > 0:
                raise QPluginError(f"--budget {item.strip()!r}: a share is size=|bops=|latency= with a positive "
                                   "percentage of the uniform int8 model, e.g. size=60%")
            problem.resource(key.strip())
            limits[key.strip()] = share * base[key.strip()]
        elif item.strip():
            rest.append(item.strip())
    for key, value in Budget.parse(",".join(rest)).items():
        if key in limits:
            raise QPluginError(f"--budget: {key}= given twice")
        if key in RESOURCES:
            limits[key] = value
    for key in limits:
        problem.resource(key)  # a latency budget needs measured latencies
    return limits


def solve(problem: Problem, limits: dict, objective: np.ndarray | None = None, rows: tuple = ()) -> Plan:
    """The least-cost assignment within ``limits``; an infeasible budget raises BudgetError.
    ``rows``: extra constraints ``(coefficients over x[layer, option] row-major, lo, hi)``."""
    t = time.perf_counter()
    choice = _milp(problem, problem.cost if objective is None else objective, limits, rows)
    if choice is None:
        raise BudgetError(_infeasible_message(problem, limits))
    plan = Plan({n: problem.options[o] for n, o in zip(problem.names, choice)}, problem.totals(choice),
                time.perf_counter() - t)
    return plan


def pareto_front(problem: Problem, sizes: list[float], limits: dict | None = None) -> list[Plan]:
    """One plan per size budget (other ``limits`` held); infeasible sizes are left out."""
    plans = []
    for size in sizes:
        try:
            plans.append(solve(problem, {**(limits or {}), "size": size}))
        except BudgetError:
            continue
    return plans


def smallest_feasible(problem: Problem, key: str, limits: dict) -> float | None:
    """The least total of ``key`` reachable under the ties and the other budgets (None: none)."""
    others = {k: v for k, v in limits.items() if k != key}
    choice = _milp(problem, problem.resource(key), others)
    return None if choice is None else problem.totals(choice)[key]


def _milp(problem: Problem, objective: np.ndarray, limits: dict, extra: tuple = ()) -> np.ndarray | None:
    from scipy.optimize import Bounds, LinearConstraint, milp

    n_layers, n_opts = objective.shape
    nvar = n_layers * n_opts
    rows, lo, hi = [], [], []
    for i in range(n_layers):  # one option per layer
        r = np.zeros(nvar)
        r[i * n_opts:(i + 1) * n_opts] = 1
        rows.append(r), lo.append(1), hi.append(1)
    for key, limit in limits.items():
        res = np.nan_to_num(problem.resource(key), nan=0.0)
        rows.append(res.ravel()), lo.append(-np.inf), hi.append(limit - problem.fixed.get(key, 0.0))
    rows += _tie_rows(problem, n_opts)
    lo += [0] * (len(rows) - len(lo))
    hi += [0] * (len(rows) - len(hi))
    for r, low, high in extra:
        rows.append(np.asarray(r, dtype=np.float64).ravel()), lo.append(low), hi.append(high)
    ub = np.ones(nvar)
    if "latency" in limits:  # an option whose latency was not measured cannot be chosen under a latency budget
        ub[np.isnan(problem.latency).ravel()] = 0
    res = milp(objective.ravel(), constraints=LinearConstraint(np.array(rows), lo, hi),
               integrality=np.ones(nvar), bounds=Bounds(np.zeros(nvar), ub))
    if res.status != 0 or res.x is None:
        return None
    return np.round(res.x).reshape(n_layers, n_opts).argmax(axis=1)


def _tie_rows(problem: Problem, n_opts: int) -> list[np.ndarray]:
    rows = []
    nvar = len(problem.names) * n_opts
    for i, j, which in problem.ties:
        axis = 0 if which == "w" else 1
        widths = sorted({o[axis] for o in problem.options})
        for b in widths[:-1]:
            r = np.zeros(nvar)
            for o, opt in enumerate(problem.options):
                if opt[axis] == b:
                    r[i * n_opts + o] += 1
                    r[j * n_opts + o] -= 1
            rows.append(r)
    return rows


def _infeasible_message(problem: Problem, limits: dict) -> str:
    """One line: the budget at fault and its smallest feasible value given the others."""
    for key in limits:
        best = smallest_feasible(problem, key, limits)
        if best is not None and best > limits[key]:
            others = ", ".join(f"{k}={_fmt(k, v)}" for k, v in limits.items() if k != key)
            return (f"--budget {key}={_fmt(key, limits[key])} is infeasible: the smallest feasible {key} is "
                    f"{_fmt(key, best)}" + (f" (with {others})" if others else "") + f"; raise {key}= to at least that")
    alone = {k: smallest_feasible(problem, k, {}) for k in limits}
    return ("--budget " + ",".join(f"{k}={_fmt(k, v)}" for k, v in limits.items()) + " cannot all hold at once; "
            "smallest feasible values one at a time: " + ", ".join(f"{k}={_fmt(k, v)}" for k, v in alone.items()))


def _fmt(key: str, value: float) -> str:
    if key == "size":
        return f"{int(np.ceil(value))}B"
    if key == "latency":
        return f"{value:.4g}ms"
    return f"{value:.4g}"
