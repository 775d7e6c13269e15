"""verify_integer_only: prove no float arithmetic remains between entry quantize and exit dequantize.

Two levels are checked (DESIGN.md ladder, step 4):

1. Relax (:func:`verify_integer_only`): every binding of ``core`` has an integer tensor type and is
   either an integer kernel (``call_tir`` of a PrimFunc whose ``qplugin.op`` is integer-only) or
   one of :data:`INTEGER_RELAX_OPS`.
2. TIR (:func:`check_lowered_kernels`, passes/verify_tir.py): every kernel ``core`` calls, as
   scheduled and lowered for the target -- the module ``build`` hands to ``tvm.compile`` -- holds
   no float construct (dtypes of buffers and expressions, float constants, float math
   intrinsics, external calls, non-integer LLVM intrinsics). ``build(..., check=...)`` runs it.

``allow`` lists op names the user explicitly accepts as float (``--allow-float``): qplugin op
names (ops/ registry) or :data:`INTEGER_RELAX_OPS` names. A finding of an allowed op is reported
in ``allowed`` and makes ``integer_only`` false; it is never silently accepted. Unknown names
are refused (:func:`check_allow_names`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import tvm
from tvm import relax

from ..errors import FloatOpError, QPluginError
from ..ops import OPS, op_of
from .graph import Graph, dtype_of
from .verify_tir import check_multiply_free, scan_kernels

# The one home of the Relax ops an integer graph may keep besides integer kernels (call_tir).
# Layout ops move integers without arithmetic.
LAYOUT_OPS = frozenset({"relax.reshape", "relax.flatten", "relax.permute_dims", "relax.squeeze",
                        "relax.expand_dims", "relax.concat", "relax.nn.pad"})
# Relax ops kept on integer/bool tensors (token ids, attention masks, embedding gathers); their
# results must still have an integer or bool type, which is checked below like every binding.
RAW_INTEGER_OPS = frozenset({"relax.less", "relax.greater", "relax.equal", "relax.not_equal", "relax.add",
                             "relax.subtract", "relax.where", "relax.astype", "relax.gather_nd", "relax.logical_and",
                             "relax.logical_or", "relax.logical_not", "relax.take", "relax.broadcast_to"})
INTEGER_RELAX_OPS = LAYOUT_OPS | RAW_INTEGER_OPS
_INT_DTYPES = ("int", "uint", "bool")


def allowable_names() -> list[str]:
    """Names ``--allow-float`` accepts: qplugin ops, then the Relax ops of an integer graph."""
    return sorted(OPS) + sorted(INTEGER_RELAX_OPS)


def check_allow_names(allow: tuple[str, ...]) -> None:
    """Refuse ``--allow-float`` names that no finding could ever carry (one-line QPluginError)."""
    valid = set(allowable_names())
    unknown = [n for n in allow if n not in valid]
    if unknown:
        raise QPluginError(f"--allow-float {','.join(unknown)}: unknown op name(s); valid names: "
                           f"{', '.join(allowable_names())}")


@dataclass
class IntegerOnlyReport:
    """Findings of both levels: ``float_ops`` refused, ``allowed`` accepted via ``allow``."""

    allow: tuple[str, ...] = ()
    float_ops: list[str] = field(default_factory=list)
    allowed: list[str] = field(default_factory=list)
    division_ops: int = 0
    kernels: int = 0
    tir_kernels: int = 0          # kernels the TIR visitor checked (0: the TIR level has not run)
    multiply_free_kernels: int = 0  # shift/add kernels proven multiply-free in their accumulations

    @property
    def integer_only(self) -> bool:
        return not self.float_ops and not self.allowed

    def add(self, problem: str, *op_names: str) -> None:
        (self.allowed if any(n in self.allow for n in op_names) else self.float_ops).append(problem)

    def raise_if_float(self) -> None:
        if self.float_ops:
            listing = "; ".join(self.float_ops[:20])
            raise FloatOpError(f"{len(self.float_ops)} float op(s) between entry quantize and exit dequantize: "
                               f"{listing}. Pass --allow-float OP[,OP] to accept them explicitly")

    def to_report(self) -> dict:
        """The report.json fields (DESIGN.md): ``integer_only``, ``float_ops``, ``allowed_float_ops``."""
        return {"integer_only": self.integer_only, "float_ops": len(self.float_ops) + len(self.allowed),
                "allowed_float_ops": list(self.allowed)}


def verify_integer_only(mod: tvm.IRModule, allow: tuple[str, ...] = (), func_name: str = "core",
                        raise_on_error: bool = True) -> IntegerOnlyReport:
    """The Relax level; :func:`check_lowered_kernels` adds the TIR level to the same report."""
    check_allow_names(tuple(allow))
    rep = IntegerOnlyReport(allow=tuple(allow))
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
        elif b.op_name not in INTEGER_RELAX_OPS and not isinstance(b.value, (relax.Var, relax.Tuple,
                                                                             relax.TupleGetItem)):
            problem = f"{where}: Relax op outside the integer op set"
        if problem is None and not dt.startswith(_INT_DTYPES):
            problem = f"{where}: result dtype {dt}"
        if problem:
            rep.add(problem, op_name, b.op_name)
    if raise_on_error:
        rep.raise_if_float()
    return rep


def kernel_origins(mod: tvm.IRModule, func_name: str = "core") -> dict[str, str]:
    """Kernel name -> the op it computes, for every kernel ``func_name`` calls once legalized:
    ``qplugin.op`` for our kernels, the Relax op (``relax.reshape``...) for TVM's legalized ones.
    LegalizeOps names kernels deterministically, so the names match those of the built module."""
    legalized = relax.transform.LegalizeOps()(mod)
    before = {b.name: b.op_name for b in Graph(mod[func_name]).bindings}
    origins = {}
    for b in Graph(legalized[func_name]).bindings:
        if b.op_name == "relax.call_tir":
            gv = b.args[0]
            described = op_of(legalized[gv])
            origins.setdefault(gv.name_hint, described[0] if described else before.get(b.name, gv.name_hint))
    return origins


def check_lowered_kernels(lowered: tvm.IRModule, rep: IntegerOnlyReport, origins: dict[str, str],
                          func_name: str = "core", raise_on_error: bool = True) -> IntegerOnlyReport:
    """The TIR level: run the structural visitor on every kernel ``func_name`` calls in the
    lowered module (:func:`tvm_qplugin.build.lower`) and add its findings to ``rep``."""
    findings = scan_kernels(lowered, func_name)
    rep.tir_kernels = len(findings)
    rep.multiply_free_kernels = check_multiply_free(lowered, origins, func_name)  # shift/add: raises on a multiply
    for kernel, found in findings.items():  # one entry per kernel: float_ops counts float kernels
        if found:
            op_name = origins.get(kernel, kernel)
            shown = ", ".join(f"{f.construct} ({f.dtype})" for f in found[:6]) + (", ..." if len(found) > 6 else "")
            rep.add(f"kernel {kernel} [{op_name}]: {shown}", op_name)
    if raise_on_error:
        rep.raise_if_float()
    return rep


def check_integer_only(mod: tvm.IRModule, target: tvm.target.Target, allow: tuple[str, ...] = (),
                       func_name: str = "core", raise_on_error: bool = False) -> IntegerOnlyReport:
    """Both levels on ``mod`` as :func:`tvm_qplugin.build.build` would compile it for ``target``
    (schedules and lowering only: nothing is compiled). What ``tvm-qplugin verify`` re-runs."""
    from ..build import lower

    rep = verify_integer_only(mod, allow, func_name, raise_on_error=False)
    lowered, _ = lower(mod, target)
    check_lowered_kernels(lowered, rep, kernel_origins(mod, func_name), func_name, raise_on_error=False)
    if raise_on_error:
        rep.raise_if_float()
    return rep


def verify_lowered_tir(mod: tvm.IRModule, func_name: str = "core",
                       target: tvm.target.Target | None = None) -> list[str]:
    """TIR findings (strings) in every kernel ``func_name`` calls, as scheduled and lowered for
    ``target`` (default: this host). Empty when the compiled kernels are integer-only."""
    from ..build import lower

    target = target or tvm.target.Target.from_device(tvm.cpu())
    lowered, _ = lower(mod, target)
    return sorted(str(f) for found in scan_kernels(lowered, func_name).values() for f in found)

