"""The MCU C package: the integer Relax module written as plain C99 (issue 4, DESIGN.md "export").

``write_c_package(imod, outdir)`` walks the integer function (``core``, or ``main`` of an
``int_io`` module) exactly like the NumPy reference does -- every ``call_tir`` names its op and
params in PrimFunc attributes (``ops.op_of``), the few Relax layout ops are copies or aliases --
and writes::

    outdir/model.h          int model_run(const <in_t> *input, <out_t> *output); shape/scale macros
    outdir/model.c          weights/bias/multipliers as static const arrays, one static arena,
                            the kernel calls in graph order
    outdir/qkernels.c/.h    the integer kernels this model uses (templates in export/mcu/)
    outdir/qk_internal.h    requantization and ISA helpers
    outdir/CMakeLists.txt   static library target ``qmodel``
    outdir/model.mk         Makefile fragment: QMODEL_SRCS, QMODEL_INC, QMODEL_CFLAGS
    outdir/zephyr/          module.yml + CMakeLists.txt + Kconfig (a Zephyr module)
    outdir/qmodel.json      what was written: I/O, steps, memory plan (read by the harness)

Memory: graph inputs are read in place from the caller's pointers and graph outputs are written
straight into the caller's output buffers. Everything else lives in ``static uint8_t
qm_arena[N]`` at offsets from :mod:`.memory_plan`. Reshape/flatten/squeeze/expand_dims are
aliases (no copy); a channel concat of a batch-1 NCHW tensor is made of contiguous slices, so
its producers write straight into their slice (no copy); elementwise requantize/add run in place
over an operand that dies there. The arena is compared with the liveness lower bound of the
resulting buffers.
"""
from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from .. import __version__
from ..errors import OutputDirError, UnsupportedOpError
from ..ops import op_of
from ..ops.registry import type_of
from .memory_plan import Buffer, MemoryPlan, liveness_lower_bound, plan

MCU_DIR = Path(__file__).resolve().parent / "mcu"
ALIGN = 16
NPIX = 4          # output pixels per GEMM block (QK_NPIX): im2col scratch holds NPIX columns

# dtype -> (code, C type, bytes, qk_cast code)
DTYPES = {
    "uint8": ("u8", "uint8_t", 1, 0), "int8": ("s8", "int8_t", 1, 1), "uint16": ("u16", "uint16_t", 2, 2),
    "int16": ("s16", "int16_t", 2, 3), "uint32": ("u32", "uint32_t", 4, 4), "int32": ("s32", "int32_t", 4, 5),
    "bool": ("u8", "uint8_t", 1, 0),
}
_XMAX = {"uint8": 256, "int8": 128, "int16": 32768}          # largest |x| of a GEMM input dtype
ALIAS_OPS = ("relax.reshape", "relax.flatten", "relax.squeeze", "relax.expand_dims")
MAX_DIMS = 6


def _dt(dtype: str):
    try:
        return DTYPES[dtype]
    except KeyError:
        raise UnsupportedOpError(f"C package: tensors of dtype {dtype} are not supported "
                                 f"(supported: {', '.join(DTYPES)})") from None


def _prod(shape) -> int:
    return int(np.prod(shape, dtype=np.int64)) if len(shape) else 1


def _strides(shape) -> list[int]:
    s, acc = [], 1
    for d in reversed(shape):
        s.append(acc)
        acc *= int(d)
    return list(reversed(s))


def _align(n: int, a: int = ALIGN) -> int:
    return (n + a - 1) // a * a


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
        return _prod(self.shape) * _dt(self.dtype)[2] if self.kind != "scratch" else self.shape[0]

    @property
    def itemsize(self) -> int:
        return _dt(self.dtype)[2]

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
        return _prod(self.shape) * _dt(self.dtype)[2]


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


def _integer_function(mod: tvm.IRModule) -> tuple[str, relax.Function]:
    names = {gv.name_hint for gv in mod.get_global_vars()}
    name = "core" if "core" in names else "main"
    return name, mod[name]


def build_graph(mod: tvm.IRModule) -> Graph:
    fname, func = _integer_function(mod)
    vals: list[Val] = []
    env: dict = {}

    def new_val(**kw) -> Val:
        v = Val(**kw)
        vals.append(v)
        return v

    inputs = []
    for i, p in enumerate(func.params):
        shape, dtype = type_of(p)
        _dt(dtype)
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
            _dt(dtype)
            opname = value.op.name
            if opname in ALIAS_OPS:
                src = ref(value.args[0])
                if src.nbytes != _prod(shape) * _dt(dtype)[2] or src.dtype != dtype:
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


# ----------------------------------------------------------------------------------------------
# aliasing + planning
# ----------------------------------------------------------------------------------------------

def _members(vals: list[Val], root: Val) -> list[tuple[Val, int]]:
    out = []
    for v in vals:
        r, off = v.root()
        if r is root:
            out.append((v, off))
    return out


def _assign_outputs(g: Graph) -> list[tuple[int, Ref]]:
    """Graph outputs produced by a step live in the caller's buffer; others are copied at the end."""
    copies = []
    for i, r in enumerate(g.outputs):
        v = r.val
        if v.kind == "arena" and v.out_index < 0 and v.parent is None and v.nbytes == r.nbytes:
            v.out_index = i
        else:
            copies.append((i, r))
    return copies


def _merge_concats(g: Graph) -> None:
    for s in g.steps:
        if s.op != "relax.concat":
            continue
        axis = s.params["axis"] % len(s.out.shape)
        if _prod(s.out.shape[:axis]) != 1:
            continue
        y = s.out.val
        off = 0
        seen: set[int] = set()
        for a in s.args:
            x = a.val
            if (x.kind == "arena" and x.out_index < 0 and x.parent is None and id(x) not in seen and x is not y
                    and x.nbytes == a.nbytes and y.root()[0] is not x):
                x.parent, x.poff = y, off
                seen.add(id(x))
            off += a.nbytes


def _group_bytes_last(g: Graph, x: Val, step: int) -> int:
    """Last step at which any value sharing bytes with ``x`` (other than x) is read."""
    root, xo = x.root()
    last = -1
    for v, vo in _members(g.vals, root):
        if v is x:
            continue
        if vo < xo + x.nbytes and xo < vo + v.nbytes:
            last = max(last, v.last_step)
    return last


