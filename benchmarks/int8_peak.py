"""This CPU's int8 multiply-accumulate peak per dot instruction, 1 thread and all threads.

The measurement itself (a register-only loop of the instruction, built through the kernels' own
tensor intrinsics) lives in ``tvm_qplugin/peak.py`` -- the compiler uses it for
``report.json`` -> ``layers[].fraction_of_peak``; this script prints it for each ISA this CPU runs.
Prints one JSON object.

Run: `.venv/bin/python benchmarks/int8_peak.py [--threads N]`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import tvm

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tvm_qplugin.peak import cpu_name as _cpu_name  # noqa: E402,F401 - benchmarks import both from here
from tvm_qplugin.peak import peak_gmacs  # noqa: E402
from tvm_qplugin.schedules.intrin_x86 import AVX2, AVX2UB, VNNI, VNNI16, select_isa  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    args = ap.parse_args()
    native = tvm.target.Target.from_device(tvm.cpu())
    avx2 = tvm.target.Target({"kind": "llvm", "mcpu": "znver3", "mattr": ["-sse4a"]})
    res = {"cpu": _cpu_name(), "target": str(native.attrs.get("mcpu", "")), "gmacs": {}}
    cases = [("avx2 vpmaddubsw + vpmaddwd (u8 x s8)", avx2, AVX2UB), ("avx2 vpmaddwd (s16 pairs)", avx2, AVX2)]
    if select_isa(native, "uint8") is VNNI:
        cases = [("avx512 vpdpbusd (u8 x s8)", native, VNNI), ("avx512 vpdpwssd (s16)", native, VNNI16), *cases]
    for name, target, isa in cases:
        res["gmacs"][name] = {f"{t} thread{'s' if t > 1 else ''}": round(peak_gmacs(target, isa, t), 1)
                              for t in sorted({1, args.threads})}
    res["note"] = "register-only loop of the dot instruction; a shared, noisy machine lowers these figures"
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
