"""Mixed precision: the refinement of the ILP's plan by measured swaps (mixed/refine.py) on
synthetic losses with interactions the additive ILP cannot see (exact optimum by brute force),
on pure noise (no move), under ties; and the ``auto`` check's KL tie-break on the digits CNN."""
from __future__ import annotations

import itertools

import numpy as np
import pytest

from tvm_qplugin.mixed.ilp import Problem, solve
from tvm_qplugin.mixed.refine import feasible, refine
from tvm_qplugin.mixed.simulate import output_distance

OPTS = [(4, 8), (8, 8)]
SAMPLES = 64


def _problem(seed: int, layers: int = 6, ties=()) -> Problem:
    rng = np.random.default_rng(seed)
    params = rng.integers(100, 1000, layers).astype(float)
    size = np.stack([np.ceil(params * w / 8) for w, _ in OPTS], axis=1)
    cost = np.stack([rng.uniform(0.5, 2.0, layers), np.zeros(layers)], axis=1)  # additive: cost at 4 bits only
    return Problem([f"l{i}" for i in range(layers)], OPTS, cost, size, size * 0, None, {}, list(ties))


def _true_loss(problem: Problem, pair_penalty: np.ndarray, noise: float, seed: int):
    """Per-sample loss: the additive cost plus a penalty for every pair of layers both at 4 bits
    (errors that add up in the same activations), plus zero-mean per-sample noise."""
    jitter = np.random.default_rng(seed).normal(0, 1, (SAMPLES,))

    def loss(bits: dict) -> np.ndarray:
        low = [i for i, n in enumerate(problem.names) if bits[n][0] == 4]
        mean = problem.cost[low, 0].sum() + sum(pair_penalty[i, j] for i, j in itertools.combinations(low, 2))
        return mean + noise * jitter * (1 + 0.1 * len(low))
    return loss


def _brute_best(problem: Problem, limits: dict, loss) -> float:
    best = np.inf
    for c in itertools.product(range(2), repeat=len(problem.names)):
        c = np.array(c)
        if feasible(problem, c, limits):
            best = min(best, float(loss({n: OPTS[o] for n, o in zip(problem.names, c)}).mean()))
    return best


@pytest.mark.parametrize("seed", range(8))
def test_refinement_reaches_a_better_plan_when_lowered_layers_interact(seed):
    problem = _problem(seed)
    u8, u4 = problem.uniform(8, 8)["size"], problem.uniform(4, 8)["size"]
    limits = {"size": u8 - 0.45 * (u8 - u4)}
    ilp = solve(problem, limits)
    low = [i for i, n in enumerate(problem.names) if ilp.bits[n][0] == 4]
    penalty = np.zeros((6, 6))
    for i, j in itertools.combinations(low, 2):  # the ILP's own choice is the one that interacts
        penalty[i, j] = 1.5
    loss = _true_loss(problem, penalty, 0.01, seed)
    bits, done = refine(problem, limits, ilp.bits, loss, rounds=6)
    choice = np.array([OPTS.index(bits[n]) for n in problem.names])
    assert feasible(problem, choice, limits)
    start = float(loss(ilp.bits).mean())
    best = _brute_best(problem, limits, loss)
    if best < start - 0.05:  # an interaction-free plan of this size exists: the refinement moves towards it
        assert done.moves and done.loss < start, (done, start, best)
        assert done.loss <= start - 0.5 * (start - best), (done.loss, start, best)
    assert done.loss == pytest.approx(float(loss(bits).mean()))
    assert done.start_loss == pytest.approx(start)


def test_refinement_does_not_chase_noise():
    problem = _problem(0)
    limits = {"size": float(problem.uniform(8, 8)["size"] + problem.uniform(4, 8)["size"]) / 2}
    ilp = solve(problem, limits)
    rng = np.random.default_rng(1)
    loss = lambda bits: rng.normal(1.0, 0.05, SAMPLES)  # noqa: E731 -- no plan is better than another
    bits, done = refine(problem, limits, ilp.bits, loss)
    assert bits == ilp.bits and not done.moves, done


def test_moves_keep_the_budget_and_the_ties():
    problem = _problem(3, ties=[(0, 1, "w"), (2, 3, "w")])
    limits = {"size": float(problem.uniform(8, 8)["size"] + problem.uniform(4, 8)["size"]) / 2}
    ilp = solve(problem, limits)
    # a loss that rewards breaking the ties and exceeding the budget: every 8-bit layer helps
    loss = lambda bits: np.full(SAMPLES, sum(w == 4 for w, _ in bits.values()), float) + \
        np.random.default_rng(0).normal(0, 1e-3, SAMPLES)  # noqa: E731
    bits, done = refine(problem, limits, ilp.bits, loss, rounds=5)
    choice = np.array([OPTS.index(bits[n]) for n in problem.names])
    assert feasible(problem, choice, limits)
    assert bits["l0"][0] == bits["l1"][0] and bits["l2"][0] == bits["l3"][0]
    assert problem.totals(choice)["size"] <= limits["size"]


def test_output_distance_is_kl_per_sample_for_logits_and_mse_otherwise():
    ref = np.array([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
    assert np.allclose(output_distance(ref, ref), 0)
    out = np.array([[0.0, 2.0, -1.0], [0.0, 0.0, 0.0]])
    p = np.exp(ref[0]) / np.exp(ref[0]).sum()
    q = np.exp(out[0]) / np.exp(out[0]).sum()
    assert np.allclose(output_distance(out, ref), [(p * np.log(p / q)).sum(), 0.0])
    assert np.allclose(output_distance(np.ones((2, 1, 2)), np.zeros((2, 1, 2))), [1.0, 1.0])


def test_large_models_take_their_moves_from_the_ilps_costs():
    """Without contextual measurement (more layers than ``context_layers``) the moves are the
    ILP's nearest alternatives, each simulated: a plan the additive costs rank second but the
    loss prefers is found in ``tries + 1`` simulations per round."""
    problem = _problem(2)
    u8, u4 = problem.uniform(8, 8)["size"], problem.uniform(4, 8)["size"]
    limits = {"size": u8 - 0.45 * (u8 - u4)}
    ilp = solve(problem, limits)
    low = [i for i, n in enumerate(problem.names) if ilp.bits[n][0] == 4]
    penalty = np.zeros((6, 6))
    penalty[low[0], low[1]] = 1.5
    loss = _true_loss(problem, penalty, 0.01, 2)
    bits, done = refine(problem, limits, ilp.bits, loss, rounds=1, context_layers=0)
    assert not done.contextual and done.evaluations <= 1 + 4
    assert done.moves and done.loss < done.start_loss - 0.5, done
    choice = np.array([OPTS.index(bits[n]) for n in problem.names])
    assert feasible(problem, choice, limits)