def _merge_inplace(g: Graph) -> None:
    for s in g.steps:
        if s.op not in ("requantize", "add_requant"):
            continue
        y = s.out.val
        if y.kind != "arena" or y.out_index >= 0:
            continue
        cands = [s.args[0]] if s.op == "requantize" else [a for a in s.args if tuple(a.shape) == tuple(s.out.shape)]
        for a in cands:
            x = a.val
            others = [b.val for b in s.args if b is not a]
            if (x.kind != "arena" or x.out_index >= 0 or any(o is x for o in others) or x.last_step != s.index
                    or x.itemsize != y.itemsize or x.nbytes != y.nbytes or x.root()[0] is y.root()[0]):
                continue
            if _group_bytes_last(g, x, s.index) > s.index:
                continue
            if y.parent is None and not any(v.parent is y for v in g.vals):
                y.parent, y.poff = x, 0
                s.params = {**s.params, "_inplace": True}
                break
            if x.parent is None:
                x.parent, x.poff = y, 0
                s.params = {**s.params, "_inplace": True}
                break


def _reset(g: Graph) -> None:
    for v in g.vals:
        v.parent, v.poff, v.out_index = None, 0, -1
    for s in g.steps:
        s.params.pop("_inplace", None)


def _buffers(g: Graph) -> list[Buffer]:
    groups: dict[int, Buffer] = {}
    for v in g.vals:
        if v.kind not in ("arena", "scratch"):
            continue
        r, off = v.root()
        if r.kind not in ("arena", "scratch") or r.out_index >= 0:
            continue
        b = groups.get(id(r))
        if b is None:
            b = groups[id(r)] = Buffer(r.name, r.nbytes, v.def_step, v.last_step)
        b.start, b.end = min(b.start, v.def_step), max(b.end, v.last_step)
        b.size = max(b.size, off + v.nbytes)
        b.members.append(v.name)
    return list(groups.values())


def plan_memory(g: Graph, concat_alias: bool | None = None, inplace: bool = True) -> tuple[MemoryPlan, list]:
    """Choose aliasing (concat slices: tried with and without) and place the arena buffers."""

    def attempt(ca: bool):
        _reset(g)
        copies = _assign_outputs(g)
        if ca:
            _merge_concats(g)
        if inplace:
            _merge_inplace(g)
        return plan(_buffers(g), ALIGN), copies

    choices = [True, False] if concat_alias is None else [concat_alias]
    sizes = {ca: attempt(ca)[0].arena_bytes for ca in choices}
    best = min(choices, key=lambda ca: (sizes[ca], not ca))
    return attempt(best)


def tensor_liveness_bytes(g: Graph) -> int:
    """Liveness bound without any aliasing: every intermediate tensor separately."""
    bufs = [Buffer(v.name, v.nbytes, v.def_step, v.last_step) for v in g.vals
            if v.kind in ("arena", "scratch") and v.out_index < 0]
    return liveness_lower_bound(bufs)


# ----------------------------------------------------------------------------------------------
# C emission
# ----------------------------------------------------------------------------------------------

def _c_array(ctype: str, name: str, a: np.ndarray, attr: str = "QM_WEIGHTS") -> str:
    flat = np.asarray(a).reshape(-1)
    if flat.size == 0:
        flat = np.zeros(1, dtype=flat.dtype)
    if ctype == "int32_t":
        # INT32_MIN cannot be written as a literal; spell it
        items = [("(-2147483647 - 1)" if int(x) == -2**31 else str(int(x))) for x in flat.tolist()]
    else:
        items = [str(int(x)) for x in flat.tolist()]
    lines = [",".join(items[i:i + 32]) for i in range(0, len(items), 32)]
    body = ",\n  ".join(lines)
    return f"static const {ctype} {name}[{flat.size}] {attr} = {{\n  {body}\n}};\n"


def _fits(a: np.ndarray, lo: int, hi: int) -> bool:
    return a.size == 0 or (int(a.min()) >= lo and int(a.max()) <= hi)


