"""MobileNetV2 under ``--wide-inputs 8`` / ``auto``: the narrowing requantize fused into its conv's
gather (schedules/x86_narrowing.py) against the same integer module built with the requantize as
a kernel of its own (the build before the fusion), ONNX Runtime int8 (QDQ) in the same process,
1 thread by default; native target and the AVX2-restricted one (isa_variants.AVX2_TARGET).

Per layer: each narrowed consumer's kernel time (median of instrumented runs), the fused kernel
against requantize + conv. Whole model: ``rounds_of_blocks`` medians and ratios, and the
call-by-call interleaved medians. ``uptime``'s load before and after. Prints one JSON object.
Run: `.venv/bin/python benchmarks/narrowing_fusion.py [--policies 8,auto] [--rounds 7] [--runs 20]`.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from collections import defaultdict

import numpy as np
import tvm
from tvm import relax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from common import onnxruntime_static_int8
from isa_variants import (
    AVX2_TARGET,
    assert_same_outputs,
    interleaved_median_ms,
    rounds_of_blocks,
)

import tvm_qplugin as tq
import tvm_qplugin.build as qbuild
from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx
from tvm_qplugin.schedules.x86_narrowing import NARROWED, fuse_narrowing


@contextlib.contextmanager
def unfused():
    """Builds inside it keep the narrowing requantize as a kernel of its own (before the fusion)."""
    saved = qbuild.fuse_narrowing
    qbuild.fuse_narrowing = lambda mod, target: mod
    try:
        yield
    finally:
        qbuild.fuse_narrowing = saved


def executable_for(mod, target, fused: bool):
    from tvm_qplugin.targets import get_board
    from tvm_qplugin.tuning.apply import resolve_tuning

    tuning = resolve_tuning(None, get_board("x86-host"), target)
    with contextlib.nullcontext() if fused else unfused():
        return qbuild.build(mod, target, tuning=tuning)[0]


def call_order(mod, func: str) -> list[tuple[str, str]]:
    """``(binding var name, kernel name)`` of the call_tir bindings of ``func``, in order."""
    return [(b.var.name, b.value.args[0].name_hint) for blk in mod[func].body.blocks for b in blk.bindings
            if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.call_tir"]


def per_binding_us(executable, order, q, runs: int = 30) -> dict[str, float]:
    """Median microseconds per binding of ``order`` (the VM's calls matched in order), on a VM of
    its own: the instrument's Python callback per call would slow any VM timed afterwards."""
    vm = relax.VirtualMachine(executable, tvm.cpu())
    calls: list = []
    started: dict = defaultdict(list)

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run:
            started[symbol].append(time.perf_counter())
        else:
            calls.append((symbol, (time.perf_counter() - started[symbol].pop()) * 1e6))
        return 0

    vm["core"](q)
    vm.set_instrument(instrument)
    kernels = {k for _, k in order}
    samples: dict = defaultdict(list)
    for _ in range(runs):
        calls.clear()
        vm["core"](q)
        seq = [c for c in calls if c[0] in kernels]
        assert [s for s, _ in seq] == [k for _, k in order], "call order differs from the module's"
        for (var, _), (_, us) in zip(order, seq):
            samples[var].append(us)
    return {v: float(np.median(t)) for v, t in samples.items()}


def layer_table(art, target, fused, plain, q) -> list[dict]:
    """Per fused consumer: the fused kernel's time against its requantize + conv's."""
    core = art.integer_function
    order_plain = call_order(art.integer_mod, core)
    order_built = call_order(fuse_narrowing(art.integer_mod, target), core)
    t_plain, t_fused = per_binding_us(plain, order_plain, q), per_binding_us(fused, order_built, q)
    tir_calls = [b for blk in art.integer_mod[core].body.blocks for b in blk.bindings
                 if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.call_tir"]
    producer = {b.var.name: b.value.args[1].fields[0] for b in tir_calls}
    out_shape = {b.var.name: [int(d) for d in b.var.ty.shape] for b in tir_calls}
    rows = []
    for var, kernel in order_built:
        if not kernel.startswith(NARROWED):
            continue
        narrow_var = producer[var].name
        before = t_plain[narrow_var] + t_plain[var]
        rows.append({"layer": var, "input": [int(d) for d in producer[narrow_var].ty.shape],
                     "output": out_shape[var], "requantize_us": round(t_plain[narrow_var], 1),
                     "conv_us": round(t_plain[var], 1), "fused_us": round(t_fused[var], 1),
                     "before_over_after": round(before / t_fused[var], 3)})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", default="8,auto")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-avx2", action="store_true")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)
    path = str(mobilenet_v2_onnx())
    calib, evaluation = imagenet_calib_eval()
    x = evaluation[:1]
    native = tvm.target.Target.from_device(tvm.cpu())
    res: dict = {"threads": args.threads, "load_before": os.getloadavg(), "layers": {}, "compile_s": {}}
    calls: dict = {}
    for policy in args.policies.split(","):
        t0 = time.perf_counter()
        art = tq.compile(path, target="x86-host", calib={"input": calib}, eval={"input": evaluation[:16]},
                         wide_inputs=policy)
        res["compile_s"][policy] = round(time.perf_counter() - t0, 1)
        assert art.report["bit_exact"] and not art.report["bit_exact_kernels"]["mismatched"]
        q = tvm.runtime.tensor(art.inputs[0].qtype.quantize(x))
        targets = {"native": native} if args.no_avx2 else {"native": native, "avx2": AVX2_TARGET}
        for name, target in targets.items():
            fused_ex = art.executable if name == "native" else executable_for(art.integer_mod, target, True)
            plain_ex = executable_for(art.integer_mod, target, False)
            res["layers"][f"{policy}_{name}"] = layer_table(art, target, fused_ex, plain_ex, q)
            fused, plain = (relax.VirtualMachine(ex, tvm.cpu()) for ex in (fused_ex, plain_ex))
            assert_same_outputs({"fused": fused, "unfused": plain}, "core", q)
            calls[f"ours_{policy}_{name}_fused"] = lambda vm=fused, q=q: vm["core"](q)
            calls[f"ours_{policy}_{name}_unfused"] = lambda vm=plain, q=q: vm["core"](q)
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    feeds = [{"input": calib[i : i + 1]} for i in range(16)]
    qsess = onnxruntime_static_int8(path, feeds, "QUInt8", so)
    calls["onnxruntime_int8_qdq"] = lambda: qsess.run(None, {"input": x})
    reference = next(iter(calls))
    res["median_ms"], ratios = rounds_of_blocks(calls, args.rounds, args.runs, reference=reference)
    res["over_" + reference] = {k: round(v, 3) for k, v in ratios.items()}
    alternating = interleaved_median_ms(calls, args.rounds * args.runs)
    res["interleaved_median_ms"] = {k: round(v, 3) for k, v in alternating.items()}
    res["load_after"] = os.getloadavg()
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
