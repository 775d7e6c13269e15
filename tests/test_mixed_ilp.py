"""Mixed precision, part 2: the ILP (scipy milp / HiGHS) against brute force, budgets, ties."""
from __future__ import annotations

import itertools
import re

import numpy as np
import pytest

from tests.onnx_builders import OnnxGraph
from tvm_qplugin.errors import BudgetError, QPluginError
from tvm_qplugin.mixed.ilp import OPTIONS, Problem, parse_budget, pareto_front, solve
from tvm_qplugin.mixed.latency import latency_table
from tvm_qplugin.mixed.ties import activation_ties
from tvm_qplugin.mixed.torch_graph import load_torch_graph


def _random_problem(seed: int, layers: int = 4, ties=()) -> Problem:
    rng = np.random.default_rng(seed)
    params = rng.integers(10, 1000, layers).astype(float)
    macs = params * rng.integers(4, 64, layers)
    w = np.array([o[0] for o in OPTIONS], float)
    a = np.array([o[1] for o in OPTIONS], float)
    cost = rng.uniform(0.5, 1.5, (layers, 1)) * (2.0 ** -w) * 100 + rng.uniform(0, 1, (layers, 1)) * 2.0 ** -a
    latency = rng.uniform(0.01, 0.1, (layers, 1)) * (w * a / 64) ** rng.uniform(0.3, 1.0, (layers, 1))
    return Problem([f"l{i}" for i in range(layers)], list(OPTIONS), cost, np.ceil(params[:, None] * w / 8),
                   macs[:, None] * w * a, latency, {"size": 40.0, "latency": 0.05}, list(ties))


def _brute_force(p: Problem, limits: dict):
    """Every assignment that meets the ties and limits; the least cost (None when there is none)."""
    best = None
    for choice in itertools.product(range(len(p.options)), repeat=len(p.names)):
        choice = np.array(choice)
        if any(p.options[choice[i]][0 if k == "w" else 1] != p.options[choice[j]][0 if k == "w" else 1]
               for i, j, k in p.ties):
            continue
        t = p.totals(choice)
        if all(t[k] <= v + 1e-9 for k, v in limits.items()) and (best is None or t["cost"] < best["cost"]):
            best = t
    return best


def _min_resource(p: Problem, key: str, limits: dict) -> float:
    """Brute force: the least ``key`` total under the ties and the other limits."""
    others = {k: v for k, v in limits.items() if k != key}
    best = None
    for choice in itertools.product(range(len(p.options)), repeat=len(p.names)):
        choice = np.array(choice)
        if any(p.options[choice[i]][1] != p.options[choice[j]][1] for i, j, _ in p.ties):
            continue
        t = p.totals(choice)
        if all(t[k] <= v + 1e-9 for k, v in others.items()):
            best = t[key] if best is None else min(best, t[key])
    return best


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("ties", [(), ((0, 1, "a"), (1, 3, "a"))])
def test_ilp_matches_brute_force(seed, ties):
    p = _random_problem(seed, ties=ties)
    u8, u4 = p.uniform(8, 8), p.uniform(4, 8)
    rng = np.random.default_rng(100 + seed)
    for limits in ({"size": (u8["size"] + u4["size"]) / 2},
                   {"size": u8["size"] * rng.uniform(0.6, 0.9), "bops": u8["bops"] * rng.uniform(0.6, 1.2)},
                   {"latency": (u8["latency"] + u4["latency"]) / 2, "size": u8["size"]}):
        expected = _brute_force(p, limits)
        if expected is None:
            with pytest.raises(BudgetError):
                solve(p, limits)
            continue
        plan = solve(p, limits)
        assert plan.totals["cost"] == pytest.approx(expected["cost"], rel=1e-9), (limits, plan.bits)
        assert all(plan.totals[k] <= v + 1e-6 for k, v in limits.items())
        for i, j, _ in ties:
            assert plan.bits[f"l{i}"][1] == plan.bits[f"l{j}"][1]


@pytest.mark.parametrize("seed", range(3))
def test_infeasible_budget_names_the_smallest_feasible_value(seed):
    p = _random_problem(seed, ties=((0, 2, "a"),))
    u4 = p.uniform(4, 8)
    limits = {"size": u4["size"] - 1}
    with pytest.raises(BudgetError, match=r"--budget size=\d+B is infeasible: the smallest feasible size is (\d+)B") \
            as e:
        solve(p, limits)
    assert int(re.search(r"feasible size is (\d+)B", str(e.value)).group(1)) == int(np.ceil(_min_resource(p, "size", limits)))
    assert "\n" not in str(e.value)
    # with a latency budget in force the smallest feasible size rises, and the message says under what
    limits = {"latency": p.uniform(8, 8)["latency"] * 0.999, "size": u4["size"] + 1}
    expected = _min_resource(p, "size", limits)
    if expected > limits["size"]:
        with pytest.raises(BudgetError, match=f"smallest feasible size is {int(np.ceil(expected))}B .with latency="):
            solve(p, limits)


