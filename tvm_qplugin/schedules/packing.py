"""Weight prepacking at build time: the copy of the integer module handed to ``tvm.compile`` gets
each kernel's constant weights in the layout its tensorized schedule reads.

The integer module itself (what the NumPy reference runs, what is saved as integer_module.json)
keeps its plain layouts: :func:`pack_weights` returns a new module and never mutates its input.
For every integer kernel (a PrimFunc tagged ``qplugin.op``) some *packer* wants, and whose every
call passes the packed arguments as constants, it

1. replaces the PrimFunc, under the same name (kernel names, hence per-layer timings, stay),
   with the packer's version that reads the packed layout, tagged ``qplugin.packed``;
2. rewrites the constant arguments of each of its calls (weights -> packed weights, bias ->
   bias with compile-time corrections such as ``-128 * sum(w)`` for the signed-activation
   offset), computed once here with NumPy -- no layout transform is left in the graph.

A packer is any object with ``pack(func, target) -> Packing | None``; the schedule rules of
``schedules/`` that want packed weights are packers (``x86_int8.py``).
"""
from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..ops import const, op_of

PACKED_ATTR = "qplugin.packed"


@dataclass(frozen=True)
class Packing:
    """A kernel's packed replacement: ``func`` reads the layout ``pack_args`` produces.

    ``pack_args(consts)`` maps the call's constant arguments (the contiguous positions
    ``const_args`` of the call, as NumPy arrays, in order) to the new constant arguments that
    take their place (their number may differ: ``func``'s parameters say). With no
    ``const_args`` (a kernel whose constants are all computed at build time, e.g. a table of its
    outputs), ``pack_args([])``'s arrays are appended to the call's arguments.
    ``accepts(consts)`` says whether ``func`` is exact for a call with these constants (e.g. its
    int32 bounds hold); a kernel is packed only when it accepts every one of its calls.
    ``for_calls``, when set, picks the packing from the constants of *all* the kernel's calls
    (one list per call) before that check: the kernel to use (e.g. AVX2's ``vpmaddubsw`` when
    every call's weights prove it exact, with a reduction order long enough for each, else this
    packing or another exact one), or None.
    """

    func: tvm.tirx.PrimFunc
    const_args: tuple[int, ...]
    pack_args: Callable[[list[np.ndarray]], list[np.ndarray]]
    accepts: Callable[[list[np.ndarray]], bool] = lambda consts: True
    for_calls: Callable[[list[list[np.ndarray]]], Packing | None] | None = None


def packed_info(func: tvm.tirx.PrimFunc) -> dict | None:
    """The ``qplugin.packed`` description of a packed kernel (rule, ISA, tile), else None."""
    attrs = func.attrs
    if attrs is None or PACKED_ATTR not in attrs:
        return None
    return json.loads(str(attrs[PACKED_ATTR]))


def tag_packed(func: tvm.tirx.PrimFunc, original: tvm.tirx.PrimFunc, info: dict) -> tvm.tirx.PrimFunc:
    """``func`` carrying the original kernel's ``qplugin.op``/``params`` and the packing ``info``."""
    for key in ("qplugin.op", "qplugin.params"):
        func = func.with_attr(key, original.attrs[key])
    return func.with_attr(PACKED_ATTR, json.dumps(info, sort_keys=True))


def with_info(packing: Packing, **extra) -> Packing:
    """``packing`` whose kernel's ``qplugin.packed`` description also carries ``extra``."""
    info = {**packed_info(packing.func), **extra}
    return dataclasses.replace(packing, func=packing.func.with_attr(PACKED_ATTR, json.dumps(info, sort_keys=True)))


def _call_tir_sites(mod: tvm.IRModule):
    """``(relax function name, binding)`` of every ``call_tir`` binding of the module."""
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        for block in func.body.blocks:
            for b in block.bindings:
                v = b.value
                if isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.call_tir":
                    yield gv, b


