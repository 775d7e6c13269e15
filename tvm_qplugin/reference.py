"""Independent NumPy interpreter of integer Relax modules: the golden model of every target.

It reads the integer module (not the compiled code): each ``call_tir`` names its op and params
in PrimFunc attributes (ops/registry.py) and runs that op's NumPy twin; the few Relax layout ops
the integer graph keeps (reshape, transpose, concat, ...) run as their NumPy equivalents. A
mismatch between this and any compiled build therefore points at codegen, a schedule or an op's
TE definition, never at the reference reusing the thing it checks.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import tvm
from tvm import relax

from .ops import OPS, op_of
from .ops.registry import dtype_of_type


def _ints(v) -> list[int]:
    return [int(x) for x in v]


def _shape(expr) -> tuple[int, ...]:
    return tuple(int(d) for d in expr.ty.shape)


def _pad(call, x):
    widths = _ints(call.attrs.pad_width)
    pairs = list(zip(widths[0::2], widths[1::2]))
    return np.pad(x, pairs, constant_values=x.dtype.type(0))


# Relax ops kept in integer graphs: name -> f(call, *args) -> array
_LAYOUT_OPS: dict[str, Callable] = {
    "relax.reshape": lambda call, x, *_: x.reshape(_shape(call)),
    "relax.flatten": lambda call, x: x.reshape(_shape(call)),
    "relax.squeeze": lambda call, x: x.reshape(_shape(call)),
    "relax.expand_dims": lambda call, x: x.reshape(_shape(call)),
    "relax.permute_dims": lambda call, x: np.transpose(x, None if call.attrs.axes is None else _ints(call.attrs.axes)),
    "relax.concat": lambda call, xs: np.concatenate(xs, axis=int(call.attrs.axis)),
    "relax.nn.pad": _pad,
    "relax.astype": lambda call, x: x.astype(str(call.attrs.dtype)),
    # raw integer / bool ops (token ids, attention masks) and embedding lookups
    "relax.take": lambda call, x, idx: np.take(x, np.clip(idx, 0, x.shape[int(call.attrs.axis)] - 1),
                                               axis=int(call.attrs.axis)),
    "relax.less": lambda call, a, b: np.less(a, b),
    "relax.greater": lambda call, a, b: np.greater(a, b),
    "relax.equal": lambda call, a, b: np.equal(a, b),
    "relax.not_equal": lambda call, a, b: np.not_equal(a, b),
    "relax.add": lambda call, a, b: _same_dtype(call, np.add(a, b)),
    "relax.subtract": lambda call, a, b: _same_dtype(call, np.subtract(a, b)),
    "relax.where": lambda call, c, a, b: _same_dtype(call, np.where(c, a, b)),
    "relax.logical_and": lambda call, a, b: np.logical_and(a, b),
    "relax.logical_or": lambda call, a, b: np.logical_or(a, b),
    "relax.logical_not": lambda call, a: np.logical_not(a),
    "relax.gather_nd": lambda call, x, idx: _gather_nd(x, idx, int(call.attrs.batch_dims)),
    "relax.broadcast_to": lambda call, x, *_: np.broadcast_to(x, _shape(call)).copy(),
}


def _same_dtype(call, v):
    return v.astype(dtype_of_type(call.ty))


def _gather_nd(x, idx, batch_dims):
    if batch_dims:
        raise NotImplementedError("reference gather_nd: batch_dims > 0")
    idx = np.asarray(idx)
    return x[tuple(np.moveaxis(idx, -1, 0))]


class ReferenceInterpreter:
    """Runs a function of an integer Relax module on NumPy arrays.

    Parameters
    ----------
    mod : tvm.IRModule
        An integer module produced by :mod:`tvm_qplugin.passes.integerize`.
    """

    def __init__(self, mod: tvm.IRModule):
        self.mod = mod

    def run(self, func_name: str, *args: np.ndarray, env: dict | None = None) -> list[np.ndarray]:
        """Run ``func_name``; pass ``env={}`` to get every intermediate back, keyed by Relax var."""
        func = self.mod[func_name]
        env = {} if env is None else env
        env.update(zip(func.params, args))
        body = func.body
        for block in body.blocks:
            for binding in block.bindings:
                env[binding.var] = self._eval(binding.value, env)
        out = self._eval(body.body, env)
        return list(out) if isinstance(out, tuple) else [out]

    def _eval(self, expr, env):
        if isinstance(expr, relax.Var):
            return env[expr]
        if isinstance(expr, tvm.ir.GenericConst):
            return expr.value.numpy()
        if isinstance(expr, relax.Tuple):
            return tuple(self._eval(f, env) for f in expr.fields)
        if isinstance(expr, relax.TupleGetItem):
            return self._eval(expr.tuple_value, env)[int(expr.index)]
        if isinstance(expr, relax.Call):
            return self._call(expr, env)
        if isinstance(expr, relax.ShapeExpr):
            return tuple(int(v) for v in expr.values)
        raise NotImplementedError(f"reference interpreter: unsupported expression {type(expr).__name__}")

    def _call(self, call: relax.Call, env):
        op = call.op
        if isinstance(op, tvm.ir.Op) and op.name == "relax.call_tir":
            gvar, tir_args = call.args[0], call.args[1]
            described = op_of(self.mod[gvar])
            if described is None:
                raise NotImplementedError(f"reference interpreter: PrimFunc {gvar.name_hint} carries no qplugin.op")
            name, params = described
            arrays = [self._eval(a, env) for a in tir_args.fields]
            return OPS[name].reference(*arrays, **params)
        if isinstance(op, tvm.ir.Op):
            fn = _LAYOUT_OPS.get(op.name)
            if fn is None:
                raise NotImplementedError(f"reference interpreter: no NumPy twin for Relax op {op.name}")
            return fn(call, *[self._eval(a, env) for a in call.args])
        if isinstance(op, relax.GlobalVar):
            outs = self.run(op.name_hint, *[self._eval(a, env) for a in call.args])
            return tuple(outs) if isinstance(self.mod[op].ret_struct_info, relax.TupleStructInfo) else outs[0]
        raise NotImplementedError(f"reference interpreter: unsupported callee {op}")
