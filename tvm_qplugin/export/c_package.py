"""The MCU C package: the integer Relax module written as plain C99 (issue 4, DESIGN.md "export").

``write_c_package(imod, outdir)`` writes::

    outdir/model.h          int model_run(const <in_t> *input, <out_t> *output); shape/scale macros
    outdir/model.c          weights/bias/multipliers as static const arrays, one static arena,
                            the kernel calls in graph order
    outdir/qkernels.c/.h    the integer kernels this model uses (templates in export/mcu/)
    outdir/qk_internal.h    requantization and ISA helpers
    outdir/CMakeLists.txt   static library target ``qmodel``
    outdir/model.mk         Makefile fragment: QMODEL_SRCS, QMODEL_INC, QMODEL_CFLAGS
    outdir/zephyr/          module.yml + CMakeLists.txt + Kconfig (a Zephyr module)
    outdir/qmodel.json      what was written: I/O, steps, memory plan (read by the harness)

The stages, one module each: :mod:`.c_graph` (Relax -> steps and values), :mod:`.arena`
(aliasing + the liveness planner of :mod:`.memory_plan`), :mod:`.kernels_c` (which kernel each
step calls, its parameter block; scratch sizes from :mod:`.scratch`), :mod:`.c_emit` (model.c /
model.h), :mod:`.qkernels` (qkernels.c/.h) and :mod:`.buildsys` (CMake / Make / Zephyr). The C
text is in templates under export/mcu/ (:mod:`.templates`).
"""
from __future__ import annotations

import json
from pathlib import Path

from .. import __version__
from ..errors import OutputDirError
from .arena import plan_memory, tensor_liveness_bytes
from .buildsys import build_system_files
from .c_emit import model_c, model_h, run_signature
from .c_graph import Graph, Val, build_graph, dt_info, integer_function, integer_module_of, prod
from .kernels_c import KernelCalls, macs, scratch_bytes
from .patch_emit import PatchKernelCalls, maybe_patch
from .qkernels import kernel_sources
from .templates import MCU_DIR, copy_mcu_file, read_template

# the TIR kernels are objects for the board's aarch64 / Cortex-M core: other builds (the host's) keep the hand-written calls
_TIR_INCLUDE = """#include "qkernels.h"
#if (defined(__aarch64__) || defined(__arm__)) && !defined(QMODEL_NO_TIR)
#define QM_TIR 1
#include "tir_kernels.h"
#else
#define QM_TIR 0
#endif
"""

__all__ = ["write_c_package", "build_graph", "plan_memory", "integer_module_of", "integer_function", "kernel_sources",
           "MCU_DIR", "copy_mcu_file"]


def _io_specs(imod, g: Graph, inputs, outputs) -> tuple[list[dict], list[dict]]:
    """Name, shape, dtype, C type, sizes and (when known) scale/qmin/qmax of every input and output."""
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
                        "c_type": dt_info(r.dtype)[1], "bytes": r.nbytes, "elements": prod(r.shape),
                        "scale": None if qt is None else float(qt.scale),
                        "qmin": None if qt is None else int(qt.qmin), "qmax": None if qt is None else int(qt.qmax)})
        return out

    ins = inputs if inputs is not None else getattr(imod, "inputs", None)
    outs = outputs if outputs is not None else getattr(imod, "outputs", None)
    return norm(ins, g.inputs), norm(outs, g.outputs)


