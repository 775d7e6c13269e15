"""Which kernel each layer of an aarch64 board's C package calls: measured, not assumed.

For every layer a TensorIR kernel can take (:mod:`.tir_kernels`: dense_requant and pointwise
conv2d_requant on 8-bit inputs, and on int16 ones the ``smlal`` kernel; depthwise 3x3 convs; small-channel convs such as the 3x3 stem, on boards
with the dot product),
the layer alone -- its own weights, requantization and shape -- is written as a one-step package
once per candidate (the hand-written C, and each TIR schedule compiled by TVM's LLVM backend for
the board's ``-mcpu`` / ``-mattr``), cross-built with the profiling marks, and run under
``qemu-aarch64 -cpu <board core>`` with the instruction-count plugin on an input holding the dtype
extremes. A candidate whose output differs from the op's NumPy twin by one bit, or that faults or
hangs, is dropped (and counted); the fewest instructions wins. Where the board's tuning database
(``tune --target <board>``, tuning/tune_qemu.py) has a record for the layer's kernel, its schedule
is one more candidate, ``tensorir-tuned``. Layers with the same shapes, dtypes
and params share one measurement (the kernels have no data-dependent branches; every layer is
still checked in the whole package's bit-exact run). QEMU counts instructions, exactly
and repeatably, not cycles: the choice is noise-free, and a real board's timing may rank close
candidates differently.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..errors import QPluginError, UnsupportedOpError
from .tir_kernels import (
    DOTPROD_SCHEDULES,
    I8MM_SCHEDULES,
    INT16_SCHEDULES,
    NEON_SCHEDULES,
    SCHEDULES,
    shift_range,
)
from .tir_kernels_dw import DW_SCHEDULES, is_depthwise3x3
from .tir_kernels_sdot_conv import IM2COL_SCHEDULES, im2col_step
from .tir_shim import symbol_address

TIR_INPUTS = ("uint8", "int8")
HANDWRITTEN = "handwritten-c"


def _pointwise(s) -> bool:
    """A 1x1 conv of one image, stride 1, no padding or dilation, groups 1: a GEMM over its pixels."""
    p = s.params
    return (s.op == "conv2d_requant" and tuple(s.args[1].shape[2:]) == (1, 1) and s.args[0].shape[0] == 1
            and p["groups"] == 1 and tuple(p["strides"]) == (1, 1) and tuple(p["dilation"]) == (1, 1)
            and not any(p["padding"]))


def _constant_weights(s) -> bool:
    """Every argument but the activations is a constant of the package (weights, bias, requantization)."""
    return all(a.val.kind == "const" for a in s.args[1:])


def _gemm(s, x_dtypes) -> bool:
    """A dense layer or a pointwise conv on activations of ``x_dtypes``, with constant weights."""
    return (s.op == "dense_requant" or _pointwise(s)) and s.args[0].dtype in x_dtypes and _constant_weights(s)


def tir_candidates(g) -> list:
    """The steps of a package graph a TIR kernel can take: dense layers and pointwise convolutions
    on 8-bit inputs (the tuner's and Cortex-M's too; aarch64 also measures :func:`dw_candidates`)."""
    return [s for s in g.steps if _gemm(s, TIR_INPUTS)]


def int16_candidates(g) -> list:
    """The dense layers and pointwise convs on int16 inputs (MobileNetV2's residual stream feeding an
    expansion): on aarch64 boards the ``smlal`` kernel (tir_kernels_neon.py, the only TIR kernel that reads
    int16 x) is measured beside the hand-written one; not the tuner's nor Cortex-M's."""
    return [s for s in g.steps if _gemm(s, ("int16",))]


def dw_candidates(g) -> list:
    """The depthwise 3x3 steps on 8-bit inputs: on aarch64 boards, tir_kernels_dw.py's kernel is
    measured beside the hand-written ``qk_dw3x3``."""
    return [s for s in g.steps if is_depthwise3x3(s) and s.args[0].dtype in TIR_INPUTS and _constant_weights(s)]


def conv_candidates(g) -> list:
    """The small-channel convs (the 3x3 stem) on aarch64 boards with the dot product: tir_kernels_sdot_conv.py's
    kernel is measured beside the hand-written ``qk_conv``."""
    return [s for s in g.steps if im2col_step(s) and _constant_weights(s)]


def schedules_for(s, board) -> tuple:
    """The TIR schedules measured for step ``s`` on ``board``: the sdot kernel only where the core has
    the dot-product extension (elsewhere its object would SIGILL) and 4 | n, 4 | k; the smmla kernel
    only where it has the int8 matrix multiply (i8mm) and 2 | n; the smlal kernel where its lanes
    (pixels of a pointwise conv, or output channels) come in fours, and nothing else on int16 x. A depthwise 3x3 conv has its own
    kernel (tir_kernels_dw.py)."""
    if im2col_step(s):   # a small-channel conv: its im2col kernel, where the core has sdot
        return IM2COL_SCHEDULES if "dotprod" in board.features else ()
    if is_depthwise3x3(s):   # the split layout only where there is a stride to split
        return DW_SCHEDULES if tuple(s.params["strides"]) == (2, 2) else DW_SCHEDULES[:1]
    w = s.args[1].shape
    n, k = int(w[0]), int(np.prod(w[1:]))
    sdot_ok = "dotprod" in board.features and n % 4 == 0 and k % 4 == 0
    i8mm_ok = "i8mm" in board.features and n % 2 == 0
    neon_ok = n % 4 == 0 or (_pointwise(s) and int(np.prod(s.out.shape[2:])) % 4 == 0)
    if s.args[0].dtype == "int16":   # only smlal reads int16 x
        return INT16_SCHEDULES if neon_ok else ()
    return tuple(sc for sc in SCHEDULES if (sc not in DOTPROD_SCHEDULES or sdot_ok)
                 and (sc not in I8MM_SCHEDULES or i8mm_ok) and (sc not in NEON_SCHEDULES or neon_ok))


def _shape_key(s) -> tuple:
    """What a layer's kernel code depends on: op, shapes, dtypes, params, the shift range (which
    decides the 32-bit requantization: min >= 33) -- not the weight values (the kernels have no
    data-dependent branches)."""
    return (s.op, tuple(s.args[0].shape), s.args[0].dtype, tuple(s.args[1].shape), s.out.dtype,
            shift_range(s.args[4].val.const), tuple(sorted((k, str(v)) for k, v in s.params.items() if not k.startswith("_"))))


def _one_step_module(s):
    """The layer alone, as an integer module: input x, the step's constants and params."""
    from tvm import relax

    from ..ops import const, emit

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(s.args[0].shape), s.args[0].dtype))
    params = {k: v for k, v in s.params.items() if not k.startswith("_")}
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(emit(bb, s.op, [x, *(const(a.val.const) for a in s.args[1:])], **params))
        bb.emit_func_output(y)
    return bb.finalize()


