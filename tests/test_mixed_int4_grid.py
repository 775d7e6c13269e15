"""The planner's int4 is the compiler's int4 (mixed/fake_quant.py): the same min-MSE grid, the same
error-feedback rounding on input moments taken over the same im2col rows as the compiler's
(quant/int4_inputs.py), and on the digits CNN's ``node_Conv_85`` (the layer every midway plan
lowers) the direct measure now sees the smaller output change the compiler's rounding gives."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from tvm import relax

from qplugin_zoo.digits import digits_cnn_onnx, digits_split
from tvm_qplugin.mixed.fake_quant import layer_input_moments, quantize_weight
from tvm_qplugin.mixed.torch_graph import load_torch_graph, one_torch_thread
from tvm_qplugin.passes.graph import Binding
from tvm_qplugin.quant.int4 import quantize_weight_int4
from tvm_qplugin.quant.int4_inputs import _patches


def conv_gemm_model(w, fc, pads, strides, dilations, group) -> onnx.ModelProto:
    """x (N, 4, 9, 8) -> Conv(w) -> Relu -> Flatten -> Gemm(fc, transB=1)."""
    oh = (9 + pads[0] + pads[2] - dilations[0] * 2 - 1) // strides[0] + 1
    ow = (8 + pads[1] + pads[3] - dilations[1] * 2 - 1) // strides[1] + 1
    out = 6 * oh * ow
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=pads, strides=strides,
                              dilations=dilations, group=group, kernel_shape=[3, 3]),
             helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Flatten", ["r"], ["f"]),
             helper.make_node("Gemm", ["f", "fc"], ["y"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5])],
                              [numpy_helper.from_array(w.astype(np.float32), "w"),
                               numpy_helper.from_array(fc[:, :out].astype(np.float32), "fc")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("pads,strides,dilations,group", [
    ([1, 1, 1, 1], [2, 2], [1, 1], 1), ([0, 1, 2, 0], [2, 2], [1, 2], 2)])
def test_moments_are_the_compilers(pads, strides, dilations, group):
    """Per layer, the planner's moments equal the compiler's (``_patches`` on the Relax conv, the
    dense layer's input rows) on the same samples: the same K order and the same average."""
    rng = np.random.default_rng(0)
    w, fc = rng.normal(size=(6, 4 // group, 3, 3)), rng.normal(size=(5, 200))
    g = load_torch_graph(conv_gemm_model(w, fc, pads, strides, dilations, group))
    x = rng.normal(size=(3, 1, 4, 9, 8)).astype(np.float32)
    got = layer_input_moments(g, {"x": x[:, 0]})
    xv = relax.Var("x", relax.TensorType((1, 4, 9, 8), "float32"))
    call = relax.op.nn.conv2d(xv, relax.const(w.astype("float32")), strides=strides, padding=pads,
                              dilation=dilations, groups=group)
    b = Binding(relax.Var("y", relax.TensorType((1,), "float32")), call)
    want_conv = sum(np.einsum("grk,grl->gkl", p, p) / p.shape[1] for p in (_patches(b, s) for s in x)) / len(x)
    np.testing.assert_allclose(got["conv"], want_conv, rtol=1e-9, atol=1e-12)
    flat = [torch.relu(torch.nn.functional.conv2d(
        torch.nn.functional.pad(torch.tensor(s, dtype=torch.float64), (pads[1], pads[3], pads[0], pads[2])),
        torch.tensor(w), stride=strides, dilation=dilations, groups=group)).reshape(1, -1).numpy() for s in x]
    want_fc = sum(f.T @ f for f in flat)[None] / len(x)
    np.testing.assert_allclose(got["fc"], want_fc, rtol=1e-5, atol=1e-6)


def test_int4_weights_are_the_compilers_grid():
    """At 4 bits the planner's weight is the compiler's codes x scale: the min-MSE clip (not max
    scaling: an outlier no longer stretches the step), with moments the error-feedback codes;
    MatMul's channel axis is 1. At 8 bits nothing changed: max scaling."""
    rng = np.random.default_rng(1)
    w = rng.laplace(size=(8, 3, 3, 3))
    w[0, 0, 0, 0] = 20.0  # an outlier
    codes, scale = quantize_weight_int4(w, 0)
    got = quantize_weight(torch.tensor(w), 4, "Conv").numpy()
    np.testing.assert_allclose(got, codes * scale[:, None, None, None], rtol=1e-12)
    max_scaled = np.abs(w).reshape(8, -1).max(axis=1) / 7
    assert scale[0] < max_scaled[0]
    x = rng.normal(size=(500, 1)) + 0.5 * rng.normal(size=(500, 27))
    h = (x.T @ x / len(x))[None]
    fb, _ = quantize_weight_int4(w, 0, h)
    assert (fb != codes).any()
    np.testing.assert_allclose(quantize_weight(torch.tensor(w), 4, "Conv", h).numpy(),
                               fb * scale[:, None, None, None], rtol=1e-12)
    m = rng.normal(size=(12, 5))
    mc, ms = quantize_weight_int4(m, 1)
    np.testing.assert_allclose(quantize_weight(torch.tensor(m), 4, "MatMul").numpy(), mc * ms[None], rtol=1e-12)
    w8 = quantize_weight(torch.tensor(w), 8, "Conv").numpy()
    s8 = np.abs(w).reshape(8, -1).max(axis=1)[:, None, None, None] / 127
    np.testing.assert_allclose(w8, np.round(w / s8) * s8, rtol=1e-12)


def test_direct_measure_sees_the_compilers_rounding_on_conv_85():
    """The digits CNN's ``node_Conv_85`` alone at 4 bits, on 64 training digits: the output's KL to
    fp32 with the compiler's int4 (moments of those digits) is well below max-scaled round to
    nearest's, the int4 the planner simulated before."""
    x = digits_split()[0][:64]
    with one_torch_thread(), torch.no_grad():
        g = load_torch_graph(digits_cnn_onnx())
        ref = torch.log_softmax(g.run({"input": x})[0], dim=1)
        w = g.weights["node_Conv_85"].detach()

        def kl(weight):
            out = torch.log_softmax(g.run({"input": x}, weights={**g.weights, "node_Conv_85": weight})[0], dim=1)
            return float((ref.exp() * (ref - out)).sum(dim=1).mean())

        moments = layer_input_moments(g, {"input": x}, {"node_Conv_85"})
        step = w.abs().amax(dim=(1, 2, 3), keepdim=True) / 7
        ours, before = kl(quantize_weight(w, 4, "Conv", moments["node_Conv_85"])), kl(torch.clamp(torch.round(w / step), -7, 7) * step)
    assert ours < 0.3 * before, (ours, before)


def test_direct_measure_rounds_int4_on_other_samples_than_it_measures():
    """Error feedback fits the int4 codes to the moments' samples, so the direct measure rounds on
    calibration samples other than the ones its KL is measured on (as the compiled model meets
    inputs its moments never saw). On the digits CNN's classifier (48 inputs, one row per sample:
    32 samples' moments have rank < 48) the in-sample measure hides most of the int4 error."""
    from tvm_qplugin.mixed.sensitivity import _distance, sensitivity

    x = digits_split()[0][:128]
    path = digits_cnn_onnx()
    with one_torch_thread():
        s = sensitivity(path, {"input": x}, probes=16, samples=32, cache=False)
        assert s.moment_samples == [32, 128]
        g = load_torch_graph(path)
        name = g.layers[-1].name
        w = g.weights[name].detach()
        with torch.no_grad():
            ref = g.run({"input": x[:32]})[0]

            def kl(moment_samples):
                m = layer_input_moments(g, {"input": moment_samples}, {name})[name]
                return _distance(ref, g.run({"input": x[:32]}, weights={**g.weights, name: quantize_weight(
                    w, 4, g.layers[-1].op, m)})[0])

            out_of_sample, in_sample = kl(x[32:128]), kl(x[:32])
        assert s.direct_w[name]["4"] == pytest.approx(out_of_sample, rel=1e-3)
        assert in_sample < 0.5 * out_of_sample, (in_sample, out_of_sample)  # the bias this removes
        alone = sensitivity(path, {"input": x[:32]}, probes=16, samples=32, cache=False)  # no other samples
        assert alone.moment_samples == [0, 32] and alone.direct_w[name]["4"] == pytest.approx(in_sample, rel=1e-3)
