"""Tune a model for your board, then compile with the database -- the tutorial's steps as one script.

    python tutorials/tune_for_your_board/tune.py --trials 64 --out out/tuning

(tests/test_tuning.py runs it with ``--trials 1``, the budget CI can afford.) It tunes the digits
CNN of ``examples/`` for ``x86-host``, compiles it with and without the database, checks both
bit-exact against the NumPy reference and prints their latency, measured interleaved (one round
of each in turn) so that a busy machine slows both alike.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def interleaved_ms(fns: dict, rounds: int = 7, runs: int = 20) -> dict:
    """Median over rounds of each function's median (benchmarks/common.py), rounds interleaved."""
    from common import median_ms

    per = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            per[name].append(median_ms(fn, runs))
    return {name: float(np.median(ts)) for name, ts in per.items()}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--trials", type=int, default=64, help="trials per kernel")
    p.add_argument("--out", default="out/tuning")
    p.add_argument("--board", default="x86-host")
    a = p.parse_args()

    import tvm

    import tvm_qplugin as tq
    from tvm_qplugin.tuning.tuner import tune
    from qplugin_zoo import digits_split

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = REPO / "examples" / "digits_cnn.onnx"
    xtr, _, _, _ = digits_split()
    calib = out / "calib.npz"
    np.savez(calib, input=xtr[:256])

    # 1. tune: one task per distinct integer kernel; a rerun resumes (trials already done count)
    res = tune(model, target=a.board, trials=a.trials, calib=str(calib), db=out / "db", trials_per_iter=min(a.trials, 16),
               progress=print)
    print(f"database {res.db} ({res.board} / {res.isa}): "
          f"{sum(1 for t in res.tasks if t.stored)} of {len(res.tasks)} kernels with a verified record, "
          f"{res.rejected_wrong} wrong candidates rejected")

    # 2. compile with the database, and without any (a folder with no records at all: the default rules)
    tuned = tq.compile(model, target=a.board, calib=str(calib), tuning_db=str(res.db))
    default = tq.compile(model, target=a.board, calib=str(calib))
    for name, art in (("tuned", tuned), ("default", default)):
        t = art.report["tuning"]
        print(f"{name:8s} bit-exact {art.report['bit_exact']}  kernels tuned {t['tasks_tuned']}, "
              f"default {t['tasks_untuned']}")
        assert art.report["bit_exact"], f"{name}: compiled model differs from the NumPy reference"

    # 3. latency, interleaved
    x = {"input": tvm.runtime.tensor(xtr[:1])}
    ms = interleaved_ms({"tuned": lambda: tuned.vm["main"](x["input"]),
                         "default": lambda: default.vm["main"](x["input"])})
    print(f"latency  tuned {ms['tuned']:.4f} ms, default {ms['default']:.4f} ms "
          f"({ms['default'] / ms['tuned']:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
