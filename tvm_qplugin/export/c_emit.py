"""C source emission: literals, pointers into the arena, parameter blocks, and model.c / model.h.

:class:`CEmitter` knows *where* every value lives (a constant array, a caller pointer, an arena
offset) and how to write C for it; which kernel a step calls and with which parameter block is
:mod:`.kernels_c`'s business (a subclass). The text around the calls comes from the templates
``export/mcu/package/model.c.in`` and ``model.h.in``; this module fills their placeholders.
"""
from __future__ import annotations

import numpy as np

from .. import __version__
from ..errors import UnsupportedOpError
from .memory_plan import MemoryPlan
from .c_graph import ALIGN, MAX_DIMS, Graph, Ref, Step, Val, dt_info
from .templates import fill, read_template


def c_array(ctype: str, name: str, a: np.ndarray, attr: str = "QM_WEIGHTS") -> str:
    """``static const <ctype> name[n] QM_WEIGHTS = {...};`` (32 items a line; never zero-sized)."""
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


def fits(a: np.ndarray, lo: int, hi: int) -> bool:
    """Every element of ``a`` lies in [lo, hi]."""
    return a.size == 0 or (int(a.min()) >= lo and int(a.max()) <= hi)


class CEmitter:
    """Collects model.c's pieces while the steps are emitted: constant arrays, parameter blocks,
    the calls of ``model_run`` and the kernel instances (kind, type codes) qkernels.c must hold.

    ``op_<op>`` methods (subclass :class:`~.kernels_c.KernelCalls`) emit one step each; an op
    without one has no C kernel.
    """

    def __init__(self, g: Graph, mplan: MemoryPlan, copies, in_names: list[str], out_names: list[str]):
        self.g, self.plan, self.copies = g, mplan, copies
        self.in_names, self.out_names = in_names, out_names
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
        self.consts.append(c_array(ctype, name, a))
        self.weight_bytes += a.size * np.dtype(a.dtype).itemsize
        return name

    def ptr(self, r: Ref | Val, const: bool = False) -> str:
        v = r.val if isinstance(r, Ref) else r
        dtype = r.dtype if isinstance(r, Ref) else v.dtype
        ctype = dt_info(dtype)[1]
        root, off = v.root()
        q = "const " if const else ""
        if root.kind == "const":
            if not hasattr(root, "_cname"):
                root._cname = self.const_array(root.const.astype(np_dtype_of(root.dtype)), dt_info(root.dtype)[1], "k")
            base, bt = root._cname, dt_info(root.dtype)[1]
            if off == 0 and bt == ctype:
                return base
            return f"({q}{ctype} *)({q}void *)((const uint8_t *){base} + {off})"
        if root.kind == "input":
            base = self.in_names[root.index]
            bt = dt_info(root.dtype)[1]
            if off == 0 and bt == ctype:
                return base
            return f"(const {ctype} *)(const void *)((const uint8_t *){base} + {off})"
        if root.out_index >= 0:
            base = self.out_names[root.out_index]
            bt = dt_info(self.g.outputs[root.out_index].dtype)[1]
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
        """``QM_MARK(step)`` then the step's kernel call(s); records the weight bytes it added."""
        fn = getattr(self, "op_" + s.op.replace("relax.", "relax_").replace(".", "_"), None)
        if fn is None:
            raise UnsupportedOpError(f"C package: integer op {s.op} ({s.name}) has no C kernel")
        self.calls.append(f"  QM_MARK({s.index});")
        before = self.weight_bytes
        fn(s, s.params)
        s.weight_bytes = self.weight_bytes - before

    def pstruct(self, ctype: str, s: Step, fields: dict) -> str:
        """Define the step's const parameter block (kept in flash) and return its name."""
        name = f"qm_p{s.index}"
        body = ", ".join(f".{k} = {v}" for k, v in fields.items())
        self.params.append(f"static const {ctype} {name} = {{{body}}};  /* {s.name}: {s.kernel or s.op} */\n")
        return name

    def emit_call(self, s: Step, kind: str, types, struct: str, fields: dict, inputs=None, extra=()) -> None:
        """One kernel call: the step's parameter block ``struct`` of ``fields``, the instance
        ``(kind, type codes of types)`` recorded for qkernels.c, and
        ``qk_<kind>_<codes>(&params, inputs..., out, extra...);`` appended to the calls.

        ``types``: dtype strings or Refs (their dtypes), in the template's type-parameter order;
        ``inputs``: Refs (const pointers) or C expressions, default the step's first argument.
        """
        pn = self.pstruct(struct, s, fields)
        codes = tuple(dt_info(t if isinstance(t, str) else t.dtype)[0] for t in types)
        self.instances.add((kind, *codes))
        s.c_func = "_".join((f"qk_{kind}", *codes))
        ins = [self.ptr(a, True) if isinstance(a, Ref) else a for a in (s.args[:1] if inputs is None else inputs)]
        self.calls.append(f"  {s.c_func}(&{pn}, {', '.join([*ins, self.ptr(s.out), *extra])});")

    def _copy(self, s: Step, tag: str, shape, ss, ds, src: str, dst: str, esize: int) -> None:
        shape, ss, ds = list(shape), list(ss), list(ds)
        if len(shape) > MAX_DIMS:
            raise UnsupportedOpError(f"C package: {s.op} of rank {len(shape)} ({s.name})")
        name = f"qm_p{s.index}{tag}"
        self.params.append(f"static const qk_copy_t {name} = {{.ndim = {len(shape)}, .esize = {esize}, "
                           f".shape = {c_dims(shape)}, .ss = {c_dims(ss)}, .ds = {c_dims(ds)}}};  "
                           f"/* {s.name}: {s.op} */\n")
        self.calls.append(f"  qk_copy_nd(&{name}, {src}, {dst});")


