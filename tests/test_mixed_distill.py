"""Mixed precision, part 3: data-free calibration (ZeroQ distillation) and its refusals."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.onnx_builders import OnnxGraph
from tvm_qplugin.errors import CalibrationError
from tvm_qplugin.mixed.distill import distill
from tvm_qplugin.mixed.torch_graph import load_torch_graph, one_torch_thread


def _unfolded_model(tmp_path):
    g = OnnxGraph((1, 3, 8, 8), rng=np.random.default_rng(5))
    h = g.relu(g.batchnorm(g.conv("x", 8)))
    h = g.relu(g.batchnorm(g.conv(h, 8, stride=2)))
    return g.save(g.gemm(g.flatten(g.gap(h)), 4), tmp_path / "unfolded.onnx")


def test_distilled_inputs_match_the_batchnorm_statistics(tmp_path):
    path = _unfolded_model(tmp_path)
    with one_torch_thread():
        d = distill(path, samples=16, iterations=150, lr=0.1)
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


def test_distilled_inputs_stay_inside_the_preprocessing_range(tmp_path):
    """ImageNet-style preprocessing bounds each channel differently; projected steps keep every
    synthetic value inside its channel's bounds (a real image never leaves them)."""
    from tvm_qplugin.data import Preprocess

    lo, hi = Preprocess(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)).value_range()
    assert np.allclose(lo, [-2.1179, -2.0357, -1.8044], atol=1e-4) and np.allclose(hi, [2.2489, 2.4286, 2.64], atol=1e-4)
    path = _unfolded_model(tmp_path)
    d = distill(path, samples=8, iterations=40, lr=0.1, input_box=(lo, hi, "NCHW"))
    x = d.arrays["x"]
    for c in range(3):
        assert lo[c] <= x[:, c].min() and x[:, c].max() <= hi[c], (c, x[:, c].min(), x[:, c].max())
    assert (x[:, 0] < hi[1]).all() or (x[:, 2] > lo[0]).any()  # not one global clamp
    assert d.input_range == [lo.tolist(), hi.tolist()]
    assert d.bn_loss_end < d.bn_loss_start / 4, (d.bn_loss_start, d.bn_loss_end)
    with pytest.raises(CalibrationError, match=r"--mean/--std give 2 channel\(s\) but input of .* has 3"):
        distill(path, samples=2, iterations=1, input_box=([0, 1], [1, 2], "NCHW"))


def test_class_term_makes_a_classifiers_synthetic_inputs_confident(tmp_path):
    """BN statistics alone leave a classifier's logits flat on synthetic inputs (so the logits
    calibrate too narrow); the class term gives each input a confident class."""
    path = _unfolded_model(tmp_path)
    tg = load_torch_graph(path)

    def confidence(d):
        with torch.no_grad():
            return float(torch.softmax(tg.run({"x": d.arrays["x"]})[0], 1).max(1).values.mean())

    plain = distill(path, samples=8, iterations=60, lr=0.1, class_weight=0.0)
    pushed = distill(path, samples=8, iterations=60, lr=0.1, class_weight=1.0)
    assert plain.class_weight == 0.0 and pushed.class_weight == 1.0
    assert confidence(pushed) > confidence(plain) + 0.2, (confidence(plain), confidence(pushed))


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


def _image_model(tmp_path, convolutional: bool = True):
    """64x64 inputs; with ``convolutional`` a global pool before the classifier (any size runs),
    else a Flatten into a Gemm of fixed width (only 64x64 runs)."""
    g = OnnxGraph((1, 3, 64, 64), rng=np.random.default_rng(7))
    h = g.relu(g.batchnorm(g.conv("x", 8, stride=2)))
    h = g.relu(g.batchnorm(g.conv(h, 8, stride=2)))
    head = g.gap(h) if convolutional else h
    return g.save(g.gemm(g.flatten(head), 4), tmp_path / f"image_{convolutional}.onnx")


def test_coarse_stage_runs_at_half_size_then_refines_at_the_models_size(tmp_path):
    """The coarse-to-fine schedule (what makes MobileNetV2's distillation fit in a minute): most
    steps at half the height and width, a few at full size; the result has the model's shape and
    matches the statistics; without a coarse stage (coarse=1) all steps run at full size."""
    path = _image_model(tmp_path)
    d = distill(path, samples=8, iterations=30, fine_iterations=4, lr=0.1)
    assert d.coarse_shape == [1, 3, 32, 32] and d.fine_iterations == 4 and d.iterations == 30
    x = d.arrays["x"]
    assert x.shape == (8, 3, 64, 64) and x.dtype == np.float32
    assert d.bn_loss_end < d.bn_loss_start / 4, (d.bn_loss_start, d.bn_loss_end)
    assert d.cpu_seconds > 0
    one = distill(path, samples=8, iterations=2, coarse=1)
    assert one.coarse_shape is None and one.fine_iterations == 0 and one.arrays["x"].shape == (8, 3, 64, 64)


def test_coarse_stage_is_skipped_for_a_model_that_only_runs_at_its_own_size(tmp_path):
    path = _image_model(tmp_path, convolutional=False)
    d = distill(path, samples=4, iterations=3, fine_iterations=2, lr=0.1)
    assert d.coarse_shape is None and d.fine_iterations == 0
    assert d.arrays["x"].shape == (4, 3, 64, 64)


def test_coarse_stage_is_skipped_below_the_smallest_side(tmp_path):
    d = distill(_unfolded_model(tmp_path), samples=4, iterations=3)  # 8x8: 4x4 would lose the statistics
    assert d.coarse_shape is None and d.fine_iterations == 0


def test_distilled_data_calibrates_with_its_own_observer_unless_the_user_chose_one():
    """`compile --calib distill` clips with DISTILL_OBSERVER (MSE: it discounts the tails synthesis
    exaggerates); an explicit --observer wins; real-data calibration keeps the compiler's default
    (the CLI only asks when the calibration is distilled)."""
    from tvm_qplugin.mixed.cli import distilled_observer
    from tvm_qplugin.mixed.distill import DISTILL_OBSERVER
    from tvm_qplugin.quant.observers import DEFAULT_OBSERVER, OBSERVERS

    assert DISTILL_OBSERVER in OBSERVERS and DISTILL_OBSERVER != DEFAULT_OBSERVER
    assert distilled_observer(None) == DISTILL_OBSERVER
    assert distilled_observer("percentile") == "percentile" and distilled_observer("minmax") == "minmax"
