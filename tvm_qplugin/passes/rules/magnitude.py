"""Magnitude ``sqrt(a*a + b*b)`` (a spectrogram's bins from an STFT's real and imaginary parts,
Silero VAD's front end; a vector norm of two components) as one exact integer chain.

Rule by rule, ``a*a`` and ``b*b`` would each be requantized onto the calibrated range of the
power, whose dynamic range is the square of the amplitude's: at 16 bits most quiet bins round to
zero (Silero: the power spectrum at 0 dB SQNR from an STFT at 42 dB). Matched whole at the
``sqrt`` (the anchor) instead, the squares and their sum are exact int32 (``mul_requant`` /
``add_requant`` with unit multipliers) and only ``sqrt_requant`` rounds, once, on the magnitude
itself, into int16 (a spectrum's quiet bins need the resolution). The squares and the sum are *deferred* (their rule emits nothing), as in
rules/pooling_norm.py; a fragment whose inner values are read elsewhere is not matched.
"""
from __future__ import annotations

from dataclasses import dataclass

from tvm import relax

from ...errors import UnsupportedOpError
from ...quant import QType
from ..graph import Binding, Graph, dtype_of
from .activation import sqrt_dyadic
from .base import RULES, IntegerRule, QValue

INT32 = (-(2**31), 2**31 - 1)


@dataclass(frozen=True)
class Magnitude:
    anchor: relax.Var        # the sqrt
    a: relax.Expr
    b: relax.Expr
    members: frozenset       # the two squares and their sum


def _square_of(graph: Graph, e) -> relax.Expr | None:
    p = graph.producer(e)
    if p is None or p.op_name != "relax.multiply" or not p.args[0].same_as(p.args[1]):
        return None
    return p.args[0]


def match_magnitude(graph: Graph, b: Binding) -> Magnitude | None:
    if b.op_name != "relax.sqrt" or not dtype_of(b.var).startswith("float"):
        return None
    add = graph.producer(b.args[0])
    if add is None or add.op_name != "relax.add":
        return None
    a, c = _square_of(graph, add.args[0]), _square_of(graph, add.args[1])
    if a is None or c is None:
        return None
    members = {add.var, graph.producer(add.args[0]).var, graph.producer(add.args[1]).var}
    inside = members | {b.var}
    if any(m in graph.outputs or not {u.var for u in graph.users.get(m, [])} <= inside for m in members):
        return None
    return Magnitude(b.var, a, c, frozenset(members))


def magnitudes(ctx) -> dict:
    """Matched magnitudes by anchor and by member var, once per integerize context."""
    found = getattr(ctx, "_magnitudes", None)
    if found is None:
        found = {}
        for b in ctx.graph.bindings:
            m = match_magnitude(ctx.graph, b)
            if m is not None:
                found[m.anchor] = m
                found.update((v, m) for v in m.members)
        ctx._magnitudes = found
    return found


class QDeferredMagnitudeOp(IntegerRule):
    """A square or the sum inside a matched magnitude: its anchor computes them exactly."""

    ops = ("relax.multiply", "relax.add")

    def check(self, ctx, b):
        m = magnitudes(ctx).get(b.var)
        return None if m is not None and m.anchor is not b.var else "not inside a magnitude sqrt(a*a + b*b)"

    def rewrite(self, ctx, b):
        return None


class QMagnitude(IntegerRule):
    """sqrt(a*a + b*b) -> exact int32 squares and sum, then one ``sqrt_requant`` rounding."""

    ops = ("relax.sqrt",)

    def check(self, ctx, b):
        m = magnitudes(ctx).get(b.var)
        return None if m is not None and m.anchor is b.var else "not a magnitude sqrt(a*a + b*b)"

    def rewrite(self, ctx, b):
        m = magnitudes(ctx)[b.var]
        # operands of at most 16 bits: each square below 2**30, their sum within int32
        a, c = (ctx.narrow(v, bits=16) if v.qtype.dtype == "int32" else v for v in (ctx.q(m.a), ctx.q(m.b)))
        if c.qtype.scale != a.qtype.scale:  # the two parts of one STFT share it; others are aligned
            c = QValue(ctx.requantize(c, a.qtype), a.qtype, c.nonneg)
        squares = [ctx.emit("mul_requant", [v.expr, v.expr], multiplier=1, shift=0, qmin=0, qmax=INT32[1],
                            out_dtype="int32") for v in (a, c)]
        power = ctx.emit("add_requant", squares, ma=1, mb=1, shift=0, qmin=0, qmax=INT32[1], out_dtype="int32")
        # int16 out: a spectrum is mostly quiet bins beside a few loud ones; 8 bits would zero the quiet
        lo, hi = ctx.ranges[b.var]
        out_qt = QType.for_range(0.0, hi, nonneg=False, bits=16)
        dyadic_sqrt = sqrt_dyadic(a.qtype.scale**2 / out_qt.scale**2)  # y = round(sqrt(power * ratio))
        if dyadic_sqrt is None:
            raise UnsupportedOpError(f"magnitude {b.var.name_hint}: output scale {out_qt.scale:g} finer than its inputs' "
                                     f"{a.qtype.scale:g} allow; recalibrate")
        multiplier, shift = dyadic_sqrt
        y = ctx.emit("sqrt_requant", [power], multiplier=multiplier, shift=shift, qmax=out_qt.qmax,
                     out_dtype=out_qt.dtype)
        return QValue(y, out_qt, True)


for _rule in (QDeferredMagnitudeOp(), QMagnitude()):  # before the generic rules of these ops
    for _op in _rule.ops:
        RULES.setdefault(_op, []).insert(0, _rule)