def _plan(mod: tvm.IRModule, target: tvm.target.Target, packers) -> dict:
    """GlobalVar -> Packing for every kernel a packer takes and whose calls all pass constants."""
    plan = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, tvm.tirx.PrimFunc) or op_of(func) is None or packed_info(func) is not None:
            continue
        for packer in packers:
            packing = packer.pack(func, target)
            if packing is not None:
                plan[gv] = packing
                break
    calls: dict = {}
    for _, b in _call_tir_sites(mod):
        if b.value.args[0] in plan:
            calls.setdefault(b.value.args[0], []).append(b.value.args[1].fields)
    for callee in list(plan):
        packing = plan[callee]
        if packing.for_calls is not None:
            consts = _call_consts(calls.get(callee, []), packing)
            packing = None if consts is None else packing.for_calls(consts)
        if packing is None or (consts := _call_consts(calls.get(callee, []), packing)) is None \
                or not all(packing.accepts(c) for c in consts):
            del plan[callee]
        else:
            plan[callee] = packing
    return plan


def _call_consts(calls: list, packing: Packing) -> list[list[np.ndarray]] | None:
    """Per call, its arguments at ``packing.const_args`` as NumPy arrays; None when one is not a constant."""
    if not all(isinstance(args[i], tvm.ir.GenericConst) for args in calls for i in packing.const_args):
        return None
    return [[args[i].value.numpy() for i in packing.const_args] for args in calls]


def packing_plan(mod: tvm.IRModule, target: tvm.target.Target, packers=None) -> dict[str, Packing]:
    """Kernel name -> :class:`Packing` for the kernels :func:`pack_weights` packs for ``target``:
    what a caller of a compiled kernel (kernel_check.py) needs to pass its packed arguments."""
    if packers is None:
        from . import RULES

        packers = [rule for rule in RULES if hasattr(rule, "pack")]
    return {gv.name_hint: packing for gv, packing in _plan(mod, target, packers).items()}


def _replaced(args: list, packing: Packing, new: list) -> list:
    """``args`` with the positions ``packing.const_args`` replaced by ``new`` (appended when none)."""
    args = list(args)
    if not packing.const_args:
        return args + list(new)
    first, last = packing.const_args[0], packing.const_args[-1]
    args[first : last + 1] = new
    return args


def pack_call_args(args: list, packing: Packing) -> list:
    """A kernel call's argument list (NumPy constants, anything at the runtime positions) with the
    constant arguments replaced as :func:`pack_weights` replaces them in the graph."""
    return _replaced(args, packing, packing.pack_args([np.asarray(args[i]) for i in packing.const_args]))


def _rewrite_call(call: relax.Call, packing: Packing, gvar: tvm.ir.GlobalVar) -> relax.Call:
    args = list(call.args[1].fields)
    new = packing.pack_args([args[i].value.numpy() for i in packing.const_args])
    return relax.Call(call.op, [gvar, relax.Tuple(_replaced(args, packing, [const(value) for value in new]))],
                      call.attrs, call.ty_args)


def _rewrite_function(func: relax.Function, plan: dict, gvars: dict) -> relax.Function:
    blocks = []
    for block in func.body.blocks:
        bindings = []
        for b in block.bindings:
            v = b.value
            if isinstance(v, relax.Call) and getattr(v.op, "name", "") == "relax.call_tir" and v.args[0] in plan:
                b = relax.VarBinding(b.var, _rewrite_call(v, plan[v.args[0]], gvars[v.args[0]]))
            bindings.append(b)
        kind = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(kind(bindings))
    return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure,
                          func.attrs)


def pack_weights(mod: tvm.IRModule, target: tvm.target.Target, packers=None) -> tvm.IRModule:
    """A copy of ``mod`` with the weights of every kernel a packer takes prepacked (module doc).

    ``packers`` defaults to the schedule rules of ``schedules.RULES`` that have a ``pack`` method.
    """
    if packers is None:
        from . import RULES

        packers = [rule for rule in RULES if hasattr(rule, "pack")]
    plan = _plan(mod, target, packers)
    if not plan:
        return mod
    # same kernel names, new GlobalVars (a GlobalVar carries its function's signature): drop the
    # plain kernels, add the packed ones under the freed names, point the calls at them
    bb = relax.BlockBuilder(tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv not in plan},
                                         attrs=mod.attrs, global_infos=mod.global_infos))
    gvars = {gv: bb.add_func(packing.func, gv.name_hint) for gv, packing in plan.items()}
    out = bb.get()
    for gv, func in mod.functions.items():
        if gv not in plan and isinstance(func, relax.Function) and isinstance(func.body, relax.SeqExpr):
            out.update_func(gv, _rewrite_function(func, plan, gvars))
    return relax.transform.Normalize()(out)
