"""Silero VAD on espeak-ng speech, peers side by side in one process: tvm-qplugin int8 (integer-only,
``--input-value sr=16000``) vs ONNX Runtime fp32 and ONNX Runtime static int8 (QDQ, same
calibration windows, on the same specialized graph since its quantizer does not enter ``If``
branches).

Accuracy is measured the way the model is deployed: a closed-loop stream, each call fed the
engine's own previous state; figures are the speech-decision agreement (threshold 0.5) and the
correlation of the probabilities with fp32 over every 32 ms window of the track. Latency: median
per window, engines timed one after the other. Prints one JSON object.

Run: `.venv/bin/python benchmarks/silero_vad.py [--runs N]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

import numpy as np
import onnx

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from common import median_ms, onnxruntime_static_int8  # noqa: E402

import tvm_qplugin as tq  # noqa: E402
from qplugin_zoo import silero_vad as sv  # noqa: E402
from tvm_qplugin.frontend import load_specialized  # noqa: E402
from tvm_qplugin.peak import cpu_name  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    path = sv.silero_vad_onnx()
    frames = sv.windows(sv.speech_audio())
    fp32 = sv.onnxruntime_run(path)
    probs, states = sv.stream(fp32, frames)
    picks = np.arange(0, len(frames), 4)[:128]
    art = tq.compile(path, calib={"input": frames[picks].reshape(len(picks), -1), "state": states[picks]},
                     input_shapes=["input=1,576", "state=2,1,128"], input_values={"sr": sv.RATE}, input_bits=16)
    ours = lambda x, s: art.run({"input": x, "state": s})  # noqa: E731

    with tempfile.TemporaryDirectory() as d:
        spec = os.path.join(d, "silero_16k.onnx")
        onnx.save(load_specialized(path, {"sr": np.array(sv.RATE)}), spec)
        qsess = onnxruntime_static_int8(spec, [{"input": frames[i], "state": states[i]} for i in picks])
    ort_int8 = lambda x, s: qsess.run(None, {"input": x, "state": s})  # noqa: E731

    res = {"model": "silero_vad_op18_ifless (silero-vad 6.2.3), 16 kHz, 512-sample windows", "cpu": cpu_name(),
           "windows": len(frames), "speech_fraction_fp32": round(float((probs > 0.5).mean()), 3), "engines": {}}
    for name, run in (("tvm_qplugin_int8", ours), ("onnxruntime_static_int8", ort_int8), ("onnxruntime_fp32", fp32)):
        p, _ = sv.stream(run, frames)
        x, s = frames[len(frames) // 2], states[len(frames) // 2]
        res["engines"][name] = {
            "decision_agreement": round(float(((p > 0.5) == (probs > 0.5)).mean()), 4),
            "correlation": round(float(np.corrcoef(p, probs)[0, 1]), 4),
            "max_abs_prob_error": round(float(np.abs(p - probs).max()), 4),
            "median_us_per_window": round(1e3 * median_ms(lambda: run(x, s), args.runs), 1)}
    res["integer_only"], res["bit_exact"] = art.report["integer_only"], art.report["bit_exact"]
    res["note"] = "closed loop: each engine's own state is fed back; fp32 agreement is 1 by definition"
    print(json.dumps(res, indent=2))



if __name__ == "__main__":
    main()
