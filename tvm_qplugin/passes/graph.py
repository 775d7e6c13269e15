"""A read-only view of a Relax function as a list of bindings with use-def information.

The integerizing passes walk a model's ``main`` in order and sometimes look one consumer ahead
(to fuse a bias add or an activation into the op before it); this view gives them that without
re-deriving use counts in every rule.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..ops.registry import dtype_of_type


@dataclass(eq=False)
class Binding:
    var: relax.Var
    value: relax.Expr

    @property
    def op_name(self) -> str:
        v = self.value
        if isinstance(v, relax.Call):
            if isinstance(v.op, tvm.ir.Op):
                return v.op.name
            return f"call:{getattr(v.op, 'name_hint', v.op)}"
        return type(v).__name__

    @property
    def args(self) -> list[relax.Expr]:
        return list(self.value.args) if isinstance(self.value, relax.Call) else []

    @property
    def attrs(self):
        return self.value.attrs

    @property
    def name(self) -> str:
        return self.var.name


def const_value(expr: relax.Expr) -> np.ndarray | None:
    """NumPy value of a constant expression, else None."""
    if isinstance(expr, tvm.ir.GenericConst):
        return expr.value.numpy()
    return None


def shape_of(expr: relax.Expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


def dtype_of(expr: relax.Expr) -> str:
    return dtype_of_type(expr.ty)


class Graph:
    """Bindings of one Relax function in program order, with their users and outputs."""

    def __init__(self, func: relax.Function):
        self.func = func
        self.params = list(func.params)
        self.bindings: list[Binding] = []
        for block in func.body.blocks:
            for b in block.bindings:
                self.bindings.append(Binding(b.var, b.value))
        self.by_var = {b.var: b for b in self.bindings}
        self.users: dict[relax.Var, list[Binding]] = {}
        for b in self.bindings:
            for v in _vars_in(b.value):
                self.users.setdefault(v, []).append(b)
        self.body = func.body.body
        self.outputs = self._resolve_outputs(self.body)

    def _resolve_outputs(self, expr) -> list[relax.Var]:
        if isinstance(expr, relax.Tuple):
            return [v for f in expr.fields for v in self._resolve_outputs(f)]
        if isinstance(expr, relax.Var):
            b = self.by_var.get(expr)
            if b is not None and isinstance(b.value, relax.Var):  # gv = lv alias
                return self._resolve_outputs(b.value)
            if b is not None and isinstance(b.value, relax.Tuple):
                return self._resolve_outputs(b.value)
            return [expr]
        return []

    def sole_user(self, var: relax.Var) -> Binding | None:
        """The one binding reading ``var`` if ``var`` has exactly one use and is not an output."""
        users = self.users.get(var, [])
        if len(users) != 1 or var in self.outputs:
            return None
        return users[0]

    def producer(self, var: relax.Expr) -> Binding | None:
        return self.by_var.get(var) if isinstance(var, relax.Var) else None


def _vars_in(expr) -> list[relax.Var]:
    found: list[relax.Var] = []

    def visit(e):
        if isinstance(e, relax.Var):
            found.append(e)

    relax.analysis.post_order_visit(expr, visit)
    return found
