"""GELU as exporters write it -- Erf form, tanh form (torch's decomposition, ONNX Runtime's
FastGelu expansion), native opset-20 Gelu -- is fused into one op and integerized; a Tanh that
is not part of a GELU is refused by name."""
from __future__ import annotations

import math

import numpy as np
import pytest
import tvm
from onnx import TensorProto, helper, numpy_helper

import tvm_qplugin as tq
from tvm_qplugin.frontend import import_onnx
from tvm_qplugin.ops import op_of
from tvm_qplugin.passes.canonicalize import canonicalize

RNG = np.random.default_rng(7)
W1 = (RNG.normal(size=(16, 32)) / 4).astype(np.float32)
W2 = (RNG.normal(size=(32, 8)) / 6).astype(np.float32)
C1 = math.sqrt(2 / math.pi)


def _scalar(name, v):
    return numpy_helper.from_array(np.array(v, np.float32), name)


def _gelu_nodes(form: str, x: str, y: str):
    """Nodes computing y = GELU(x) in one of the exported forms, plus their constants."""
    n, inits = helper.make_node, []
    if form == "erf":
        inits = [_scalar("sqrt2", math.sqrt(2)), _scalar("one", 1.0), _scalar("half", 0.5)]
        nodes = [n("Div", [x, "sqrt2"], ["g0"]), n("Erf", ["g0"], ["g1"]), n("Add", ["g1", "one"], ["g2"]),
                 n("Mul", [x, "g2"], ["g3"]), n("Mul", ["g3", "half"], [y])]
    elif form == "tanh":  # torch.onnx (opset 17) for nn.GELU(approximate="tanh"): (0.5 x) (1 + tanh(...))
        inits = [_scalar("three", 3.0), _scalar("kappa", 0.044715), _scalar("beta", C1), _scalar("one", 1.0),
                 _scalar("half", 0.5)]
        nodes = [n("Pow", [x, "three"], ["g0"]), n("Mul", ["kappa", "g0"], ["g1"]), n("Add", [x, "g1"], ["g2"]),
                 n("Mul", ["beta", "g2"], ["g3"]), n("Tanh", ["g3"], ["g4"]), n("Mul", ["half", x], ["g5"]),
                 n("Add", ["one", "g4"], ["g6"]), n("Mul", ["g5", "g6"], [y])]
    elif form == "fastgelu":  # c1 x + c2 x*x*x inside the tanh
        inits = [_scalar("c1", C1), _scalar("c2", 0.044715 * C1), _scalar("one", 1.0), _scalar("half", 0.5)]
        nodes = [n("Mul", [x, "c1"], ["g0"]), n("Mul", [x, x], ["g1"]), n("Mul", ["g1", x], ["g2"]),
                 n("Mul", ["g2", "c2"], ["g3"]), n("Add", ["g0", "g3"], ["g4"]), n("Tanh", ["g4"], ["g5"]),
                 n("Add", ["g5", "one"], ["g6"]), n("Mul", ["g6", x], ["g7"]), n("Mul", ["g7", "half"], [y])]
    elif form == "native":  # opset 20
        nodes = [n("Gelu", [x], [y], approximate="tanh")]
    elif form == "bare_tanh":  # not a GELU: must be refused
        nodes = [n("Tanh", [x], [y], name="lonely_tanh")]
    else:
        raise ValueError(form)
    return nodes, inits


def _mlp(tmp_path, form: str):
    nodes, inits = _gelu_nodes(form, "h", "a")
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"])] + nodes + [helper.make_node("MatMul", ["a", "w2"], ["y"])]
    g = helper.make_graph(nodes, "mlp", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, 16])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])],
                          inits + [numpy_helper.from_array(W1, "w1"), numpy_helper.from_array(W2, "w2")])
    p = tmp_path / f"{form}.onnx"
    import onnx

    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 20 if form == "native" else 17)]), p)
    return p


@pytest.mark.parametrize("form,op", [("erf", "relax.nn.gelu"), ("tanh", "relax.nn.gelu_tanh"),
                                     ("fastgelu", "relax.nn.gelu_tanh"), ("native", "relax.nn.gelu_tanh")])
def test_gelu_form_fused_into_one_op(tmp_path, form, op):
    text = canonicalize(import_onnx(_mlp(tmp_path, form)).mod).script()
    assert op.removeprefix("relax.") in text
    for leftover in ("R.tanh", "R.erf", "R.power"):
        assert leftover not in text, f"{form}: {leftover} left after GELU fusion"


@pytest.mark.parametrize("form", ["tanh", "fastgelu", "native"])
def test_tanh_gelu_integer_only_and_close_to_float(tmp_path, form):
    import onnxruntime as ort

    x = RNG.normal(size=(544, 16)).astype(np.float32)  # calibrate on 512: the input range must cover eval's
    model = _mlp(tmp_path, form)
    art = tq.compile(model, calib={"x": x[:512]}, eval={"x": x[512:]})
    r = art.report
    assert r["integer_only"] and r["float_ops"] == 0 and r["bit_exact"]
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    want = np.concatenate([sess.run(None, {"x": x[i : i + 4]})[0] for i in range(512, 544, 4)])
    got = np.concatenate([art.run({"x": x[i : i + 4]})[0] for i in range(512, 544, 4)])
    # gelu_int approximates erf-GELU; tanh-GELU differs from it by < 5e-4, far below int8 noise
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 0.03, f"{form}: relative L2 error {rel:.4f} against ONNX Runtime fp32"


def test_tanh_outside_gelu_is_an_exact_lookup_table(tmp_path):
    """A Tanh that is not part of a GELU is no longer refused: it becomes the 256-entry table of the
    coverage rules (ops/activation.py), integer-only and bit-exact; inside a GELU the pattern wins."""
    art = tq.compile(_mlp(tmp_path, "bare_tanh"), calib={"x": RNG.normal(size=(8, 16)).astype(np.float32)})
    r = art.report
    assert r["integer_only"] and r["bit_exact"], r
    ops = {op for op, _ in (op_of(f) or (None, None) for f in art.integer_mod.functions.values()
                            if isinstance(f, tvm.tirx.PrimFunc))}
    assert "lut" in ops and "gelu_int" not in ops, ops
