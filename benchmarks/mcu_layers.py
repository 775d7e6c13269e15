"""Cortex-M per-layer cost against CMSIS-NN (issue 11 "Acceptance"): five layers of MobileNet-class
networks, each compiled from a float ONNX graph through `compile` (layer -> ReLU -> a small
consumer, so the layer writes 8-bit activations as in a real model), its C package run bit-exactly
under qemu on Cortex-M4 (qemu-mps2-an386) and Cortex-M55 (qemu-mps3-an547), instructions counted
between the layer's profile marks by the qemu plugin (export/mcu/qemu_insncount.c). Each cell also
lists every kernel candidate the Cortex-M choice measured for the layer (hand-written, TensorIR
``smlad`` / ``mve`` ...: report.json -> layers[].kernel_choice), instructions/MAC, and which it kept.

The CMSIS-NN column is the issue's: commit 99f736a, gcc 12 -O3, random int8 data, per-channel
requantization, counted between two marker calls under the same qemu, padding taps counted as MACs
(as ours: MACs = output elements x taps). The acceptance asks for ours <= 0.8x CMSIS-NN in every cell.

Run: `.venv/bin/python benchmarks/mcu_layers.py [--layers dw_s1,fc] [--json out.json]`
(about a minute per layer on an idle machine: one host compile, two cross builds, four qemu runs).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]
from tests.onnx_builders import OnnxGraph

BOARDS = {"cortex-m4": "qemu-mps2-an386", "cortex-m55": "qemu-mps3-an547"}

# name: (title, input shape, builder of the measured layer, CMSIS-NN instructions/MAC on M4 and M55)
LAYERS = {
    "dw_s1": ("depthwise 3x3 s1, 24x24x96", (1, 96, 24, 24),
              lambda g, x: g.conv(x, 96, k=3, stride=1, groups=96), {"cortex-m4": 8.64, "cortex-m55": 2.17}),
    "dw_s2": ("depthwise 3x3 s2, 24x24x144 -> 12x12", (1, 144, 24, 24),
              lambda g, x: g.conv(x, 144, k=3, stride=2, groups=144),
              {"cortex-m4": 8.61, "cortex-m55": 2.28}),
    "conv3x3_s2": ("conv 3x3 s2, 48x48x3 -> 24x24x16", (1, 3, 48, 48),
                   lambda g, x: g.conv(x, 16, k=3, stride=2), {"cortex-m4": 4.83, "cortex-m55": 1.36}),
    "conv1x1": ("conv 1x1, 12x12x64 -> 64", (1, 64, 12, 12),
                lambda g, x: g.conv(x, 64, k=1), {"cortex-m4": 2.08, "cortex-m55": 0.393}),
    "fc": ("fully connected 1280 -> 1000", (1, 1280), lambda g, x: g.gemm(x, 1000), {"cortex-m4": 1.91, "cortex-m55": 0.48}),
}
ACCEPT_RATIO = 0.8

# The same layers as qplugin_zoo.kernel_bench.conv_module arguments (a single integer conv, no
# compile: what tests/test_export_cost.py checks); the FC as a 1x1 conv on a 1x1 plane runs the same
# single-pixel GEMM as the dense kernel.
CONV_EQUIVALENT = {"dw_s1": {"c": 96, "o": 96, "hw": 24, "k": 3, "groups": 96},
                   "dw_s2": {"c": 144, "o": 144, "hw": 24, "k": 3, "stride": 2, "groups": 144},
                   "conv3x3_s2": {"c": 3, "o": 16, "hw": 48, "k": 3, "stride": 2},
                   "conv1x1": {"c": 64, "o": 64, "hw": 12, "k": 1},
                   "fc": {"c": 1280, "o": 1000, "hw": 1, "k": 1}}


def layer_model(name: str, path: Path, seed: int = 0) -> tuple[Path, np.ndarray]:
    """The ONNX graph of layer ``name`` (layer -> ReLU -> consumer) and 8 calibration samples."""
    _, shape, build, _ = LAYERS[name]
    rng = np.random.default_rng(seed)
    g = OnnxGraph(shape, rng=rng)
    y = g.relu(build(g, "x"))
    y = g.gemm(y, 10) if len(shape) == 2 else g.gap(y)   # the small consumer
    g.save(y, path)
    return path, rng.standard_normal((8, *shape[1:])).astype(np.float32)


def measure(name: str, workdir: Path) -> dict:
    """Compile layer ``name`` for Cortex-M4, export the same integer graph for M55, return each
    board's bit-exactness and the layer's instructions/MAC."""
    from tvm_qplugin.compiler import compile as qcompile
    from tvm_qplugin.export import export_mcu

    path, calib = layer_model(name, workdir / f"{name}.onnx")
    art = qcompile(path, target=BOARDS["cortex-m4"], calib={"x": calib})
    samples = [art.quantize_inputs(b) for b in [{"x": calib[:1]}]]
    out = {"layer": name, "title": LAYERS[name][0]}
    for core, board in BOARDS.items():
        res = export_mcu(art.integer_mod, workdir / f"{name}-{core}", board, samples=samples, workdir=workdir / f"run-{core}")
        first = next(layer for layer in res["layers"] if layer.get("macs"))
        cmsis = LAYERS[name][3][core]
        ipm = first["instructions"] / first["macs"]
        choice = first.get("kernel_choice") or {}   # every candidate kind the Cortex-M choice measured
        out[core] = {"bit_exact": bool(res["bit_exact"]), "macs": first["macs"], "instructions": first["instructions"],
                     "instructions_per_mac": round(ipm, 3), "cmsis_nn": cmsis, "ratio": round(ipm / cmsis, 3),
                     "kernel": choice.get("source", "handwritten-c"),
                     "candidates": {k: (round(n / first["macs"], 3) if n else None)
                                    for k, n in choice.get("instructions", {}).items()}}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--layers", default=",".join(LAYERS), help=f"comma-separated subset of {', '.join(LAYERS)}")
    ap.add_argument("--json", help="also write the rows to this file")
    args = ap.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="mcu_layers_") as d:
        for name in args.layers.split(","):
            rows.append(measure(name, Path(d)))
            r = rows[-1]
            cells = "  ".join(f"{core[7:]}: {r[core]['instructions_per_mac']:.3f} vs {r[core]['cmsis_nn']} "
                              f"({r[core]['ratio']:.2f}x{'' if r[core]['bit_exact'] else ', NOT BIT-EXACT'}; "
                              + ", ".join(f"{k} {v}" for k, v in r[core]["candidates"].items()) + ")"
                              for core in BOARDS)
            print(f"{r['title']:<42} {cells}", flush=True)
    worst = max(r[core]["ratio"] for r in rows for core in BOARDS)
    print(f"worst ratio {worst:.2f}x CMSIS-NN (acceptance <= {ACCEPT_RATIO}x); "
          f"all bit-exact: {all(r[c]['bit_exact'] for r in rows for c in BOARDS)}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
