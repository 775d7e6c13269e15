"""Whole model (ladder step 3) on the demo CNN: compile, bit-exact vs reference, accuracy vs float."""
from __future__ import annotations

import json

import numpy as np
import pytest

import tvm_qplugin as tq
from tvm_qplugin.passes.verify import verify_integer_only, verify_lowered_tir
from tvm_qplugin.reference import ReferenceInterpreter
from qplugin_zoo import digits_cnn_onnx, digits_split


@pytest.fixture(scope="module")
def digits():
    return digits_split()


@pytest.fixture(scope="module")
def artifact(digits):
    x_train, _, x_test, y_test = digits
    return tq.compile(digits_cnn_onnx(), calib={"input": x_train[:256]},
                      eval={"input": x_test}, observer="mse")


def test_integer_only_and_bit_exact(artifact):
    r = artifact.report
    assert r["integer_only"] and r["float_ops"] == 0
    assert r["bit_exact"] and r["bit_exact_inputs"] >= 16
    rep = verify_integer_only(artifact.integer_mod)
    assert rep.kernels >= 8 and not rep.float_ops
    assert verify_lowered_tir(artifact.integer_mod) == []


def test_int8_accuracy_within_half_point_of_float(digits, artifact):
    x_train, _, x_test, y_test = digits
    q = np.concatenate([artifact.run({"input": x[None]})[0] for x in x_test])
    import onnxruntime as ort

    sess = ort.InferenceSession(str(digits_cnn_onnx()), providers=["CPUExecutionProvider"])
    fp = np.concatenate([sess.run(None, {"input": x[None]})[0] for x in x_test])
    acc_f = float((fp.argmax(1) == y_test).mean())
    acc_q = float((q.argmax(1) == y_test).mean())
    assert acc_f >= 0.97, f"float model accuracy {acc_f:.4f}: fixture broken"
    assert acc_q >= acc_f - 0.005, f"int8 {acc_q:.4f} vs float {acc_f:.4f}: more than 0.5 pt lost"


def test_all_test_images_bit_exact(digits, artifact):
    _, _, x_test, _ = digits
    ref = ReferenceInterpreter(artifact.integer_mod)
    qt = artifact.inputs[0].qtype
    for x in x_test[:120]:
        q = qt.quantize(x[None])
        got = artifact.run_integer([q])[0]
        want = ref.run("core", q)[0]
        np.testing.assert_array_equal(got, want)


def test_save_load_roundtrip_and_verify(tmp_path, digits, artifact):
    _, _, x_test, _ = digits
    out = artifact.save(tmp_path / "out")
    assert sorted(p.name for p in out.iterdir()) == ["integer_module.json", "io.json", "manifest.json", "model.so",
                                                     "report.json"]
    report = json.loads((out / "report.json").read_text())
    for key in ("model", "target", "precision", "nonlinear", "attention", "integer_only", "float_ops", "division_ops",
                "bit_exact", "bit_exact_inputs", "accuracy", "size_bytes", "layers", "latency_ms", "tuning",
                "toolchain"):
        assert key in report, key
    again = tq.load(out)
    np.testing.assert_array_equal(again.run({"input": x_test[:1]})[0], artifact.run({"input": x_test[:1]})[0])
    from tvm_qplugin.verify import verify_outdir

    res = verify_outdir(str(out), count=8)
    assert res["bit_exact"] and res["inputs"] == 8


def test_int_io_build_takes_integers(digits):
    x_train, _, x_test, _ = digits
    art = tq.compile(digits_cnn_onnx(), calib={"input": x_train[:64]}, int_io=True)
    assert art.int_io and "core" not in [gv.name_hint for gv in art.integer_mod.functions]
    q = art.inputs[0].qtype.quantize(x_test[:1])
    out = art.run_integer([q])[0]
    assert out.dtype == np.int32
    assert art.report["bit_exact"]


def test_report_lists_per_tensor_error(artifact):
    """report.json "tensors": every quantized tensor with its SQNR against fp32, in graph order;
    the digits CNN keeps every tensor above 30 dB and its int8 input above 40 dB."""
    from tvm_qplugin.diagnose import sqnr_db

    t = artifact.report["tensors"]
    assert [e["op"] for e in t][0] == "input" and any(e["op"].startswith("nn.conv2d+") for e in t)
    assert all(e["sqnr_db"] is None or e["sqnr_db"] > 30 for e in t), t
    assert t[0]["sqnr_db"] > 40
    # the figure itself: noise at -20 dB of the signal reads as 20 dB; masked (-inf-like) entries are skipped
    ref = np.random.default_rng(0).normal(size=1000)
    assert abs(sqnr_db(ref, ref + 0.1 * ref) - 20.0) < 1e-6
    assert abs(sqnr_db(np.append(ref, -1e38), np.append(ref + 0.1 * ref, -5.0)) - 20.0) < 1e-6


def test_report_times_every_layer_and_op_kind(artifact):
    """layers[].latency_us from the VM's per-call instrument, and time per integer op kind."""
    r = artifact.report
    assert all(layer["latency_us"] is not None and layer["latency_us"] > 0 for layer in r["layers"])
    kinds = {k["op"]: k for k in r["kernels"]}
    assert {"conv2d_requant", "dense_requant"} <= set(kinds)
    assert abs(sum(k["share"] for k in r["kernels"]) - 1.0) < 0.01
    # each conv layer's call is part of the conv op kind's total
    conv_us = sum(layer["latency_us"] for layer in r["layers"] if layer["op"] == "conv2d")
    assert conv_us <= kinds["conv2d_requant"]["us"] * 1.5
