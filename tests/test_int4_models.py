"""int4 on a real model, the digits CNN: uniform int4 (first / last layer at 8), a per-layer plan
with 4-bit activations, the C package under qemu Cortex-M4, the report's precision fields and the
measured weight size; the CLI's --precision / --layer-bits and their refusals."""
from __future__ import annotations

import json

import pytest
from test_cli import DIGITS, data, ok, run_cli  # noqa: F401  (data: the module-scoped .npz fixture)

import tvm_qplugin as tq
from qplugin_zoo import digits_split


def _compile(**options):
    x_train, _, x_test, _ = digits_split()
    return tq.compile(DIGITS, calib={"input": x_train[:128]}, eval={"input": x_test[:64]}, **options)


@pytest.fixture(scope="module")
def int8():
    return _compile()


@pytest.fixture(scope="module")
def int4():
    return _compile(precision="int4")


def _int4_calls(art):
    """(op, packed weight array) of every int4 kernel call of the compiled integer module."""
    from tvm import relax

    from tvm_qplugin.ops import op_of

    mod = art.integer_mod
    found = []
    for block in mod[art.integer_function].body.blocks:
        for b in block.bindings:
            if isinstance(b.value, relax.Call) and getattr(b.value.op, "name", "") == "relax.call_tir":
                name, _ = op_of(mod[b.value.args[0]]) or ("", {})
                if name.endswith("_w4"):
                    found.append((name, b.value.args[1].fields[1].value.numpy()))
    return found


def test_int4_is_bit_exact_and_keeps_the_ends_at_8(int4):
    r = int4.report
    assert r["precision"] == "int4" and r["bit_exact"] is True and not r["bit_exact_kernels"]["mismatched"]
    bits = [(layer["w_bits"], layer["a_bits"]) for layer in r["layers"]]
    assert bits[0] == bits[-1] == (8, 8) and bits[1:-1] == [(4, 8)] * (len(bits) - 2), bits
    assert [layer["onnx_node"] for layer in r["layers"]][0] == "node_Conv_83"
    assert len(_int4_calls(int4)) == len(bits) - 2
    whys = [layer["kernel"]["why"] for layer in r["layers"][1:-1]]
    assert all(w.startswith("int4 weights widened at build into the int8 kernel") for w in whys), whys


@pytest.mark.extended  # a second whole compile (int8), only for this comparison
def test_int4_weights_are_measured_smaller(int8, int4):
    """The report's weight bytes count the packed bytes: each int4 layer saves o*K - o*ceil(K/2)."""
    saved = sum(w.shape[0] * (2 * w.shape[1]) - w.size for _, w in _int4_calls(int4))
    w8, w4 = int8.report["size_bytes"]["weights"], int4.report["size_bytes"]["weights"]
    assert w4 < w8 and w8 - w4 >= saved - 8 * len(_int4_calls(int4)), (w8, w4, saved)


def test_int4_accuracy_on_held_out_digits(int4):
    """Top-1 agreement with fp32 on 64 held-out digits (int8: 1.0): int4 weights in the middle
    layers stay within 3 points (measured 0.994 on all 540; benchmarks/precision_accuracy.py)."""
    acc = int4.report["accuracy"]
    assert acc["data"] == "eval" and acc["value"] >= 0.97, acc


def test_cli_layer_bits_plan_with_4_bit_activations_saved_and_verified(tmp_path, data):  # noqa: F811
    """``--layer-bits`` over int8: one conv with 4-bit weights and a 4-bit input (requantized to 15
    levels in uint8), the classifier at 4-bit weights; bit-exact, and the saved OUTDIR reloads and
    verifies bit for bit (``verify``: the reference on random inputs)."""
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"node_Conv_87": [4, 4], "node_linear": [4, 8]}))
    out = tmp_path / "out"
    ok(run_cli("compile", DIGITS, "--calib", data["calib"], "--eval", data["eval"], "--layer-bits", plan, "-o", out))
    r = json.loads((out / "report.json").read_text())
    assert r["bit_exact"] is True and r["precision"] == "int8"
    by_node = {layer["onnx_node"]: (layer["w_bits"], layer["a_bits"]) for layer in r["layers"]}
    assert by_node["node_Conv_87"] == (4, 4) and by_node["node_linear"] == (4, 8) and by_node["node_Conv_85"] == (8, 8)
    res = json.loads(ok(run_cli("verify", out, "--count", "8")))
    assert res["bit_exact"] is True and res["integer_only"] is True and res["mismatches"] == []


def test_int4_c_package_bit_exact_under_qemu_cortex_m4():
    art = _compile(target="qemu-mps2-an386", precision="int4", mcu_verify_inputs=2)
    r = art.report
    assert r["mcu"]["bit_exact"] is True and r["bit_exact"] is True, r["mcu"]
    info = json.loads((art.c_package / "qmodel.json").read_text())
    w4 = [s for s in info["steps"] if s["op"].endswith("_w4")]
    assert len(w4) == 4 and all(s["c_func"].startswith("qk_conv2d_w4_") for s in w4)


def test_cli_layer_bits_file_and_refusals(tmp_path, data):  # noqa: F811
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"node_Conv_99": [4, 8]}))
    r = run_cli("compile", DIGITS, "--calib", data["calib"], "--layer-bits", plan, "-o", tmp_path / "out")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert "node 'node_Conv_99' is not a conv / dense" in r.stderr
    r = run_cli("compile", DIGITS, "--calib", data["calib"], "--precision", "mixed", "-o", tmp_path / "out")
    assert r.returncode == 2 and "--precision mixed needs a --budget" in r.stderr, r.stderr
    (tmp_path / "bad.json").write_text("{")
    r = run_cli("compile", DIGITS, "--calib", data["calib"], "--layer-bits", tmp_path / "bad.json", "-o",
                tmp_path / "out")
    assert r.returncode == 2 and "bad.json: not a JSON file" in r.stderr, r.stderr
