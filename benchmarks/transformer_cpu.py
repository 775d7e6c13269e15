"""all-MiniLM-L6-v2 (seq 128) at batch 1 and batch 8 on this CPU, peers side by side in one process:
tvm-qplugin int8 integer-only (native target, and the AVX2-restricted build of the same integer
module: LLVM ``znver3``, no AVX-512 / VNNI: the native build on an AVX2-only CPU), ONNX Runtime
fp32, ONNX Runtime static int8 (QDQ) and ONNX Runtime dynamic int8 (its
recommendation for transformers; float softmax / GELU / LayerNorm, so not integer-only).

Our builds are timed interleaved (round-robin, isa_variants.py); ONNX Runtime and TVM fp32 each on
their own (ONNX Runtime's spinning thread pool and TVM's slow each other down when interleaved on
2 cores). Medians; ratios > 1 mean "faster than the peer". At batch 8, the sentence-embedding
cosine / nearest-neighbour agreement of each quantized engine against fp32 on 200 real sentences.
``--threads`` sets both engines' thread count: on a shared machine ``--threads 1`` is the steadier
comparison (a parallel kernel waits for its slowest thread, which another job may have descheduled).
``--tvm-fp32`` adds untuned TVM fp32 (4 s at batch 1 here). Prints one JSON object.
Run: `.venv/bin/python benchmarks/transformer_cpu.py [--runs N] [--batches 1,8] [--threads T] [--nonlinear ivit]`.
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
from isa_variants import AVX2_TARGET, interleaved_median_ms  # noqa: E402

import tvm_qplugin as tq  # noqa: E402
from qplugin_zoo.minilm import fortune_sentences, minilm_onnx, sentence_embeddings, tokenize  # noqa: E402
from tvm_qplugin.build import build  # noqa: E402
from tvm_qplugin.frontend import import_onnx  # noqa: E402

OURS = "tvm_qplugin_int8"
PEERS = ("onnxruntime_fp32", "onnxruntime_int8_qdq", "onnxruntime_int8_dynamic")


def agreement(ref: np.ndarray, got: np.ndarray, mask: np.ndarray) -> dict:
    a, b = sentence_embeddings(ref, mask), sentence_embeddings(got, mask)
    sa, sb = a @ a.T, b @ b.T
    np.fill_diagonal(sa, -9)
    np.fill_diagonal(sb, -9)
    return {"cosine_mean": float((a * b).sum(1).mean()), "nn_agreement": float((sa.argmax(1) == sb.argmax(1)).mean())}


def _first_output(res) -> np.ndarray:
    return res.numpy() if hasattr(res, "numpy") else res[0].numpy()


def ours(art, batch: dict, runs: int) -> tuple[dict, dict]:
    """Medians of the compiled artifact's build and the AVX2-restricted build of the same integer
    module (checked to give the same integers), interleaved; and the VMs by name."""
    args = [tvm.runtime.tensor(s.to_host(batch[s.name])) for s in art.inputs]
    vms = {OURS: art.vm, f"{OURS}_avx2": relax.VirtualMachine(build(art.integer_mod, AVX2_TARGET)[0], tvm.cpu())}
    outs = {name: _first_output(vm["main"](*args)) for name, vm in vms.items()}
    assert np.array_equal(outs[OURS], outs[f"{OURS}_avx2"]), "the AVX2 build differs from the native one"
    return interleaved_median_ms({name: (lambda vm=vm: vm["main"](*args)) for name, vm in vms.items()}, runs), vms


def one_batch(size: int, calib: dict, ev: dict, args, so) -> dict:
    path = str(minilm_onnx(batch=size))
    batch = {k: v[:size] for k, v in ev.items()}
    res: dict = {"batch": size, "seq": 128, "median_ms": {}}
    art = tq.compile(path, calib=calib, eval={k: v[:16] for k, v in ev.items()}, nonlinear=args.nonlinear)
    res["bit_exact"] = bool(art.report["bit_exact"])
    res["integer_only"] = bool(art.report["integer_only"])
    timed, _ = ours(art, batch, args.runs)
    res["median_ms"].update(timed)

    if args.tvm_fp32:  # untuned TVM fp32: seconds per call here, so opt-in and timed 3 times
        target = tvm.target.Target.from_device(tvm.cpu())
        fp32 = relax.VirtualMachine(tvm.compile(import_onnx(path).mod, target=target), tvm.cpu())
        targs = [tvm.runtime.tensor(batch["input_ids"]), tvm.runtime.tensor(batch["attention_mask"])]
        res["median_ms"]["tvm_fp32"] = median_ms(lambda: fp32["main"](*targs), 3)

    sessions = {"onnxruntime_fp32": ort.InferenceSession(path, so, providers=["CPUExecutionProvider"]),
                "onnxruntime_int8_qdq": onnxruntime_static_int8(
                    path, [{k: v[i : i + size] for k, v in calib.items()} for i in range(0, 64, size)], "QInt8", so),
                "onnxruntime_int8_dynamic": onnxruntime_dynamic_int8(path, so)}
    for name, sess in sessions.items():
        res["median_ms"][name] = median_ms(lambda sess=sess: sess.run(None, batch), args.runs)
    med = res["median_ms"]
    res["speedup"] = {f"{mine}_vs_{peer}": round(med[peer] / med[mine], 3)
                      for mine in (OURS, f"{OURS}_avx2") for peer in (*PEERS, "tvm_fp32") if peer in med}
    if size == 8:
        res["accuracy_vs_fp32"] = accuracy(art, sessions, ev)
    return res


def accuracy(art, sessions: dict, ev: dict) -> dict:
    outs: dict[str, list] = {"fp32": [], OURS: [], "onnxruntime_int8_qdq": [], "onnxruntime_int8_dynamic": []}
    for i in range(0, 200, 8):
        b = {k: v[i : i + 8] for k, v in ev.items()}
        outs["fp32"].append(sessions["onnxruntime_fp32"].run(None, b)[0])
        outs[OURS].append(art.run(b)[0])
        for name in ("onnxruntime_int8_qdq", "onnxruntime_int8_dynamic"):
            outs[name].append(sessions[name].run(None, b)[0])
    mask = ev["attention_mask"][:200]
    ref = np.concatenate(outs.pop("fp32"))
    return {k: agreement(ref, np.concatenate(v), mask) for k, v in outs.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--nonlinear", default="ivit")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="ONNX Runtime's and TVM's thread count")
    ap.add_argument("--tvm-fp32", action="store_true", help="also time TVM fp32 (untuned: seconds per call)")
    args = ap.parse_args()
    # TVM reads it when its thread pool starts, at the first parallel kernel (none has run yet)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    sents = fortune_sentences(264)
    calib, ev = tokenize(sents[:64]), tokenize(sents[64:264])
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    res = {"model": "all-MiniLM-L6-v2", "cpu_threads": args.threads, "nonlinear": args.nonlinear,
           "load_average": os.getloadavg(), "batches": [one_batch(int(b), calib, ev, args, so) for b in args.batches.split(",")]}
    res["note"] = ("speedup = peer median / ours (> 1: ours faster). Our builds interleaved, peers timed on their own; "
                   "the machine is shared, so absolute figures move between runs (see load_average)")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
