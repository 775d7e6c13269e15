"""Mixed precision, part 3: data-free calibration (ZeroQ distillation) and its refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.onnx_builders import OnnxGraph
from tvm_qplugin.errors import CalibrationError
from tvm_qplugin.mixed.distill import distill
from tvm_qplugin.mixed.torch_graph import load_torch_graph


def _unfolded_model(tmp_path):
    g = OnnxGraph((1, 3, 8, 8), rng=np.random.default_rng(5))
    h = g.relu(g.batchnorm(g.conv("x", 8)))
    h = g.relu(g.batchnorm(g.conv(h, 8, stride=2)))
    return g.save(g.gemm(g.flatten(g.gap(h)), 4), tmp_path / "unfolded.onnx")


def test_distilled_inputs_match_the_batchnorm_statistics(tmp_path):
    path = _unfolded_model(tmp_path)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        d = distill(path, samples=16, iterations=150, lr=0.1)
    finally:
        torch.set_num_threads(threads)
    x = d.arrays["x"]
    assert x.shape == (16, 3, 8, 8) and x.dtype == np.float32
    assert d.bn_loss_end < d.bn_loss_start / 20, (d.bn_loss_start, d.bn_loss_end)
    tg = load_torch_graph(path)
    after, before = [], []
    tg.run({"x": x}, bn_stats=after)
    tg.run({"x": np.random.default_rng(0).standard_normal(x.shape).astype(np.float32)}, bn_stats=before)
    for (m1, s1, rm, rs), (m0, s0, _, _) in zip(after, before):  # every BN: the stored statistics are approached
        gap_after = float((m1 - rm).abs().mean() + (s1 - rs).abs().mean())
        gap_before = float((m0 - rm).abs().mean() + (s0 - rs).abs().mean())
        assert gap_after < 0.3 * gap_before, (gap_before, gap_after)
    assert d.seconds > 0


def test_distill_refuses_a_model_whose_batchnorms_were_folded():
    from qplugin_zoo.digits import digits_cnn_onnx

    with pytest.raises(CalibrationError, match=r"digits_cnn.onnx has no BatchNormalization node .its batch-norms "
                                               r"were folded"):
        distill(digits_cnn_onnx())


def test_distill_refuses_several_inputs(tmp_path):
    from onnx import TensorProto, helper

    g = OnnxGraph((1, 2, 4, 4))
    y = g.batchnorm("x")
    m = g.model(y)
    m.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 2, 4, 4]))
    path = tmp_path / "two.onnx"
    import onnx

    onnx.save(m, str(path))
    with pytest.raises(CalibrationError, match="has 2 inputs .x, mask."):
        distill(path)


def test_python_api_calib_distill_says_how():
    from tvm_qplugin.data import load_dataset

    with pytest.raises(CalibrationError, match=r"pass calib=tvm_qplugin.mixed.distill.distill\(MODEL\).arrays"):
        load_dataset("distill", [])
