"""The narrowing requantize fused into the conv that reads it: the x86 build's one graph change.

``--wide-inputs 8 | auto`` (quant/wide_inputs.py) and ``narrow_for_accumulation`` give a conv that
reads the int16 residual stream its own ``requantize`` (int16 -> int8, per tensor) in the integer
module: two kernels, the first writing an 8-bit copy of the tensor that the second's activation
gather reads back. The conv's gather (x86_conv_gather.py) touches every input element anyway, so
:func:`fuse_narrowing` replaces each such pair, in the copy of the module that is built, by one
``conv2d_requant_narrowed`` kernel (ops/conv_narrowed.py) whose gather reads the int16 tensor and
requantizes it in registers on the way in -- the same integers (the requantize's own rounding and
clamp, computed in int32 arithmetic: x86_conv_gather._narrowed_int32), one pass over the input
fewer and no launch. Measured against the alternatives (docs/kernels.md): the same gather with
the requantize's int64 product was slower than the separate kernel on AVX2 (no 64-bit multiply),
and a narrowing stage inside the PrimFunc ahead of the gather (a full-size 8-bit buffer again)
was slower on the large planes.

The integer module itself keeps the two ops: the NumPy reference, integer_module.json, the C
export and the integer-only report all see the graph as integerized. What runs the build (the
per-kernel check, kernel_check.py, and the per-call profile, profile.py) takes
:func:`built_module`, the same rewrite, so their kernel names and call order are the library's.

Fused only when a tensorized x86 rule packs the fused kernel (the int8 conv rules of x86_int8 /
x86_conv_channel_lanes), the narrowed tensor has no other reader and the int32 form is exact for
the narrowing's constants (``shift`` 17..46: every narrowing of the stream to 8 bits, ~38);
elsewhere the pair stays.
"""
from __future__ import annotations

import numpy as np
import tvm
from tvm import relax

from ..ops import OPS, const, op_of
from ..ops.conv_narrowed import Conv2DRequantNarrowed
from ..ops.registry import _kernel_name, type_of, type_of_ty
from .packing import _call_tir_sites
from .x86_conv_gather import narrowing_fits_int32

NARROWED = Conv2DRequantNarrowed.name
WIDE_DTYPE = "int16"  # the residual stream's dtype: the only input a consumer narrows


def _narrowing(mod: tvm.IRModule, call: relax.Call) -> dict | None:
    """The ``requantize`` params of ``call`` when it narrows an int16 tensor to 8 bits, else None."""
    described = op_of(mod[call.args[0]])
    if described is None or described[0] != "requantize":
        return None
    params = described[1]
    (_, in_dtype), = [type_of(a) for a in call.args[1].fields]
    if in_dtype != WIDE_DTYPE or params["out_dtype"] not in ("int8", "uint8"):
        return None
    # the gather narrows in int32 (x86_conv_gather._narrowed_int32): exact for these constants only
    return params if narrowing_fits_int32(params["multiplier"], params["shift"]) else None


def _use_counts(func: relax.Function) -> dict:
    """How many times each Relax var is read in ``func`` (bindings and the function's output)."""
    counts: dict = {}

    def visit(expr):
        if isinstance(expr, relax.Var):
            counts[expr] = counts.get(expr, 0) + 1
    for block in func.body.blocks:
        for b in block.bindings:
            relax.analysis.post_order_visit(b.value, visit)
    relax.analysis.post_order_visit(func.body.body, visit)
    return counts


def _fused_kernel(mod, conv_call: relax.Call, narrow_call: relax.Call, params: dict, packers, target):
    """``(PrimFunc, out type, call args)`` of the fused kernel, or None where no packer takes it."""
    conv = op_of(mod[conv_call.args[0]])
    if conv is None or conv[0] != "conv2d_requant" or conv[1]["groups"] != 1:
        return None
    x16 = narrow_call.args[1].fields[0]
    args = [x16, *conv_call.args[1].fields[1:],
            const(_int64(params["multiplier"])), const(_int64(params["shift"]))]
    fused = {**conv[1], "in_qmin": params["qmin"], "in_qmax": params["qmax"], "in_dtype": params["out_dtype"]}
    func, out_ty = OPS[NARROWED].prim_func([type_of(a) for a in args], **fused)
    if not any(p.pack(func, target) is not None for p in packers):
        return None
    return func, out_ty, args


