"""MobileNetV2 on this CPU, peers side by side in one process: TVM fp32, tvm-qplugin int8
integer-only, ONNX Runtime fp32 (and ONNX Runtime static int8 QDQ for reference).

Prints one JSON object: median latency per engine (batch 1, 224x224) and ratios to TVM fp32.
The same integer module is also built without the tensorized kernels (``_untensorized``) and for
the AVX2-restricted target (``_avx2``: LLVM ``znver3``, no AVX-512 / VNNI; runs here since the
build machine has AVX-512) -- ONNX Runtime picks its kernels at run time and cannot be restricted.
Our int8 variants are timed interleaved (round-robin), medians; ONNX Runtime is timed on its own
(its spinning thread pool and TVM's slow each other down when interleaved on 2 cores).
Run: `.venv/bin/python benchmarks/cnn_cpu.py [--runs N] [--size 224]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import onnxruntime as ort
import tvm
from tvm import relax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # common.py; qplugin_zoo (the repository's fixtures, not installed)
from common import median_ms, onnxruntime_static_int8  # noqa: E402
from isa_variants import AVX2_TARGET, assert_same_outputs, build_variants, interleaved_median_ms  # noqa: E402

import tvm_qplugin as tq  # noqa: E402
from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx  # noqa: E402
from tvm_qplugin.frontend import import_onnx  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=30)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    path = str(mobilenet_v2_onnx())
    calib, evaluation = imagenet_calib_eval()
    x = evaluation[:1]
    target = tvm.target.Target.from_device(tvm.cpu())

    res: dict = {"model": "mobilenet_v2 (torchvision ImageNet weights)", "batch": 1, "input": list(x.shape),
                 "cpu_threads": args.threads, "target": str(target.attrs.get("mcpu", "")), "median_ms": {}}
    fp32 = relax.VirtualMachine(tvm.compile(import_onnx(path).mod, target=target), tvm.cpu())
    xt = tvm.runtime.tensor(x)
    res["median_ms"]["tvm_fp32"] = median_ms(lambda: fp32["main"](xt), args.runs)

    art = tq.compile(path, target="x86-host", calib={"input": calib}, eval={"input": evaluation[:16]})
    q = tvm.runtime.tensor(art.inputs[0].qtype.quantize(x))
    res["median_ms"]["tvm_qplugin_int8_core"] = median_ms(lambda: art.vm["core"](q), args.runs)
    res["median_ms"]["tvm_qplugin_int8_float_io"] = median_ms(lambda: art.vm["main"](xt), args.runs)
    variants = build_variants(art.integer_mod, {"native": target, "avx2": AVX2_TARGET})
    assert_same_outputs(variants, "core", q)
    res["bit_exact"] = bool(art.report["bit_exact"])
    calls = {f"tvm_qplugin_int8_core{suffix}": (lambda vm=vm: vm["core"](q)) for suffix, vm in variants.items()}
    res["median_ms"].update(interleaved_median_ms(calls, args.runs))
    fp32_avx2 = relax.VirtualMachine(tvm.compile(import_onnx(path).mod, target=AVX2_TARGET), tvm.cpu())
    res["median_ms"]["tvm_fp32_avx2"] = median_ms(lambda: fp32_avx2["main"](xt), args.runs)

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    res["median_ms"]["onnxruntime_fp32"] = median_ms(lambda: sess.run(None, {"input": x}), args.runs)
    try:
        qsess = onnxruntime_static_int8(path, [{"input": calib[i : i + 1]} for i in range(16)], "QUInt8", so)
        res["median_ms"]["onnxruntime_int8_qdq"] = median_ms(lambda: qsess.run(None, {"input": x}), args.runs)
    except Exception as e:  # noqa: BLE001 - the peer is optional; say why it is missing
        res["onnxruntime_int8_error"] = f"{type(e).__name__}: {e}"
    base = res["median_ms"]["tvm_fp32"]
    res["ratio_vs_tvm_fp32"] = {k: round(base / v, 3) for k, v in res["median_ms"].items()}
    res["note"] = ("ratio > 1 means faster than TVM fp32. The int8 kernels run the default (untuned) "
                   "schedules unless a tuning database is given.")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
