"""ddddocr's character detector on this CPU, peers side by side: tvm-qplugin int8 integer-only,
ONNX Runtime fp32 and ONNX Runtime static int8 (QDQ, per-channel, same 16 calibration inputs).

Prints one JSON object: per engine, median latency (batch 1, 416x416) and, against ONNX Runtime
fp32 on the evaluation images, output-map cosine and post-processed box IoU (ddddocr's decoding +
NMS). ONNX Runtime's per-channel QDQ needs opset 13: the opset-11 model is converted first.
Run: `.venv/bin/python benchmarks/detector_cpu.py [--runs N] [--threads T]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnx import version_converter

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # common.py; qplugin_zoo (the repository's fixtures, not installed)
from common import median_ms, onnxruntime_static_int8  # noqa: E402

import tvm_qplugin as tq  # noqa: E402
from qplugin_zoo.ddddocr_det import box_agreement, ddddocr_det_onnx, decode, detector_inputs, evaluation_inputs  # noqa: E402


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    path = str(ddddocr_det_onnx())
    calib = detector_inputs(16, seed=0)
    names, evals = evaluation_inputs()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    fp32 = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as d:
        p13 = os.path.join(d, "opset13.onnx")
        onnx.save(version_converter.convert_version(onnx.load(path), 13), p13)
        ort_int8 = onnxruntime_static_int8(p13, [{"images": c[None]} for c in calib], "QInt8", opts)
    art = tq.compile(path, calib={"images": calib}, eval={"images": evals}, timing_runs=1)
    engines = {"onnxruntime_fp32": lambda x: fp32.run(None, {"images": x})[0],
               "onnxruntime_static_int8": lambda x: ort_int8.run(None, {"images": x})[0],
               "tvm_qplugin_int8": lambda x: art.run({"images": x})[0]}
    out = {"model": path, "threads": args.threads, "integer_only": art.report["integer_only"],
           "bit_exact": art.report["bit_exact"], "engines": {}}
    for name, run in engines.items():
        rows = {}
        for img, x in zip(names, evals):
            want, got = fp32.run(None, {"images": x[None]})[0], run(x[None])
            iou, n_ref, n_got = box_agreement(decode(want), decode(got))
            rows[img] = {"cosine": round(_cosine(got, want), 4), "box_iou": round(iou, 3), "boxes": [n_ref, n_got]}
        out["engines"][name] = {"median_ms": round(median_ms(lambda run=run: run(evals[:1]), args.runs), 1), "images": rows}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