class _Emitter:
    def __init__(self, g: Graph, mplan: MemoryPlan, copies):
        self.g, self.plan, self.copies = g, mplan, copies
        self.offsets = {b.name: b.offset for b in mplan.buffers}
        self.consts: list[str] = []
        self.params: list[str] = []
        self.calls: list[str] = []
        self.instances: set[tuple] = set()
        self.weight_bytes = 0
        self.nconst = 0
        self.mve_consts: list[str] = []   # arrays only MVE builds use (#if QM_HAVE_WCORR)
        self.mve_bytes = 0

    # --- names and pointers ---
    def const_array(self, a: np.ndarray, ctype: str, prefix: str) -> str:
        name = f"qm_{prefix}{self.nconst}"
        self.nconst += 1
        self.consts.append(_c_array(ctype, name, a))
        self.weight_bytes += a.size * np.dtype(a.dtype).itemsize
        return name

    def ptr(self, r: Ref | Val, const: bool = False) -> str:
        v = r.val if isinstance(r, Ref) else r
        dtype = r.dtype if isinstance(r, Ref) else v.dtype
        ctype = _dt(dtype)[1]
        root, off = v.root()
        q = "const " if const else ""
        if root.kind == "const":
            if not hasattr(root, "_cname"):
                root._cname = self.const_array(root.const.astype(_np_dtype(root.dtype)), _dt(root.dtype)[1], "k")
            base, bt = root._cname, _dt(root.dtype)[1]
            if off == 0 and bt == ctype:
                return base
            return f"({q}{ctype} *)({q}void *)((const uint8_t *){base} + {off})"
        if root.kind == "input":
            base = self.in_names[root.index]
            bt = _dt(root.dtype)[1]
            if off == 0 and bt == ctype:
                return base
            return f"(const {ctype} *)(const void *)((const uint8_t *){base} + {off})"
        if root.out_index >= 0:
            base = self.out_names[root.out_index]
            bt = _dt(self.g.outputs[root.out_index].dtype)[1]
            if off == 0 and bt == ctype:
                return base
            return f"({ctype} *)(void *)((uint8_t *){base} + {off})"
        return f"({q}{ctype} *)({q}void *)(qm_arena + {self.offsets[root.name] + off})"

    def scratch(self, s: Step) -> str:
        if s.scratch is None:
            return "(void *)0"
        return f"(void *)(qm_arena + {self.offsets[s.scratch.root()[0].name]})"

    # --- steps ---
    def emit_step(self, s: Step) -> None:
        fn = getattr(self, "op_" + s.op.replace("relax.", "relax_").replace(".", "_"), None)
        if fn is None:
            raise UnsupportedOpError(f"C package: integer op {s.op} ({s.name}) has no C kernel")
        self.calls.append(f"  QM_MARK({s.index});")
        before = self.weight_bytes
        fn(s, s.params)
        s.weight_bytes = self.weight_bytes - before

    def pstruct(self, ctype: str, s: Step, fields: dict) -> str:
        name = f"qm_p{s.index}"
        body = ", ".join(f".{k} = {v}" for k, v in fields.items())
        self.params.append(f"static const {ctype} {name} = {{{body}}};  /* {s.name}: {s.kernel or s.op} */\n")
        return name

    def _weights(self, s: Step, w2d: np.ndarray, bias, mult, shift, x: Ref, gemm: bool = True) -> dict:
        o, k = w2d.shape
        kp = (k + 3) // 4 * 4
        wp = np.zeros((o, kp), dtype=np.int8)
        wp[:, :k] = w2d
        # 16 zero bytes after the last row: the MVE loop reads whole 16-byte vectors
        wp = np.concatenate([wp.reshape(-1), np.zeros(16, np.int8)])
        if not (_fits(np.asarray(mult), -2**31, 2**31 - 1) and _fits(np.asarray(shift), 0, 62)
                and _fits(np.asarray(bias), -2**31, 2**31 - 1)):
            raise UnsupportedOpError(f"C package: {s.name}: requantization parameters out of range")
        xmax = _XMAX.get(x.dtype)
        if xmax is None:
            raise UnsupportedOpError(f"C package: {s.name}: {s.op} input dtype {x.dtype} "
                                     "(supported: uint8, int8, int16)")
        bound = np.abs(w2d.astype(np.int64)).sum(axis=1) * xmax + np.abs(np.asarray(bias, np.int64).reshape(-1))
        if int(bound.max(initial=0)) >= 2**31:
            raise UnsupportedOpError(f"C package: {s.name}: the int32 accumulator could overflow "
                                     f"(bound {int(bound.max())})")
        wcorr = "0"
        if gemm and x.dtype == "uint8":  # MVE GEMM path flips uint8 to int8: 128 * sum(w) per channel, MVE builds only
            name = f"qm_c{self.nconst}"
            self.nconst += 1
            self.mve_consts.append(_c_array("int32_t", name, (128 * w2d.astype(np.int64).sum(axis=1)).astype(np.int32)))
            self.mve_bytes += 4 * o
            wcorr = f"QM_WCORR({name})"
        return {"kp": kp, "wcorr": wcorr,
                "wt": self.const_array(wp, "int8_t", "w"),
                "bias": self.const_array(np.asarray(bias).astype(np.int32).reshape(-1), "int32_t", "b"),
                "mult": self.const_array(np.asarray(mult).astype(np.int32).reshape(-1), "int32_t", "m"),
                "shift": self.const_array(np.asarray(shift).astype(np.int8).reshape(-1), "int8_t", "s")}

    def op_conv2d_requant(self, s: Step, p: dict) -> None:
        x, w, bias, mult, shift = s.args
        n, c, h, wd = x.shape
        o, cg, kh, kw = w.shape
        _, _, oh, ow = s.out.shape
        wa = w.val.const
        depthwise = cg == 1 and p["groups"] > 1
        wk = self._weights(s, wa.reshape(o, cg * kh * kw), bias.val.const, mult.val.const, shift.val.const, x,
                           gemm=not depthwise)
        (sh, sw), (dh, dw), (pt, pl, _pb, _pr) = p["strides"], p["dilation"], p["padding"]
        fields = dict(n=n, c=c, h=h, w=wd, o=o, oh=oh, ow=ow, kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, pt=pt,
                      pl=pl, groups=p["groups"], kp=wk["kp"], qmin=p["qmin"], qmax=p["qmax"], wt=wk["wt"],
                      bias=wk["bias"], mult=wk["mult"], shift=wk["shift"],
                      wcorr=wk["wcorr"])
        pn = self.pstruct("qk_conv_t", s, fields)
        X, O = _dt(x.dtype)[0], _dt(s.out.dtype)[0]
        self.instances.add(("conv2d", X, O))
        s.c_func = f"qk_conv2d_{X}_{O}"
        self.calls.append(f"  {s.c_func}(&{pn}, {self.ptr(x, True)}, {self.ptr(s.out)}, {self.scratch(s)});")

    def op_dense_requant(self, s: Step, p: dict) -> None:
        x, w, bias, mult, shift = s.args
        nn_, k = w.shape
        m = _prod(x.shape[:-1])
        wk = self._weights(s, w.val.const.reshape(nn_, k), bias.val.const, mult.val.const, shift.val.const, x)
        fields = dict(m=m, k=k, n=nn_, kp=wk["kp"], qmin=p["qmin"], qmax=p["qmax"], wt=wk["wt"], bias=wk["bias"],
                      mult=wk["mult"], shift=wk["shift"], wcorr=wk["wcorr"])
        pn = self.pstruct("qk_dense_t", s, fields)
        X, O = _dt(x.dtype)[0], _dt(s.out.dtype)[0]
        self.instances.add(("dense", X, O))
        s.c_func = f"qk_dense_{X}_{O}"
        self.calls.append(f"  {s.c_func}(&{pn}, {self.ptr(x, True)}, {self.ptr(s.out)}, {self.scratch(s)});")

    def op_requantize(self, s: Step, p: dict) -> None:
        (x,) = s.args
        _check_i32(s, p["multiplier"], p["shift"])
        pn = self.pstruct("qk_requant_t", s, dict(count=_prod(x.shape), mult=_i32(p["multiplier"]), shift=p["shift"],
                                                  qmin=_i32(p["qmin"]), qmax=_i32(p["qmax"])))
        X, O = _dt(x.dtype)[0], _dt(s.out.dtype)[0]
        if x.dtype not in ("uint8", "int8", "int16", "uint16", "int32"):
            raise UnsupportedOpError(f"C package: requantize of {x.dtype} ({s.name})")
        self.instances.add(("requantize", X, O))
        s.c_func = f"qk_requantize_{X}_{O}"
        self.calls.append(f"  {s.c_func}(&{pn}, {self.ptr(x, True)}, {self.ptr(s.out)});")

    def op_add_requant(self, s: Step, p: dict) -> None:
        a, b = s.args
        out = tuple(s.out.shape)
        nd = len(out)
        if nd > MAX_DIMS:
            raise UnsupportedOpError(f"C package: add_requant of rank {nd} ({s.name})")

        def bstrides(shape):
            shape = (1,) * (nd - len(shape)) + tuple(shape)
            st = _strides(shape)
            return [0 if shape[i] == 1 and out[i] != 1 else st[i] for i in range(nd)]

        flat = tuple(a.shape) == out and tuple(b.shape) == out
        fields = dict(ndim=nd, count=_prod(out), flat=int(flat), shape=_ci(out), sa=_ci(bstrides(a.shape)),
                      sb=_ci(bstrides(b.shape)), ma=_i64(p["ma"]), mb=_i64(p["mb"]), shift=p["shift"],
                      qmin=_i32(p["qmin"]), qmax=_i32(p["qmax"]))
        pn = self.pstruct("qk_add_t", s, fields)
        A, B, O = _dt(a.dtype)[0], _dt(b.dtype)[0], _dt(s.out.dtype)[0]
        self.instances.add(("add", A, B, O))
        s.c_func = f"qk_add_{A}_{B}_{O}"
        self.calls.append(f"  {s.c_func}(&{pn}, {self.ptr(a, True)}, {self.ptr(b, True)}, {self.ptr(s.out)});")

    def op_max_pool2d(self, s: Step, p: dict) -> None:
        (x,) = s.args
        n, c, h, w = x.shape
        _, _, oh, ow = s.out.shape
        (kh, kw), (sh, sw), (dh, dw), (pt, pl, _, _) = p["pool_size"], p["strides"], p["dilation"], p["padding"]
        pn = self.pstruct("qk_maxpool_t", s, dict(n=n, c=c, h=h, w=w, oh=oh, ow=ow, kh=kh, kw=kw, sh=sh, sw=sw,
                                                  dh=dh, dw=dw, pt=pt, pl=pl, pad_value=_i32(p["pad_value"])))
        X = _dt(x.dtype)[0]
        self.instances.add(("maxpool", X))
        s.c_func = f"qk_maxpool_{X}"
        self.calls.append(f"  {s.c_func}(&{pn}, {self.ptr(x, True)}, {self.ptr(s.out)});")

    def op_avg_pool2d_requant(self, s: Step, p: dict) -> None:
        x, mult = s.args
        n, c, h, w = x.shape
        _, _, oh, ow = s.out.shape
        (kh, kw), (sh, sw), (pt, pl, _, _) = p["pool_size"], p["strides"], p["padding"]
        m = np.asarray(mult.val.const)
        if not _fits(m, -2**31, 2**31 - 1):
            raise UnsupportedOpError(f"C package: {s.name}: multipliers exceed int32")
        mn = self.const_array(m.astype(np.int32).reshape(-1), "int32_t", "m")
        pn = self.pstruct("qk_avgpool_t", s, dict(n=n, c=c, h=h, w=w, oh=oh, ow=ow, kh=kh, kw=kw, sh=sh, sw=sw, pt=pt,
                                                  pl=pl, shift=p["shift"], qmin=_i32(p["qmin"]), qmax=_i32(p["qmax"]),
                                                  mult=mn))
        X, O = _dt(x.dtype)[0], _dt(s.out.dtype)[0]
        self.instances.add(("avgpool", X, O))
        s.c_func = f"qk_avgpool_{X}_{O}"
        self.calls.append(f"  {s.c_func}(&{pn}, {self.ptr(x, True)}, {self.ptr(s.out)});")

    def op_sum_requant(self, s: Step, p: dict) -> None:
        (x,) = s.args
        shape = tuple(x.shape)
        nd = len(shape)
        axes = sorted({a % nd for a in p["axes"]})
        st = _strides(shape)
        kept = [i for i in range(nd) if i not in axes]
        kshape, kstride = [shape[i] for i in kept], [st[i] for i in kept]
        rshape, rstride = _merge_dims([shape[i] for i in axes], [st[i] for i in axes])
        if len(kshape) > MAX_DIMS or len(rshape) > MAX_DIMS:
            raise UnsupportedOpError(f"C package: sum_requant of rank {nd} ({s.name})")
        _check_i32(s, p["multiplier"], p["shift"])
        pn = self.pstruct("qk_sum_t", s, dict(nk=len(kshape), nr=len(rshape), count=_prod(kshape), kshape=_ci(kshape),
                                              kstride=_ci(kstride), rshape=_ci(rshape), rstride=_ci(rstride),
                                              mult=_i32(p["multiplier"]), shift=p["shift"], qmin=_i32(p["qmin"]),
                                              qmax=_i32(p["qmax"])))
        X, O = _dt(x.dtype)[0], _dt(s.out.dtype)[0]
        self.instances.add(("sum", X, O))
        s.c_func = f"qk_sum_{X}_{O}"
        self.calls.append(f"  {s.c_func}(&{pn}, {self.ptr(x, True)}, {self.ptr(s.out)});")

    def op_mask_fill(self, s: Step, p: dict) -> None:
        x, keep = s.args
        out = tuple(x.shape)
        nd = len(out)
        kshape = (1,) * (nd - len(keep.shape)) + tuple(keep.shape)
        st = _strides(kshape)
        sk = [0 if kshape[i] == 1 and out[i] != 1 else st[i] for i in range(nd)]
        pn = self.pstruct("qk_maskfill_t", s, dict(ndim=nd, count=_prod(out), shape=_ci(out), sk=_ci(sk),
                                                   fill=_i32(p["fill"])))
        X = _dt(x.dtype)[0]
        self.instances.add(("maskfill", X))
        s.c_func = f"qk_maskfill_{X}"
        self.calls.append(f"  {s.c_func}(&{pn}, {self.ptr(x, True)}, (const uint8_t *){self.ptr(keep, True)}, "
                          f"{self.ptr(s.out)});")

    def _copy(self, s: Step, tag: str, shape, ss, ds, src: str, dst: str, esize: int) -> None:
        shape, ss, ds = list(shape), list(ss), list(ds)
        if len(shape) > MAX_DIMS:
            raise UnsupportedOpError(f"C package: {s.op} of rank {len(shape)} ({s.name})")
        name = f"qm_p{s.index}{tag}"
        self.params.append(f"static const qk_copy_t {name} = {{.ndim = {len(shape)}, .esize = {esize}, "
                           f".shape = {_ci(shape)}, .ss = {_ci(ss)}, .ds = {_ci(ds)}}};  /* {s.name}: {s.op} */\n")
        self.calls.append(f"  qk_copy_nd(&{name}, {src}, {dst});")

    def op_relax_permute_dims(self, s: Step, p: dict) -> None:
        (x,) = s.args
        nd = len(x.shape)
        axes = p["axes"] if p["axes"] is not None else list(range(nd))[::-1]
        xs = _strides(x.shape)
        s.c_func = "qk_copy_nd"
        self._copy(s, "", s.out.shape, [xs[a] for a in axes], _strides(s.out.shape), self.ptr(x, True),
                   self.ptr(s.out), x.val.itemsize)

    def op_relax_concat(self, s: Step, p: dict) -> None:
        nd = len(s.out.shape)
        axis = p["axis"] % nd
        os_ = _strides(s.out.shape)
        root_y, yoff = s.out.val.root()
        s.c_func = "qk_copy_nd"
        pos = copies = 0
        for i, a in enumerate(s.args):
            rx, xoff = a.val.root()
            dst_off = pos * os_[axis] * s.out.val.itemsize
            pos += a.shape[axis]
            if rx is root_y and xoff == yoff + dst_off:
                continue  # produced in place inside the concat output
            dst = f"(void *)((uint8_t *){self.ptr(s.out)} + {dst_off})"
            self._copy(s, f"_{i}", a.shape, _strides(a.shape), os_, self.ptr(a, True), dst, a.val.itemsize)
            copies += 1
        if not copies:
            self.calls.append(f"  /* {s.name}: concat: every input was written in place */")

    def op_relax_nn_pad(self, s: Step, p: dict) -> None:
        (x,) = s.args
        w = p["pad_width"]
        before = w[0::2]
        os_ = _strides(s.out.shape)
        off = sum(b * st for b, st in zip(before, os_)) * s.out.val.itemsize
        self.calls.append(f"  qk_fill_zero({self.ptr(s.out)}, {s.out.nbytes});")
        s.c_func = "qk_copy_nd"
        self._copy(s, "", x.shape, _strides(x.shape), os_, self.ptr(x, True),
                   f"(void *)((uint8_t *){self.ptr(s.out)} + {off})", x.val.itemsize)

    def op_relax_astype(self, s: Step, p: dict) -> None:
        (x,) = s.args
        s.c_func = "qk_cast"
        self.calls.append(f"  qk_cast({_prod(x.shape)}, {_dt(x.dtype)[3]}, {self.ptr(x, True)}, {_dt(s.out.dtype)[3]}, "
                          f"{self.ptr(s.out)});")


