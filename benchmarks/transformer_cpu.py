"""all-MiniLM-L6-v2 (batch 8, seq 128) on this CPU, peers side by side in one process: TVM fp32,
tvm-qplugin int8 integer-only (ivit), ONNX Runtime fp32, ONNX Runtime static int8 (QDQ) and
ONNX Runtime dynamic int8 (its recommendation for transformers; float non-linears).

Prints one JSON object: medians per engine, ratios to TVM fp32, and the sentence-embedding
cosine / nearest-neighbour agreement of each quantized engine against fp32 on real sentences.
Run: `.venv/bin/python benchmarks/transformer_cpu.py [--runs N] [--nonlinear ivit]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import onnxruntime as ort
import tvm
from tvm import relax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # common.py; qplugin_zoo (the repository's fixtures, not installed)
from common import median_ms, onnxruntime_dynamic_int8, onnxruntime_static_int8  # noqa: E402

import tvm_qplugin as tq  # noqa: E402
from qplugin_zoo.minilm import fortune_sentences, minilm_onnx, sentence_embeddings, tokenize  # noqa: E402
from tvm_qplugin.frontend import import_onnx  # noqa: E402


def agreement(ref: np.ndarray, got: np.ndarray, mask: np.ndarray) -> dict:
    a, b = sentence_embeddings(ref, mask), sentence_embeddings(got, mask)
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -9)
    np.fill_diagonal(sb, -9)
    return {"cosine_mean": float((a * b).sum(1).mean()), "nn_agreement": float((sa.argmax(1) == sb.argmax(1)).mean())}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--nonlinear", default="ivit")
    args = ap.parse_args()
    path = str(minilm_onnx())
    sents = fortune_sentences(264)
    calib, ev = tokenize(sents[:64]), tokenize(sents[64:264])
    batch = {k: v[:8] for k, v in ev.items()}
    target = tvm.target.Target.from_device(tvm.cpu())
    res: dict = {"model": "all-MiniLM-L6-v2", "batch": 8, "seq": 128, "cpu_threads": os.cpu_count(), "median_ms": {}}

    fp32 = relax.VirtualMachine(tvm.compile(import_onnx(path).mod, target=target), tvm.cpu())
    targs = [tvm.runtime.tensor(batch["input_ids"]), tvm.runtime.tensor(batch["attention_mask"])]
    res["median_ms"]["tvm_fp32"] = median_ms(lambda: fp32["main"](*targs), args.runs)

    art = tq.compile(path, calib=calib, eval={k: v[:16] for k, v in ev.items()}, nonlinear=args.nonlinear)
    res["median_ms"][f"tvm_qplugin_int8_{args.nonlinear}"] = median_ms(lambda: art.run(batch), args.runs)

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    res["median_ms"]["onnxruntime_fp32"] = median_ms(lambda: sess.run(None, batch), args.runs)
    qsess = onnxruntime_static_int8(path, [{k: v[i : i + 8] for k, v in calib.items()} for i in range(0, 64, 8)],
                                    "QInt8")
    res["median_ms"]["onnxruntime_int8_qdq"] = median_ms(lambda: qsess.run(None, batch), args.runs)
    # what ONNX Runtime recommends for BERT-like models: dynamic int8 (weights int8, activations
    # quantized per call, float softmax / GELU / LayerNorm: not integer-only)
    dsess = onnxruntime_dynamic_int8(path)
    res["median_ms"]["onnxruntime_int8_dynamic"] = median_ms(lambda: dsess.run(None, batch), args.runs)
    outs: dict[str, list] = {"fp32": [], "tvm_qplugin": [], "onnxruntime_int8_qdq": [], "onnxruntime_int8_dynamic": []}
    for i in range(0, 200, 8):
        b = {k: v[i : i + 8] for k, v in ev.items()}
        outs["fp32"].append(sess.run(None, b)[0])
        outs["tvm_qplugin"].append(art.run(b)[0])
        outs["onnxruntime_int8_qdq"].append(qsess.run(None, b)[0])
        outs["onnxruntime_int8_dynamic"].append(dsess.run(None, b)[0])
    mask = ev["attention_mask"][:200]
    ref = np.concatenate(outs.pop("fp32"))
    res["accuracy_vs_fp32"] = {k: agreement(ref, np.concatenate(v), mask) for k, v in outs.items()}
    base = res["median_ms"]["tvm_fp32"]
    res["ratio_vs_tvm_fp32"] = {k: round(base / v, 3) for k, v in res["median_ms"].items()}
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
