"""Rebuild a Relax function binding by binding: the skeleton of every graph pass here.

A pass supplies ``rewrite(binding) -> relax.Expr | None``; ``None`` keeps the binding as it was
(with its operands renamed), an expression replaces it. Bindings nobody uses any more are dropped
by ``DeadCodeElimination`` afterwards, so a rule folding ``b`` into ``c`` simply stops referring
to ``b``.
"""
from __future__ import annotations

from typing import Callable

import tvm
from tvm import relax

from .graph import Binding, Graph


def substitute(expr: relax.Expr, remap: dict) -> relax.Expr:
    """``expr`` with variables replaced through ``remap`` (Var, Tuple, TupleGetItem, Call)."""
    if isinstance(expr, relax.Var):
        return remap.get(expr, expr)
    if isinstance(expr, relax.Tuple):
        return relax.Tuple([substitute(f, remap) for f in expr.fields])
    if isinstance(expr, relax.TupleGetItem):
        return relax.TupleGetItem(substitute(expr.tuple_value, remap), expr.index)
    if isinstance(expr, relax.Call):
        return relax.Call(expr.op, [substitute(a, remap) for a in expr.args], expr.attrs, expr.ty_args)
    return expr


class FunctionRewriter:
    """Re-emits ``func`` into a fresh BlockBuilder, applying a per-binding rewrite."""

    def __init__(self, func: relax.Function, mod: tvm.IRModule | None = None):
        self.mod = mod
        self.graph = Graph(func)
        self.func = func
        self.remap: dict[relax.Var, relax.Expr] = {}
        self.bb = relax.BlockBuilder()

    def arg(self, expr: relax.Expr) -> relax.Expr:
        """``expr`` with every variable renamed to its rewritten counterpart."""
        return substitute(expr, self.remap)

    def run(self, rewrite: Callable[[Binding], relax.Expr | None], name: str = "main") -> relax.Function:
        bb = self.bb
        attrs = dict(self.func.attrs) if self.func.attrs is not None else None
        with bb.function(name, self.func.params, attrs=attrs):
            with bb.dataflow():
                for b in self.graph.bindings:
                    new = rewrite(b)
                    self.remap[b.var] = bb.emit(self.arg(b.value) if new is None else new, name_hint=b.var.name)
                out = bb.emit_output(self.arg(self.graph.body))
            bb.emit_func_output(out)
        return bb.get()[name]


def function_pass(rewrite_factory: Callable[[FunctionRewriter], Callable[[Binding], relax.Expr | None]], name: str):
    """Wrap a per-binding rewrite into a module pass over ``main`` followed by dead-code removal."""

    def transform(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        rw = FunctionRewriter(mod["main"], mod)
        new_main = rw.run(rewrite_factory(rw))
        mod = mod.clone() if hasattr(mod, "clone") else mod
        mod.update_func(mod.get_global_var("main"), new_main)
        return relax.transform.DeadCodeElimination(["main"])(mod)

    return tvm.ir.transform.module_pass(transform, opt_level=0, name=name)
