"""Build and run a C package (export/c_package.py) on this machine: one call, :func:`run_package`.

* host: ``gcc``/``clang`` with ``-fsanitize=address,undefined`` (any finding aborts the run);
* aarch64 Linux boards: a static cross build under ``qemu-aarch64 -cpu <the board's core>``;
* Cortex-M boards: firmware under ``qemu-system-arm``, the real board's memory enforced at link
  time, with stack high-water and instruction counts (:mod:`.harness_mcu`).

All run the same runner (:mod:`.runner`: ``qin.bin`` -> ``model_run`` -> ``qout.bin``), built by
the tools of :mod:`.toolchain`. The names of those modules are re-exported here, so
``harness.build_mcu`` and friends keep working.
"""
from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

from ..errors import QPluginError
from .harness_mcu import (EXT_WEIGHT_SECTION, HEAP_RESERVE, STACK_RESERVE, McuBuild, McuRun, build_mcu,  # noqa: F401
                          count_instructions, link_layout, plugin_path, profile_counts, profile_plugin_args, run_qemu,
                          section_sizes, symbols)
from .runner import package_info, read_outputs, runner_source, write_inputs  # noqa: F401
from .toolchain import (QEMU_TIMEOUT, SANITIZE_FLAGS, WARN_FLAGS, GeneratedCodeError, ToolchainError,  # noqa: F401
                        run_tool, which)


# ----------------------------------------------------------------------------------------------
# host
# ----------------------------------------------------------------------------------------------

def build_host(pkg, build_dir=None, cc: str = "gcc", sanitize: bool = True, opt: str = "-O1",
               extra_cflags=()) -> Path:
    """Compile package + runner for this machine (warnings are errors); return the executable."""
    pkg = Path(pkg)
    build_dir = Path(build_dir or tempfile.mkdtemp(prefix="qmodel-host-"))
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "runner.c").write_text(runner_source(package_info(pkg)))
    exe = build_dir / f"qmodel_{Path(cc).name}{'_san' if sanitize else ''}"
    cmd = [which(cc), *WARN_FLAGS, opt, "-g", *(SANITIZE_FLAGS if sanitize else []), *extra_cflags,
           f"-I{pkg}", pkg / "model.c", pkg / "qkernels.c", build_dir / "runner.c", "-o", exe]
    r = run_tool(cmd, what=f"{cc} build")
    if r.returncode != 0:
        raise GeneratedCodeError(f"{cc} failed to build the C package:\n{r.stderr[-4000:]}")
    return exe


def run_host(exe, pkg, samples, workdir=None) -> list[list[np.ndarray]]:
    """Run a host build on ``samples`` (list of per-sample input lists); return the outputs."""
    info = package_info(pkg)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="qmodel-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    write_inputs(workdir / "qin.bin", info, samples)
    env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0:abort_on_error=0",
               UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1")
    r = subprocess.run([str(exe), "qin.bin", "qout.bin"], cwd=workdir, capture_output=True, text=True, timeout=600,
                       env=env, stdin=subprocess.DEVNULL)
    if r.returncode != 0 or "runtime error" in r.stderr or "AddressSanitizer" in r.stderr:
        raise GeneratedCodeError(f"host run of the C package failed (rc {r.returncode}):\n{r.stderr[-4000:]}")
    return read_outputs(workdir / "qout.bin", info, len(samples))


# ----------------------------------------------------------------------------------------------
# aarch64 Linux boards (Raspberry Pi 4/5, Jetson CPU) under qemu-aarch64
# ----------------------------------------------------------------------------------------------

def build_linux(pkg, board, build_dir=None, opt: str = "-O2", extra_cflags=()) -> Path:
    """Cross-compile package + runner for an aarch64 Linux board (static, the board's -mcpu)."""
    pkg = Path(pkg)
    b = board
    if b.family not in ("aarch64", "cuda") or b.os != "linux" or not b.cc.startswith("aarch64"):
        raise QPluginError(f"board {b.name} is not an aarch64 Linux board")
    build_dir = Path(build_dir or tempfile.mkdtemp(prefix=f"qmodel-{b.name}-"))
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "runner.c").write_text(runner_source(package_info(pkg)))
    exe = build_dir / "qmodel_runner"
    tir = package_info(pkg).get("tir_objects") or []   # TensorIR kernels (tir_kernels.py): the shim + objects
    tir_srcs = [pkg / "tir_kernels.c", *(pkg / o for o in tir)] if tir else []
    cmd = [which(b.cc), *b.cflags, *WARN_FLAGS, opt, *extra_cflags, f"-I{pkg}", pkg / "model.c", pkg / "qkernels.c",
           *tir_srcs, build_dir / "runner.c", "-static", "-o", exe]
    r = run_tool(cmd, what=f"{b.name} build")
    if r.returncode != 0:
        raise GeneratedCodeError(f"{b.cc} failed to build the C package for {b.name}:\n{r.stderr[-4000:]}")
    return exe


