"""MobileNetV2-224's 17 depthwise 3x3 convs, kernel by kernel: the plain schedule (before: TVM's
default loops) against schedules/x86_depthwise.py (after), for the native target and the
AVX2-restricted one, in GMAC/s and as the sum over the model's 17 calls.

One process, before/after interleaved, medians (x86_kernels.time_pair); every "after" output is
checked bit-exactly against "before" first. Shapes are built here (no model compile); the
constants are random with MobileNetV2's shapes. Prints one JSON object.

``--before one-row``: "before" is the tensorized rule with one output row per tile (stop 21's row
tiles off, ``x86_depthwise.ROW_TILES = (1,)``) instead of TVM's default loops.
``--before pixel-lanes``: "before" is the pixel-lane rule alone (``DepthwiseConv2DTensorized``),
"after" the rules as registered (``DepthwiseChannelLanes`` where it is chosen): the before / after
of the channel-lane rule (shapes it does not take time the same kernel twice).
``--before no-row-pairs``: "before" is the registered rules without AVX2's row-pair rule
(``DepthwiseChannelLanes``, ``DepthwiseConv2DTensorized``), "after" the rules as registered
(``DepthwiseRowPairs`` on AVX2 stride 1): the before / after of the row-pair rule.
Each kernel's ``after_fraction_of_peak`` is against this CPU's measured peak of the instruction it
runs (``tvm_qplugin/peak.py``, as report.json's ``layers[].fraction_of_peak``), at the thread count
of ``TVM_NUM_THREADS`` (default: all cores).

``--before no-narrow``: "before" is the registered rules with AVX2's narrow epilogue
(x86_requant_narrow, in both pixel-lane rules), the row pairs' 8-pair unpacking and their even steps off
(``NARROW_FLAGS``), "after" as registered.
``--before no-narrow-wide``: "before" is the registered rules with the narrow epilogue kept to AVX2
(``NARROW_WIDE_FLAGS``: the VNNI / AVX-VNNI pixel-lane kernels on x86_requant's), "after" as registered.
``--whole-model``: MobileNetV2 batch 1 (compiled here, shipped database) built with and without a
rule -- ``--without channel-lanes`` (``x86_depthwise_lanes.MAX_OUT_WIDTH = 0``), ``narrow``
(``NARROW_FLAGS``) or ``row-pairs``
(``x86_depthwise_pairs.STRIDES = ()``, the default) --, native and AVX2-restricted (``--targets``),
timed in rounds of blocks together with ONNX Runtime int8 (QDQ), as ``cnn_cpu.py`` times them; every
build's outputs are checked identical first.

Run: `.venv/bin/python benchmarks/x86_depthwise.py [--dtype uint8] [--rounds 15]
[--before plain|one-row|pixel-lanes|no-row-pairs|no-narrow] [--targets native avx2]
[--whole-model [--without row-pairs|channel-lanes|narrow] [--runs 20]]`
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
from tvm_qplugin.peak import peak_gmacs
from tvm_qplugin.schedules import x86_depthwise, x86_depthwise_lanes, x86_depthwise_pairs
from tvm_qplugin.schedules.intrin_x86 import select_isa

AVXVNNI_TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "alderlake"})  # AVX-VNNI 256-bit, no AVX-512

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


# The AVX2 epilogue and pair-pass changes of issue 9's stop 26, as module flags: off = before them.
NARROW_FLAGS = [(x86_depthwise, "NARROW", False), (x86_depthwise_pairs, "NARROW", False),
                (x86_depthwise_pairs, "UNPACK_ROWS", False), (x86_depthwise_pairs, "STACK_BYTES", 1 << 30)]
# the narrow epilogue on the VNNI / AVX-VNNI pixel-lane rule (issue 9, stop 27): off = before it
NARROW_WIDE_FLAGS = [(x86_depthwise, "NARROW_WIDE", False)]


class FlagsOff:
    """The registered depthwise rules packed and scheduled with ``flags`` set (``[(module, name,
    value)]``), restored after each call: a ``time_pair`` baseline."""

    def __init__(self, flags, rules):
        self.flags, self.rules = flags, rules

    def _with_flags(self, fn):
        kept = [getattr(m, n) for m, n, _ in self.flags]
        for m, n, v in self.flags:
            setattr(m, n, v)
        try:
            return fn()
        finally:
            for (m, n, _), k in zip(self.flags, kept):
                setattr(m, n, k)

    def pack(self, func, target):
        for rule in self.rules:
            packing = self._with_flags(lambda r=rule: r.pack(func, target))
            if packing is not None:
                self.chosen = rule
                return packing
        return None

    def apply(self, func, target):
        def first():
            for rule in self.rules:
                scheduled = rule.apply(func, target)
                if scheduled is not None:
                    return scheduled
            return None
        return self._with_flags(first)


def _whole_model(args) -> dict:
    """MobileNetV2 with and without the rule ``args.without``, with ONNX Runtime int8, in rounds of blocks."""
    import onnxruntime as ort
    from common import onnxruntime_static_int8
    from isa_variants import assert_same_outputs, build_variants, rounds_of_blocks

    import tvm_qplugin as tq
    from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx

    path = str(mobilenet_v2_onnx(batch=1))
    calib, evaluation = imagenet_calib_eval()
    x = evaluation[:1]
    art = tq.compile(path, target="x86-host", calib={"input": calib}, eval={"input": evaluation[:16]})
    q = tvm.runtime.tensor(art.inputs[0].qtype.quantize(x))
    targets = {name: {"native": tvm.target.Target.from_device(tvm.cpu()), "avx2": AVX2_TARGET,
                      "avxvnni": AVXVNNI_TARGET}[name] for name in args.targets}
    variants = build_variants(art.integer_mod, targets, with_untensorized=False)
    flags = {"channel-lanes": [(x86_depthwise_lanes, "MAX_OUT_WIDTH", 0)],
             "row-pairs": [(x86_depthwise_pairs, "STRIDES", ())], "narrow": NARROW_FLAGS}[args.without]
    variants.update(FlagsOff(flags, [])._with_flags(lambda: {
        f"{k}_without_{args.without.replace('-', '_')}": vm
        for k, vm in build_variants(art.integer_mod, targets, with_untensorized=False).items()}))
    assert_same_outputs(variants, "core", q)
    calls = {f"ours{suffix}": (lambda vm=vm: vm["core"](q)) for suffix, vm in variants.items()}
    so = ort.SessionOptions()
    so.intra_op_num_threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count()))
    feeds = [{"input": calib[i : i + 1]} for i in range(16)]
    qsess = onnxruntime_static_int8(path, feeds, "QUInt8", so)
    calls["onnxruntime_int8_qdq"] = lambda: qsess.run(None, {"input": x})
    medians, ratios = rounds_of_blocks(calls, args.rounds, args.runs, reference="ours")
    return {"bit_exact": bool(art.report["bit_exact"]), "median_ms": medians,
            "other_over_ours": {k: round(v, 3) for k, v in ratios.items()},
            "note": f"ours: native build with every rule; _without_*: without the {args.without} rule; _avx2: znver3; "
                    "other_over_ours: median over rounds of the per-round ratio (> 1: ours faster)"}


def _rule_of(func, target) -> str:
    """The name of the registered packer rule that takes ``func`` for ``target``."""
    from tvm_qplugin.schedules import RULES

    return next((type(r).__name__ for r in RULES if hasattr(r, "pack") and r.pack(func, target) is not None), "-")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dtype", default="uint8", choices=["uint8", "int8", "int16"])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--before", choices=["plain", "one-row", "pixel-lanes", "no-row-pairs", "no-narrow", "no-narrow-wide"],
                    default="plain")
    ap.add_argument("--targets", nargs="+", choices=["native", "avx2", "avxvnni"], default=["native", "avx2"],
                    help="avxvnni: AVX-VNNI without AVX-512 (alderlake; runs where the CPU has avx_vnni)")
    ap.add_argument("--whole-model", action="store_true")
    ap.add_argument("--runs", type=int, default=20, help="--whole-model: calls per engine per round")
    ap.add_argument("--without", choices=["row-pairs", "channel-lanes", "narrow"], default="row-pairs",
                    help="--whole-model: the rule the second build leaves out")
    args = ap.parse_args()
    if args.whole_model:
        print(json.dumps({"load_before": os.getloadavg(), **_whole_model(args), "load_after": os.getloadavg()},
                         indent=2))
        return
    rng = np.random.default_rng(0)
    baseline = {"plain": None, "one-row": [OneRowTiles()],
                "pixel-lanes": [x86_depthwise.DepthwiseConv2DTensorized()],
                "no-row-pairs": [x86_depthwise_lanes.DepthwiseChannelLanes(),
                                 x86_depthwise.DepthwiseConv2DTensorized()],
                "no-narrow": [FlagsOff(NARROW_FLAGS, [x86_depthwise_lanes.DepthwiseChannelLanes(),
                                                      x86_depthwise_pairs.DepthwiseRowPairs(),
                                                      x86_depthwise.DepthwiseConv2DTensorized()])],
                "no-narrow-wide": [FlagsOff(NARROW_WIDE_FLAGS, [x86_depthwise_lanes.DepthwiseChannelLanes(),
                                                                x86_depthwise_pairs.DepthwiseRowPairs(),
                                                                x86_depthwise.DepthwiseConv2DTensorized()])]}[args.before]
    targets = {name: {"native": tvm.target.Target.from_device(tvm.cpu()), "avx2": AVX2_TARGET,
                      "avxvnni": AVXVNNI_TARGET}[name] for name in args.targets}
    threads = int(os.environ.get("TVM_NUM_THREADS", os.cpu_count()))
    res = {"threads": os.cpu_count(), "dtype": args.dtype, "load_avg": os.getloadavg()[0],
           "tvm_threads": os.environ.get("TVM_NUM_THREADS", "all"), "before": args.before, "targets": {}}
    for tname, target in targets.items():
        rows, timed = [], {}
        isa = select_isa(target, args.dtype)
        peak = peak_gmacs(target, isa, threads)
        for c, size, stride in MOBILENET_V2:
            if (c, size, stride) not in timed:
                k = depthwise_kernel(c, size, stride, args.dtype, rng)
                t = time_pair(k, target, args.rounds, rng, baseline)
                assert t is not None, f"{k['name']}: the depthwise rule did not take it"
                timed[(c, size, stride)] = t
                after_gmacs = k["macs"] / t["after_us"] / 1e3
                rows.append({"kernel": k["name"], "rule": _rule_of(k["func"], target),
                             "before_us": round(t["before_us"], 1), "after_us": round(t["after_us"], 1),
                             "before_gmacs": round(k["macs"] / t["before_us"] / 1e3, 1),
                             "after_gmacs": round(after_gmacs, 1),
                             "after_fraction_of_peak": round(after_gmacs / peak, 3),
                             "speedup": round(t["before_us"] / t["after_us"], 2)})
        before = sum(timed[s]["before_us"] for s in MOBILENET_V2)
        after = sum(timed[s]["after_us"] for s in MOBILENET_V2)
        res["targets"][tname] = {"isa": isa.name, "peak_gmacs": round(peak, 1), "kernels": rows,
                                 "model_17_calls": {"before_us": round(before), "after_us": round(after),
                                                    "speedup": round(before / after, 2)}}
    before = {"plain": "TVM's default loops", "one-row": "DepthwiseConv2DTensorized, one row per tile",
              "pixel-lanes": "DepthwiseConv2DTensorized alone (no channel lanes)",
              "no-row-pairs": "DepthwiseChannelLanes + DepthwiseConv2DTensorized (no row pairs)",
              "no-narrow": "the registered rules without the narrow epilogue and the unpacked row pairs",
              "no-narrow-wide": "the registered rules without the narrow epilogue on VNNI / AVX-VNNI"}[args.before]
    res["note"] = ("medians of interleaved runs; the machine is shared and noisy, so absolute figures move between "
                   f"runs; before = {before}, after = the registered rules (rule: the one that took it)")
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
