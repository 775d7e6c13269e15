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


def _as_list(res) -> list[np.ndarray]:
    return [res.numpy()] if hasattr(res, "numpy") else [r.numpy() for r in res]


def check_on_gpu(cuda_dir: Path, runs: int = 50, device_id: int = 0) -> dict:
    """Run ``cuda_dir``'s model.so on every sample of its check.npz; bit-exactness and latency."""
    import tvm
    from tvm.runtime.vm import VirtualMachine

    function, samples = load_check_bundle(cuda_dir / BUNDLE)
    try:
        present = tvm.cuda(device_id).exist
    except Exception:  # a TVM runtime built without CUDA raises instead of answering False
        present = False
    dev = tvm.cuda(device_id)
    if not present:
        raise RuntimeError(f"no CUDA device {device_id} visible to TVM's runtime on this machine")
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
