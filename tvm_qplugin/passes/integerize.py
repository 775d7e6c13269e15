"""IntegerizeGraph: float canonical Relax ``main`` + calibrated ranges -> integer Relax module.

The output module has two Relax functions:

* ``core`` -- integer in, integer out; every op is an integer ``call_tir`` kernel
  (ops/) or an integer layout op. This is what ``verify_integer_only`` checks and what the
  reference interpreter, the TVM build and the C exporter all run.
* ``main`` -- float in, float out: entry ``quantize``, ``core``, exit ``dequantize``
  (with ``int_io`` it is ``core`` itself).

One rule per float op kind (passes/rules/) rewrites a float binding into integer ops; a rule may
absorb the bindings right after it (bias add, ReLU/Clip) when it is their only user. Ops no rule
takes are collected over the whole graph and reported once.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import tvm
from tvm import relax

from ..errors import UnsupportedOpError
from ..ops import emit
from ..quant import QType, abs_max
from ..quant.scheme import NonlinearScheme
from . import rules as _rules  # noqa: F401  (importing the rule modules registers them)
from .functions import CORE, integer_function
from .graph import Graph, const_value, dtype_of, shape_of
from .rules.base import (RULES, Epilogue, IntegerRule, LayerInfo, QValue, is_channel_vector,  # noqa: F401
                         activation_bounds, clamp_bounds, register_rule)

log = logging.getLogger(__name__)


INPUT_BITS = (8, 16)
WIDE_INPUT_BITS = (8, 16)  # what a conv / dense may read of an int16 (residual stream) input


@dataclass(frozen=True)
class IntegerizeConfig:
    """How the graph is integerized (the int8 scheme of DESIGN.md "Numerics")."""

    weight_bits: int = 8
    activation_bits: int = 8
    output_bits: int = 24        # graph outputs of accumulating ops keep 24 bits (int32 dtype)
    residual_bits: int = 16      # signed (un-activated) conv/dense/add outputs: the residual stream
    bias_correction: bool = True  # subtract the expected weight-rounding error from the bias
    # softmax / GELU / LayerNorm: variant, GELU form, softmax width, ShiftExp refinement
    scheme: NonlinearScheme = NonlinearScheme()
    int_io: bool = False
    input_bits: int = 8          # float model inputs: 16 for audio / sensor streams and recurrent states
    # per-layer (float binding name, w_bits, a_bits) of conv / dense layers (quant/precision.py);
    # layers not listed get (weight_bits, activation_bits)
    layer_bits: tuple[tuple[str, int, int], ...] = ()
    shiftadd: object = None      # passes/shiftadd.ShiftAddPlan: shift linears / add attention, None = all int8
    # what a conv / dense reads of an int16 input (the residual stream stays int16 either way):
    # 16 keeps it (vpdpwssd), 8 requantizes that consumer's input (vpdpbusd); ``narrowed_inputs``
    # names the float bindings read at 8 bits whatever ``wide_input_bits`` says (quant/wide_inputs.py)
    wide_input_bits: int = 16
    narrowed_inputs: tuple[str, ...] = ()

    def __post_init__(self):
        if self.weight_bits != 8 or self.activation_bits != 8:
            raise ValueError("only the int8 scheme is implemented (weight_bits=8, activation_bits=8)")
        if self.input_bits not in INPUT_BITS:
            raise ValueError(f"input_bits {self.input_bits}: choose one of {INPUT_BITS}")
        if self.wide_input_bits not in WIDE_INPUT_BITS:
            raise ValueError(f"wide_input_bits {self.wide_input_bits}: choose one of {WIDE_INPUT_BITS}")

    def bits_of(self, layer: str) -> tuple[int, int]:
        """``(w_bits, a_bits)`` of the conv / dense binding named ``layer``."""
        return next(((w, a) for name, w, a in self.layer_bits if name == layer),
                    (self.weight_bits, self.activation_bits))


class IntegerizeContext:
    """What rules see: the float graph, calibrated ranges, the builder and the values so far."""

    def __init__(self, graph: Graph, ranges, config: IntegerizeConfig, bb: relax.BlockBuilder):
        self.graph, self.ranges, self.config, self.bb = graph, ranges, config, bb
        self.values: dict[relax.Var, QValue] = {}
        self.consumed: set[relax.Var] = set()
        self.layers: list[LayerInfo] = []

    # --- operands ---
    def q(self, expr: relax.Expr) -> QValue:
        try:
            return self.values[expr]
        except KeyError:
            raise UnsupportedOpError(f"operand {getattr(expr, 'name', expr)!s} has no integer value "
                                     "(produced by an op that was not integerized)") from None

    @staticmethod
    def const(expr: relax.Expr) -> np.ndarray | None:
        return const_value(expr)

    def is_output(self, var: relax.Var) -> bool:
        return var in self.graph.outputs

    def out_qtype(self, var: relax.Var, nonneg: bool, wide_ok: bool = True) -> QType:
        """Quantized type of a float variable from its calibrated range.

        ``wide_ok`` marks accumulating producers (conv, dense, add, mean). Their graph outputs
        keep ``output_bits`` (logits must not tie after rounding to 256 levels), and their signed
        outputs -- linear bottlenecks and residual sums, which no ReLU bounds -- keep
        ``residual_bits`` (HAWQ-V3 keeps the residual path wide): on MobileNetV2 the int8
        projection outputs alone cost 15-25 dB of SQNR each. Unsigned (post-ReLU) tensors stay 8-bit.
        """
        bits = self.config.activation_bits
        if wide_ok and self.is_output(var):
            bits = self.config.output_bits
        elif wide_ok and not nonneg:
            bits = self.config.residual_bits
        lo, hi = self.ranges[var]
        hist = getattr(self.ranges, "histograms", {}).get(var)
        if bits > 8 and hist is not None:
            # clipping trades range for resolution, which only pays at 8 bits: wide tensors keep
            # every observed value (transformer FFN outliers are signal, not noise)
            lo, hi = hist.lo, hist.hi
        if nonneg:
            lo = 0.0
        return QType.for_range(lo, hi, nonneg=nonneg, bits=bits)

    def narrow_for_accumulation(self, x: QValue, reduction: int) -> QValue:
        """``x`` requantized to 8 bits if ``reduction`` products of it with int8 weights could
        overflow the int32 accumulator (only wide inputs can)."""
        if reduction * max(abs(x.qtype.qmin), x.qtype.qmax) * abs_max("int8") < 2**31:  # int8 weights
            return x
        return self.narrow(x)

    def read_width(self, x: QValue, layer: str) -> tuple[QValue, QValue | None]:
        """What the conv / dense binding ``layer`` reads of its input ``x``, and the wide value it
        was narrowed from (None when read as is). Only an int16 input (the residual stream) can be
        narrowed: the stream itself keeps its 16 bits for the adds and the skip path; this one
        consumer gets its own 8-bit requantization, so its kernel multiplies bytes (vpdpbusd) instead
        of words (vpdpwssd) -- the precision / speed trade-off of docs/precision.md."""
        if x.qtype is None or x.qtype.dtype != "int16":
            return x, None
        if self.config.wide_input_bits == 8 or layer in self.config.narrowed_inputs:
            return self.narrow(x), x
        return x, x

    def narrow(self, x: QValue, signed: bool | None = None, bits: int = 8) -> QValue:
        """``x`` requantized to ``bits`` over its full current range (signedness kept or forced)."""
        amax = x.qtype.scale * max(abs(x.qtype.qmin), x.qtype.qmax)
        nonneg = x.nonneg if signed is None else (not signed and x.nonneg)
        narrow = QType.for_range(0.0 if nonneg else -amax, amax, nonneg=nonneg, bits=bits)
        return QValue(self.requantize(x, narrow), narrow, nonneg)

    # --- fusion ---
    def epilogue(self, var: relax.Var, channel_axis: int | None, allow_bias: bool = True) -> Epilogue:
        """Absorb a following per-channel bias add and ReLU/Clip when ``var`` is their sole input."""
        ep = Epilogue(var, None)
        nxt = self.graph.sole_user(var)
        if allow_bias and channel_axis is not None and nxt is not None and nxt.op_name == "relax.add":
            other = nxt.args[1] if nxt.args[0].same_as(var) else nxt.args[0]
            c = const_value(other)
            n = shape_of(var)[channel_axis]
            if c is not None and c.size == n and c.reshape(-1).size == n and is_channel_vector(c, shape_of(var), channel_axis):
                ep.bias = c.reshape(-1).astype(np.float64)
                self.consumed.add(nxt.var)
                ep.var = nxt.var
                nxt = self.graph.sole_user(nxt.var)
        if nxt is not None and nxt.op_name in ("relax.nn.relu", "relax.clip", "relax.nn.relu6"):
            ep.lo, ep.hi = activation_bounds(nxt)
            self.consumed.add(nxt.var)
            ep.var = nxt.var
        return ep

    # --- emission ---
    def emit(self, op_name: str, args: list[relax.Expr], **params) -> relax.Var:
        return emit(self.bb, op_name, args, **params)

    def emit_relax(self, expr: relax.Expr) -> relax.Var:
        return self.bb.emit(expr)

    def requantize(self, v: QValue, target: QType) -> relax.Expr:
        """``v`` rescaled to ``target`` (identity when the types already agree)."""
        from ..quant import dyadic

        if v.qtype == target:
            return v.expr
        d = dyadic(v.qtype.scale / target.scale)
        return self.emit("requantize", [v.expr], multiplier=d.multiplier, shift=d.shift, qmin=target.qmin,
                         qmax=target.qmax, out_dtype=target.dtype)


@dataclass
class IntegerModule:
    """The product of integerization: the module plus its I/O contract and per-layer facts."""

    mod: tvm.IRModule
    inputs: list[tuple[str, tuple[int, ...], QType]]
    outputs: list[tuple[str, tuple[int, ...], QType]]
    layers: list[LayerInfo] = field(default_factory=list)
    # each quantized tensor's integer twin, for per-tensor error reports (diagnose.py)
    tensors: list["TensorTwin"] = field(default_factory=list)


@dataclass(frozen=True)
class TensorTwin:
    """A float tensor of the canonical ``main`` and the integer var that holds it (``real ~= scale * int``)."""

    float_var: relax.Var
    int_var: relax.Var
    qtype: QType
    ops: str            # the float op(s) the integer kernel computes, fused ones joined: "nn.conv2d+add+nn.relu"


def find_unsupported(graph: Graph, ctx: IntegerizeContext) -> list[tuple[str, str, str]]:
    """``(var, op, reason)`` for every binding no rule takes."""
    problems = []
    for b in graph.bindings:
        rules = RULES.get(b.op_name)
        if not rules:
            problems.append((b.name, b.op_name, "no integer rule"))
            continue
        reasons = [r.check(ctx, b) for r in rules]
        if all(reasons):
            problems.append((b.name, b.op_name, "; ".join(reasons)))
    return problems


def integerize(float_mod: tvm.IRModule, ranges, config: IntegerizeConfig = IntegerizeConfig()) -> IntegerModule:
    """Rewrite the canonical float ``main`` into the integer module described above."""
    graph = Graph(float_mod["main"])
    bb = relax.BlockBuilder()
    ctx = IntegerizeContext(graph, ranges, config, bb)
    problems = find_unsupported(graph, ctx)
    if problems:
        supported = ", ".join(sorted(RULES))
        listing = "; ".join(f"{v}: {op} ({why})" for v, op, why in problems)
        raise UnsupportedOpError(f"cannot integerize {len(problems)} op(s): {listing}. Supported Relax ops: {supported}",
                                 tuple(problems))

    inputs = []
    core_params = []
    for p in graph.params:
        if not dtype_of(p).startswith("float"):  # token ids, masks: already integer, no scale
            qp = relax.Var(p.name, relax.TensorType(list(shape_of(p)), dtype_of(p)))
            core_params.append(qp)
            ctx.values[p] = QValue(qp, None, kind="raw")
            inputs.append((p.name, shape_of(p), None))
            continue
        lo, hi = ranges[p]
        qt = QType.for_range(lo, hi, nonneg=lo >= 0 and config.input_bits == 8, bits=config.input_bits)
        qp = relax.Var(p.name, relax.TensorType(list(shape_of(p)), qt.dtype))
        core_params.append(qp)
        ctx.values[p] = QValue(qp, qt, nonneg=lo >= 0)
        inputs.append((p.name, shape_of(p), qt))

    core_name = integer_function(config.int_io)
    with bb.function(core_name, core_params):
        with bb.dataflow():
            for b in graph.bindings:
                if b.var in ctx.consumed:
                    continue
                rule = next(r for r in RULES[b.op_name] if r.check(ctx, b) is None)
                qv = rule.rewrite(ctx, b)
                if qv is None:  # deferred: a later binding's rule computes it (rules/pooling_norm.py)
                    continue
                if qv.kind != "mask":  # a rule must preserve the float binding's shape
                    got = tuple(int(d) for d in qv.expr.ty.shape)
                    assert got == shape_of(b.var), f"{type(rule).__name__} on {b.name}: shape {got} != {shape_of(b.var)}"
                ctx.values[b.var] = qv
            out_vals = [ctx.values[v] for v in graph.outputs]
            out_exprs = [bb.emit_output(v.expr) for v in out_vals]
        bb.emit_func_output(out_exprs[0] if len(out_exprs) == 1 else relax.Tuple(out_exprs))
    outputs = [(v.name, shape_of(v), qv.qtype) for v, qv in zip(graph.outputs, out_vals)]

    if not config.int_io:
        _emit_float_main(bb, bb.get().get_global_var(CORE), graph, inputs, outputs)
    mod = bb.finalize()
    return IntegerModule(mod, inputs, outputs, ctx.layers, _tensor_map(graph, ctx))


def _tensor_map(graph: Graph, ctx: IntegerizeContext) -> list[TensorTwin]:
    """Quantized float tensors and their integer twins. When fusion maps several float vars to one
    integer value (conv + bias + ReLU), only the last -- the one the integer value equals -- is kept."""
    producers = {b.var: b.op_name.removeprefix("relax.") for b in graph.bindings}
    group: dict[relax.Var, list[relax.Var]] = {}
    for v in list(graph.params) + [b.var for b in graph.bindings]:
        qv = ctx.values.get(v)
        if qv is not None and qv.kind == "quant" and isinstance(qv.expr, relax.Var):
            group.setdefault(qv.expr, []).append(v)
    return [TensorTwin(fvs[-1], iv, ctx.values[fvs[-1]].qtype, "+".join(producers.get(f, "input") for f in fvs))
            for iv, fvs in group.items()]


def _emit_float_main(bb, core_gv, graph: Graph, inputs, outputs) -> None:
    params = [relax.Var(p.name, relax.TensorType(list(shape_of(p)), dtype_of(p))) for p in graph.params]
    with bb.function("main", params):
        with bb.dataflow():
            qs = [p if qt is None else
                  emit(bb, "quantize", [p], inv_scale=1.0 / qt.scale, qmin=qt.qmin, qmax=qt.qmax, out_dtype=qt.dtype)
                  for p, (_, _, qt) in zip(params, inputs)]
            res = bb.emit(relax.Call(core_gv, qs))
            outs = []
            for i, (_, _, qt) in enumerate(outputs):
                item = res if len(outputs) == 1 else bb.emit(relax.TupleGetItem(res, i))
                outs.append(bb.emit_output(emit(bb, "dequantize", [item], scale=qt.scale)))
        bb.emit_func_output(outs[0] if len(outs) == 1 else relax.Tuple(outs))

