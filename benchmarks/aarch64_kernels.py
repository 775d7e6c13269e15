"""Instructions per MAC of the aarch64 C package's kernel candidates on single layers (issue 11):
the hand-written C and each TIR kernel (tir_kernels*.py), every one run under `qemu-aarch64 -cpu
<board core>` with the instruction-count plugin exactly as the kernel choice measures it
(export/kernel_choice.py: the layer alone as a one-step package, bit-exact against the op's NumPy
twin, instructions between the layer's profile marks). QEMU counts instructions, not cycles: the
figures are exact and repeatable, whatever the machine's load.

The layers: MobileNetV2-96's pointwise convolutions and classifier (map, K -> N), the issue's
1x1 conv 12x12x64 -> 64, a 4-row dense 512 -> 256; uint8 inputs, uint8 outputs, per-channel
multipliers in [0.15, 0.9] (shifts 31-33, as MobileNetV2's).

Run: `.venv/bin/python benchmarks/aarch64_kernels.py --board graviton3 --kernels sdot4x4,smmla
[--layers lv2,lv64] [--json out.json]` (a few seconds per layer and kernel).
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
sys.path[:0] = [os.path.dirname(HERE)]

# name: (x shape, n): a 4-d shape is a pointwise conv (NCHW), a 2-d one a dense layer
LAYERS = {
    "lv2": ((1, 32, 48, 48), 16), "lv5": ((1, 96, 24, 24), 24), "lv8": ((1, 144, 24, 24), 24),
    "lv12": ((1, 144, 12, 12), 32), "lv15": ((1, 192, 12, 12), 32), "lv23": ((1, 192, 6, 6), 64),
    "lv26": ((1, 384, 6, 6), 64), "lv38": ((1, 384, 6, 6), 96), "lv41": ((1, 576, 6, 6), 96),
    "lv49": ((1, 576, 3, 3), 160), "lv52": ((1, 960, 3, 3), 160), "lv60": ((1, 960, 3, 3), 320),
    "lv64": ((1, 1280), 1000), "conv1x1": ((1, 64, 12, 12), 64), "dense4": ((4, 512), 256),
}


def layer_module(xshape, n, seed=0):
    """(module, input): the layer alone, random int8 weights, uint8 in and out."""
    from tvm import relax

    from tvm_qplugin.ops import const, emit
    from tvm_qplugin.quant import dyadic

    rng = np.random.default_rng(seed)
    conv = len(xshape) == 4
    k = xshape[1]
    ds = [dyadic(float(m)) for m in rng.uniform(0.15, 0.9, n)]
    w = rng.integers(-128, 128, (n, k, 1, 1) if conv else (n, k)).astype(np.int8)
    params = {"strides": [1, 1], "padding": [0] * 4, "dilation": [1, 1], "groups": 1} if conv else {}
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(xshape), "uint8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(emit(bb, "conv2d_requant" if conv else "dense_requant", [
                x, const(w), const(rng.integers(-4000, 4000, n).astype(np.int32)),
                const(np.array([d.multiplier for d in ds], np.int64)), const(np.array([d.shift for d in ds], np.int64))],
                qmin=0, qmax=255, out_dtype="uint8", **params))
        bb.emit_func_output(y)
    return bb.finalize(), rng.integers(0, 256, xshape).astype(np.uint8)


def measure(board_name: str, layers, kernels, workdir: Path) -> dict:
    """{layer: {kernel: instructions per MAC, or the reason it was dropped}}."""
    from tvm_qplugin.errors import QPluginError
    from tvm_qplugin.export.kernel_choice import HANDWRITTEN, _measure
    from tvm_qplugin.reference import ReferenceInterpreter
    from tvm_qplugin.targets import get_board

    board = get_board(board_name)
    out = {}
    for name in layers:
        xshape, n = LAYERS[name]
        mod, x = layer_module(xshape, n)
        (want,) = ReferenceInterpreter(mod).run("main", x)
        macs = int(np.prod(xshape)) * n   # 1x1 conv: pixels x k x n; dense: rows x k x n
        row = {}
        for kern in kernels:
            try:
                r = _measure(mod, board, None if kern == HANDWRITTEN else {0: kern}, x, want, workdir / f"{name}-{kern}")
            except QPluginError as e:   # not this kernel's shape, or not this board's ISA
                r = {"ok": False, "why": str(e)}
            row[kern] = round(r["instructions"] / macs, 4) if r["ok"] else f"dropped: {r['why']}"
        out[name] = row
        print(name, row, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--board", default="graviton3")
    ap.add_argument("--kernels", default="sdot4x4,smmla", help="comma list: handwritten-c and TIR schedule names")
    ap.add_argument("--layers", default=",".join(LAYERS))
    ap.add_argument("--json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="a64-kernels-") as tmp:
        res = measure(a.board, a.layers.split(","), a.kernels.split(","), Path(tmp))
    if a.json:
        Path(a.json).write_text(json.dumps({"board": a.board, "instructions_per_mac": res}, indent=1))


if __name__ == "__main__":
    main()
