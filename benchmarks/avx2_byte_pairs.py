"""MobileNetV2 built for the AVX2-restricted target twice in one process -- 8-bit convs / dense on
``vpmaddubsw`` where their weights prove it exact (the product) and every one on ``vpmaddwd``
(``isa_variants.vpmaddwd_only``: before that change) -- checked equal, then timed in rounds of
blocks whose order alternates from round to round. Prints one JSON object: medians, the median
over rounds of ``before / after`` (> 1: vpmaddubsw faster), the load average before and after.

Run: `.venv/bin/python benchmarks/avx2_byte_pairs.py [--module integer_module.json] [--threads 1]
[--rounds 61] [--runs 10]` (without --module, MobileNetV2 is compiled first).
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--module", help="integer_module.json of MobileNetV2 (else compiled here)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=61)
    ap.add_argument("--runs", type=int, default=10, help="calls per build per round")
    args = ap.parse_args()
    os.environ["TVM_NUM_THREADS"] = str(args.threads)  # read when TVM's thread pool starts
    here = os.path.dirname(os.path.abspath(__file__))
    sys.path[:0] = [here, os.path.dirname(here)]
    import tvm
    from common import timed_ms
    from isa_variants import (
        AVX2_TARGET,
        assert_same_outputs,
        build_variants,
        vpmaddwd_only,
    )
    from x86_kernels import integer_module

    mod = integer_module(args.module)
    after = build_variants(mod, {"avx2": AVX2_TARGET}, False)["_avx2"]
    with vpmaddwd_only():
        before = build_variants(mod, {"avx2": AVX2_TARGET}, False)["_avx2"]
    param = mod["core"].params[0]
    info = np.iinfo(str(param.ty.dtype))
    x = np.random.default_rng(0).integers(info.min, info.max + 1, [int(d) for d in param.ty.shape])
    q = tvm.runtime.tensor(x.astype(str(param.ty.dtype)))
    assert_same_outputs({"vpmaddubsw": after, "vpmaddwd": before}, "core", q)
    calls = {"vpmaddwd": lambda: before["core"](q), "vpmaddubsw": lambda: after["core"](q)}
    load = os.getloadavg()
    per_round = {name: [] for name in calls}
    for r in range(args.rounds):
        for name in sorted(calls, reverse=bool(r % 2)):
            per_round[name].append(float(np.median(timed_ms(calls[name], args.runs))))
    ratio = np.median(np.array(per_round["vpmaddwd"]) / np.array(per_round["vpmaddubsw"]))
    print(json.dumps({"threads": args.threads, "rounds": args.rounds, "target": "znver3 (AVX2)",
                      "median_ms": {k: round(float(np.median(v)), 3) for k, v in per_round.items()},
                      "vpmaddwd_over_vpmaddubsw": round(float(ratio), 3),
                      "load_before": load, "load_after": os.getloadavg()}, indent=2))


if __name__ == "__main__":
    main()
