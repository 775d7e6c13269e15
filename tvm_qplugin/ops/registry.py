"""The integer op registry: each op is a TE definition and a NumPy twin, side by side.

An integer op is emitted into the integer Relax module as ``R.call_tir`` of a PrimFunc built from
its TE definition. The PrimFunc carries two attributes, ``qplugin.op`` (the op name) and
``qplugin.params`` (its compile-time parameters, JSON), so the NumPy reference interpreter, the
verifier and the C exporter can all recover *what* a kernel computes from the module alone,
without trusting the kernel's code.
"""
from __future__ import annotations

import contextlib
import json
from typing import Callable, ClassVar

import numpy as np
import tvm
from tvm import relax, te

OP_ATTR = "qplugin.op"
PARAMS_ATTR = "qplugin.params"


class IntegerOp:
    """Base class: subclasses set ``name`` and implement ``compute`` (TE) and ``reference`` (NumPy).

    ``compute(*placeholders, **params) -> te.Tensor`` defines the kernel; ``reference(*arrays,
    **params) -> np.ndarray`` is its golden twin and must not share code with ``compute``.
    ``integer_only`` is False only for the boundary ops (entry quantize, exit dequantize).
    """

    name: ClassVar[str]
    integer_only: ClassVar[bool] = True

    def compute(self, *args: te.Tensor, **params) -> te.Tensor:  # pragma: no cover - interface
        raise NotImplementedError

    def reference(self, *args: np.ndarray, **params) -> np.ndarray:  # pragma: no cover
        raise NotImplementedError

    def prim_func(self, arg_types: list[tuple[tuple[int, ...], str]], **params) -> tuple[tvm.tirx.PrimFunc, relax.TensorType]:
        """Build the PrimFunc for concrete argument shapes/dtypes; also return its output type."""
        holders = [te.placeholder(shape, dtype, name=f"arg{i}") for i, (shape, dtype) in enumerate(arg_types)]
        out = self.compute(*holders, **params)
        func = te.create_prim_func([*holders, out]).without_attr("global_symbol")
        func = func.with_attr(OP_ATTR, self.name).with_attr(PARAMS_ATTR, json.dumps(params, sort_keys=True))
        return func, relax.TensorType([int(d) for d in out.shape], str(out.dtype))


OPS: dict[str, IntegerOp] = {}


def register_op(cls: type[IntegerOp]) -> type[IntegerOp]:
    """Class decorator adding an op to :data:`OPS` under ``cls.name``."""
    if cls.name in OPS:
        raise ValueError(f"integer op {cls.name!r} registered twice")
    OPS[cls.name] = cls()
    return cls


def op_of(func: tvm.tirx.PrimFunc) -> tuple[str, dict] | None:
    """``(op name, params)`` of a PrimFunc built by :meth:`IntegerOp.prim_func`, else None."""
    attrs = func.attrs
    if attrs is None or OP_ATTR not in attrs:
        return None
    return str(attrs[OP_ATTR]), json.loads(str(attrs[PARAMS_ATTR]))


def type_of(expr: relax.Expr) -> tuple[tuple[int, ...], str]:
    """Static ``(shape, dtype)`` of a Relax tensor expression."""
    return type_of_ty(expr.ty)


def type_of_ty(ty) -> tuple[tuple[int, ...], str]:
    return tuple(int(d) for d in ty.shape), dtype_of_type(ty)


def dtype_of_type(ty) -> str:
    """The dtype string of a Relax tensor type (``ty.dtype`` is a DataType or wraps one). The one
    place that knows this; ``passes.graph.dtype_of`` reads an expression's type through it."""
    dt = ty.dtype
    return str(dt.dtype) if hasattr(dt, "dtype") else str(dt)


_REUSED: dict | None = None  # (op, argument types, params) -> (PrimFunc, out type) inside reuse_kernels()


@contextlib.contextmanager
def reuse_kernels(kernels: dict):
    """Inside it, an op emitted with the argument types and params of one in ``kernels`` (filled by
    every such block given the same dict) takes that PrimFunc instead of building it again (the
    op's TE definition is a function of those alone). ``--wide-inputs auto`` integerizes the graph
    a second time once its plan is known (quant/wide_inputs.py) and only the narrowed consumers'
    kernels differ: building every kernel anew was 85 % of that second pass."""
    global _REUSED
    saved, _REUSED = _REUSED, kernels
    try:
        yield
    finally:
        _REUSED = saved


def emit(bb: relax.BlockBuilder, op_name: str, args: list[relax.Expr], **params) -> relax.Var:
    """Emit ``call_tir(op(params), args)`` into ``bb`` and return the bound variable."""
    op = OPS[op_name]
    arg_types = [type_of(a) for a in args]
    if _REUSED is None:
        func, out_ty = op.prim_func(arg_types, **params)
    else:
        key = (op_name, repr(arg_types), json.dumps(params, sort_keys=True))
        if key not in _REUSED:
            _REUSED[key] = op.prim_func(arg_types, **params)
        func, out_ty = _REUSED[key]
    gvar = bb.add_func(func, _kernel_name(op_name, arg_types, type_of_ty(out_ty)[1]))
    return bb.emit(relax.call_tir(gvar, args, out_ty))


_DTYPE_CODES = {"int8": "s8", "uint8": "u8", "int16": "s16", "int32": "s32", "int64": "s64", "float32": "f32"}


def _kernel_name(op_name: str, arg_types, out_dtype: str) -> str:
    """Kernel names carry op and dtypes (``conv2d_requant_s8s8_s8``), CMSIS-NN style."""
    codes = "".join(_DTYPE_CODES.get(dt, dt) for _, dt in arg_types[:2])
    return f"{op_name}_{codes}_{_DTYPE_CODES.get(out_dtype, out_dtype)}"


def const(value: np.ndarray) -> tvm.ir.GenericConst:
    """``relax.const`` that keeps the NumPy dtype (plain ``relax.const`` turns int64 into int32)."""
    value = np.ascontiguousarray(value)
    return relax.const(value, str(value.dtype))


Compute = Callable[..., te.Tensor]