def _np_dtype(dtype: str):
    return np.uint8 if dtype == "bool" else np.dtype(dtype)


def _ci(v) -> str:
    v = list(v) + [0] * (MAX_DIMS - len(v))
    return "{" + ", ".join(str(int(x)) for x in v) + "}"


def _i32(v) -> str:
    v = int(v)
    if not -2**31 <= v < 2**31:
        raise UnsupportedOpError(f"C package: constant {v} does not fit int32")
    return "(-2147483647 - 1)" if v == -2**31 else str(v)


def _i64(v) -> str:
    v = int(v)
    if v == -2**63:
        return "(-INT64_C(9223372036854775807) - 1)"
    return f"INT64_C({v})"


def _check_i32(s: Step, mult, shift) -> None:
    if not (-2**31 <= int(mult) < 2**31 and 0 <= int(shift) <= 62):
        raise UnsupportedOpError(f"C package: {s.name}: requantization (b={mult}, c={shift}) out of range")


def _merge_dims(shape, strides):
    """Merge adjacent dims that are contiguous with each other (fewer odometer steps)."""
    if not shape:
        return [], []
    sh, st = [shape[0]], [strides[0]]
    for d, s in zip(shape[1:], strides[1:]):
        if st[-1] == s * d:
            sh[-1] *= d
            st[-1] = s
        else:
            sh.append(d)
            st.append(s)
    return sh, st


