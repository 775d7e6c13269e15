"""Tuning tasks: one per distinct integer kernel workload of an integer Relax module.

A *workload* is what MetaSchedule keys its records by: the kernel's PrimFunc, normalised to an
IRModule with one ``main`` (structural hash -- shapes, dtypes, and the ``qplugin.params`` tag, so
two layers with the same shapes and parameters share one task and one record). Each task keeps
the constant arguments of its first call site (weights, bias, multipliers, shifts): the verifier
runs candidates on the model's real constants and random activations (verify.py).

Kernels the build prepacks and tensorizes (schedules/packing.py) are tasks too, as the *packed*
kernel compile builds -- its PrimFunc, hence its workload, is the one compile's ``query_schedule``
looks up -- in the design space of the rule that packed it (``tunable=True``). Their task keeps
the plain constants (the NumPy twin's arguments) and the :class:`Packing` that turns them into the
packed kernel's arguments.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax
from tvm.s_tir.meta_schedule.tune_context import _normalize_mod

from ..ops import OPS, op_of


def arg_infos(func: tvm.tirx.PrimFunc) -> list:
    """``TensorInfo(dtype, shape)`` per parameter (inputs, then the output)."""
    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    return list(ArgInfo.from_prim_func(func))


def workload_of(func: tvm.tirx.PrimFunc) -> tvm.IRModule:
    """The IRModule MetaSchedule tunes and looks records up by (the same at tune and compile time)."""
    return _normalize_mod(func.without_attr("global_symbol"))


def workload_key(mod: tvm.IRModule) -> str:
    """Stable text key of a workload: MetaSchedule's structural hash, as its workload file writes it."""
    from tvm.s_tir.meta_schedule.database import Workload

    return str(Workload(mod).as_json()[0])


@dataclass
class KernelTask:
    """One tuning task: a distinct integer kernel and what is needed to check a candidate of it."""

    name: str                       # the kernel's global name in the module the build compiles (first call site)
    op: str                         # ``qplugin.op``
    params: dict                    # ``qplugin.params``
    func: tvm.tirx.PrimFunc          # the unscheduled kernel
    constants: list[np.ndarray | None]   # per input argument: the call site's constant, None for activations
    calls: int = 1                  # call sites sharing this workload (its weight in the model)
    layers: list[str] = field(default_factory=list)
    plain: tvm.tirx.PrimFunc | None = None   # a packed task: the unpacked kernel the NumPy twin describes
    packing: object | None = None            # ... and its schedules.packing.Packing (plain -> packed arguments)

    @property
    def workload(self) -> tvm.IRModule:
        return workload_of(self.func)

    @property
    def key(self) -> str:
        return workload_key(self.workload)

    def describe(self) -> str:
        shapes = ", ".join("x".join(str(d) for d in a.shape) for a in arg_infos(self.plain or self.func)[:-1])
        return f"{self.name} [{shapes}]" + (" (packed)" if self.packing is not None else "")


def _call_sites(mod: tvm.IRModule):
    """``(kernel GlobalVar, args)`` of every ``call_tir`` in the module's Relax functions."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    for _, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        found = []

        def visit(e):
            if isinstance(e, relax.Call) and e.op.same_as(call_tir):
                found.append((e.args[0], list(e.args[1].fields)))

        relax.analysis.post_order_visit(func, visit)
        yield from found


def extract_tasks(mod: tvm.IRModule, target: tvm.target.Target | None = None) -> list[KernelTask]:
    """The integer kernels of ``mod`` worth tuning, one task per distinct workload, in call order.

    Boundary kernels (entry quantize, exit dequantize: float arithmetic) are left to the default
    rules: they are not integer kernels and cost one pass over the input/output. With ``target``,
    kernels the build prepacks for it (schedules/packing.py) are tuned as the packed kernel, in
    their tensorized rule's space (module doc); those whose rule has no space (depthwise, the GELU
    table) keep their default schedule and are no task.
    """
    from ..schedules.packing import packing_plan
    from ..schedules.x86_narrowing import fuse_narrowing
    from .space import rule_space

    if target is not None:  # the kernels the build compiles: a narrowing read in its conv's gather
        mod = fuse_narrowing(mod, target)
    packed = packing_plan(mod, target) if target is not None else {}
    tasks: dict[str, KernelTask] = {}
    for gvar, args in _call_sites(mod):
        func = mod[gvar]
        described = op_of(func) if isinstance(func, tvm.tirx.PrimFunc) else None
        if described is None or not OPS[described[0]].integer_only:
            continue
        packing = packed.get(gvar.name_hint)
        if packing is not None and rule_space(packing.func, target) is None:
            continue  # prepacked for a rule without a design space: nothing MetaSchedule can search
        tuned = packing.func if packing is not None else func
        key = workload_key(workload_of(tuned))
        if key in tasks:
            tasks[key].calls += 1
            continue
        constants = [a.value.numpy() if isinstance(a, tvm.ir.GenericConst) else None for a in args]
        tasks[key] = KernelTask(gvar.name_hint, described[0], described[1], tuned, constants,
                                plain=func if packing is not None else None, packing=packing)
    return list(tasks.values())
