"""verify_integer_only: prove no float arithmetic remains between entry quantize and exit dequantize.

Two levels are checked (DESIGN.md ladder, step 4):

1. Relax: every binding of ``core`` has an integer tensor type and is either an integer kernel
   (``call_tir`` of a PrimFunc whose ``qplugin.op`` is integer-only) or an allowed layout op.
2. TIR: every PrimFunc ``core`` calls, after the lowering passes TVM applies before codegen, holds
   no floating-point dtype anywhere (buffers, casts, constants, intrinsics).

``allow`` lists op names the user explicitly accepts as float (``--allow-float``); they are
reported, never silently accepted.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import tvm
from tvm import relax

from ..errors import FloatOpError
from ..ops import OPS, op_of
from .graph import Graph, dtype_of

_FLOAT_TIR = re.compile(r"\b(float16|float32|float64|bfloat16|T\.float\d*|fp8\w*)\b")
LAYOUT_OPS = {"relax.reshape", "relax.flatten", "relax.permute_dims", "relax.squeeze", "relax.expand_dims",
              "relax.concat", "relax.nn.pad"}
# Relax ops kept on integer/bool tensors (token ids, attention masks, embedding gathers); their
# results must still have an integer or bool type, which is checked below like every binding.
RAW_INTEGER_OPS = {"relax.less", "relax.greater", "relax.equal", "relax.not_equal", "relax.add", "relax.subtract",
                   "relax.where", "relax.astype", "relax.gather_nd", "relax.logical_and", "relax.logical_or",
                   "relax.logical_not", "relax.take", "relax.broadcast_to"}
_INT_DTYPES = ("int", "uint", "bool")


@dataclass
class IntegerOnlyReport:
    float_ops: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    division_ops: int = 0
    kernels: int = 0

    @property
    def integer_only(self) -> bool:
        return not self.float_ops and not self.allowed


def verify_integer_only(mod: tvm.IRModule, allow: tuple[str, ...] = (), func_name: str = "core",
                        raise_on_error: bool = True) -> IntegerOnlyReport:
    rep = IntegerOnlyReport()
    graph = Graph(mod[func_name])
    for p in graph.params:
        if not dtype_of(p).startswith(_INT_DTYPES):
            rep.float_ops.append(f"input {p.name}: dtype {dtype_of(p)}")
    seen: set = set()
    for b in graph.bindings:
        where = f"{b.name} = {b.op_name}"
        try:
            dt = dtype_of(b.var)
        except AttributeError:
            dt = "int"  # tuples
        problem = None
        op_name = b.op_name
        if b.op_name == "relax.call_tir":
            gvar = b.args[0]
            described = op_of(mod[gvar])
            op_name = described[0] if described else gvar.name_hint
            if described is None or not OPS[described[0]].integer_only:
                problem = f"{where} ({op_name}): not an integer kernel"
            if gvar not in seen:
                seen.add(gvar)
                rep.kernels += 1
                op = OPS.get(op_name)
                if op is not None and hasattr(op, "divisions"):
                    rep.division_ops += op.divisions(described[1])
                text = mod[gvar].script()
                hits = sorted(set(_FLOAT_TIR.findall(text)))
                if hits:
                    problem = f"{where} ({op_name}): kernel {gvar.name_hint} uses {', '.join(hits)} in TIR"
        elif b.op_name not in LAYOUT_OPS | RAW_INTEGER_OPS and not isinstance(b.value, (relax.Var, relax.Tuple,
                                                                                         relax.TupleGetItem)):
            problem = f"{where}: Relax op outside the integer op set"
        if problem is None and not dt.startswith(_INT_DTYPES):
            problem = f"{where}: result dtype {dt}"
        if problem:
            (rep.allowed if op_name in allow or b.op_name in allow else rep.float_ops).append(problem)
    if raise_on_error and rep.float_ops:
        listing = "; ".join(rep.float_ops[:20])
        raise FloatOpError(f"{len(rep.float_ops)} float op(s) between entry quantize and exit dequantize: {listing}. "
                           "Pass --allow-float OP[,OP] to accept them explicitly")
    return rep


def verify_lowered_tir(mod: tvm.IRModule, func_name: str = "core") -> list[str]:
    """Legalize ``mod`` (layout ops become TIR too) and list float dtypes in every kernel that
    ``func_name`` calls: our integer kernels and TVM's own reshape/concat kernels alike."""
    lowered = relax.transform.LegalizeOps()(mod)
    called = set()

    def visit(e):
        if isinstance(e, relax.Call) and isinstance(e.op, tvm.ir.Op) and e.op.name == "relax.call_tir":
            called.add(e.args[0])

    relax.analysis.post_order_visit(lowered[func_name], visit)
    bad = []
    for gv in called:
        hits = sorted(set(_FLOAT_TIR.findall(lowered[gv].script())))
        if hits:
            bad.append(f"{gv.name_hint}: {', '.join(hits)}")
    return sorted(bad)