def np_dtype_of(dtype: str):
    return np.uint8 if dtype == "bool" else np.dtype(dtype)


def c_dims(v) -> str:
    """A ``QK_NDIM``-long C initializer ``{a, b, 0, ...}`` of a shape or strides."""
    v = list(v) + [0] * (MAX_DIMS - len(v))
    return "{" + ", ".join(str(int(x)) for x in v) + "}"


def c_i32(v) -> str:
    """An int32 C literal (INT32_MIN spelled as an expression); one line if ``v`` does not fit."""
    v = int(v)
    if not -2**31 <= v < 2**31:
        raise UnsupportedOpError(f"C package: constant {v} does not fit int32")
    return "(-2147483647 - 1)" if v == -2**31 else str(v)


def c_i64(v) -> str:
    """An int64 C literal (``INT64_C``)."""
    v = int(v)
    if v == -2**63:
        return "(-INT64_C(9223372036854775807) - 1)"
    return f"INT64_C({v})"


# ----------------------------------------------------------------------------------------------
# model.c / model.h
# ----------------------------------------------------------------------------------------------

def run_signature(ins: list[dict], outs: list[dict], in_names: list[str], out_names: list[str]) -> str:
    """The parameter list of ``model_run``: const input pointers, then output pointers."""
    return ", ".join([f"const {sp['c_type']} *{n}" for sp, n in zip(ins, in_names)]
                     + [f"{sp['c_type']} *{n}" for sp, n in zip(outs, out_names)])


def model_c(em: CEmitter, arena: int, args: str) -> str:
    """model.c: the emitter's constants, parameter blocks and calls inside ``package/model.c.in``."""
    mve = ""
    if em.mve_consts:
        mve = "".join(["\n/* ---- MVE builds: uint8 inputs run flipped to int8; 128 * sum(w) per channel restores "
                       "them ---- */\n", "#if QM_HAVE_WCORR\n", *em.mve_consts, "#endif\n"])
    return fill(read_template("package/model.c.in"), VERSION=__version__, FUNC=em.g.func_name,
                NSTEPS=len(em.g.steps), NKERNELS=sum(1 for c in em.calls if c.startswith("  qk_")),
                WEIGHTS=em.weight_bytes, ARENA=arena, LOWER_BOUND=em.plan.lower_bound,
                STRING_H="#include <string.h>\n" if em.copies else "", CONSTS="".join(em.consts), MVE_CONSTS=mve,
                PARAMS="".join(em.params), ARENA_ALLOC=max(arena, ALIGN), ARGS=args,
                NULL_CHECK=" || ".join(f"!{n}" for n in em.in_names + em.out_names), CALLS="\n".join(em.calls))


def _io_macros(kind: str, specs: list[dict]) -> list[str]:
    """``MODEL_<KIND><i>_*`` macros and typedefs of every input or output (``MODEL_<KIND>_*``: the first)."""
    lines = []
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
    return lines


def model_h(ins: list[dict], outs: list[dict], arena: int, weights: int, args: str, board) -> str:
    """model.h: ``package/model.h.in`` with the I/O macros (one block per input and output)."""
    io = _io_macros("INPUT", ins) + _io_macros("OUTPUT", outs)
    board_line = f"/* generated for board {board.name}: {board.memory_summary()} */\n" if board is not None else ""
    return fill(read_template("package/model.h.in"), VERSION=__version__, BOARD=board_line,
                NUM_INPUTS=len(ins), NUM_OUTPUTS=len(outs), ARENA=arena, WEIGHTS=weights,
                IO="".join(line + "\n" for line in io), ARGS=args)
