"""``--precision mixed --budget size=...``: the ILP's plan (Hessian sensitivities of the float
model on the calibration data) compiled end to end -- under the budget by the compile's own byte
count, some layers at 4 bits, bit-exact with the NumPy reference, as accurate as int8 within a
point on the digits."""
from __future__ import annotations

import numpy as np
import pytest

import tvm_qplugin as tq
from cli_run import ROOT
from qplugin_zoo import digits_split

DIGITS = ROOT / "examples" / "digits_cnn.onnx"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    x_train, _, x_test, y_test = digits_split()
    evaluation = tmp_path_factory.mktemp("mixed") / "eval.npz"  # labels travel in the .npz
    np.savez(evaluation, input=x_test[:200], labels=y_test[:200])
    return {"input": x_train[:128]}, str(evaluation)


def test_mixed_precision_compiles_the_ilp_plan_under_the_size_budget(digits):
    calib, evaluation = digits
    int8 = tq.compile(str(DIGITS), calib=calib, eval=evaluation)
    budget = int(int8.report["size_bytes"]["weights"] * 0.85)
    mixed = tq.compile(str(DIGITS), calib=calib, eval=evaluation, precision="mixed", budget=f"size={budget}")
    rep = mixed.report
    assert rep["precision"] == "mixed" and rep["integer_only"] and rep["bit_exact"]
    assert rep["size_bytes"]["weights"] <= budget < int8.report["size_bytes"]["weights"]
    widths = [layer["w_bits"] for layer in rep["layers"] if layer["op"] in ("conv2d", "dense")]
    assert 4 in widths and 8 in widths, widths
    assert rep["accuracy"]["top1_int"] >= int8.report["accuracy"]["top1_int"] - 0.01
    # the sensitivities the ILP chose from are in the report (DESIGN.md's layers[].sensitivity),
    # per ONNX node: the int4 layers are the ones whose direct KL at 4 bits the plan could afford
    weighted = [layer for layer in rep["layers"] if layer["op"] in ("conv2d", "dense")]
    for layer in weighted:
        sens = layer["sensitivity"]
        assert set(sens) == {"hessian_trace", "trace_spread", "omega", "kl"}, layer["name"]
        assert sens["kl"]["4"] >= 0 and sens["kl"]["8"] >= 0 and set(sens["omega"]) >= {"4", "8"}
    assert all(layer["sensitivity"] is None for layer in int8.report["layers"])
