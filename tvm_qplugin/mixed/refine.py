"""Refinement of the ILP's plan by measured swaps at the same budget (after HAWQ-V3's ILP).
Opt-in: ``plan.plan_model(refine=True)``; why not the default, measured: docs/mixed-precision.md.

Why: the ILP's objective is additive -- each layer's sensitivity is measured with every other
layer at full precision (or, for Omega, from a block of the Hessian) and the plan's cost is their
sum. Layers lowered together interact (their errors add up in the same activations), and the
per-layer measures are noisy where they are small (a Hutchinson trace not resolved from 0 costs
nothing in the ILP). The ILP's plan is therefore the right start but not necessarily the best plan
of its size. HAWQ-V3's users check the chosen plan's real accuracy; this module goes one step
further and searches around the plan with that measurement.

How: ``loss(bits)`` is the plan's per-sample output distance to the float model, simulated on
calibration samples the sensitivities did not see (plan.py: KL to fp32; never the evaluation data).
One round:

1. **Contextual sensitivities**: flip every layer's weight width alone (4 <-> 8) in the *current*
   plan and measure the change of the mean loss -- the direct measure again, but around the plan
   instead of around the float model, so interactions with the layers already lowered are in it.
2. **Moves**: the ILP again, on these contextual costs (first order: a move's predicted change is
   the sum of its layers' changes), under the same budgets and ties, with a trust region -- at
   most ``k`` layers differ from the current plan, ``k`` = 2, 3, 4, ... -- so that a move can raise
   one large layer and lower two smaller ones to pay for it; the first ``tries`` distinct moves
   predicted to improve are simulated for real.
3. **Accept** the best measured move only if it lowers the mean loss by at least ``min_t`` standard
   errors of the per-sample differences (paired: the same samples), so that the search does not
   chase the noise of a small calibration set; otherwise stop.

At most ``rounds`` rounds (``rounds x (layers + tries)`` simulations). Only weight widths move:
activation widths stay as the ILP chose them. Large models (more than ``CONTEXT_LAYERS``) skip
step 1, whose cost grows with the layer count, and take the moves from the ILP's own costs
instead: its ``TRIES`` best alternatives that change at most ``NEAR`` layers and raise at least
one, measured the same way -- the plan's near-ties under the additive model, decided by the
joint simulation.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..errors import BudgetError
from .ilp import Problem, solve

log = logging.getLogger(__name__)

ROUNDS = 3     # rounds of contextual measurement + swap
TRIES = 4      # moves measured per round (the best predicted)
MIN_T = 2.0    # an accepted move lowers the mean loss by at least this many standard errors
NEAR = 4       # the ILP-cost moves change at most this many layers (a local search)
CONTEXT_LAYERS = 32  # above this many layers a round predicts with the ILP's own costs (see refine)


@dataclass
class Refinement:
    """What the refinement did: the plan's mean loss before and after, and each accepted move."""

    start_loss: float
    loss: float
    moves: list = field(default_factory=list)   # per accepted move: {"raise": [...], "lower": [...], "loss": x, "t": x}
    evaluations: int = 0
    contextual: bool = True  # moves predicted by measured contextual changes (else by the ILP's costs)

    def to_json(self) -> dict:
        return {"start_loss": self.start_loss, "loss": self.loss, "moves": self.moves,
                "evaluations": self.evaluations, "contextual": self.contextual}


def feasible(problem: Problem, choice: np.ndarray, limits: dict) -> bool:
    """``choice`` (an option index per layer) keeps every budget in ``limits`` and every tie."""
    totals = problem.totals(choice)
    if any(totals[k] > v * (1 + 1e-12) + 1e-9 for k, v in limits.items()):
        return False
    for i, j, which in problem.ties:
        axis = 0 if which == "w" else 1
        if problem.options[choice[i]][axis] != problem.options[choice[j]][axis]:
            return False
    return True


def _flipped(problem: Problem, option: int) -> int | None:
    """The option with the other weight width and the same activation width (None: not offered)."""
    w, a = problem.options[option]
    others = [o for o, (w2, a2) in enumerate(problem.options) if a2 == a and w2 != w]
    return others[0] if len(others) == 1 else None