def write_c_package(imod, outdir, board=None, inputs=None, outputs=None, kernels: dict | None = None,
                    ram_budget: int | None = None, patch: tuple | None = None) -> dict:
    """Write the C package of an integer module into ``outdir`` (created; replaced files only).

    ``imod``: an :class:`~tvm_qplugin.passes.integerize.IntegerModule` or an
    :class:`~tvm_qplugin.artifact.Artifact` (their I/O scales go into ``model.h``) or a bare
    integer ``tvm.IRModule``. ``board``: a :class:`~tvm_qplugin.targets.Board`
    or board name, recorded in the package (budgets are checked by :func:`check_budget`).
    ``inputs``/``outputs``: I/O specs (``IOSpec`` or ``(name, shape, qtype)``) when ``imod`` is a bare
    module. ``kernels``: step index -> TIR schedule (:mod:`.tir_kernels`) for the steps that call a
    TensorIR-generated kernel (aarch64 boards; :func:`.kernel_choice.choose_kernels` measures which);
    their objects ``tir_kernels_*.o`` and the calling shim ``tir_kernels.c`` join the package.
    ``ram_budget``: bytes (``--budget ram=``); when the layer-wise arena exceeds it or the board's SRAM,
    the first layers run patch by patch (:mod:`.patch_emit`); ``patch``: ``(N, (rows, cols))`` forces that
    schedule instead (tests, experiments). Returns the package description (also
    written to ``qmodel.json``).
    """
    from ..targets import Board, resolve_board

    board = resolve_board(board) if board is not None else None
    mod = integer_module_of(imod)
    g = build_graph(mod)
    for s in g.steps:
        s.macs = macs(s)
        nb = scratch_bytes(s)
        if nb:
            s.scratch = Val(name=f"{s.name}__scratch", shape=(nb,), dtype="uint8", kind="scratch",
                            def_step=s.index, last_step=s.index)
            g.vals.append(s.scratch)
    mplan, copies = plan_memory(g)
    g, mplan, copies, patching = maybe_patch(g, mplan, copies, board, ram_budget, kernels, patch)
    ins, outs = _io_specs(imod, g, inputs, outputs)

    single = len(ins) == 1 and len(outs) == 1
    in_names = ["input"] if len(ins) == 1 else [f"input{i}" for i in range(len(ins))]
    out_names = ["output"] if len(outs) == 1 else [f"output{i}" for i in range(len(outs))]
    em = (PatchKernelCalls if patching.get("applied") else KernelCalls)(g, mplan, copies, in_names, out_names)
    em.tir_choice, em.tir_specs = dict(kernels or {}), []
    for s in g.steps:
        em.emit_step(s)
    em.calls.append(f"  QM_MARK({len(g.steps)});")
    for i, r in copies:
        em.calls.append(f"  memcpy({out_names[i]}, {em.ptr(r, True)}, {r.nbytes});  /* output {i} */")

    args = run_signature(ins, outs, in_names, out_names)
    arena = max(mplan.arena_bytes, 0)
    outdir = Path(outdir)
    try:
        (outdir / "zephyr").mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputDirError(f"cannot create C package directory {str(outdir)!r}: {e}") from None

    files = {"model.c": model_c(em, arena, args), "model.h": model_h(ins, outs, arena, em.weight_bytes, args, board)}
    files["qkernels.h"], files["qkernels.c"] = kernel_sources(em.instances)
    files["qk_internal.h"] = read_template("qk_internal.h")
    files.update(build_system_files())
    tir_objects = []
    if em.tir_specs:
        from .tir_kernels import build_object
        from .tir_shim import shim_sources

        if board is None:
            raise ValueError("write_c_package: TIR kernels need the board they are compiled for")
        files["tir_kernels.h"], files["tir_kernels.c"] = shim_sources(em.tir_specs)
        tir_objects = [p.name for p in build_object(em.tir_specs, board, outdir / "tir_kernels.o")]
        files["model.c"] = files["model.c"].replace('#include "qkernels.h"\n', _TIR_INCLUDE, 1)

    peak = mplan.peak_step()
    steps_info = [{"index": s.index, "name": s.name, "op": s.op, "kernel": s.kernel, "c_func": s.c_func,
                   "macs": s.macs, "out_shape": list(s.out.shape), "out_dtype": s.out.dtype,
                   "out_bytes": s.out.nbytes, "weight_bytes": s.weight_bytes,
                   "inplace": bool(s.params.get("_inplace")),
                   **({"patch": list(s.params["_patch"])} if "_patch" in s.params else {}),
                   "kernel_source": f"tensorir-{em.tir_choice[s.index]}" if s.index in em.tir_choice else "handwritten-c",
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
        "tir_objects": tir_objects,
        "patching": patching,
    }
    files["qmodel.json"] = json.dumps(info, indent=1)
    for name, text in files.items():
        (outdir / name).write_text(text)
    info["dir"] = str(outdir)
    info["files"] = sorted(files)
    return info