# ----------------------------------------------------------------------------------------------
# kernel templates
# ----------------------------------------------------------------------------------------------

_CTYPE = {code: ctype for code, ctype, _, _ in DTYPES.values()}


def _templates() -> tuple[str, dict[str, tuple[list[str], str]]]:
    text = (MCU_DIR / "qkernels.c.in").read_text()
    static, blocks = "", {}
    for m in re.finditer(r"^//@@ (static|template ([a-z0-9]+)((?: [A-Z])*))\n(.*?)^//@@ end\n", text, re.M | re.S):
        if m.group(1) == "static":
            static = m.group(4)
        else:
            blocks[m.group(2)] = (m.group(3).split(), m.group(4))
    return static, blocks


def _instantiate(kind: str, types: tuple, blocks) -> str:
    names, body = blocks[kind]
    subst = {"VERSION": __version__}
    for n, code in zip(names, types):
        subst[n] = code
        subst[n + "T"] = _CTYPE[code]
    if "X" in subst:
        subst["X8"] = "1" if subst["X"] in ("u8", "s8") else "0"
        subst["XU8"] = "1" if subst["X"] == "u8" else "0"
        subst["FLIP"] = "0x80" if subst["X"] == "u8" else "0"
    if "O" in subst:
        subst["OVST"] = f"QK_VST_{subst['O']}"
    return re.sub(r"@([A-Z0-9]+)@", lambda m: subst[m.group(1)], body)


_PROTO = {
    "conv2d": "void qk_conv2d_@X@_@O@(const qk_conv_t *p, const @XT@ *x, @OT@ *y, void *scratch);",
    "dense": "void qk_dense_@X@_@O@(const qk_dense_t *p, const @XT@ *x, @OT@ *y, void *scratch);",
    "requantize": "void qk_requantize_@X@_@O@(const qk_requant_t *p, const @XT@ *x, @OT@ *y);",
    "add": "void qk_add_@A@_@B@_@O@(const qk_add_t *p, const @AT@ *a, const @BT@ *b, @OT@ *y);",
    "maxpool": "void qk_maxpool_@X@(const qk_maxpool_t *p, const @XT@ *x, @XT@ *y);",
    "avgpool": "void qk_avgpool_@X@_@O@(const qk_avgpool_t *p, const @XT@ *x, @OT@ *y);",
    "sum": "void qk_sum_@X@_@O@(const qk_sum_t *p, const @XT@ *x, @OT@ *y);",
    "maskfill": "void qk_maskfill_@X@(const qk_maskfill_t *p, const @XT@ *x, const uint8_t *keep, @XT@ *y);",
}
_PROTO_NAMES = {"conv2d": "XO", "dense": "XO", "requantize": "XO", "add": "ABO", "maxpool": "X", "avgpool": "XO",
                "sum": "XO", "maskfill": "X"}


