"""Depthwise 3x3 TensorIR kernels of Cortex-M (export/tir_kernels_cortexm_dw.py): ``smlad`` (M4) and
``mve`` (M55) objects from TVM's LLVM backend, bit-exact under qemu-system-arm against the
conv2d_requant NumPy twin (stride 1 and 2, uint8 / int8 inputs with their extremes, 8/16-bit outputs,
the 32-bit and int64 requantization, odd widths and a row narrower than the MVE group), with
``SMLAD`` / ``VMLA`` in their disassembly (objdump: vmla.s32); and the Cortex-M kernel choice measuring them beside the
hand-written ``qk_dw3x3`` in the whole package (report.json -> layers[].kernel)."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from tvm.s_tir import meta_schedule as ms

from tvm_qplugin.errors import UnsupportedOpError
from tvm_qplugin.export.tir_kernels import build_object
from tvm_qplugin.export.tir_kernels_dw import DwSpec
from tvm_qplugin.ops import OPS
from tvm_qplugin.targets import get_board
from tvm_qplugin.tuning.runner_qemu import QemuRunner

M4, M55 = "qemu-mps2-an386", "qemu-mps3-an547"
QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
# (c, h, w, stride, padding (t, l, b, r), x dtype, out dtype, shift range): stride 1 with an odd width (a
# lone last output of the smlad pair), stride 2 with int16 outputs and shifts below 31 (int64
# requantization, MVE's scalar lanes), stride 2 on uint8 with every shift >= 33 (32-bit requantization),
# a 3-pixel row (narrower than the MVE group) without padding on the left and top, clamped outputs
CASES = [(5, 7, 9, 1, (1, 1, 1, 1), "uint8", "uint8", (31, 41)),
         (4, 9, 8, 2, (1, 1, 1, 1), "int8", "int16", (25, 36)),
         (3, 10, 11, 2, (1, 1, 1, 1), "uint8", "int8", (33, 41)),
         (6, 5, 5, 1, (0, 0, 0, 0), "int8", "uint8", (31, 34))]
MNEMONIC = {"smlad": ("smlad", "armv7e-m"), "mve": ("vmla.s32", "armv8.1-m.main")}


def _workload(c, h, w, stride, pad, xd, od, shifts, seed):
    """(spec, inputs, expected) of one kernel: x over its whole range (extremes first), weights with
    -128 and 127, multipliers in [2^30, 2^31), the twin's output (c, oh, ow)."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(xd)
    x = rng.integers(info.min, int(info.max) + 1, (1, c, h, w)).astype(xd)
    x.reshape(-1)[:3] = [info.min, info.max, info.min]
    wt = rng.integers(-128, 128, (c, 1, 3, 3)).astype(np.int8)
    wt[0] = -128
    wt[1, 0, 0] = 127
    kp = 12
    wp = np.zeros((c, kp), np.int8)
    wp[:, :9] = wt.reshape(c, 9)
    b = rng.integers(-5000, 5000, c).astype(np.int32)
    mu = rng.integers(2**30, 2**31 - 1, c).astype(np.int32)
    sh = rng.integers(shifts[0], shifts[1] + 1, c).astype(np.int8)
    sh[0] = shifts[0]
    lo, hi = QRANGE[od]
    if od == "uint8" and shifts == (31, 34):
        lo, hi = 0, 6   # a ReLU6-style clamp
    want = OPS["conv2d_requant"].reference(x, wt, b, mu.astype(np.int64), sh.astype(np.int64), strides=[stride] * 2,
                                           padding=list(pad), dilation=[1, 1], groups=c, qmin=lo, qmax=hi,
                                           out_dtype=od)
    _, _, oh, ow = want.shape
    sp = DwSpec("qk_tir_case", c, h, w, oh, ow, stride, stride, pad[0], pad[1], kp, xd, od, lo, hi, "smlad",
                bool(sh.min() >= 33), (int(sh.min()), int(sh.max())))
    return sp, [x.reshape(-1), wp.reshape(-1), b, mu, sh], want.reshape(-1)


def _run(sp, board, inputs, want, work, mnemonic=None):
    """Build ``sp`` for ``board``, check the instruction (``mnemonic``: (objdump name, arch), by default
    the depthwise kernel's) in its disassembly, run it: its instructions."""
    work.mkdir()
    (obj,) = build_object([sp], board, work / "k.o")
    mnemonic, arch = mnemonic or MNEMONIC[sp.schedule]
    dis = subprocess.run(["arm-none-eabi-objdump", "-d", "-m", arch, str(obj)], capture_output=True, text=True,
                         check=True).stdout
    if sp.schedule == "smlad" or sp.ow >= 4:   # (a row narrower than 4 runs MVE's scalar form)
        assert f"\t{mnemonic}" in dis, f"{sp.schedule} on {board.name}, {sp}: no {mnemonic} in the object"
    runner = QemuRunner(board, inputs, want)
    (fut,) = runner.run([ms.runner.RunnerInput(str(obj), "cpu", [])])   # __tvm_ffi_main: the module's entry
    res = fut.result()
    assert res.error_msg is None, f"{sp.schedule} on {board.name}, {sp}: {res.error_msg}"
    return runner.instructions[-1]