def _sample(shape, dtype, seed: int) -> np.ndarray:
    """Random values over the whole dtype range, its extremes first."""
    info = np.iinfo(dtype)
    a = np.random.default_rng(seed).integers(info.min, int(info.max) + 1, size=shape, dtype=np.int64)
    a.reshape(-1)[:2] = [info.min, info.max]
    return a.astype(dtype)


def _measure(mod, board, kernels, sample, want, workdir: Path) -> dict:
    """Instructions of the layer (between its two profiling marks) and whether it is bit-exact."""
    from .c_package import write_c_package
    from .harness import build_linux
    from .harness_mcu import plugin_path
    from .runner import package_info, read_outputs, write_inputs
    from .toolchain import QEMU_TIMEOUT, ToolchainError, run_tool, which

    pkg = workdir / "pkg"
    write_c_package(mod, pkg, board, kernels=kernels)
    exe = build_linux(pkg, board, workdir / "build", extra_cflags=["-DQMODEL_PROFILE"])
    mark = symbol_address(board, exe, "qmodel_profile_mark")
    info = package_info(pkg)
    write_inputs(workdir / "qin.bin", info, [[sample]])
    cmd = [which("qemu-aarch64"), "-cpu", board.qemu_cpu or "max", "-plugin",
           f"file={plugin_path()},mark={mark:#x},out={workdir / 'count.txt'}", exe, "qin.bin", "qout.bin"]
    try:
        r = run_tool(cmd, cwd=workdir, timeout=QEMU_TIMEOUT, what="qemu-aarch64 kernel measurement")
    except ToolchainError as e:   # a hung candidate: dropped, not fatal
        return {"ok": False, "why": str(e)}
    if r.returncode != 0:
        return {"ok": False, "why": f"exit {r.returncode} under qemu-aarch64"}
    got = read_outputs(workdir / "qout.bin", info, 1)[0][0]
    marks = [int(ln.split()[1]) for ln in (workdir / "count.txt").read_text().splitlines() if ln.startswith("mark")]
    exact = got.shape == want.shape and bool(np.array_equal(got, want))
    return {"ok": exact, "instructions": marks[1] - marks[0], "why": "" if exact else "not bit-exact"}


