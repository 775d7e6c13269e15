"""Issue 13's acceptance on the digits CNN, compiled for real (x86, integer-only, bit-exact checked):
at the weight size midway between uniform int4 and int8 the ILP's plan (the product's
``method="auto"``) against uniform int4, uniform int8 and 20 random assignments of at most the
same size, each measured on the whole labelled test split (540 digits) and by its mean KL to the
float model's outputs there.

The assertions are what the data can resolve: on labels, the ILP's plan is at least as accurate
as every random plan and uniform int4 and within a point of int8 (one digit is 0.19 point and,
with the int4 weights rounded against their calibrated inputs, int4 and int8 both miss the same
4 digits, so no plan can beat int4 on labels by more than a tie); on KL to fp32 -- the finer
measure of the same digits -- it is strictly closer to the float model than uniform int4 and than
every random plan that is not the ILP's own plan (docs/mixed-precision.md "Mixed precision").
Extended: 14 distinct plans compiled (~2 min here)."""
from __future__ import annotations

import numpy as np
import pytest

import tvm_qplugin as tq
from qplugin_zoo.digits import digits_cnn_onnx, digits_split
from tvm_qplugin.mixed.plan import build_problem, plan_model, random_plans
from tvm_qplugin.mixed.sensitivity import sensitivity
from tvm_qplugin.mixed.torch_graph import load_torch_graph, one_torch_thread

pytestmark = pytest.mark.extended

CALIB = 256
SETTINGS = {"samples": 32, "probes": 256}
RANDOM = 20


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@pytest.fixture(scope="module")
def measured():
    """``{name: (accuracy, KL to fp32, plan)}`` for int8, int4, the ILP plan and the random plans."""
    x_train, y_train, x_test, y_test = digits_split()
    path = str(digits_cnn_onnx())
    calib, labels = {"input": x_train[:CALIB]}, y_train[:CALIB]
    with one_torch_thread():
        sens = sensitivity(path, calib, labels, **SETTINGS)
        g = load_torch_graph(path)
        problem = build_problem(sens, g.model).restricted(a_bits=(8,))
        midway = (problem.uniform(8, 8)["size"] + problem.uniform(4, 8)["size"]) / 2
        ilp = plan_model(path, calib, f"size={int(midway)}B", labels, method="auto", a_bits=(8,), **SETTINGS)[0]
        reference = log_softmax(g.run({"input": x_test})[0].detach().numpy().astype(np.float64))
    names = problem.names
    plans = {"int8": {n: (8, 8) for n in names}, "ilp": ilp.bits}
    plans.update({f"random{i}": bits for i, bits in enumerate(random_plans(problem, midway, RANDOM))})
    compiled: dict[tuple, tuple[float, float]] = {}  # one compile per distinct plan
    out = {}
    for name, bits in [*plans.items(), ("int4", None)]:
        key = tuple(sorted(bits.items())) if bits is not None else "int4"
        if key not in compiled:
            options = {"precision": "int4"} if bits is None else {"precision": "mixed", "layer_bits": bits}
            art = tq.compile(path, calib=calib, eval={"input": x_test[:16]}, **options)
            assert art.report["bit_exact"] and art.report["integer_only"], name
            logits = np.concatenate([art.run({"input": x_test[i:i + 1]})[0] for i in range(len(x_test))])
            lp = log_softmax(logits.astype(np.float64))
            compiled[key] = (float((logits.argmax(axis=1) == y_test).mean()),
                             float((np.exp(reference) * (reference - lp)).sum(axis=1).mean()))
        out[name] = (*compiled[key], bits)
    return out


def test_ilp_plan_is_within_a_point_of_int8_and_at_least_as_accurate_as_int4_and_every_random_plan(measured):
    acc = {name: a for name, (a, _, _) in measured.items()}
    randoms = {n: a for n, a in acc.items() if n.startswith("random")}
    assert len(randoms) == RANDOM
    assert acc["ilp"] >= acc["int8"] - 0.01, acc
    assert acc["ilp"] >= acc["int4"], acc
    assert all(acc["ilp"] >= a for a in randoms.values()), acc


def test_ilp_plan_is_closer_to_fp32_than_int4_and_every_other_random_plan(measured):
    ilp_kl, ilp_bits = measured["ilp"][1], measured["ilp"][2]
    assert ilp_kl < measured["int4"][1], (ilp_kl, measured["int4"][1])
    others = {n: kl for n, (_, kl, bits) in measured.items() if n.startswith("random") and bits != ilp_bits}
    assert others and all(ilp_kl < kl for kl in others.values()), (ilp_kl, others)