def _int64(v: int) -> np.ndarray:
    return np.array([int(v)], np.int64)


def fuse_narrowing(mod: tvm.IRModule, target: tvm.target.Target, packers=None) -> tvm.IRModule:
    """A copy of ``mod`` whose narrowing requantize -> conv pairs are single fused kernels (module
    doc); ``mod`` itself when there is none or ``target`` is not an LLVM CPU."""
    if target.kind.name != "llvm":
        return mod
    if packers is None:
        from . import RULES

        packers = [rule for rule in RULES if hasattr(rule, "pack")]
    bb = relax.BlockBuilder(mod)
    changed = {}
    for gv, func in mod.functions.items():
        if not isinstance(func, relax.Function) or not isinstance(func.body, relax.SeqExpr):
            continue
        new = _fuse_in(mod, func, bb, packers, target)
        if new is not None:
            changed[gv] = new
    if not changed:
        return mod
    out = bb.get()
    for gv, func in changed.items():
        out.update_func(gv, func)
    return relax.transform.Normalize()(_without_dead_kernels(out))


def _fuse_in(mod, func: relax.Function, bb: relax.BlockBuilder, packers, target) -> relax.Function | None:
    producers = {b.var: b.value for block in func.body.blocks for b in block.bindings
                 if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.call_tir"}
    uses = _use_counts(func)
    fused_away, replaced = set(), {}
    for var, call in producers.items():
        x = call.args[1].fields[0] if call.args[1].fields else None
        narrow_call = producers.get(x) if isinstance(x, relax.Var) else None
        if narrow_call is None or uses.get(x, 0) != 1:
            continue
        params = _narrowing(mod, narrow_call)
        kernel = None if params is None else _fused_kernel(mod, call, narrow_call, params, packers, target)
        if kernel is None:
            continue
        pfunc, out_ty, args = kernel
        in_types = [type_of(a) for a in args]
        gv = bb.add_func(pfunc, _kernel_name(NARROWED, in_types, type_of_ty(out_ty)[1]))
        replaced[var] = relax.call_tir(gv, args, out_ty)
        fused_away.add(x)
    if not replaced:
        return None
    blocks = []
    for block in func.body.blocks:
        bindings = [relax.VarBinding(b.var, replaced[b.var]) if b.var in replaced else b
                    for b in block.bindings if b.var not in fused_away]
        kind = relax.DataflowBlock if isinstance(block, relax.DataflowBlock) else relax.BindingBlock
        blocks.append(kind(bindings))
    return relax.Function(func.params, relax.SeqExpr(blocks, func.body.body), func.ret_ty, func.is_pure, func.attrs)


def _without_dead_kernels(mod: tvm.IRModule) -> tvm.IRModule:
    """``mod`` less the integer kernels no function calls any more (the fused pairs' own kernels,
    where no other call shares them): nothing compiled that never runs."""
    called = {b.value.args[0] for _, b in _call_tir_sites(mod)}
    dead = [gv for gv, f in mod.functions.items()
            if isinstance(f, tvm.tirx.PrimFunc) and op_of(f) is not None and gv not in called]
    if not dead:
        return mod
    return tvm.IRModule({gv: f for gv, f in mod.functions.items() if gv not in dead}, attrs=mod.attrs,
                        global_infos=mod.global_infos)


def built_module(art) -> tvm.IRModule:
    """The integer module of ``art`` with the fusions its host build made: the kernels and call
    order of its library (kernel_check.py, profile.py)."""
    from ..targets import get_board

    return fuse_narrowing(art.integer_mod, art.build_target or get_board("x86-host").target())