def test_pareto_front_trades_size_for_sensitivity():
    p = _random_problem(0, layers=6)
    lo, hi = p.uniform(4, 8)["size"], p.uniform(8, 16)["size"]
    plans = pareto_front(p, [lo - 10] + list(np.linspace(lo, hi, 7)))
    assert len(plans) == 7  # the first size is below uniform int4: infeasible, left out
    costs = [plan.totals["cost"] for plan in plans]
    assert all(a >= b - 1e-12 for a, b in zip(costs, costs[1:])), costs
    assert plans[0].totals["cost"] == pytest.approx(p.uniform(4, 16)["cost"])


def test_budget_parsing():
    p = _random_problem(1)
    assert parse_budget("size=60%", p) == {"size": pytest.approx(0.6 * p.uniform(8, 8)["size"])}
    assert parse_budget("size=2KB,bops=3M,latency=5ms", p) == {"size": 2048, "bops": 3e6, "latency": 5.0}
    assert parse_budget("latency=50%", p)["latency"] == pytest.approx(0.5 * p.uniform(8, 8)["latency"])
    for bad, match in (("speed=3", "expected each of size="), ("size=3parsecs", "expected each of"),
                       ("size=-5%", "positive percentage"), ("size=1KB,size=50%", "twice")):
        with pytest.raises(QPluginError, match=match):
            parse_budget(bad, p)
    p.latency = None
    with pytest.raises(QPluginError, match="no per-layer latency was measured"):
        parse_budget("latency=2ms", p)


def test_unmeasured_width_is_not_chosen_under_a_latency_budget():
    p = _random_problem(2)
    p.latency[:, [o for o, opt in enumerate(OPTIONS) if opt[0] == 4]] = np.nan  # int4 never measured
    plan = solve(p, {"latency": 10.0, "size": p.uniform(8, 16)["size"]})
    assert all(w == 8 for w, _ in plan.bits.values())
    plan = solve(p, {"size": p.uniform(4, 8)["size"]})  # no latency budget: int4 is allowed
    assert all(w == 4 for w, _ in plan.bits.values())


def test_residual_add_and_concat_tie_activation_widths(tmp_path):
    g = OnnxGraph((1, 2, 8, 8))
    a = g.relu(g.conv("x", 4))            # layer 0 reads x
    b = g.conv(a, 4)                      # layer 1 reads a
    r = g.relu(g.add(a, b))               # residual: a, b and r are one domain
    c = g.conv(r, 4)                      # layer 2 reads r: tied with layer 1
    d = g.concat([g.maxpool(r), g.maxpool(c)])
    e = g.conv(d, 4)                      # layer 3 reads the concat of r and c
    y = g.gemm(g.flatten(g.gap(e)), 3)    # layer 4: its own domain
    tg = load_torch_graph(g.save(y, tmp_path / "ties.onnx"))
    ties = activation_ties(tg.model, tg.layers)
    groups = {frozenset((i, j)) for i, j, _ in ties}
    assert groups == {frozenset((1, 2)), frozenset((2, 3))}, ties


def test_latency_table_maps_report_layers_in_order():
    report = {"layers": [{"name": "lv1", "op": "conv2d", "macs": 100, "latency_us": 10.0},
                         {"name": "lv5", "op": "add", "macs": None, "latency_us": 3.0},
                         {"name": "lv9", "op": "dense", "macs": 30, "latency_us": 2.0}],
              "latency_ms": {"median": 0.02}}
    per_layer, overhead = latency_table({(8, 8): report}, ["conv", "fc"], [100, 30])
    np.testing.assert_allclose(per_layer[(8, 8)], [0.010, 0.002])
    assert overhead == pytest.approx(0.008)
    with pytest.raises(QPluginError, match="MACs of layer.s. conv differ"):
        latency_table({(8, 8): report}, ["conv", "fc"], [99, 30])
    with pytest.raises(QPluginError, match="has 2 conv2d/dense layers, the model 3"):
        latency_table({(8, 8): report}, ["a", "b", "c"], [1, 2, 3])
