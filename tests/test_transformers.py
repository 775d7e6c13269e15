"""Integer-only transformers: the digits ViT (patch embedding + 4 encoder blocks) for each
non-linear variant — integer-only, bit-exact, accuracy within 1 pt of float."""
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
def vit(digits):
    """``vit(**options)``: the digits ViT compiled with ``options`` on one calibration / evaluation
    split, each set of options once per module (the papers' forms test compares with the ivit
    build the variant test made)."""
    x_train, _, x_test, _ = digits
    built = {}

    def compiled(**options):
        key = tuple(sorted(options.items()))
        if key not in built:
            built[key] = tq.compile(VIT, calib={"input": x_train[:256]}, eval={"input": x_test}, **options)
        return built[key]

    return compiled


@pytest.mark.parametrize("variant", ["ivit", "ibert", "division-free"])
def test_digits_vit_integer_only_and_accurate(digits, vit, variant):
    _, _, x_test, y_test = digits
    art = vit(nonlinear=variant)
    r = art.report
    assert r["integer_only"] and r["float_ops"] == 0, r["allowed_float_ops"]
    assert r["bit_exact"] and r["bit_exact_inputs"] >= 16
    assert (r["division_ops"] == 0) == (variant == "division-free"), r["division_ops"]
    import onnxruntime as ort

    sess = ort.InferenceSession(str(VIT), providers=["CPUExecutionProvider"])
    fp = np.concatenate([sess.run(None, {"input": x[None]})[0] for x in x_test])
    q = np.concatenate([art.run({"input": x[None]})[0] for x in x_test])
    acc_f, acc_q = float((fp.argmax(1) == y_test).mean()), float((q.argmax(1) == y_test).mean())
    assert acc_f > 0.95, f"float ViT accuracy {acc_f:.4f}: fixture broken"
    assert acc_q >= acc_f - 0.01, f"{variant}: int8 {acc_q:.4f} vs float {acc_f:.4f} (more than 1 pt lost)"


def test_unsupported_attention_form_is_named(tmp_path):
    """An attention-like form without an integer rule (Hardmax) is refused with the node named.
    (Softmax over a non-last axis and LogSoftmax are supported now: tests/test_coverage_graphs.py.)"""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Hardmax", ["x"], ["y"], name="odd_softmax", axis=1)
    g = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8])])
    p = tmp_path / "m.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), p)
    with pytest.raises(tq.UnsupportedOpError, match="Hardmax.*odd_softmax"):
        tq.compile(p, calib={"x": np.random.default_rng(0).normal(size=(4, 4, 8)).astype(np.float32)})


def test_papers_forms_selectable_and_recorded(vit):
    """--gelu paper --softmax-bits 8 take the papers' forms (x sigma(1.702 x), uint8 probabilities)
    in our arithmetic -- not the papers' integers, that is --nonlinear ivit-paper / ibert-paper
    (tests/test_paper_nonlinears.py): still integer-only and bit-exact; the report records the
    choice; the default forms (ivit, tanh GELU, 16-bit softmax) are more exact."""
    paper = vit(nonlinear="ivit", gelu="paper", softmax_bits=8)
    default = vit(nonlinear="ivit")
    assert paper.report["gelu"] == "paper" and paper.report["softmax_bits"] == 8 and default.report["gelu"] == "tanh"
    assert paper.report["integer_only"] and paper.report["bit_exact"]

    def sqnr(r, op):
        return min(t["sqnr_db"] for t in r["tensors"] if t["op"].startswith(op))

    assert sqnr(default.report, "nn.softmax") > sqnr(paper.report, "nn.softmax") + 6
    assert sqnr(default.report, "nn.gelu") > sqnr(paper.report, "nn.gelu") + 3