def kernel_sources(instances: set[tuple]) -> tuple[str, str]:
    """(qkernels.h, qkernels.c) text holding exactly ``instances`` ((kind, type codes...))."""
    static, blocks = _templates()
    order = ["gemm", "conv2d", "dense", "requantize", "add", "maxpool", "avgpool", "sum", "maskfill"]
    insts = set(instances)
    for inst in list(insts):
        if inst[0] in ("conv2d", "dense"):
            insts.add(("gemm", *inst[1:]))
    c_parts = [static.replace("@VERSION@", __version__)]
    protos = []
    for kind in order:
        for inst in sorted(i for i in insts if i[0] == kind):
            c_parts.append(_instantiate(kind, inst[1:], blocks))
            if kind in _PROTO:
                proto = _PROTO[kind]
                for n, code in zip(_PROTO_NAMES[kind], inst[1:]):
                    proto = proto.replace(f"@{n}@", code).replace(f"@{n}T@", _CTYPE[code])
                protos.append(proto)
    header = (MCU_DIR / "qkernels.h.in").read_text().replace("@VERSION@", __version__)
    header = header.replace("@PROTOTYPES@", "\n".join(protos) if protos else "/* (none) */")
    return header, "\n".join(c_parts)


# ----------------------------------------------------------------------------------------------
# the package
# ----------------------------------------------------------------------------------------------

def _macs(s: Step) -> int:
    if s.op == "conv2d_requant":
        n, o, oh, ow = s.out.shape
        _, cg, kh, kw = s.args[1].shape
        return int(n * o * oh * ow * cg * kh * kw)
    if s.op == "dense_requant":
        nn_, k = s.args[1].shape
        return int(_prod(s.args[0].shape[:-1]) * nn_ * k)
    return 0