def run_linux(exe, pkg, board, samples, workdir=None) -> list[list[np.ndarray]]:
    """Run an aarch64 build under ``qemu-aarch64 -cpu <the board's core>``."""
    b = board
    info = package_info(pkg)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="qmodel-run-"))
    workdir.mkdir(parents=True, exist_ok=True)
    write_inputs(workdir / "qin.bin", info, samples)
    r = run_tool([which("qemu-aarch64"), "-cpu", b.qemu_cpu or "max", exe, "qin.bin", "qout.bin"], cwd=workdir,
             timeout=QEMU_TIMEOUT, what="qemu-aarch64")
    if r.returncode != 0:
        raise GeneratedCodeError(f"{b.name} build failed under qemu-aarch64 (exit {r.returncode}):\n{r.stderr[-3000:]}")
    return read_outputs(workdir / "qout.bin", info, len(samples))


def count_linux(pkg, board, sample, workdir) -> dict:
    """Instructions per inference, per step (layer) and per ``qk_*`` kernel function of one sample on
    an aarch64 board: a profiling build (``-DQMODEL_PROFILE``) of the whole package, run once under
    ``qemu-aarch64 -cpu <the board's core>`` with the instruction-count plugin, as
    :func:`.kernel_choice._measure` does for one layer. The shape of :func:`count_instructions`
    (Cortex-M), so export_mcu's "cost" path fills report.json's ``layers[]`` alike -- every layer,
    the hand-written ones (depthwise, stem) as well as those on a TensorIR kernel."""
    b = board
    workdir = Path(workdir)
    exe = build_linux(pkg, b, workdir / "build-prof", extra_cflags=["-DQMODEL_PROFILE"])
    run = workdir / "count"
    run.mkdir(parents=True, exist_ok=True)
    info = package_info(pkg)
    write_inputs(run / "qin.bin", info, [sample])
    funcs, pargs = profile_plugin_args(symbols(exe, nm=b.cc.replace("-gcc", "-nm")), run)
    emulator = f"qemu-aarch64 -cpu {b.qemu_cpu or 'max'}"
    r = run_tool([which("qemu-aarch64"), "-cpu", b.qemu_cpu or "max", "-plugin", pargs, exe, "qin.bin", "qout.bin"],
                 cwd=run, timeout=QEMU_TIMEOUT, what="qemu-aarch64 (instruction count)")
    if r.returncode != 0:
        raise GeneratedCodeError(f"{b.name} profiling run failed under {emulator} (exit {r.returncode}):\n"
                                 f"{r.stderr[-3000:]}")
    return dict(board=b.name, emulator=emulator, **profile_counts(run / "counts.txt", info, funcs))


# ----------------------------------------------------------------------------------------------
# one call: verify a package on a board
# ----------------------------------------------------------------------------------------------

def run_package(pkg, board, samples, workdir=None, count: bool = False, sanitize: bool = True) -> dict:
    """Run ``samples`` through the package on ``board`` ("host"/"x86-host", an aarch64 Linux board or
    a Cortex-M board).

    Returns ``{"outputs": [[array, ...], ...], "memory": {...} (Cortex-M), "cost": {...} (count=True,
    Cortex-M and aarch64)}``.
    Without ``workdir`` the builds go to a temporary directory that is removed afterwards.
    """
    if workdir is None:
        with tempfile.TemporaryDirectory(prefix="qmodel-") as tmp:
            return run_package(pkg, board, samples, Path(tmp), count, sanitize)
    workdir = Path(workdir)
    if board == "host" or getattr(board, "name", None) == "x86-host":
        exe = build_host(pkg, workdir / "host", sanitize=sanitize)
        return {"outputs": run_host(exe, pkg, samples, workdir / "host-run"), "board": "host"}
    b = board
    if b.os == "linux" and b.cc.startswith("aarch64"):
        exe = build_linux(pkg, b, workdir / "build")
        res = {"outputs": run_linux(exe, pkg, b, samples, workdir / "run"), "board": b.name, "emulator": "qemu-aarch64"}
        if count:
            res["cost"] = count_linux(pkg, b, samples[0], workdir)
        return res
    build = build_mcu(pkg, board, workdir / "build")
    run = run_qemu(build, samples, workdir / "run")
    info = package_info(pkg)
    mem = dict(build.memory, stack_bytes=run.stack_bytes, peak_arena_bytes=info["arena_bytes"],
               liveness_lower_bound_bytes=info["liveness_lower_bound_bytes"], weights_bytes=info["weights_bytes"])
    res = {"outputs": run.outputs, "board": build.board.name, "emulator": build.emulator.qemu_machine, "memory": mem}
    if count:
        pbuild = build_mcu(pkg, board, workdir / "build-prof", profile=True)
        res["cost"] = count_instructions(pbuild, samples[0], workdir / "count")
    return res
