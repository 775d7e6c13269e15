"""The design space of a tuning task: our schedule rules where one takes the kernel, MetaSchedule's
default space everywhere else.

The seam (STYLE.md): a schedule rule of ``tvm_qplugin/schedules/`` keeps dlight's contract
``apply(func, target, tunable) -> None | Schedule | list[Schedule]``. With ``tunable=False`` it
returns the fixed default schedule compile uses without a database; with ``tunable=True`` it
returns traced ``Schedule``(s) whose choices are *sampling instructions*
(``sch.sample_perfect_tile``, ``sch.sample_categorical``, ...). Those schedules become the task's
design space (``ms.space_generator.ScheduleFn``): MetaSchedule replays their traces with new
decisions, mutates them guided by the XGBoost cost model, and the postprocessors of the target
finish each candidate. A rule thereby defines the space -- tensorization and weight layout
included -- and MetaSchedule only searches its knobs.

A rule that does not accept ``tunable`` (or returns a plain PrimFunc: no trace, nothing to
search) does not define a space; the kernel is then tuned in MetaSchedule's default space
(``"post-order-apply"``: multi-level tiling, parallel/vectorize/unroll, ... for the target).
"""
from __future__ import annotations

import inspect
import logging

import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.schedule import Schedule

log = logging.getLogger(__name__)

DEFAULT_SPACE = "post-order-apply"


def _tunable(rule) -> bool:
    try:
        return "tunable" in inspect.signature(rule.apply).parameters
    except (TypeError, ValueError):
        return False


def _as_schedules(result) -> list[Schedule]:
    if isinstance(result, Schedule):
        return [result]
    if isinstance(result, (list, tuple)) and result and all(isinstance(s, Schedule) for s in result):
        return list(result)
    return []


def rule_space(func: tvm.tirx.PrimFunc, target: tvm.target.Target, rules=None):
    """``(rule, ScheduleFn space)`` of the first rule that gives ``func`` a tunable space, else None."""
    if rules is None:
        from ..schedules import RULES as rules  # noqa: N811 - the compile's default rules, in order
    for rule in rules:
        if not _tunable(rule):
            continue
        if not _as_schedules(rule.apply(func, target, tunable=True)):
            continue

        def sch_fn(sch: Schedule, rule=rule):
            return _as_schedules(rule.apply(sch.mod["main"], target, tunable=True))

        return rule, ms.space_generator.ScheduleFn(sch_fn, sch_rules=[], postprocs="from-target",
                                                   mutator_probs="from-target")
    return None


def design_space(func: tvm.tirx.PrimFunc, target: tvm.target.Target, rules=None) -> tuple[str, object]:
    """``(where the space comes from, space generator)``: ``("rule:<Class>", ScheduleFn)`` or
    ``("metaschedule-default", "post-order-apply")``."""
    found = rule_space(func, target, rules)
    if found is None:
        return "metaschedule-default", DEFAULT_SPACE
    rule, space = found
    return f"rule:{type(rule).__name__}", space