def _scratch_bytes(s: Step) -> int:
    if s.op == "conv2d_requant":
        _, c, _, _ = s.args[0].shape
        o, cg, kh, kw = s.args[1].shape
        groups = s.params["groups"]
        if cg == 1 and groups > 1:   # depthwise: the 3x3 fast path materialises one padded plane
            x_item = _dt(s.args[0].dtype)[2]
            _, _, oh, ow = s.out.shape
            sh, sw = s.params["strides"]
            if kh == kw == 3 and x_item == 1 and sh == sw and sh in (1, 2) and tuple(s.params["dilation"]) == (1, 1):
                return _align(((oh - 1) * sh + 3) * ((ow - 1) * sw + 3) + 16)
            return 0
        kc = (cg * kh * kw + 15) // 16 * 16
        return _align(NPIX * kc * 2 + 4 * (o // groups))
    if s.op == "dense_requant":
        nn_, k = s.args[1].shape
        kc = (k + 15) // 16 * 16
        return _align(NPIX * kc * 2 + 4 * nn_)
    return 0


def _ident(name: str) -> str:
    s = re.sub(r"[^A-Za-z0-9_]", "_", name)
    return s if s and not s[0].isdigit() else "t_" + s


def _io_specs(imod, g: Graph, inputs, outputs):
    def norm(specs, refs):
        out = []
        for i, r in enumerate(refs):
            name, qt = (f"input{i}" if refs is g.inputs else f"output{i}"), None
            if specs is not None and i < len(specs):
                sp = specs[i]
                if isinstance(sp, (tuple, list)):
                    name, qt = sp[0], sp[2] if len(sp) > 2 else None
                else:
                    name, qt = sp.name, getattr(sp, "qtype", None)
            elif refs is g.inputs:
                name = r.val.name
            out.append({"name": str(name), "shape": [int(d) for d in r.shape], "dtype": r.dtype,
                        "c_type": _dt(r.dtype)[1], "bytes": r.nbytes, "elements": _prod(r.shape),
                        "scale": None if qt is None else float(qt.scale),
                        "qmin": None if qt is None else int(qt.qmin), "qmax": None if qt is None else int(qt.qmax)})
        return out

    ins = inputs if inputs is not None else getattr(imod, "inputs", None)
    outs = outputs if outputs is not None else getattr(imod, "outputs", None)
    return norm(ins, g.inputs), norm(outs, g.outputs)


def _model_h(ins, outs, arena: int, weights: int, args: str, board) -> str:
    lines = ["/* model.h - generated by tvm-qplugin " + __version__ + ". Integer-only inference, no heap.",
             " *",
             " *   int model_run(...): runs the model on integer inputs, writes integer outputs; returns 0 on",
             " *   success, -1 on a NULL pointer. Not reentrant (one static arena). Real values are",
             " *   scale * q (zero point 0): quantize inputs as q = clamp(floor(x / SCALE + 0.5), QMIN, QMAX).",
             " */",
             "#ifndef QMODEL_MODEL_H", "#define QMODEL_MODEL_H", "", "#include <stdint.h>", "",
             "#ifdef __cplusplus", 'extern "C" {', "#endif", ""]
    if board is not None:
        lines.append(f"/* generated for board {board.name}: {board.memory_summary()} */")
    lines += [f"#define MODEL_NUM_INPUTS {len(ins)}", f"#define MODEL_NUM_OUTPUTS {len(outs)}",
              f"#define MODEL_ARENA_BYTES {arena}", f"#define MODEL_WEIGHT_BYTES {weights}", ""]
    for kind, specs in (("INPUT", ins), ("OUTPUT", outs)):
        for i, sp in enumerate(specs):
            pre = f"MODEL_{kind}{i}"
            lines += [f"/* {kind.lower()} {i}: {sp['name']} {sp['dtype']}{sp['shape']} */",
                      f'#define {pre}_NAME "{sp["name"]}"',
                      f'#define {pre}_DTYPE "{sp["dtype"]}"',
                      f"typedef {sp['c_type']} model_{kind.lower()}{i}_t;",
                      f"#define {pre}_NDIM {len(sp['shape'])}",
                      f"#define {pre}_SHAPE {{{', '.join(str(d) for d in sp['shape'])}}}"]
            lines += [f"#define {pre}_DIM{j} {d}" for j, d in enumerate(sp["shape"])]
            lines += [f"#define {pre}_SIZE {sp['elements']}", f"#define {pre}_BYTES {sp['bytes']}"]
            if sp["scale"] is not None:
                lines += [f"#define {pre}_SCALE {sp['scale']!r}  /* real = SCALE * q */",
                          f"#define {pre}_QMIN {sp['qmin']}", f"#define {pre}_QMAX {sp['qmax']}"]
            if i == 0:
                base = f"MODEL_{kind}"
                names = ["NAME", "DTYPE", "NDIM", "SHAPE", "SIZE", "BYTES"] + (
                    ["SCALE", "QMIN", "QMAX"] if sp["scale"] is not None else [])
                lines += [f"#define {base}_{n} {pre}_{n}" for n in names]
                lines.append(f"typedef model_{kind.lower()}{i}_t model_{kind.lower()}_t;")
            lines.append("")
    lines += [f"int model_run({args});", "", "#ifdef __cplusplus", "}", "#endif", "", "#endif /* QMODEL_MODEL_H */", ""]
    return "\n".join(lines)


_MODEL_C_HEAD = """/* model.c - generated by tvm-qplugin {version} from the integer Relax module ({func}).
 * {nsteps} steps, {nkernels} kernel calls; weights {weights} bytes (static const: flash);
 * one arena of {arena} bytes (liveness lower bound {lb} bytes), placed by a liveness-based planner.
 * -DQMODEL_WEIGHT_SECTION=\\".extflash.weights\\" puts the weights in a linker section (external
 * flash); -DQMODEL_ARENA_SECTION=... places the arena; -DQMODEL_PROFILE calls
 * qmodel_profile_mark(step) before every step (instruction counting).
 */
#include <stdint.h>
#include "model.h"
#include "qkernels.h"

#if defined(__GNUC__)
#define QM_ALIGN16 __attribute__((aligned(16)))
#else
#define QM_ALIGN16
#endif
#if defined(QMODEL_WEIGHT_SECTION) && defined(__GNUC__)
#define QM_WEIGHTS __attribute__((section(QMODEL_WEIGHT_SECTION), aligned(16)))
#else
#define QM_WEIGHTS QM_ALIGN16
#endif
#if defined(QMODEL_ARENA_SECTION) && defined(__GNUC__)
#define QM_ARENA __attribute__((section(QMODEL_ARENA_SECTION), aligned(16)))
#else
#define QM_ARENA QM_ALIGN16
#endif
#if defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1) && !defined(QK_NO_SIMD)
#define QM_HAVE_WCORR 1
#define QM_WCORR(a) (a)
#else
#define QM_HAVE_WCORR 0
#define QM_WCORR(a) 0
#endif
#ifdef QMODEL_PROFILE
void qmodel_profile_mark(int32_t step);
#define QM_MARK(i) qmodel_profile_mark(i)
#else
#define QM_MARK(i) ((void)0)
#endif

"""


def integer_module_of(obj) -> tvm.IRModule:
    """The integer IRModule of an IntegerModule, an Artifact or a bare IRModule."""
    for attr in ("mod", "integer_mod"):
        m = getattr(obj, attr, None)
        if isinstance(m, tvm.IRModule):
            return m
    if isinstance(obj, tvm.IRModule):
        return obj
    raise TypeError(f"expected an integer module (IntegerModule, Artifact or IRModule), got {type(obj).__name__}")


def write_c_package(imod, outdir, board=None, inputs=None, outputs=None) -> dict:
    """Write the C package of an integer module into ``outdir`` (created; replaced files only).

    ``imod``: an :class:`~tvm_qplugin.passes.integerize.IntegerModule` or an
    :class:`~tvm_qplugin.artifact.Artifact` (their I/O scales go into ``model.h``) or a bare
    integer ``tvm.IRModule``. ``board``: a :class:`~tvm_qplugin.targets.Board`
    or board name, recorded in the package (budgets are checked by :func:`check_budget`).
    ``inputs``/``outputs``: I/O specs (``IOSpec`` or ``(name, shape, qtype)``) when ``imod`` is a bare
    module. Returns the package description (also written to ``qmodel.json``).
    """
    from ..targets import Board, get_board

    if isinstance(board, str):
        board = get_board(board)
    mod = integer_module_of(imod)
    g = build_graph(mod)
    for s in g.steps:
        s.macs = _macs(s)
        nb = _scratch_bytes(s)
        if nb:
            s.scratch = Val(name=f"{s.name}__scratch", shape=(nb,), dtype="uint8", kind="scratch",
                            def_step=s.index, last_step=s.index)
            g.vals.append(s.scratch)
    mplan, copies = plan_memory(g)
    ins, outs = _io_specs(imod, g, inputs, outputs)

    em = _Emitter(g, mplan, copies)
    single = len(ins) == 1 and len(outs) == 1
    em.in_names = ["input"] if len(ins) == 1 else [f"input{i}" for i in range(len(ins))]
    em.out_names = ["output"] if len(outs) == 1 else [f"output{i}" for i in range(len(outs))]
    for s in g.steps:
        em.emit_step(s)
    em.calls.append(f"  QM_MARK({len(g.steps)});")
    for i, r in copies:
        src = em.ptr(r, True)
        em.calls.append(f"  memcpy({em.out_names[i]}, {src}, {r.nbytes});  /* output {i} */")

    args = ", ".join([f"const {sp['c_type']} *{n}" for sp, n in zip(ins, em.in_names)]
                     + [f"{sp['c_type']} *{n}" for sp, n in zip(outs, em.out_names)])
    arena = max(mplan.arena_bytes, 0)
    outdir = Path(outdir)
    try:
        (outdir / "zephyr").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f"cannot create C package directory {str(outdir)!r}: {e}") from None

    nkernels = sum(1 for c in em.calls if c.startswith("  qk_"))
    head = _MODEL_C_HEAD.format(version=__version__, func=g.func_name, nsteps=len(g.steps), nkernels=nkernels,
                                weights=em.weight_bytes, arena=arena, lb=mplan.lower_bound)
    if copies:
        head = head.replace('#include <stdint.h>\n', '#include <stdint.h>\n#include <string.h>\n', 1)
    null_check = " || ".join(f"!{n}" for n in em.in_names + em.out_names)
    mve = []
    if em.mve_consts:
        mve = ["\n/* ---- MVE builds: uint8 inputs run flipped to int8; 128 * sum(w) per channel restores them ---- */\n",
               "#if QM_HAVE_WCORR\n", *em.mve_consts, "#endif\n"]
    body = [head, "/* ---- weights, biases, requantization multipliers and shifts ---- */\n", *em.consts, *mve,
            "\n/* ---- layer parameters ---- */\n", *em.params,
            f"\n/* ---- activations: one arena, offsets from the memory planner ---- */\n"
            f"static uint8_t qm_arena[{max(arena, ALIGN)}] QM_ARENA;\n\n",
            f"int model_run({args}) {{\n", f"  if ({null_check}) return -1;\n", "\n".join(em.calls),
            "\n  return 0;\n}\n"]
    files = {
        "model.c": "".join(body),
        "model.h": _model_h(ins, outs, arena, em.weight_bytes, args, board),
    }
    files["qkernels.h"], files["qkernels.c"] = kernel_sources(em.instances)
    files["qk_internal.h"] = (MCU_DIR / "qk_internal.h").read_text()
    files["CMakeLists.txt"] = _CMAKE
    files["model.mk"] = _MODEL_MK
    files["zephyr/module.yml"] = _ZEPHYR_MODULE
    files["zephyr/CMakeLists.txt"] = _ZEPHYR_CMAKE
    files["zephyr/Kconfig"] = _ZEPHYR_KCONFIG

    peak = mplan.peak_step()
    steps_info = [{"index": s.index, "name": s.name, "op": s.op, "kernel": s.kernel, "c_func": s.c_func,
                   "macs": s.macs, "out_shape": list(s.out.shape), "out_dtype": s.out.dtype,
                   "out_bytes": s.out.nbytes, "weight_bytes": s.weight_bytes,
                   "inplace": bool(s.params.get("_inplace")),
                   "scratch_bytes": s.scratch.nbytes if s.scratch is not None else 0} for s in g.steps]
    info = {
        "version": __version__,
        "function": g.func_name,
        "board": board.name if isinstance(board, Board) else None,
        "inputs": ins,
        "outputs": outs,
        "single_io": single,
        "arena_bytes": arena,
        "liveness_lower_bound_bytes": mplan.lower_bound,
        "tensor_liveness_bytes": tensor_liveness_bytes(g),
        "arena_ratio": round(mplan.ratio, 4),
        "planner": mplan.strategy,
        "weights_bytes": em.weight_bytes,
        "mve_extra_bytes": em.mve_bytes,
        "peak_step": peak,
        "peak_tensors": sorted(((b.size, "+".join(b.members)) for b in mplan.live_at(peak)), reverse=True),
        "buffers": [{"name": b.name, "members": b.members, "bytes": b.size, "offset": b.offset,
                     "live": [b.start, b.end]} for b in mplan.buffers],
        "steps": steps_info,
        "layers": [st for st in steps_info if st["macs"]],
        "macs": sum(s.macs for s in g.steps),
    }
    files["qmodel.json"] = json.dumps(info, indent=1)
    for name, text in files.items():
        (outdir / name).write_text(text)
    info["dir"] = str(outdir)
    info["files"] = sorted(files)
    return info


def copy_mcu_file(name: str, dest: Path) -> Path:
    """Copy a data file of export/mcu (startup, linker script, plugin source) to ``dest``."""
    dest = Path(dest)
    shutil.copyfile(MCU_DIR / name, dest)
    return dest


_CMAKE = """# CMakeLists.txt - generated by tvm-qplugin: the model as a static library.
#   add_subdirectory(path/to/this/package qmodel)
#   target_link_libraries(firmware PRIVATE qmodel)
# Options: QMODEL_WEIGHT_SECTION (e.g. ".extflash.weights": weights in an external-flash section),
#          QMODEL_ARENA_SECTION (linker section of the activation arena).
cmake_minimum_required(VERSION 3.13)
project(qmodel C)

set(QMODEL_WEIGHT_SECTION "" CACHE STRING "linker section for the model weights (empty: .rodata)")
set(QMODEL_ARENA_SECTION "" CACHE STRING "linker section for the activation arena (empty: .bss)")

add_library(qmodel STATIC
  ${CMAKE_CURRENT_LIST_DIR}/model.c
  ${CMAKE_CURRENT_LIST_DIR}/qkernels.c)
target_include_directories(qmodel PUBLIC ${CMAKE_CURRENT_LIST_DIR})
set_target_properties(qmodel PROPERTIES C_STANDARD 99 C_STANDARD_REQUIRED ON C_EXTENSIONS OFF)
if(CMAKE_C_COMPILER_ID MATCHES "GNU|Clang")
  target_compile_options(qmodel PRIVATE -fno-strict-aliasing)
endif()
if(QMODEL_WEIGHT_SECTION)
  target_compile_definitions(qmodel PRIVATE QMODEL_WEIGHT_SECTION="${QMODEL_WEIGHT_SECTION}")
endif()
if(QMODEL_ARENA_SECTION)
  target_compile_definitions(qmodel PRIVATE QMODEL_ARENA_SECTION="${QMODEL_ARENA_SECTION}")
endif()
"""

_MODEL_MK = """# model.mk - generated by tvm-qplugin: include from a Makefile.
#   include path/to/package/model.mk
#   SRCS += $(QMODEL_SRCS)
#   CFLAGS += $(addprefix -I,$(QMODEL_INC)) $(QMODEL_CFLAGS)
QMODEL_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
QMODEL_SRCS := $(QMODEL_DIR)/model.c $(QMODEL_DIR)/qkernels.c
QMODEL_INC := $(QMODEL_DIR)
QMODEL_CFLAGS := -std=c99 -fno-strict-aliasing
"""

_ZEPHYR_MODULE = """# Zephyr module: add this package's directory to ZEPHYR_EXTRA_MODULES (or a west manifest).
name: qmodel
build:
  cmake: zephyr
  kconfig: zephyr/Kconfig
"""

_ZEPHYR_CMAKE = """# Zephyr module build: the tvm-qplugin model as a Zephyr library (CONFIG_QMODEL=y).
if(CONFIG_QMODEL)
  set(QMODEL_DIR ${CMAKE_CURRENT_LIST_DIR}/..)
  zephyr_library_named(qmodel)
  zephyr_library_sources(${QMODEL_DIR}/model.c ${QMODEL_DIR}/qkernels.c)
  zephyr_include_directories(${QMODEL_DIR})
  zephyr_library_compile_options(-fno-strict-aliasing)
  if(CONFIG_QMODEL_WEIGHT_SECTION)
    zephyr_library_compile_definitions(QMODEL_WEIGHT_SECTION="${CONFIG_QMODEL_WEIGHT_SECTION}")
  endif()
endif()
"""

_ZEPHYR_KCONFIG = """config QMODEL
\tbool "tvm-qplugin integer model (model_run)"
\tdefault y
\thelp
\t  The integer-only model generated by tvm-qplugin: int model_run(...) in model.h.

config QMODEL_WEIGHT_SECTION
\tstring "Linker section for the model weights"
\tdepends on QMODEL
\tdefault ""
\thelp
\t  Empty: weights are const data in flash (.rodata). Otherwise the section name, e.g. an
\t  external-flash section of the board's linker script.
"""
