"""The integer Relax module as a C package graph: values, steps and their liveness.

:func:`build_graph` walks the integer function (``core``, or ``main`` of an ``int_io`` module)
exactly like the NumPy reference does -- every ``call_tir`` names its op and params in PrimFunc
attributes (``ops.op_of``), the few Relax layout ops are copies or aliases. A :class:`Val` is
one piece of memory (kernel output, graph input, constant, scratch); a :class:`Ref` is a view of
it with the shape/dtype of the Relax expression that names it, so reshape/flatten/squeeze/
expand_dims cost nothing. :mod:`.arena` then decides which values share bytes and where they sit.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm import relax

from ..errors import UnsupportedOpError
from ..ops import op_of
from ..ops.registry import type_of
from ..passes.functions import integer_function_in

ALIGN = 16        # arena offsets and sizes are multiples of this (vector loads, any C type)

# dtype -> (code, C type, bytes, qk_cast code)
DTYPES = {
    "uint8": ("u8", "uint8_t", 1, 0), "int8": ("s8", "int8_t", 1, 1), "uint16": ("u16", "uint16_t", 2, 2),
    "int16": ("s16", "int16_t", 2, 3), "uint32": ("u32", "uint32_t", 4, 4), "int32": ("s32", "int32_t", 4, 5),
    "bool": ("u8", "uint8_t", 1, 0),
}
ALIAS_OPS = ("relax.reshape", "relax.flatten", "relax.squeeze", "relax.expand_dims")
MAX_DIMS = 6


def dt_info(dtype: str) -> tuple[str, str, int, int]:
    """(type code, C type, bytes, qk_cast code) of a tensor dtype; one line naming it if unsupported."""
    try:
        return DTYPES[dtype]
    except KeyError:
        raise UnsupportedOpError(f"C package: tensors of dtype {dtype} are not supported "
                                 f"(supported: {', '.join(DTYPES)})") from None


def prod(shape) -> int:
    """Element count of a shape (1 for a scalar)."""
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def row_major_strides(shape) -> list[int]:
    """Element strides of a contiguous row-major tensor."""
    s, acc = [], 1
    for d in reversed(shape):
        s.append(acc)
        acc *= int(d)
    return list(reversed(s))


# ----------------------------------------------------------------------------------------------
# graph model
# ----------------------------------------------------------------------------------------------

@dataclass(eq=False)
class Val:
    """One piece of memory: a kernel output, a graph input, a constant or a scratch area."""

    name: str
    shape: tuple
    dtype: str
    kind: str                     # input | const | arena | scratch
    index: int = -1               # input index
    const: np.ndarray | None = None
    def_step: int = -1
    last_step: int = -1
    out_index: int = -1           # >= 0: lives in the caller's output buffer of that index
    parent: "Val | None" = None   # aliasing: this value's bytes are parent's bytes at poff
    poff: int = 0

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * dt_info(self.dtype)[2] if self.kind != "scratch" else self.shape[0]

    @property
    def itemsize(self) -> int:
        return dt_info(self.dtype)[2]

    def root(self) -> tuple["Val", int]:
        v, off = self, 0
        while v.parent is not None:
            off += v.poff
            v = v.parent
        return v, off


@dataclass(eq=False)
class Ref:
    """A view of a Val with the shape/dtype of the Relax expression that names it."""

    val: Val
    shape: tuple
    dtype: str

    @property
    def nbytes(self) -> int:
        return prod(self.shape) * dt_info(self.dtype)[2]


@dataclass(eq=False)
class Step:
    index: int
    name: str                     # the Relax variable bound
    op: str                       # integer op name or relax op name
    kernel: str                   # PrimFunc name (call_tir) or ""
    params: dict
    args: list[Ref]
    out: Ref
    scratch: Val | None = None
    macs: int = 0
    c_func: str = ""
    weight_bytes: int = 0


@dataclass
class Graph:
    inputs: list[Ref]
    outputs: list[Ref]
    steps: list[Step]
    vals: list[Val]
    func_name: str


def integer_function(mod: tvm.IRModule) -> tuple[str, relax.Function]:
    """``core`` (an ``int_io`` module's integer core) or else ``main``: the function the package runs."""
    names = {gv.name_hint for gv in mod.get_global_vars()}
    name = integer_function_in(names)
    return name, mod[name]


def build_graph(mod: tvm.IRModule) -> Graph:
    """The steps of the integer function in binding order, with each value's def/last-use step."""
    fname, func = integer_function(mod)
    vals: list[Val] = []
    env: dict = {}

    def new_val(**kw) -> Val:
        v = Val(**kw)
        vals.append(v)
        return v

    inputs = []
    for i, p in enumerate(func.params):
        shape, dtype = type_of(p)
        dt_info(dtype)
        r = Ref(new_val(name=p.name, shape=shape, dtype=dtype, kind="input", index=i), shape, dtype)
        env[p] = r
        inputs.append(r)

    def ref(expr) -> Ref:
        if isinstance(expr, relax.Var):
            return env[expr]
        if isinstance(expr, tvm.ir.GenericConst):
            a = np.ascontiguousarray(expr.value.numpy())
            dtype = str(a.dtype)
            v = new_val(name=f"c{len(vals)}", shape=tuple(a.shape), dtype=dtype, kind="const", const=a)
            return Ref(v, tuple(a.shape), dtype)
        raise UnsupportedOpError(f"C package: unsupported argument expression {type(expr).__name__}")

    steps: list[Step] = []
    for block in func.body.blocks:
        for b in block.bindings:
            var, value = b.var, b.value
            if isinstance(value, relax.Var):
                env[var] = env[value]
                continue
            if isinstance(value, relax.TupleGetItem) or isinstance(value, relax.Tuple):
                raise UnsupportedOpError(f"C package: tuple-valued binding {var.name} is not supported")
            if not isinstance(value, relax.Call) or not isinstance(value.op, tvm.ir.Op):
                raise UnsupportedOpError(f"C package: binding {var.name} is not an integer kernel or layout op")
            shape, dtype = type_of(var)
            dt_info(dtype)
            opname = value.op.name
            if opname in ALIAS_OPS:
                src = ref(value.args[0])
                if src.nbytes != prod(shape) * dt_info(dtype)[2] or src.dtype != dtype:
                    raise UnsupportedOpError(f"C package: {opname} {var.name} changes size or dtype")
                env[var] = Ref(src.val, shape, dtype)
                continue
            if opname == "relax.call_tir":
                gvar = value.args[0]
                described = op_of(mod[gvar])
                if described is None:
                    raise UnsupportedOpError(f"C package: PrimFunc {gvar.name_hint} carries no qplugin.op tag")
                op, params = described
                args = [ref(a) for a in value.args[1].fields]
                kernel = gvar.name_hint
            elif opname == "relax.concat":
                op, kernel = opname, ""
                params = {"axis": int(value.attrs.axis)}
                args = [ref(a) for a in value.args[0].fields]
            elif opname == "relax.permute_dims":
                op, kernel = opname, ""
                axes = value.attrs.axes
                params = {"axes": None if axes is None else [int(a) for a in axes]}
                args = [ref(value.args[0])]
            elif opname == "relax.nn.pad":
                op, kernel = opname, ""
                w = [int(x) for x in value.attrs.pad_width]
                mode = str(getattr(value.attrs, "pad_mode", "constant"))
                if mode not in ("constant", ""):
                    raise UnsupportedOpError(f"C package: pad mode {mode} of {var.name}")
                if float(getattr(value.attrs, "pad_value", 0.0) or 0.0) != 0.0:
                    raise UnsupportedOpError(f"C package: pad {var.name} with a nonzero pad value")
                params = {"pad_width": w}
                args = [ref(value.args[0])]
            elif opname == "relax.astype":
                op, kernel, params = opname, "", {}
                args = [ref(value.args[0])]
            else:
                raise UnsupportedOpError(f"C package: Relax op {opname} ({var.name}) has no C kernel")
            out = Ref(new_val(name=var.name, shape=shape, dtype=dtype, kind="arena", def_step=len(steps)),
                      shape, dtype)
            env[var] = out
            steps.append(Step(len(steps), var.name, op, kernel, params, args, out))

    body = func.body.body
    outs_expr = list(body.fields) if isinstance(body, relax.Tuple) else [body]
    outputs = [ref(e) for e in outs_expr]
    # liveness
    for s in steps:
        for a in s.args:
            a.val.last_step = max(a.val.last_step, s.index)
    for v in vals:
        if v.kind == "arena" and v.last_step < v.def_step:
            v.last_step = v.def_step
    return Graph(inputs, outputs, steps, vals, fname)


def integer_module_of(obj) -> tvm.IRModule:
    """The integer IRModule of an IntegerModule, an Artifact or a bare IRModule."""
    for attr in ("mod", "integer_mod"):
        m = getattr(obj, attr, None)
        if isinstance(m, tvm.IRModule):
            return m
    if isinstance(obj, tvm.IRModule):
        return obj
    raise TypeError(f"expected an integer module (IntegerModule, Artifact or IRModule), got {type(obj).__name__}")