@pytest.mark.parametrize("board,schedule", [(M4, "smlad"), (M55, "mve")])
def test_dw_kernels_are_bit_exact_under_qemu_with_their_instruction(board, schedule, tmp_path):
    b = get_board(board)
    for i, case in enumerate(CASES):
        sp, inputs, want = _workload(*case, seed=i)
        _run(DwSpec(**{**sp.__dict__, "schedule": schedule}), b, inputs, want, tmp_path / f"c{i}")


def test_dw_mve_kernel_is_refused_on_a_core_without_helium(tmp_path):
    sp, _, _ = _workload(*CASES[0], seed=0)
    with pytest.raises(UnsupportedOpError, match="needs a Cortex-M core with MVE"):
        build_object([DwSpec(**{**sp.__dict__, "schedule": "mve"})], get_board(M4), tmp_path / "k.o")


# M55 measures both kinds (make test); M4's single kind is extended
@pytest.mark.parametrize("board,kinds", [pytest.param(M4, {"smlad"}, marks=pytest.mark.extended), (M55, {"smlad", "mve"})])
def test_export_measures_the_dw_candidates_and_runs_the_fastest_bit_exact(board, kinds, tmp_path, monkeypatch):
    """The Cortex-M choice measures the depthwise layer's TIR kinds beside the hand-written kernel in
    the whole package (none dropped), keeps the fewest instructions, says why; the package calling
    that kernel is bit-exact under qemu and reports its instructions."""
    from test_export_tir_dw import dw_model

    from tvm_qplugin.export import export_mcu
    from tvm_qplugin.export.kernel_choice import HANDWRITTEN, _sample

    monkeypatch.setenv("TVM_QPLUGIN_SCHEDULES", str(tmp_path / "no-db"))
    mod = dw_model(8, 12, 12, 2, "int8", "int8", -128, 127, seed=5)
    x = _sample((1, 8, 12, 12), "int8", seed=9)
    res = export_mcu(mod, tmp_path / "pkg", get_board(board), samples=[[x]], workdir=tmp_path / "work")
    if assert_fewest_kept(res, kinds) != HANDWRITTEN:
        assert res["package"]["steps"][0]["c_func"] == "qk_tir_dw3x3_0" and len(res["package"]["tir_objects"]) == 1


def assert_fewest_kept(res: dict, kinds: set) -> str:
    """A one-layer package's choice: bit-exact, every kind measured beside the hand-written kernel
    (none dropped), the fewest instructions kept and said why. Returns the kept source."""
    from tvm_qplugin.export.kernel_choice import HANDWRITTEN

    assert res["bit_exact"], res.get("mismatches")
    (layer,) = res["layers"]
    ch = layer["kernel_choice"]
    counts = ch["instructions"]
    assert set(counts) == {HANDWRITTEN, *(f"tensorir-{k}" for k in kinds)} and ch["dropped"] == 0, ch["why"]
    assert counts[ch["source"]] == min(counts.values()) and "qemu-system-arm" in ch["why"], ch["why"]
    return ch["source"]


def _layer_cost_cases():
    """benchmarks/mcu_layers.py's depthwise and stem cells as (layer, core) params; dw_s2 and the stem in make test."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    from mcu_layers import BOARDS

    return [pytest.param(layer, core, marks=() if layer in ("dw_s2", "conv3x3_s2") else pytest.mark.extended)
            for layer in ("dw_s1", "dw_s2", "conv3x3_s2") for core in BOARDS]


@pytest.mark.parametrize("layer,core", _layer_cost_cases())
def test_tir_kernel_of_issue11_layer_within_0p8_of_cmsis_nn(layer, core, tmp_path):
    """The TIR kernel alone (its packed call between two marks, the shim included) on the issue's layer:
    bit-exact and <= 0.8x CMSIS-NN's instructions/MAC (the choice keeps it where it is the fastest;
    benchmarks/mcu_layers.py measures it inside the compiled package)."""
    from mcu_layers import ACCEPT_RATIO, BOARDS, CONV_EQUIVALENT, LAYERS
    from test_export_tir_cortexm_conv import MNEMONIC_GEMM
    from test_export_tir_cortexm_conv import _workload as conv_workload

    board = BOARDS[core]
    sched = "mve" if core == "cortex-m55" else "smlad"
    g = CONV_EQUIVALENT[layer]
    if layer == "conv3x3_s2":   # the stem: the GEMM kernel packing each pixel's 27 taps
        sp, inputs, want = conv_workload(g["c"], g["hw"], g["hw"], g["o"], 3, g["stride"], (1, 1, 1, 1), "int8",
                                         "int8", (33, 41), seed=3)
        taps, mnemonic = 27, MNEMONIC_GEMM[sched]
    else:
        sp, inputs, want = _workload(g["c"], g["hw"], g["hw"], g.get("stride", 1), (1, 1, 1, 1), "int8", "int8",
                                     (33, 41), seed=3)
        taps, mnemonic = 9, MNEMONIC[sched]
    sp = type(sp)(**{**sp.__dict__, "schedule": sched})
    ipm = _run(sp, get_board(board), inputs, want, tmp_path / "k", mnemonic) / (want.size * taps)
    cmsis = LAYERS[layer][3][core]
    print(f"\n{LAYERS[layer][0]} on {core}: tensorir-{sched} {ipm:.3f} instructions/MAC, CMSIS-NN {cmsis}")
    assert ipm <= ACCEPT_RATIO * cmsis, f"{layer} on {core}: tensorir-{sched} {ipm:.3f}/MAC > {ACCEPT_RATIO} x {cmsis}"