def _moves(problem: Problem, limits: dict, choice: np.ndarray, delta: dict, tries: int,
           improving: bool = True) -> list[np.ndarray]:
    """Up to ``tries`` distinct plans near ``choice``: for a growing trust region of ``k`` flipped
    layers (2, 3, 4, ...), the plan of least predicted change (the sum of the per-layer changes
    ``delta``) within the budgets and ties -- the ILP again, on these costs, with the number of
    layers that differ from ``choice`` bounded by ``k``; only predicted improvements. Not
    ``improving`` (``delta`` from the ILP's own costs, whose optimum ``choice`` is, so every move
    predicts a loss): the ``tries`` best plans that differ from ``choice`` in 1 to ``NEAR`` layers
    and raise at least one (lowering alone only adds error), by the same ILP with each plan found
    cut off (``sum x[l, found_l] <= layers - 1``)."""
    n, m = len(problem.names), len(problem.options)
    big = 1e3 * (1 + max((abs(v) for v in delta.values()), default=0.0))
    objective = np.full((n, m), big)  # options that are not a weight flip of the current one: never
    objective[np.arange(n), choice] = 0.0
    for i, d in delta.items():
        objective[i, _flipped(problem, choice[i])] = d
    same = np.zeros((n, m))
    same[np.arange(n), choice] = 1.0   # sum of x[l, current option] = layers left as they are
    def best(rows: tuple) -> np.ndarray | None:
        try:
            plan = solve(problem, limits, objective, rows=rows)
        except BudgetError:  # no such plan keeps the budgets
            return None
        return np.array([problem.options.index(plan.bits[name]) for name in problem.names])

    def picked(c: np.ndarray) -> np.ndarray:
        r = np.zeros((n, m))
        r[np.arange(n), c] = 1.0
        return r

    found: list[np.ndarray] = []
    if not improving:  # the K best plans of 1..NEAR flips by the ILP's costs (each found one cut off)
        raised = np.zeros((n, m))  # a move re-spends bytes: it raises at least one layer's weights
        for i in delta:
            o = _flipped(problem, choice[i])
            if problem.options[o][0] > problem.options[choice[i]][0]:
                raised[i, o] = 1.0
        for _ in range(tries):
            c = best(((same, n - NEAR, n - 1), (raised, 1, np.inf), *((picked(f), -np.inf, n - 1) for f in found)))
            if c is None:
                break
            found.append(c)
        return found
    widest = best(((same, 0, np.inf),))  # the unconstrained move: the largest k worth trying is its size
    for k in range(2, max(2, int((widest != choice).sum())) + 1):
        c = best(((same, n - k, np.inf),))
        if float(objective[np.arange(n), c].sum()) < 0 and not any((c == f).all() for f in found):
            found.append(c)
        if len(found) >= tries:
            break
    return found


def refine(problem: Problem, limits: dict, bits: dict, loss: Callable[[dict], np.ndarray],
           rounds: int = ROUNDS, tries: int = TRIES, min_t: float = MIN_T,
           context_layers: int = CONTEXT_LAYERS) -> tuple[dict, Refinement]:
    """The plan ``bits`` after measured swaps within ``limits`` (module docstring), and what was done.

    ``loss(bits)`` returns the per-sample loss of a plan (lower is better); ``problem`` gives the
    sizes / BOPs / latencies, the ties the moves must keep, and its ``cost`` (the ILP's objective).
    A model with more than ``context_layers`` layers skips the contextual measurement (one
    simulation per layer and round: on MobileNetV2's 53 layers and 56 crops about an hour of one
    loaded core here) and takes its moves from the ILP's own costs: the nearest alternatives to
    the plan, each simulated; the acceptance rule is the same."""
    choice = np.array([problem.options.index(tuple(bits[n])) for n in problem.names])
    as_bits = lambda c: {n: problem.options[o] for n, o in zip(problem.names, c)}  # noqa: E731
    current = np.asarray(loss(as_bits(choice)), dtype=np.float64)
    report = Refinement(float(current.mean()), float(current.mean()), evaluations=1)
    contextual = len(choice) <= context_layers
    report.contextual = contextual
    for _ in range(rounds):
        delta = {}  # per layer: the mean loss change when only layer i flips (measured, or the ILP's)
        for i in range(len(choice)):
            o = _flipped(problem, choice[i])
            if o is None:
                continue
            if not contextual:
                delta[i] = float(problem.cost[i, o] - problem.cost[i, choice[i]])
                continue
            c = choice.copy()
            c[i] = o
            delta[i] = float(np.mean(loss(as_bits(c)))) - float(current.mean())
            report.evaluations += 1
        candidates = _moves(problem, limits, choice, delta, tries, improving=contextual)
        best = None
        for c in candidates:
            trial = np.asarray(loss(as_bits(c)), dtype=np.float64)
            report.evaluations += 1
            diff = trial - current
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else 0.0
            t = -float(diff.mean()) / se if se > 0 else (np.inf if diff.mean() < 0 else 0.0)
            if t >= min_t and (best is None or trial.mean() < best[1].mean()):
                best = (c, trial, t)
        if best is None:
            break
        c, trial, t = best
        changed = [i for i in range(len(c)) if c[i] != choice[i]]
        report.moves.append({
            "raise": [problem.names[i] for i in changed if problem.options[c[i]][0] > problem.options[choice[i]][0]],
            "lower": [problem.names[i] for i in changed if problem.options[c[i]][0] < problem.options[choice[i]][0]],
            "loss": float(trial.mean()), "t": round(float(t), 2)})
        log.info("mixed precision: refinement move %s: loss %.5f -> %.5f (t=%.1f)", report.moves[-1],
                 current.mean(), trial.mean(), t)
        choice, current = c, trial
    report.loss = float(current.mean())
    return as_bits(choice), report
