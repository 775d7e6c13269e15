"""MobileNetV2-224's 17 depthwise 3x3 convs, kernel by kernel: the plain schedule (before: TVM's
default loops) against schedules/x86_depthwise.py (after), for the native target and the
AVX2-restricted one, in GMAC/s and as the sum over the model's 17 calls.

One process, before/after interleaved, medians (x86_kernels.time_pair); every "after" output is
checked bit-exactly against "before" first. Shapes are built here (no model compile); the
constants are random with MobileNetV2's shapes. Prints one JSON object.

``--before one-row``: "before" is the tensorized rule with one output row per tile (stop 21's row
tiles off, ``x86_depthwise.ROW_TILES = (1,)``) instead of TVM's default loops.

Run: `.venv/bin/python benchmarks/x86_depthwise.py [--dtype uint8] [--rounds 15] [--before plain|one-row]
[--targets native avx2]`
"""
from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np
import tvm

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from isa_variants import AVX2_TARGET
from x86_kernels import time_pair

from tvm_qplugin.ops import OPS
from tvm_qplugin.schedules import x86_depthwise
from tvm_qplugin.schedules.intrin_x86 import select_isa

# (channels, input plane, stride) of each depthwise conv, in model order (3x3, padding 1)
MOBILENET_V2 = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 1), (192, 28, 2),
                (384, 14, 1), (384, 14, 1), (384, 14, 1), (384, 14, 1), (576, 14, 1), (576, 14, 1), (576, 14, 2),
                (960, 7, 1), (960, 7, 1), (960, 7, 1)]


def depthwise_kernel(c: int, size: int, stride: int, dtype: str, rng) -> dict:
    """One depthwise conv as x86_kernels.time_pair takes it: PrimFunc, constants, shapes, MACs."""
    params = {"strides": [stride, stride], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": c, "qmin": 0,
              "qmax": 255, "out_dtype": "uint8"}
    w = rng.integers(-127, 128, (c, 1, 3, 3)).astype(np.int8)
    consts = [w, rng.integers(-(2**12), 2**12, c).astype(np.int32), rng.integers(2**30, 2**31 - 1, c).astype(np.int64),
              np.full(c, 31 + 11, np.int64)]
    func, out_ty = OPS["conv2d_requant"].prim_func([((1, c, size, size), dtype), (w.shape, "int8"), ((c,), "int32"),
                                                    ((c,), "int64"), ((c,), "int64")], **params)
    out = tuple(int(d) for d in out_ty.shape)
    return {"name": f"dw_{c}x{size}_s{stride}", "func": func, "params": params, "x": ((1, c, size, size), dtype),
            "consts": consts, "out": out, "macs": int(np.prod(out)) * 9}


class OneRowTiles:
    """The depthwise rule packing with one output row per tile (the schedule before stop 21), as a
    ``time_pair`` baseline rule."""

    def __init__(self):
        self.rule = x86_depthwise.DepthwiseConv2DTensorized()

    def pack(self, func, target):
        tiles, x86_depthwise.ROW_TILES = x86_depthwise.ROW_TILES, (1,)
        try:
            return self.rule.pack(func, target)
        finally:
            x86_depthwise.ROW_TILES = tiles

    def apply(self, func, target):
        return self.rule.apply(func, target)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="uint8", choices=["uint8", "int8", "int16"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--before", choices=["plain", "one-row"], default="plain")
    ap.add_argument("--targets", nargs="+", choices=["native", "avx2"], default=["native", "avx2"])
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    baseline = [OneRowTiles()] if args.before == "one-row" else None
    targets = {name: {"native": tvm.target.Target.from_device(tvm.cpu()), "avx2": AVX2_TARGET}[name]
               for name in args.targets}
    res = {"threads": os.cpu_count(), "dtype": args.dtype, "load_avg": os.getloadavg()[0],
           "tvm_threads": os.environ.get("TVM_NUM_THREADS", "all"), "before": args.before, "targets": {}}
    for tname, target in targets.items():
        rows, timed = [], {}
        for c, size, stride in MOBILENET_V2:
            if (c, size, stride) not in timed:
                k = depthwise_kernel(c, size, stride, args.dtype, rng)
                t = time_pair(k, target, args.rounds, rng, baseline)
                assert t is not None, f"{k['name']}: the depthwise rule did not take it"
                timed[(c, size, stride)] = t
                rows.append({"kernel": k["name"], "before_us": round(t["before_us"], 1),
                             "after_us": round(t["after_us"], 1),
                             "before_gmacs": round(k["macs"] / t["before_us"] / 1e3, 1),
                             "after_gmacs": round(k["macs"] / t["after_us"] / 1e3, 1),
                             "speedup": round(t["before_us"] / t["after_us"], 2)})
        before = sum(timed[s]["before_us"] for s in MOBILENET_V2)
        after = sum(timed[s]["after_us"] for s in MOBILENET_V2)
        res["targets"][tname] = {"isa": select_isa(target, args.dtype).name, "kernels": rows,
                                 "model_17_calls": {"before_us": round(before), "after_us": round(after),
                                                    "speedup": round(before / after, 2)}}
    before = "TVM's default loops" if args.before == "plain" else "DepthwiseConv2DTensorized, one row per tile"
    res["note"] = ("medians of interleaved runs; the machine is shared and noisy, so absolute figures move between "
                   f"runs; before = {before}, after = DepthwiseConv2DTensorized")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
