"""Mixed precision, part 1: the PyTorch twin of the ONNX graph and the per-layer sensitivities.

The Hutchinson estimator is checked against the exact Hessian of a model small enough to build it
(torch.autograd.functional.hessian over every weight and input-activation perturbation at once).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.onnx_builders import OnnxGraph, run_onnxruntime
from tvm_qplugin.errors import UnsupportedOpError
from tvm_qplugin.mixed.sensitivity import hutchinson_traces, relative_spread, sensitivity
from tvm_qplugin.mixed.torch_graph import load_torch_graph


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _every_op_graph(tmp_path):
    g = OnnxGraph((2, 3, 8, 8))
    a = g.relu(g.batchnorm(g.conv("x", 8)))
    b = g.clip(g.conv(a, 8, groups=8))
    c = g.add(a, b)
    p = g.concat([g.maxpool(c), g.avgpool(b, k=2, stride=2, pads=(0, 0, 0, 0))])
    y = g.gemm(g.flatten(g.gap(p)), 5)
    return g.save(y, tmp_path / "every_op.onnx")


def test_torch_twin_matches_onnxruntime(tmp_path):
    path = _every_op_graph(tmp_path)
    x = np.random.default_rng(1).standard_normal((2, 3, 8, 8)).astype(np.float32)
    tg = load_torch_graph(path)
    with torch.no_grad():
        got = tg.run({"x": x})[0].numpy()
    ref = run_onnxruntime(path, x)
    assert np.abs(got - ref).max() < 1e-5 * max(1.0, np.abs(ref).max()), np.abs(got - ref).max()
    assert [layer.op for layer in tg.layers] == ["Conv", "Conv", "Gemm"]
    assert tg.batchnorms, "the BatchNormalization node is the ZeroQ statistic"


def test_torch_twin_of_the_digits_vit_matches_onnxruntime():
    """LayerNormalization and Erf (GELU): the transformer's ops besides MatMul / Softmax."""
    from pathlib import Path

    from qplugin_zoo.digits import digits_split

    path = Path(__file__).resolve().parents[1] / "examples" / "digits_vit.onnx"
    x = digits_split()[2][:1]
    tg = load_torch_graph(path)
    with torch.no_grad():
        got = tg.run({"input": x})[0].numpy()
    ref = run_onnxruntime(path, x, "input")
    assert np.abs(got - ref).max() < 1e-5 * max(1.0, np.abs(ref).max()), np.abs(got - ref).max()
    assert sum(layer.op == "MatMul" for layer in tg.layers) >= 16


def test_torch_twin_refuses_unknown_ops_once(tmp_path):
    g = OnnxGraph((1, 4))
    y = g.node("Cos", [g.node("Tanh", [g.gemm("x", 4)], (1, 4))], (1, 4))
    with pytest.raises(UnsupportedOpError, match="Cos, Tanh"):
        load_torch_graph(g.save(y, tmp_path / "cos.onnx"))


def _tiny_model(tmp_path):
    g = OnnxGraph((1, 1, 4, 4), rng=np.random.default_rng(3))
    h = g.node("Sigmoid", [g.conv("x", 2)], (1, 2, 4, 4))  # not piecewise linear: H_ll is not only J^T H J
    return g.save(g.gemm(g.flatten(h), 3), tmp_path / "tiny.onnx")


def _exact_block_traces(tg, inputs, labels):
    """Tr of each diagonal block of the full Hessian over [weights..., activation perturbations...]."""
    taps = {}
    with torch.no_grad():
        tg.run(inputs, taps=taps)
    names = [layer.name for layer in tg.layers]
    shapes = [tg.weights[n].shape for n in names] + [taps[n].shape for n in names]
    sizes = [int(np.prod(s)) for s in shapes]
    k = len(names)
    flat0 = torch.cat([tg.weights[n].detach().reshape(-1) for n in names] + [torch.zeros(s) for s in sizes[k:]])

    def loss(flat):
        parts = [p.reshape(s) for p, s in zip(torch.split(flat, sizes), shapes)]
        out = tg.run(inputs, weights=dict(zip(names, parts[:k])),
                     perturb={n: (lambda x, d=d: x + d) for n, d in zip(names, parts[k:])})[0]
        return torch.nn.functional.cross_entropy(out, torch.as_tensor(labels))

    hess = torch.autograd.functional.hessian(loss, flat0).numpy()
    bounds = np.cumsum([0] + sizes)
    return np.array([np.trace(hess[a:b, a:b]) for a, b in zip(bounds[:-1], bounds[1:])])


def test_hutchinson_matches_the_exact_hessian_trace(tmp_path):
    tg = load_torch_graph(_tiny_model(tmp_path))
    rng = np.random.default_rng(0)
    inputs = {"x": rng.standard_normal((4, 1, 4, 4)).astype(np.float32)}
    labels = np.array([0, 1, 2, 1])
    exact = _exact_block_traces(tg, inputs, labels)
    w_rows, a_rows, _ = hutchinson_traces(tg, inputs, labels, probes=400, seed=1)
    rows = np.concatenate([w_rows, a_rows], axis=1)
    est, spread = rows.mean(axis=0), relative_spread(rows)
    stderr = spread * np.abs(est)
    assert np.all(np.abs(est - exact) <= 4 * stderr + 1e-6), (est, exact, stderr)
    assert np.all(np.abs(est - exact) <= 0.3 * np.abs(exact)), (est, exact)
    # the estimate is not trivially close: a wrong block (the other layer's) is far off
    assert abs(est[0] - exact[1]) > 4 * stderr[0], (est, exact)


def test_sensitivity_is_cached_per_model_and_data(tmp_path, monkeypatch):
    monkeypatch.setenv("TVM_QPLUGIN_CACHE", str(tmp_path / "cache"))
    path = _tiny_model(tmp_path)
    x = np.random.default_rng(0).standard_normal((8, 1, 4, 4)).astype(np.float32)
    first = sensitivity(path, {"x": x}, probes=32, samples=8)
    files = list((tmp_path / "cache" / "mixed").glob("sensitivity-*.json"))
    assert len(files) == 1
    again = sensitivity(path, {"x": x}, probes=32, samples=8)
    assert again.to_json() == first.to_json()  # read back, timings included (not re-measured)
    other = sensitivity(path, {"x": x + 1}, probes=32, samples=8)
    assert other.trace_w != first.trace_w
    assert len(list((tmp_path / "cache" / "mixed").glob("sensitivity-*.json"))) == 2


def test_omega_and_the_direct_measure_order_the_widths(tmp_path):
    path = _tiny_model(tmp_path)
    x = np.random.default_rng(0).standard_normal((8, 1, 4, 4)).astype(np.float32)
    s = sensitivity(path, {"x": x}, probes=64, samples=8, cache=False)
    for n in (layer["name"] for layer in s.layers):
        assert s.omega_w[n]["4"] > 100 * s.omega_w[n]["8"] >= 0, s.omega_w[n]
        assert s.direct_w[n]["4"] > s.direct_w[n]["8"] >= 0, s.direct_w[n]
        assert s.direct_a[n]["8"] > s.direct_a[n]["16"], s.direct_a[n]
        assert s.sqnr_w[n]["8"] > s.sqnr_w[n]["4"] + 12, s.sqnr_w[n]  # ~6 dB per bit