def choose_kernels(imod, board, workdir=None, ram_budget=None) -> tuple[dict, dict]:
    """``(kernels, choices)``: step index -> TIR schedule for :func:`.c_package.write_c_package`,
    and step index -> ``{"source", "why", "instructions": {candidate: n or None}}`` for the report.
    Only aarch64 boards have TIR kernels; elsewhere both are empty."""
    from ..reference import ReferenceInterpreter
    from ..tuning.tune_qemu import tuned_kernel
    from .c_graph import build_graph, integer_module_of
    from .kernels_c import macs
    from .tir_kernels import step_spec

    if board.family == "cortex-m" and board.tvm_target:   # the whole model per candidate kind (issue 11)
        from .tir_kernels_cortexm_choice import choose_kernels_cortexm
        return choose_kernels_cortexm(imod, board, workdir, ram_budget)
    if board.family != "aarch64" or board.os != "linux":
        return {}, {}
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="qmodel-choice-") as tmp:
            return choose_kernels(imod, board, Path(tmp))
    g = build_graph(integer_module_of(imod))
    kernels, choices = {}, {}
    seen: dict[tuple, int] = {}
    convs = conv_candidates(g) if "dotprod" in board.features else []
    for s in sorted(tir_candidates(g) + int16_candidates(g) + dw_candidates(g) + convs, key=lambda s: s.index):
        key = _shape_key(s)
        if key in seen:  # same code and shapes as a layer measured already: the same counts
            first = choices[seen[key]]
            choices[s.index] = dict(first, why=f"{first['why']} (measured on {g.steps[seen[key]].name}: same shapes)")
            if seen[key] in kernels:
                kernels[s.index] = kernels[seen[key]]
            continue
        seen[key] = s.index
        mod = _one_step_module(s)
        sample = _sample(s.args[0].shape, s.args[0].dtype, seed=s.index)
        want = ReferenceInterpreter(mod).run("main", sample)
        want = want[0] if isinstance(want, (list, tuple)) else want
        cands = {HANDWRITTEN: None, **{f"tensorir-{sc}": {0: sc} for sc in schedules_for(s, board)}}
        try:   # a record of `tune --target <board>` (tuning/tune_qemu.py; none for depthwise)
            tuned = None if is_depthwise3x3(s) or im2col_step(s) else tuned_kernel(step_spec(s), board)
        except UnsupportedOpError:   # no TIR kernel for this step's dtypes: its TIR candidates are dropped below
            tuned = None
        if tuned is not None:
            cands[f"tensorir-{tuned}"] = {0: tuned}
        runs = {}
        for name, k in cands.items():
            try:
                runs[name] = _measure(mod, board, k, sample, want, Path(workdir) / f"s{s.index}-{name}")
            except QPluginError as e:
                runs[name] = {"ok": False, "why": str(e)}
            except Exception as e:  # noqa: BLE001 - a TIR candidate that does not build is dropped, counted
                if k is None:
                    raise
                runs[name] = {"ok": False, "why": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
        ok = {n: r["instructions"] for n, r in runs.items() if r["ok"]}
        if not ok:
            raise QPluginError(f"kernel choice for {s.name}: no candidate ran bit-exact on {board.name}: "
                               + "; ".join(f"{n}: {r['why']}" for n, r in runs.items()))
        best = min(ok, key=lambda n: (ok[n], n != HANDWRITTEN))
        n_mac = max(macs(s), 1)
        why = (f"measured under qemu-aarch64 -cpu {board.qemu_cpu}: "
               + ", ".join(f"{n} {r['instructions']} instructions ({r['instructions'] / n_mac:.3f}/MAC)" if r["ok"]
                           else f"{n} dropped ({r['why']})" for n, r in runs.items())
               + f"; {best} is the fastest bit-exact candidate")
        choices[s.index] = {"source": best, "why": why,
                            "instructions": {n: (r["instructions"] if r["ok"] else None) for n, r in runs.items()},
                            "dropped": sum(1 for r in runs.values() if not r["ok"])}
        if best != HANDWRITTEN:
            kernels[s.index] = cands[best][0]
    return kernels, choices
