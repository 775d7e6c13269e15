"""MobileNetV2's 17 expansion-conv shapes (1x1, int16 input narrowed to int8), each as a one-op
pair ``requantize -> conv2d_requant`` built four ways, timed interleaved in one process:

* ``unfused``: the requantize a kernel of its own (before schedules/x86_narrowing.py);
* ``int32``:   fused, the narrowing inlined into the conv's gather in int32 (what the build does);
* ``int64``:   fused, the gather computing the requantize's own int64 product;
* ``stage``:   fused, the narrowing a stage of the conv's PrimFunc ahead of the gather (an 8-bit
  buffer of the whole input again, vectorized and parallel).

Prints per shape the median and the minimum over ``--rounds`` rounds (``number`` calls each) and
the ratios ``unfused / variant`` (> 1: the variant is faster). Every build is checked bit-exact
against the NumPy reference first.
Run: `TVM_NUM_THREADS=1 .venv/bin/python benchmarks/narrowing_gather_variants.py [vnni|avx2] [--rounds 25]`.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import tvm
from tvm import relax

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.dirname(HERE), os.path.join(os.path.dirname(HERE), "tests")]
from test_wide_inputs_fused import two_op_module
from test_x86_kernels import TARGETS, activations, requant_consts, weights

import tvm_qplugin.build as qbuild
from tvm_qplugin.reference import ReferenceInterpreter
from tvm_qplugin.schedules import x86_conv_channel_lanes, x86_conv_gather, x86_int8
from tvm_qplugin.schedules.x86_narrowing import fuse_narrowing

VARIANTS = ("unfused", "int32", "int64", "stage")
SHAPES = [(16, 96, 112, 112), (24, 144, 56, 56), (32, 192, 28, 28), (64, 384, 14, 14), (96, 576, 14, 14),
          (160, 960, 7, 7), (320, 1280, 7, 7)]
NARROW = {"multiplier": 1090921693, "shift": 38, "qmin": -128, "qmax": 127, "out_dtype": "int8"}  # ~127/32767
INLINE = x86_conv_gather._inline_narrowing


def _stage(sch) -> None:
    """The narrowing left a stage of its own: one vectorized, parallel pass over the input."""
    try:
        block = sch.get_sblock("x_narrow")
    except Exception:  # noqa: BLE001
        return
    outer, inner = sch.split(sch.fuse(*sch.get_loops(block)), [None, 64])
    sch.parallel(outer)
    sch.vectorize(inner)


def _use(variant: str) -> None:
    qbuild.fuse_narrowing = (lambda mod, target: mod) if variant == "unfused" else fuse_narrowing
    x86_conv_gather.INT32_NARROWING = variant != "int64"
    for module in (x86_int8, x86_conv_channel_lanes):
        module._inline_narrowing = _stage if variant == "stage" else INLINE


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target", nargs="?", default="vnni", choices=list(TARGETS))
    ap.add_argument("--rounds", type=int, default=25)
    ap.add_argument("--number", type=int, default=20)
    args = ap.parse_args()
    rng, dev = np.random.default_rng(0), tvm.cpu()
    print("load", os.getloadavg())
    for c, o, h, w in SHAPES:
        x = activations(rng, (1, c, h, w), "int16", "random")
        mod = two_op_module(x.shape, weights(rng, (o, c, 1, 1)), requant_consts(rng, o, 14), narrow=NARROW)
        want = ReferenceInterpreter(mod).run("main", x)[0]
        xt, timers = tvm.runtime.tensor(x), {}
        for variant in VARIANTS:
            _use(variant)
            vm = relax.VirtualMachine(qbuild.build(mod, TARGETS[args.target])[0], dev)
            assert np.array_equal(vm["main"](xt).numpy(), want), variant
            timers[variant] = vm.time_evaluator("main", dev, number=args.number, repeat=1)
        us = {v: [] for v in VARIANTS}
        for _ in range(args.rounds):
            for v in VARIANTS:
                us[v].append(timers[v](xt).mean * 1e6)
        for stat in (np.median, np.min):
            s = {v: float(stat(t)) for v, t in us.items()}
            print(args.target, (c, o, h, w), stat.__name__, {v: round(t, 1) for v, t in s.items()},
                  " ".join(f"unfused/{v} {s['unfused'] / s[v]:.3f}x" for v in VARIANTS[1:]), flush=True)
    _use("int32")
    print("load", os.getloadavg())


if __name__ == "__main__":
    main()
