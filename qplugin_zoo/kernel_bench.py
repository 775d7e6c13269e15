"""Kernel cost benchmarks for the C package (issue 4 "Kernel cost"): single-layer integer
modules built with the integer op registry, exported, and counted under qemu with the
instruction-count plugin. Test and benchmark support, not shipped in the wheel.

The reference point is CMSIS-NN (Arm's hand-written library, gcc -O3) on a 1x1 convolution
12x12x64 -> 64, int8: 2.08 instructions per MAC on Cortex-M4, 0.40 on Cortex-M55 with MVE.
"""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import tvm
from tvm import relax

from tvm_qplugin.ops import const, emit
from tvm_qplugin.quant import dyadic

CMSIS_NN_INSNS_PER_MAC = {"cortex-m4": 2.08, "cortex-m55": 0.40}
TARGET_INSNS_PER_MAC = {"cortex-m4": 2.1, "cortex-m55": 0.45}


def conv_module(c: int = 64, o: int = 64, hw: int = 12, k: int = 1, stride: int = 1, groups: int = 1,
                x_dtype: str = "int8", out_dtype: str = "int8", seed: int = 0, pad: int | None = None
                ) -> tuple[tvm.IRModule, np.ndarray]:
    """An integer module ``main(x) = conv2d_requant(x, W, b)`` with realistic random parameters
    (per-channel multipliers ~ 2^-8, bias ~ the accumulator's scale); returns (module, sample x)."""
    rng = np.random.default_rng(seed)
    pad = k // 2 if pad is None else pad
    w = rng.integers(-127, 128, size=(o, c // groups, k, k)).astype(np.int8)
    bias = rng.integers(-5000, 5000, size=o).astype(np.int32)
    ds = [dyadic(float(m)) for m in rng.uniform(1 / 1024, 1 / 128, size=o)]
    mult = np.array([d.multiplier for d in ds], np.int64)
    shift = np.array([d.shift for d in ds], np.int64)
    info = np.iinfo(out_dtype)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, c, hw, hw], x_dtype))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = emit(bb, "conv2d_requant", [x, const(w), const(bias), const(mult), const(shift)], strides=[stride, stride],
                     padding=[pad, pad, pad, pad], dilation=[1, 1], groups=groups, qmin=int(info.min) + (
                         1 if info.min < 0 else 0), qmax=int(info.max), out_dtype=out_dtype)
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    xi = np.iinfo(x_dtype)
    sample = rng.integers(xi.min, xi.max + 1, size=(1, c, hw, hw)).astype(x_dtype)
    return bb.finalize(), sample


def measure_conv1x1(board: str, workdir=None, **conv_kw) -> dict:
    """Export the 1x1 conv benchmark, check it bit-exact against the NumPy reference under qemu on
    ``board``, and count its instructions per MAC (the conv step, between profile marks)."""
    from tvm_qplugin.export.c_package import write_c_package
    from tvm_qplugin.export.harness import build_mcu, count_instructions, run_qemu
    from tvm_qplugin.reference import ReferenceInterpreter
    from tvm_qplugin.targets import get_board

    mod, x = conv_module(**conv_kw)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="qmodel-bench-"))
    pkg = workdir / "pkg"
    info = write_c_package(mod, pkg)
    want = ReferenceInterpreter(mod).run("main", x)[0]
    b = get_board(board)
    got = run_qemu(build_mcu(pkg, b, workdir / "build"), [[x]], workdir / "run").outputs[0][0]
    cost = count_instructions(build_mcu(pkg, b, workdir / "build-prof", profile=True), [x], workdir / "count")
    layer = cost["layers"][0]
    return {"board": board, "macs": layer["macs"], "instructions": layer["instructions"],
            "instructions_per_mac": layer["instructions"] / layer["macs"], "bit_exact": bool(np.array_equal(got, want)),
            "functions": cost["functions"], "arena_bytes": info["arena_bytes"]}
