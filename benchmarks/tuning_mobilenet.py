"""Tune MobileNetV2 (calibrated as ``cnn_cpu.py`` calibrates: ``imagenet_calib_eval``'s crops) for
``x86-host`` at one ISA level, then merge into the shipped database (``schedules/x86-host/<isa>/``)
the records whose interleaved end-of-task comparison (tuning/compare.py) beat compile's default.

The tune runs into its own folder (``--work``, resumable: rerun the same command after a kill);
the merge copies, per winning workload, the workload, its records and its verdict line, so the
shipped database holds no record that compile would not apply. Prints one JSON line per task.
Run: `.venv/bin/python benchmarks/tuning_mobilenet.py --trials 8 [--isa avx2] --work /tmp/mnv2_vnni`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path[:0] = [HERE, REPO]

from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx  # noqa: E402
from tvm_qplugin.tuning.database import DBInfo, TuningDB  # noqa: E402
from tvm_qplugin.tuning.tuner import tune  # noqa: E402


def merge_winners(work: TuningDB, shipped_dir: str) -> list[str]:
    """Copy the workloads whose best record beat the default (interleaved verdict) into the
    shipped database; returns their keys."""
    shipped = TuningDB.for_tuning(shipped_dir, DBInfo(work.info.board, work.info.isa, work.info.target))
    merged = []
    for key, (_, wl) in work.workloads.items():
        if not work.verdicts.get(key):
            continue
        shipped.workload(wl.mod)
        for rec in work.memory.get_top_k(wl, 1 << 20):
            shipped.commit(rec)
        shipped.record_verdict(key, work.default_us[key], work.verdict_best_us[key], 9, "default rule")
        merged.append(key)
    return merged


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--isa", default=None)
    ap.add_argument("--work", required=True, help="the tune's own database folder (resumable)")
    ap.add_argument("--merge", action="store_true", help="merge the winners into schedules/x86-host/<isa>/")
    args = ap.parse_args()
    calib, _ = imagenet_calib_eval()
    t0 = time.time()
    res = tune(str(mobilenet_v2_onnx(batch=1)), target="x86-host", trials=args.trials, calib={"input": calib},
               db=args.work, isa=args.isa, trials_per_iter=args.trials,
               progress=lambda line: print(f"[{time.time() - t0:6.0f}s] {line}", flush=True))
    work = TuningDB.open(args.work)
    for t in res.tasks:
        print(json.dumps({"task": t.name, "op": t.op, "space": t.space, "trials": t.trials, "best_us": t.best_us}))
    if args.merge:
        merged = merge_winners(work, os.path.join(REPO, "schedules", "x86-host", res.isa))
        print(json.dumps({"merged": len(merged), "isa": res.isa, "wall_s": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
