"""Check a CUDA build on the GPU machine it will run on, with nothing there but TVM's runtime.

``compile --target nvidia-*`` can run where no GPU is (the usual build machine). It then saves,
next to ``OUT/cuda/model.so``, ``check.npz``: the integer inputs of a few real samples and the
NumPy reference's outputs for them (:func:`save_check_bundle`, called by compile_cuda.py). On the
GPU box, with only the TVM runtime installed (``pip install apache-tvm`` and
``TVM_USE_RUNTIME_LIB=1``, or a runtime-only build) and this file::

    python -m tvm_qplugin.cuda_device_check OUT/cuda [--runs 50]

loads the library, runs every saved sample on ``cuda(0)``, compares each output bit for bit with
the reference (:func:`tvm_qplugin.bitexact.first_difference`, the same comparison as every other
bit-exact claim of the product), times the model, prints one line and writes
``OUT/cuda/device_check.json``. Exit status 0: bit-exact; 1: a difference (the line names the
output, the sample and the first differing element); 2: the bundle or the library is missing
or unreadable.

Why a separate step and not RPC: a GPU box is often unreachable from the build machine (a
cluster node, an air-gapped lab); the bundle carries everything the check needs, and the
comparison cannot drift from the host's because it is the same function.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .bitexact import first_difference

BUNDLE = "check.npz"
RESULT = "device_check.json"


def save_check_bundle(path: Path, function: str, samples: list[tuple[list, list]]) -> None:
    """``samples``: (integer inputs, reference outputs) per batch the compiled function takes."""
    arrays: dict[str, np.ndarray] = {"function": np.array(function), "batches": np.array(len(samples))}
    for b, (inputs, outputs) in enumerate(samples):
        arrays.update({f"in{b}_{i}": np.ascontiguousarray(a) for i, a in enumerate(inputs)})
        arrays.update({f"out{b}_{j}": np.ascontiguousarray(a) for j, a in enumerate(outputs)})
    np.savez(path, **arrays)


def load_check_bundle(path: Path) -> tuple[str, list[tuple[list, list]]]:
    """Inverse of :func:`save_check_bundle`."""
    with np.load(path) as z:
        function, batches = str(z["function"]), int(z["batches"])
        samples = []
        for b in range(batches):
            ins = [z[f"in{b}_{i}"] for i in range(sum(k.startswith(f"in{b}_") for k in z.files))]
            outs = [z[f"out{b}_{j}"] for j in range(sum(k.startswith(f"out{b}_") for k in z.files))]
            samples.append((ins, outs))
    return function, samples


_PTX_FOR_SOURCE: dict[str, bytes] = {}
KERNELS_FROM: dict[str, int] = {"build-machine PTX": 0, "nvcc here": 0}  # how each library's kernels loaded


def _nvcc_here(code: str) -> bytes | None:
    """A fatbin for this machine's GPU from the CUDA toolkit's nvcc, where one is installed."""
    import glob
    import shutil
    import subprocess
    import tempfile

    import tvm

    nvcc = shutil.which("nvcc") or next(iter(sorted(glob.glob("/usr/local/cuda*/bin/nvcc"))), None)
    if nvcc is None:
        return None
    arch = "sm_" + tvm.cuda(0).compute_version.replace(".", "")
    with tempfile.TemporaryDirectory() as d:
        src, out = Path(d) / "k.cu", Path(d) / "k.fatbin"
        src.write_text(code)
        subprocess.run([nvcc, "--fatbin", "-O3", f"-arch={arch}", "-o", str(out), str(src)], check=True)
        return out.read_bytes()


def _ptx_for(code: str) -> bytes:
    """``tvm_callback_cuda_compile`` of a runtime-only TVM: the PTX built with the library, else
    nvcc on this machine."""
    ptx = _PTX_FOR_SOURCE.get(str(code))
    if ptx is not None:
        KERNELS_FROM["build-machine PTX"] += 1
        return ptx
    fatbin = _nvcc_here(str(code))
    if fatbin is None:
        raise RuntimeError("this CUDA library's kernels have no PTX next to it (kernels.ptx built from the same "
                           "kernels.cu) and there is no nvcc here: re-run compile, or install the CUDA toolkit")
    KERNELS_FROM["nvcc here"] += 1
    return fatbin


def provide_ptx(source: str, ptx: str) -> None:
    """Let a runtime-only TVM load a CUDA library whose kernels are ``source`` by handing the
    driver ``ptx`` (built from that source for the board's arch on the build machine).

    Why: TVM 0.27 keeps a CUDA library's kernels as CUDA C and compiles them when the library is
    loaded (``tvm_callback_cuda_compile``: NVRTC, or nvcc), which needs TVM's compiler side and a
    CUDA compiler on the GPU machine. The PTX was already built (and checked for dp4a / mma) on
    the build machine; the driver JIT-compiles PTX for its GPU, so the GPU machine needs only the
    driver and TVM's runtime."""
    import tvm_ffi

    if not _PTX_FOR_SOURCE:
        tvm_ffi.register_global_func("tvm_callback_cuda_compile", _ptx_for, override=True)
    _PTX_FOR_SOURCE[source] = ptx.encode() if isinstance(ptx, str) else ptx


def provide_ptx_of(cuda_dir: Path) -> None:
    """:func:`provide_ptx` for a directory with kernels.cu / kernels.ptx (compile's OUT/cuda)."""
    from tvm import base

    if base._RUNTIME_ONLY and (cuda_dir / "kernels.ptx").is_file():
        provide_ptx((cuda_dir / "kernels.cu").read_text(), (cuda_dir / "kernels.ptx").read_text())


def runtime_with_cuda():
    """``tvm``, with its CUDA device API loaded. A runtime-only TVM (``TVM_USE_RUNTIME_LIB=1``)
    loads ``libtvm_runtime`` alone; the CUDA device API lives in ``libtvm_runtime_cuda``, which
    otherwise comes in as a dependency of the compiler library, so it is loaded here."""
    import ctypes

    import tvm
    from tvm import libinfo

    if tvm.get_global_func("device_api.cuda", allow_missing=True) is None:
        for d in libinfo.package_lib_paths():
            lib = Path(d) / "libtvm_runtime_cuda.so"
            if lib.is_file():
                try:
                    ctypes.CDLL(str(lib), ctypes.RTLD_GLOBAL)
                except OSError as e:  # no driver (libcuda.so.1) or CUDA runtime on this machine
                    raise RuntimeError(f"no CUDA device usable here: TVM's CUDA runtime {lib.name} does not load ({e}); "
                                       "this check needs the NVIDIA driver and a GPU") from None
                break
    return tvm


def _as_list(res) -> list[np.ndarray]:
    return [res.numpy()] if hasattr(res, "numpy") else [r.numpy() for r in res]


def check_on_gpu(cuda_dir: Path, runs: int = 50, device_id: int = 0) -> dict:
    """Run ``cuda_dir``'s model.so on every sample of its check.npz; bit-exactness and latency."""
    tvm = runtime_with_cuda()
    from tvm.runtime.vm import VirtualMachine

    function, samples = load_check_bundle(cuda_dir / BUNDLE)
    try:
        present = tvm.cuda(device_id).exist
    except Exception:  # noqa: BLE001 - a TVM runtime built without CUDA raises instead of answering False
        present = False
    dev = tvm.cuda(device_id)
    if not present:
        raise RuntimeError(f"no CUDA device {device_id} visible to TVM's runtime on this machine")
    provide_ptx_of(cuda_dir)
    t0 = time.perf_counter()
    vm = VirtualMachine(tvm.runtime.load_module(str(cuda_dir / "model.so")), dev)
    load_s = time.perf_counter() - t0
    first_bad, checked = None, 0
    for b, (inputs, want) in enumerate(samples):
        args = [tvm.runtime.tensor(a, dev) for a in inputs]
        got = _as_list(vm[function](*args))
        for j, (g, w) in enumerate(zip(got, want)):
            diff = first_difference(g, w)
            if diff is not None and first_bad is None:
                first_bad = f"output {j}, saved batch {b}: {diff}"
        checked += 1
    timer = vm.time_evaluator(function, dev, number=1, repeat=max(runs, 1), min_repeat_ms=0)
    times = np.array(timer(*args).results) * 1e3
    return {"device": dev.device_name, "bit_exact": first_bad is None, "batches_checked": checked,
            "kernels_from": {k: v for k, v in KERNELS_FROM.items() if v},
            "first_difference": first_bad, "load_s": round(load_s, 3),
            "latency_ms": {"median": float(np.median(times)), "min": float(times.min()), "runs": len(times)}}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tvm_qplugin.cuda_device_check",
                                 description="bit-exact check and timing of OUT/cuda on this machine's GPU")
    ap.add_argument("cuda_dir", type=Path, help="the OUT/cuda directory compile wrote (model.so, check.npz)")
    ap.add_argument("--runs", type=int, default=50, help="timed runs (median reported)")
    args = ap.parse_args(argv)
    for name in ("model.so", BUNDLE):
        if not (args.cuda_dir / name).is_file():
            print(f"error: {args.cuda_dir / name} not found: point at the OUT/cuda directory of a "
                  "`compile --target nvidia-*` run", file=sys.stderr)
            return 2
    try:
        res = check_on_gpu(args.cuda_dir, args.runs)
    except RuntimeError as e:  # no GPU / no CUDA in this TVM runtime: nothing was checked
        print(f"error: {e}", file=sys.stderr)
        return 2
    (args.cuda_dir / RESULT).write_text(json.dumps(res, indent=1))
    verdict = "bit-exact" if res["bit_exact"] else f"NOT bit-exact ({res['first_difference']})"
    print(f"{res['device']}: {verdict} on {res['batches_checked']} saved batches; "
          f"median {res['latency_ms']['median']:.3f} ms over {res['latency_ms']['runs']} runs")
    return 0 if res["bit_exact"] else 1


if __name__ == "__main__":
    sys.exit(main())
