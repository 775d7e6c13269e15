"""Constant folding in NumPy for the ops whose result involves no float arithmetic.

Why: TVM's ``FoldConstant`` evaluates every all-constant call by legalizing it and building it with
LLVM, ~60 ms of CPU per call. The ONNX importer leaves many such calls: each ``Clip`` becomes
``where(isnan(bound), -inf, bound)`` on scalar constants, each bias a ``reshape`` of a constant.
MobileNetV2 had 193 of them: 11.7 s of CPU (27 s at load 7) spent building kernels that move or
test a handful of values. Here those calls are evaluated with NumPy first; ``FoldConstant`` then
only forwards the constants (and still folds any arithmetic left, with TVM's own kernels).

Only data movement and exact predicates are folded (reshape, transpose, broadcast, concat,
``isnan``, ``where``): their NumPy results are bit for bit what the TVM kernels compute, so the
graph that follows is the one ``FoldConstant`` alone produced. Arithmetic is left to TVM (its
rounding, not NumPy's, is what the float model has always been calibrated with).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from tvm import relax

from ..ops import const
from .graph import Binding, const_value, dtype_of, shape_of
from .rewriter import FunctionRewriter, function_pass


def _transpose(b: Binding, values: list[np.ndarray], out_shape) -> np.ndarray:
    axes = b.attrs.axes
    return np.transpose(values[0], None if axes is None else [int(a) for a in axes])


def _concat(b: Binding, values: list[np.ndarray], out_shape) -> np.ndarray:
    return np.concatenate(values, axis=int(b.attrs.axis))


#: op -> NumPy evaluation from the constant operands' values (the first operand only for the
#: shape-taking ops, whose target shape is the binding's own static shape)
RESHAPED = (False, lambda b, v, shape: np.reshape(v[0], shape))  # every op that only reshapes
EXACT_FOLDS: dict[str, tuple[bool, Callable]] = {
    **dict.fromkeys(("relax.reshape", "relax.expand_dims", "relax.squeeze", "relax.flatten"), RESHAPED),
    "relax.broadcast_to": (False, lambda b, v, shape: np.broadcast_to(v[0], shape)),
    "relax.permute_dims": (False, _transpose),
    "relax.concat": (True, _concat),
    "relax.isnan": (True, lambda b, v, shape: np.isnan(v[0])),
    "relax.where": (True, lambda b, v, shape: np.where(v[0], v[1], v[2])),
}


def _fold_exact(rw: FunctionRewriter):
    values: dict[relax.Var, np.ndarray] = {}  # bindings already folded here, by variable

    def value_of(e: relax.Expr) -> np.ndarray | None:
        return values.get(e) if isinstance(e, relax.Var) else const_value(e)

    def rewrite(b: Binding):
        fold = EXACT_FOLDS.get(b.op_name)
        if fold is None or not isinstance(b.var.ty, relax.TensorType):
            return None
        all_args, evaluate = fold
        if b.op_name == "relax.concat" and not isinstance(b.args[0], relax.Tuple):
            return None
        operands = list(b.args[0].fields) if b.op_name == "relax.concat" else b.args if all_args else b.args[:1]
        args = [value_of(a) for a in operands]
        if any(a is None for a in args):
            return None
        try:
            shape, dtype = shape_of(b.var), dtype_of(b.var)
        except (TypeError, ValueError, AttributeError):  # symbolic shape: left to FoldConstant
            return None
        out = np.array(evaluate(b, args, shape), dtype=dtype)  # a copy, C-contiguous, 0-d kept 0-d
        if out.shape != shape:
            return None
        values[b.var] = out
        return const(out)

    return rewrite


FoldExactConstants = function_pass(_fold_exact, "FoldExactConstants")
