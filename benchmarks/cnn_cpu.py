"""MobileNetV2 on this CPU, peers side by side in one process: tvm-qplugin int8 integer-only (with
the shipped ``x86-host`` tuning database, as ``compile`` applies it), the same integer module built
for the AVX2-restricted target (``_avx2``: LLVM ``znver3``, no AVX-512 / VNNI; runs here since the
build machine has AVX-512 -- ONNX Runtime picks its kernels at run time and cannot be restricted),
ONNX Runtime static int8 (QDQ, u8 activations, per-channel weights) and ONNX Runtime fp32; TVM fp32
(untuned, ~150 ms) and the untensorized builds on request.

Timing: ``--rounds`` rounds; in each, every engine runs ``--runs`` calls in a block (after one
warm-up call), the engines in turn. Blocks rather than call-by-call round-robin: ONNX Runtime's
spinning thread pool and TVM's slow each other down when their calls alternate on 2 cores. Prints
one JSON object: per engine the median over all calls, and per peer the median over rounds of the
per-round ratio ``peer / ours`` (> 1: ours faster) -- machine noise on this shared box falls on
every engine of a round alike. ``uptime``'s load average is recorded before and after.
Run: `.venv/bin/python benchmarks/cnn_cpu.py [--batch 1] [--rounds 5] [--runs 20] [--tvm-fp32]
[--untensorized] [--depthwise-one-row] [--avx2-vpmaddwd] [--wide-inputs 16,auto,8] [--save-module FILE]`.

``--wide-inputs P1,P2,...`` (no AVX2 builds then) compiles the model once per width policy (quant/wide_inputs.py; the
first is the artifact the other engines are compared with, the others are timed as
``tvm_qplugin_int8_wide_P``) with all 256 evaluation crops as ``eval``, and records each build's
top-1 agreement with fp32 (``agreement``; ONNX Runtime int8's on the same crops next to it) and its
per-tensor kernel times and accuracy effects (``wide_inputs``); the engines are also timed call
by call in turn (``interleaved_median_ms``), which a loaded machine disturbs less than blocks.
With ``--threads 1`` every engine is also timed in thread CPU time, call by call in turn
(``thread_cpu_median_ms``: at one thread TVM and ONNX Runtime compute on the calling thread, so
other jobs' share of a loaded machine stays out of the figure).

``--depthwise-one-row`` adds the same integer module built with one output row per depthwise
tile (``x86_depthwise.ROW_TILES = (1,)``: the depthwise schedule before stop 21's row tiles), for
both targets (``_one_row``, ``_avx2_one_row``), next to the native build of this process
(``_rows``): the before / after of that change, in one process.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np
import onnxruntime as ort
import tvm
from tvm import relax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # common.py; qplugin_zoo (the repository's fixtures, not installed)
from common import onnxruntime_static_int8
from isa_variants import (
    AVX2_TARGET,
    assert_same_outputs,
    build_variants,
    interleaved_median_ms,
    rounds_of_blocks,
    vpmaddwd_only,
)

import tvm_qplugin as tq
from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx
from tvm_qplugin.frontend import import_onnx


def _one_row_variants(mod, targets: dict) -> dict:
    """The builds of ``targets`` with one output row per depthwise tile, suffixed ``_one_row``."""
    from tvm_qplugin.schedules import x86_depthwise

    tiles = x86_depthwise.ROW_TILES
    x86_depthwise.ROW_TILES = (1,)
    try:
        built = build_variants(mod, targets, with_untensorized=False)
    finally:
        x86_depthwise.ROW_TILES = tiles
    return {f"{suffix}_one_row": vm for suffix, vm in built.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20, help="calls per engine per round")
    ap.add_argument("--threads", type=int, default=os.cpu_count(),
                    help="ONNX Runtime's and TVM's thread count (1: steadier on a shared machine)")
    ap.add_argument("--tvm-fp32", action="store_true", help="also time TVM fp32 (untuned: ~150 ms a call)")
    ap.add_argument("--untensorized", action="store_true", help="also time the builds without the tensorized rules")
    ap.add_argument("--avx2-vpmaddwd", action="store_true",
                    help="also time the AVX2 build with every 8-bit conv/dense on vpmaddwd (before vpmaddubsw)")
    ap.add_argument("--depthwise-one-row", action="store_true",
                    help="also time the builds with one output row per depthwise tile (before stop 21)")
    ap.add_argument("--wide-inputs", default="16", help="width policies to compile, comma-separated: the first is "
                    "the reference build, e.g. 16,auto,8")
    args = ap.parse_args()
    # TVM reads it when its thread pool starts, at the first parallel kernel (none has run yet)
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    path = str(mobilenet_v2_onnx(batch=args.batch))
    calib, evaluation = imagenet_calib_eval()
    x = evaluation[: args.batch]
    target = tvm.target.Target.from_device(tvm.cpu())
    res: dict = {"model": "mobilenet_v2 (torchvision ImageNet weights)", "batch": args.batch, "input": list(x.shape),
                 "cpu_threads": args.threads, "target": str(target.attrs.get("mcpu", "")),
                 "load_before": os.getloadavg()}

    policies = args.wide_inputs.split(",")
    sweep = len(policies) > 1
    arts = {p: tq.compile(path, target="x86-host", calib={"input": calib}, wide_inputs=p,
                          eval={"input": evaluation if sweep else evaluation[: max(16, args.batch)]}) for p in policies}
    art = arts[policies[0]]
    if sweep:
        res["agreement"] = {f"wide_{p}": a.report["accuracy"] for p, a in arts.items()}
        res["wide_inputs"] = {p: a.report["wide_inputs"] for p, a in arts.items()}
        res["compile_latency_ms"] = {p: a.report["latency_ms"]["median"] for p, a in arts.items()}
    res["bit_exact"] = bool(art.report["bit_exact"])
    res["tuning_db"] = {key: art.report["tuning"].get(key) for key in ("db", "db_source", "isa", "tasks_tuned")}
    q = tvm.runtime.tensor(art.inputs[0].qtype.quantize(x))
    targets = {} if sweep else {"native": target, "avx2": AVX2_TARGET}  # a sweep times the policies' own builds
    variants = build_variants(art.integer_mod, targets, args.untensorized)
    if args.depthwise_one_row:
        variants.update(_one_row_variants(art.integer_mod, targets))
    if args.avx2_vpmaddwd:
        with vpmaddwd_only():
            variants["_avx2_vpmaddwd"] = build_variants(art.integer_mod, {"avx2": AVX2_TARGET}, False)["_avx2"]
    assert_same_outputs({"": art.vm, **variants}, "core", q)
    calls = {f"tvm_qplugin_int8{suffix}": (lambda vm=vm: vm["core"](q)) for suffix, vm in variants.items()}
    if args.depthwise_one_row:  # the before / after pair as two builds of this process, side by side
        calls["tvm_qplugin_int8_rows"] = calls["tvm_qplugin_int8"]
    calls["tvm_qplugin_int8"] = lambda: art.vm["core"](q)  # the compiled artifact itself (shipped database)
    xt = tvm.runtime.tensor(x)
    calls["tvm_qplugin_int8_float_io"] = lambda: art.vm["main"](xt)
    for p, other in list(arts.items())[1:]:
        qp = tvm.runtime.tensor(other.inputs[0].qtype.quantize(x))
        calls[f"tvm_qplugin_int8_wide_{p}"] = lambda vm=other.vm, qp=qp: vm["core"](qp)

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    calls["onnxruntime_fp32"] = lambda: sess.run(None, {"input": x})
    try:
        feeds = [{"input": calib[i : i + args.batch]} for i in range(0, max(16, args.batch), args.batch)]  # 16 images
        qsess = onnxruntime_static_int8(path, feeds, "QUInt8", so)
        calls["onnxruntime_int8_qdq"] = lambda: qsess.run(None, {"input": x})
        if sweep:  # the peer's agreement with fp32 on the same 256 crops
            from tvm_qplugin.metrics import classification_agreement

            one = [evaluation[i : i + args.batch] for i in range(0, len(evaluation) - args.batch + 1, args.batch)]
            f32 = np.concatenate([sess.run(None, {"input": b})[0] for b in one])
            i8 = np.concatenate([qsess.run(None, {"input": b})[0] for b in one])
            res["agreement"]["onnxruntime_int8_qdq"] = classification_agreement(f32, i8)
    except Exception as e:  # noqa: BLE001 - the peer is optional; say why it is missing
        res["onnxruntime_int8_error"] = f"{type(e).__name__}: {e}"
    if args.tvm_fp32:
        fp32 = relax.VirtualMachine(tvm.compile(import_onnx(path).mod, target=target), tvm.cpu())
        calls["tvm_fp32"] = lambda: fp32["main"](xt)
    res["median_ms"], ratios = rounds_of_blocks(calls, args.rounds, args.runs, reference="tvm_qplugin_int8")
    res["peer_over_ours"] = {k: round(v, 3) for k, v in ratios.items()}
    if sweep:  # call by call as well: on a loaded machine the blocks of a round see different loads
        alternating = interleaved_median_ms(calls, args.rounds * args.runs)
        res["interleaved_median_ms"] = {k: round(v, 3) for k, v in alternating.items()}
        res["interleaved_peer_over_ours"] = {k: round(v / alternating["tvm_qplugin_int8"], 3)
                                             for k, v in alternating.items() if k != "tvm_qplugin_int8"}
    if args.threads == 1:  # every engine computes on this thread: its CPU time, call by call in turn
        cpu = interleaved_median_ms(calls, args.rounds * args.runs, clock=time.thread_time)
        res["thread_cpu_median_ms"] = {k: round(v, 3) for k, v in cpu.items()}
        res["thread_cpu_peer_over_ours"] = {k: round(v / cpu["tvm_qplugin_int8"], 3)
                                            for k, v in cpu.items() if k != "tvm_qplugin_int8"}
    res["load_after"] = os.getloadavg()
    res["note"] = ("peer_over_ours: median over rounds of (peer median / tvm_qplugin_int8 median) in the round; "
                   "> 1 means ours is faster. _avx2: the same integer module built for znver3 (AVX2).")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
