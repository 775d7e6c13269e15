"""Per-kernel bit-exact check on constructed inputs: dtype extremes and exact rounding ties.

Why: the whole-model checks (``compiler.check_bit_exact`` on 16 images, ``verify`` on random
inputs) almost never make a requant epilogue see an exact tie, so a kernel whose rounding is
half-down instead of half-up passes them, and saturation paths are reached only by chance. Here
every distinct kernel of the integer function -- a call_tir PrimFunc with its constant operands
(weights, bias, multipliers) -- is called on its own, *as compiled*: the Relax VM library exports
each PrimFunc under its name, so no extra build is needed. Its inputs are all-qmin, all-qmax,
alternating extremes, zeros, random, and inputs solved (tie_solver.py) so that every requant
channel sees an exact, unsaturated tie where any legal input can produce one. Each output is
compared bit for bit with the kernel's NumPy twin (``OPS[op].reference``), as reference.py runs it.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from .ops import OPS, op_of
from .ops.registry import type_of_ty
from .bitexact import first_difference
from .schedules.packing import pack_call_args, packing_plan
from .schedules.x86_narrowing import built_module
from .tie_inputs import TIE_BUILDERS, KernelSite, TieCount, extreme_cases

BATCHED_TWINS = ("conv2d_requant", "dense_requant", "max_pool2d", "avg_pool2d_requant", "requantize")
# twins whose output row depends only on the same row of each runtime input: trailing axes kept per input
ROW_TWINS = {"dense_requant": (1,), "matmul_requant": (1, 2), "requantize": (0,), "gelu_int": (0,),
             "softmax_int": (1,), "layernorm_int": (1,)}


@dataclass
class KernelResult:
    name: str
    op: str
    cases: int
    ties: TieCount
    mismatch: str | None = None


def kernel_sites(mod: tvm.IRModule, func_name: str) -> list[KernelSite]:
    """Distinct integer kernels of ``func_name``: one per (PrimFunc, constant operands)."""
    seen, sites = set(), []
    for block in mod[func_name].body.blocks:
        for b in block.bindings:
            call = b.value
            if not (isinstance(call, relax.Call) and getattr(call.op, "name", "") == "relax.call_tir"):
                continue
            described = op_of(mod[call.args[0]])
            if described is None or not OPS[described[0]].integer_only:
                continue
            args = [a.value.numpy() if isinstance(a, tvm.ir.GenericConst) else type_of_ty(a.ty)
                    for a in call.args[1].fields]
            key = (call.args[0].name_hint, *(hashlib.sha1(a.tobytes()).hexdigest() if isinstance(a, np.ndarray)
                                              else str(a) for a in args))
            if key not in seen:
                seen.add(key)
                sites.append(KernelSite(call.args[0].name_hint, *described, args, type_of_ty(b.var.ty)))
    return sites


def kernel_library(art):
    """The compiled module whose ``get_function(name)`` runs one kernel, or None (no host build)."""
    if art.library is not None:
        return art.library
    return art.executable.mod if art.executable is not None else None


def check_site(lib, site: KernelSite, rng: np.random.Generator, packing=None) -> KernelResult:
    """Run one kernel on its extreme and tie inputs; compare each output with the NumPy twin.
    ``packing``: the kernel was compiled with prepacked weights (schedules/packing.py), so the
    compiled function gets the packed constants while the twin gets the plain ones."""
    fn = lib.get_function(site.name, True)
    ties = TieCount()
    builder = TIE_BUILDERS.get(site.op)
    extremes = extreme_cases(site, rng)
    cases = extremes + (builder(site, ties) if builder else [])
    res = KernelResult(site.name, site.op, len(cases), ties)
    if fn is None:
        res.mismatch = f"kernel {site.name} is not exported by the compiled library"
        return res
    for k, (inputs, want) in enumerate(zip(cases, _references(site, cases))):
        out = tvm.runtime.tensor(np.zeros(*site.out))
        args = _with_inputs(site, inputs)
        if packing is not None:
            args = pack_call_args(args, packing)
        fn(*[tvm.runtime.tensor(np.ascontiguousarray(a)) for a in args], out)
        got = out.numpy()
        diff = first_difference(got, want)
        if diff is not None:
            res.mismatch = f"{'tie' if k >= len(extremes) else 'extreme'} input {k}: {diff}"
            break
    return res


def _with_inputs(site: KernelSite, inputs: list[np.ndarray]) -> list:
    args = list(site.args)
    for i, v in zip(site.runtime(), inputs):
        args[i] = v
    return args


def _references(site: KernelSite, cases: list[list[np.ndarray]]) -> list[np.ndarray]:
    """The NumPy twin's output per case. Two shortcuts, exact by the twins' contracts:
    1. a case whose runtime inputs repeat along their leading axes (all-qmin, all-qmax, zeros,
       alternating, the matmul ties) runs a row-wise twin (:data:`ROW_TWINS`) on one slice, the
       result broadcast; 2. twins generic in the batch axis (:data:`BATCHED_TWINS`) run the other
       cases as one batch (MobileNetV2's depthwise twins loop over groups, MiniLM's over heads)."""
    twin = OPS[site.op].reference
    out = [_row_reference(site, c) for c in cases]
    rest = [k for k, o in enumerate(out) if o is None]
    if site.op in BATCHED_TWINS and len(site.runtime()) == 1 and len(rest) > 1:
        full = twin(*_with_inputs(site, [np.concatenate([cases[k][0] for k in rest])]), **site.params)
        for k, o in zip(rest, np.split(full, len(rest))):
            out[k] = o
    for k in rest:
        if out[k] is None:
            out[k] = twin(*_with_inputs(site, cases[k]), **site.params)
    return out


def _row_reference(site: KernelSite, inputs: list[np.ndarray]) -> np.ndarray | None:
    keeps = ROW_TWINS.get(site.op)
    if keeps is None or len(keeps) != len(inputs):
        return None
    rows = []
    for x, keep in zip(inputs, keeps):
        row = x[(slice(0, 1),) * (x.ndim - keep)]
        if not np.array_equal(np.broadcast_to(row, x.shape), x):
            return None
        rows.append(row)
    y = OPS[site.op].reference(*_with_inputs(site, rows), **site.params)
    return np.broadcast_to(y, site.out[0])


def check_kernels(art, seed: int = 0) -> dict:
    """``report.json`` -> ``bit_exact_kernels``: every distinct kernel on extreme and tie inputs.

    Returns ``{checked, cases, ties_hit, channels: {with_tie, no_tie_reachable, unsolved},
    mismatched: [{kernel, op, detail}]}``; ``ties_hit`` counts kernels where some channel's tie
    was constructed. ``checked`` is 0 (and ``skipped`` says why) without a host build.
    """
    lib = kernel_library(art)
    if lib is None:
        return {"checked": 0, "skipped": "no host build of the integer kernels", "mismatched": []}
    rng = np.random.default_rng(seed)
    from .targets import get_board

    # the build packed weights for its target (build.lower): the same plan, recomputed; a loaded
    # artifact was built for this host (x86-host, or the host side of a C-package target)
    built = built_module(art)  # the kernels of the library: a narrowing requantize fused into its conv
    packings = packing_plan(built, art.build_target or get_board("x86-host").target())
    results = [check_site(lib, s, rng, packings.get(s.name))
               for s in kernel_sites(built, art.integer_function)]
    return {
        "checked": len(results),
        "cases": sum(r.cases for r in results),
        "ties_hit": sum(r.ties.hit > 0 for r in results),
        "channels": {"with_tie": sum(r.ties.hit for r in results),
                     "no_tie_reachable": sum(r.ties.unreachable for r in results),
                     "unsolved": sum(r.ties.unsolved for r in results)},
        "mismatched": [{"kernel": r.name, "op": r.op, "detail": r.mismatch} for r in results if r.mismatch],
    }
