"""The digits ViT with ``--attention shiftadd``: shift linears and add attention reach the deployed
graph -- integer-only, bit-exact against the NumPy reference, the shift/add kernels proven
multiply-free on the lowered TIR, each layer's primitive and accuracy cost in the report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import tvm_qplugin as tq
from qplugin_zoo import digits_split

VIT = Path(__file__).resolve().parents[1] / "examples" / "digits_vit.onnx"


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module")
def shiftadd_vit(digits):
    x_train, _, x_test, _ = digits
    return tq.compile(VIT, calib={"input": x_train[:128]}, eval={"input": x_test[:64]}, attention="shiftadd",
                      shift_linears="all", timing_runs=2)


def test_digits_vit_shiftadd_is_integer_only_and_bit_exact(shiftadd_vit):
    r = shiftadd_vit.report
    assert r["attention"] == "shiftadd"
    assert r["integer_only"] and r["float_ops"] == 0, r["allowed_float_ops"]
    assert r["bit_exact"] and r["bit_exact_inputs"] >= 16
    assert not r["bit_exact_kernels"]["mismatched"], r["bit_exact_kernels"]


def test_report_names_each_layers_primitive_and_cost(shiftadd_vit):
    r = shiftadd_vit.report
    prims = [layer["primitive"] for layer in r["layers"]]
    assert prims.count("add-attention") == 4, prims        # one per encoder block
    assert prims.count("shift") == 24, prims               # q, k, v, o, fc1, fc2 of four blocks
    assert prims[0] == "int8" and prims[-1] == "int8", prims  # patch conv, classifier head
    # distinct kernels, all proven: one add attention (the four blocks share it), one shift
    # linear per shape (32 -> 32, 32 -> 64, 64 -> 32)
    assert r["multiply_free_kernels"] == 4, r["multiply_free_kernels"]
    for layer in r["layers"]:
        assert layer["sqnr_db"] is not None and layer["latency_us"] is not None, layer
        if layer["primitive"] == "shift":
            assert 10 < layer["weight_sqnr_db"] < 20 and layer["w_bits"] == 4, layer


@pytest.mark.extended
def test_shift_variant_keeps_accuracy_and_default_rule_takes_shift(digits):
    """Post-training shift linears alone (int8 attention) stay within 2 points of float here; the
    default ``rule`` mode picks shift for them (their weight SQNR is above the threshold)."""
    x_train, _, x_test, y_test = digits
    art = tq.compile(VIT, calib={"input": x_train[:256]}, eval={"input": x_test[:32]}, shift_linears="rule",
                     timing_runs=2)
    r = art.report
    assert r["integer_only"] and r["bit_exact"]
    assert sum(layer["primitive"] == "shift" for layer in r["layers"]) == 24
    q = np.concatenate([art.run({"input": x[None]})[0] for x in x_test])
    acc_q = float((q.argmax(1) == y_test).mean())
    assert acc_q >= 0.95, f"shift linears: labelled accuracy {acc_q:.4f} (float 0.976)"


def test_digits_vit_shiftadd_c_package_is_bit_exact_on_cortex_m55(digits):
    """Shift linears and add attention in the C package, beside the transformer kernels (softmax-free
    attention, LayerNorm, GELU): the whole ViT under qemu, bit-exact, with its instruction count."""
    x_train, _, x_test, _ = digits
    art = tq.compile(VIT, target="qemu-mps3-an547", calib={"input": x_train[:128]}, eval={"input": x_test[:2]},
                     attention="shiftadd", shift_linears="all", nonlinear="division-free")
    r = art.report
    assert r["integer_only"] and r["bit_exact"] and r["mcu"]["bit_exact"] and r["mcu"]["bit_exact_inputs"] >= 2
    assert r["mcu"]["instructions_per_inference"] > 0
    sources = "\n".join(p.read_text() for p in art.c_package.rglob("*.c"))
    assert "qk_shiftdense_" in sources and "qk_addatt_" in sources, "shift/add kernels not in the package"
