"""The depthwise 3x3 TensorIR kernel of aarch64 boards (export/tir_kernels_dw.py): a candidate of the
kernel choice beside the hand-written qk_dw3x3, bit-exact under qemu-aarch64 against the op's NumPy
twin on every path (stride 1 and 2, uint8 / int8 inputs with their extremes, 8/16-bit outputs, the
32-bit requantization of shifts >= 33), measured and reported."""
from __future__ import annotations

import numpy as np
import pytest
from tvm import relax

from tvm_qplugin.export import export_mcu
from tvm_qplugin.export.c_graph import build_graph, integer_module_of
from tvm_qplugin.export.kernel_choice import (
    HANDWRITTEN,
    _measure,
    _one_step_module,
    _sample,
    dw_candidates,
    schedules_for,
    tir_candidates,
)
from tvm_qplugin.export.tir_kernels_dw import dw_spec
from tvm_qplugin.ops import const, emit
from tvm_qplugin.quant import dyadic
from tvm_qplugin.reference import ReferenceInterpreter
from tvm_qplugin.targets import get_board

BOARD = "rpi5"


def dw_model(c, h, w, stride, x_dtype, out_dtype, lo, hi, seed, shifts="mixed"):
    """One depthwise 3x3 conv (pad 1) of a (1, c, h, w) map. ``shifts``: "mixed" (31 to ~43: the
    vector requantization's 32-bit lanes), "33" (all >= 33: the scalar tail's 32-bit form), "low"
    (one below 31: the int64 lanes)."""
    rng = np.random.default_rng(seed)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, c, h, w], x_dtype))
    if shifts == "33":
        scales = rng.uniform(1 / 3000, 1 / 600, c)
    else:
        scales = np.exp(rng.uniform(np.log(1 / 3000), np.log(1 / 2), c))
        scales[:2] = [4 if shifts == "low" else 1 / 2, 1 / 3000]
    ds = [dyadic(float(m)) for m in scales]
    mult, shift = np.array([d.multiplier for d in ds], np.int64), np.array([d.shift for d in ds], np.int64)
    assert {"33": shift.min() >= 33, "mixed": shift.min() == 31, "low": shift.min() < 31}[shifts], shift
    w8 = rng.integers(-128, 128, (c, 1, 3, 3)).astype(np.int8)
    w8.reshape(-1)[:2] = [-128, 127]
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(emit(bb, "conv2d_requant", [x, const(w8), const(rng.integers(-3000, 3000, c).astype(np.int32)),
                                                           const(mult), const(shift)],
                                    strides=[stride, stride], padding=[1, 1, 1, 1], dilation=[1, 1], groups=c,
                                    qmin=lo, qmax=hi, out_dtype=out_dtype))
        bb.emit_func_output(y)
    return bb.finalize()


CASES = {   # name: (c, h, w, stride, x dtype, out dtype, qmin, qmax, shifts); output rows of 9, 4, 6, 3 pixels
    "s1_u8_u8": (5, 7, 9, 1, "uint8", "uint8", 0, 255, "mixed"),
    "s2_i8_i16": (4, 9, 8, 2, "int8", "int16", -32768, 32767, "low"),
    "s2_u8_i8_shift33": (3, 10, 11, 2, "uint8", "int8", -128, 127, "33"),
    "s1_3px_i8_u8_clamped": (6, 3, 3, 1, "int8", "uint8", 0, 6, "mixed"),
}


@pytest.mark.parametrize("name", list(CASES))
def test_dw3x3_kernel_bit_exact_beside_the_handwritten(name, tmp_path):
    c, h, w, stride, xd, od, lo, hi, shifts = CASES[name]
    mod = dw_model(c, h, w, stride, xd, od, lo, hi, seed=len(name), shifts=shifts)
    (s,) = dw_candidates(build_graph(integer_module_of(mod)))
    assert not tir_candidates(build_graph(integer_module_of(mod)))   # the tuner's / Cortex-M's list stays GEMMs
    assert dw_spec(s).shift33 == (shifts == "33") and dw_spec(s).sh == stride
    step = _one_step_module(s)
    x = _sample(s.args[0].shape, xd, seed=3)
    want = ReferenceInterpreter(step).run("main", x)
    want = want[0] if isinstance(want, (list, tuple)) else want
    board = get_board(BOARD)
    scheds = schedules_for(s, board)
    assert scheds == (("dw3x3", "dw3x3-split") if stride == 2 else ("dw3x3",))
    for cand in (*scheds, None):   # every TIR candidate, and the hand-written kernel
        r = _measure(step, board, cand and {0: cand}, x, want, tmp_path / str(cand))
        assert r["ok"] and r["instructions"] > 0, (cand, r)   # bit-exact


def test_export_mcu_chooses_the_depthwise_kernel_and_runs_it_bit_exact(tmp_path):
    """compile's route on rpi5: the choice measures both candidates (the TIR kernel wins: no bounds
    checks in the taps, a vectorized row), the package calls it and runs bit-exact, report counts it."""
    mod = dw_model(8, 12, 12, 1, "uint8", "uint8", 0, 255, seed=5)
    x = _sample((1, 8, 12, 12), "uint8", seed=9)
    res = export_mcu(mod, tmp_path / "pkg", get_board(BOARD), samples=[[x]], workdir=tmp_path / "work")
    assert res["bit_exact"], res["mismatches"]
    (layer,) = res["layers"]
    ch = layer["kernel_choice"]
    assert set(ch["instructions"]) == {HANDWRITTEN, "tensorir-dw3x3"} and ch["dropped"] == 0, ch
    assert ch["source"] == "tensorir-dw3x3" and ch["instructions"]["tensorir-dw3x3"] < ch["instructions"][HANDWRITTEN]
    assert res["package"]["steps"][0]["c_func"] == "qk_tir_dw3x3_0" and len(res["package"]["tir_objects"]) == 1
    assert 0 < layer["instructions_per_mac"] < ch["instructions"][HANDWRITTEN] / layer["macs"]
