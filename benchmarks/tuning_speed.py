"""MobileNetV2 batch 1 with and without the shipped ``x86-host`` tuning database, interleaved, on
the native ISA and the AVX2-restricted target, against ONNX Runtime int8 (static QDQ, u8
activations) -- one process, ``isa_variants.rounds_of_blocks`` (blocks of calls, engines in turn,
medians; ratios per round). Also the per-kernel verdicts of the databases (tuning/compare.py:
default schedule vs best record, timed interleaved at the end of each task).

The integer module is the one ``cnn_cpu.py`` compiles (same calibration); the four TVM builds are
checked to give the same integers. Prints one JSON object; ``uptime``'s load before and after.
Run: `.venv/bin/python benchmarks/tuning_speed.py [--threads 1] [--rounds 5] [--runs 20]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]


def _verdicts(isa: str) -> dict:
    """Per-kernel interleaved verdicts in the shipped database of ``isa``: count, speed-ups."""
    from tvm_qplugin.tuning.database import TuningDB
    from tvm_qplugin.tuning.isa import shipped_db_dir

    folder = shipped_db_dir("x86-host", isa)
    if folder is None:
        return {}
    db = TuningDB.open(folder)
    ups = sorted(round(db.default_us[k] / db.verdict_best_us[k], 2) for k, v in db.verdicts.items() if v)
    return {"applied": len(ups), "kept_default": sum(not v for v in db.verdicts.values()), "speedups": ups}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)

    import onnxruntime as ort
    import tvm
    from common import onnxruntime_static_int8
    from isa_variants import AVX2_TARGET, assert_same_outputs, rounds_of_blocks
    from tvm import relax

    import tvm_qplugin as tq
    from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx
    from tvm_qplugin.build import build
    from tvm_qplugin.targets import get_board
    from tvm_qplugin.tuning.apply import resolve_tuning
    from tvm_qplugin.tuning.isa import isa_key

    path = str(mobilenet_v2_onnx(batch=1))
    calib, evaluation = imagenet_calib_eval()
    x = evaluation[:1]
    native = tvm.target.Target.from_device(tvm.cpu())
    res: dict = {"threads": args.threads, "mcpu": str(native.attrs.get("mcpu", "")), "load_before": os.getloadavg()}
    art = tq.compile(path, target="x86-host", calib={"input": calib}, eval={"input": evaluation[:16]})
    res["bit_exact"] = bool(art.report["bit_exact"])
    res["tuning"] = {k: art.report["tuning"].get(k) for k in ("db_source", "isa", "tasks_tuned", "default_faster")}
    q = tvm.runtime.tensor(art.inputs[0].qtype.quantize(x))
    vms = {}
    for name, target in (("native", native), ("avx2", AVX2_TARGET)):
        tuning = resolve_tuning(None, get_board("x86-host"), target)
        res[f"verdicts_{isa_key(target)}"] = _verdicts(isa_key(target))
        vms[f"int8_{name}_db"] = relax.VirtualMachine(build(art.integer_mod, target, tuning=tuning)[0], tvm.cpu())
        vms[f"int8_{name}_default"] = relax.VirtualMachine(build(art.integer_mod, target)[0], tvm.cpu())
    assert_same_outputs(vms, "core", q)
    calls = {name: (lambda vm=vm: vm["core"](q)) for name, vm in vms.items()}
    so = ort.SessionOptions()
    so.intra_op_num_threads = args.threads
    feeds = [{"input": calib[i : i + 1]} for i in range(16)]
    qsess = onnxruntime_static_int8(path, feeds, "QUInt8", so)
    calls["onnxruntime_int8_qdq"] = lambda: qsess.run(None, {"input": x})
    res["median_ms"], ratios = rounds_of_blocks(calls, args.rounds, args.runs, reference="int8_native_db")
    res["other_over_native_db"] = {k: round(v, 3) for k, v in ratios.items()}
    res["load_after"] = os.getloadavg()
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
