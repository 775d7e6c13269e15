"""The GPU half of ``compile --target nvidia-*``: the CUDA build of the verified integer graph.

A CUDA board gets the same integer graph as every other target. Its numerics are established on
the host first (the x86 build against the NumPy reference, as for ``x86-host``: accuracy, per-tensor
errors, kernel extremes); then :func:`attach_cuda_build` schedules the graph for the board's arch
(build_cuda.py: dp4a rules, dlight fallback, the integer-only checker on the CUDA kernels, TVM's
GPU verifier, nvcc), and -- only where a GPU is present -- runs that build on it against the
reference and times it. Without a GPU the report says so in ``cuda.bit_exact`` /
``cuda.why`` instead of claiming a result nobody measured.

The artifact gains ``OUT/cuda/``: ``model.so`` (the VM library for ``tvm.cuda()``, loadable by
the TVM runtime on the GPU machine), the CUDA C TVM generated and its PTX (what the PTX checks
read), and ``check.npz``: real samples' integer inputs with the NumPy reference's outputs, which
``python -m tvm_qplugin.cuda_device_check OUT/cuda`` compares bit for bit on the GPU machine with
nothing there but TVM's runtime (cuda_device_check.py).
"""
from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import tvm

from .build_cuda import CudaBuild, build_cuda, cuda_target, find_nvcc
from .errors import TargetError
from .native_log import quiet_native_stderr

log = logging.getLogger("tvm_qplugin")


def check_cuda_board(board) -> None:
    """Before the long steps: the board names a supported arch and nvcc is installed."""
    if not board.arch:
        raise TargetError(f"board {board.name!r} is a CUDA board without an `arch` (e.g. arch = \"sm_80\") in its "
                          "board file: add one")
    cuda_target(board.arch)
    find_nvcc()


def gpu_present() -> bool:
    """Whether a CUDA device is visible to TVM's runtime here (False without driver or GPU)."""
    try:
        return bool(tvm.cuda(0).exist)
    except Exception:  # a runtime without CUDA support raises instead of answering False
        return False


def attach_cuda_build(art, board, layers, ds, n_inputs: int, timing_runs: int,
                      checked_samples: list) -> CudaBuild:
    """Build ``art``'s integer module for ``board``; on a GPU, check and time it; record it all
    (``layers``: the integer graph's layer infos, for ``layers[].kernel``; ``checked_samples``: the
    (inputs, reference outputs) the host's bit-exact check compared, saved as check.npz)."""
    from . import report
    from .tuning.apply import kernel_of_var

    with quiet_native_stderr():
        built = build_cuda(art.integer_mod, board.arch)
    art.cuda_build = built
    built.check_samples = checked_samples
    device = run_on_gpu(art, built, ds, n_inputs, timing_runs) if gpu_present() else None
    kernel_of = kernel_of_var(art.integer_mod)
    report.record_cuda(art.report, built, board, [kernel_of.get(info.var) for info in layers], device)
    return built


def run_on_gpu(art, built: CudaBuild, ds, n_inputs: int, timing_runs: int) -> dict:
    """The CUDA build on the first GPU against the NumPy reference (``n_inputs`` samples at
    least), and its median latency over ``timing_runs`` calls."""
    from tvm import relax

    from .compiler import compare_with_reference

    dev = tvm.cuda(0)
    vm = relax.VirtualMachine(built.executable, dev)
    fname = art.integer_function
    args: list = []

    def run(q):
        args[:] = [tvm.runtime.tensor(a, dev) for a in q]
        got = vm[fname](*args)
        return [got.numpy()] if hasattr(got, "numpy") else [g.numpy() for g in got]

    checked, first_bad = compare_with_reference(art, ds, n_inputs, run)
    timer = vm.time_evaluator(fname, dev, number=1, repeat=max(timing_runs, 1))
    times = np.array(timer(*args).results) * 1e3
    return {"device": dev.device_name, "bit_exact": first_bad is None, "bit_exact_inputs": checked,
            "first_difference": first_bad, "latency_ms": {"median": float(np.median(times)),
                                                           "runs": len(times)}}


def save_cuda_build(built: CudaBuild, outdir: Path, function: str) -> None:
    """``OUT/cuda/``: model.so (export_library links the host side here; the GPU code inside is
    the PTX nvcc produced), kernels.cu, kernels.ptx and check.npz (``function``'s samples)."""
    from .cuda_device_check import BUNDLE, save_check_bundle

    outdir.mkdir()
    t0 = time.perf_counter()
    with quiet_native_stderr():
        built.executable.export_library(str(outdir / "model.so"))
    log.debug("cuda library exported in %.1f s", time.perf_counter() - t0)
    (outdir / "kernels.cu").write_text(built.source)
    (outdir / "kernels.ptx").write_text(built.ptx)
    if built.check_samples:
        save_check_bundle(outdir / BUNDLE, function, built.check_samples)
