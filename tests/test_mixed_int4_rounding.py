"""int4 weights rounded with error feedback against the layer's calibrated inputs (quant/int4.py
``round_with_error_feedback``, quant/int4_inputs.py): the im2col rows the moments are taken over
equal the convolution's own, uncorrelated inputs give round to nearest exactly, correlated ones a
smaller output error, and on the digits CNN's ``node_Conv_85`` (the layer every midway plan
lowers) the real calibration moments cut the layer's output error against round to nearest."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from tvm import relax

from qplugin_zoo.digits import digits_cnn_onnx, digits_split
from tvm_qplugin.mixed.torch_graph import load_torch_graph, one_torch_thread
from tvm_qplugin.passes.graph import Binding
from tvm_qplugin.quant import int4_inputs
from tvm_qplugin.quant.int4 import (
    INT4_QMAX,
    INT4_QMIN,
    quantize_weight_int4,
    round_with_error_feedback,
)
from tvm_qplugin.quant.int4_inputs import _patches


def output_error(w2: np.ndarray, codes: np.ndarray, scale: np.ndarray, h: np.ndarray) -> float:
    d = codes * scale[:, None] - w2
    return float(np.einsum("ok,kl,ol->", d, h, d))


def conv_binding(x_shape, w, strides, padding, dilation, groups) -> Binding:
    x = relax.Var("x", relax.TensorType(x_shape, "float32"))
    call = relax.op.nn.conv2d(x, relax.const(w.astype("float32")), strides=strides, padding=padding,
                              dilation=dilation, groups=groups)
    return Binding(relax.Var("y", relax.TensorType((1,), "float32")), call)


@pytest.mark.parametrize("strides,padding,dilation,groups", [
    ((1, 1), (1, 1, 1, 1), (1, 1), 1), ((2, 1), (0, 1, 2, 0), (1, 2), 2), ((1, 1), (1, 1, 1, 1), (1, 1), 6)])
def test_patches_times_weight_rows_is_the_convolution(strides, padding, dilation, groups):
    """``patches[g] @ W_g^T`` is conv2d's output for the rows of group g: the K order of the moments
    is the ``(O, C/groups * KH * KW)`` order of the weight rows the rounding walks."""
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 6, 7, 8)), rng.normal(size=(6, 6 // groups, 3, 3))
    p = _patches(conv_binding(x.shape, w, strides, padding, dilation, groups), x)
    top, left, bottom, right = padding
    want = torch.nn.functional.conv2d(torch.nn.functional.pad(torch.tensor(x), (left, right, top, bottom)),
                                      torch.tensor(w), stride=strides, dilation=dilation, groups=groups).numpy()
    rows = w.shape[0] // groups
    for g in range(groups):
        got = p[g] @ w[g * rows:(g + 1) * rows].reshape(rows, -1).T  # (N * OH * OW, rows)
        np.testing.assert_allclose(got, want[:, g * rows:(g + 1) * rows].transpose(0, 2, 3, 1).reshape(-1, rows),
                                   rtol=1e-12, atol=1e-12)


def test_patches_subset_is_drawn_from_the_rows(monkeypatch):
    """Above ROWS_PER_BATCH the rows kept are some of the full set's, in order, for every group."""
    monkeypatch.setattr(int4_inputs, "ROWS_PER_BATCH", 7)
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(2, 4, 5, 5)), rng.normal(size=(4, 2, 3, 3))
    b = conv_binding(x.shape, w, (1, 1), (1, 1, 1, 1), (1, 1), 2)
    full, some = _patches(b, x), _patches(b, x, np.random.default_rng(1))
    assert some.shape == (2, 7, 18)
    index = [int(np.flatnonzero((full[0] == r).all(axis=1))[0]) for r in some[0]]
    assert index == sorted(index) and len(set(index)) == 7
    np.testing.assert_equal(some[1], full[1][index])


def test_uncorrelated_inputs_round_to_nearest_and_correlated_ones_do_better():
    """A diagonal H has nothing to feed the error to: the codes are round to nearest's, bit for bit.
    A correlated H (inputs sharing a common factor, as after a ReLU) gets a smaller output error
    than round to nearest on every seed, with codes in [-7, 7] and the scale unchanged."""
    rng = np.random.default_rng(1)
    w = rng.laplace(size=(16, 4, 3, 3))
    wq, scale = quantize_weight_int4(w, 0)
    diag = np.diag(rng.uniform(0.5, 2.0, size=36))[None]
    np.testing.assert_equal(quantize_weight_int4(w, 0, diag)[0], wq)
    for seed in range(5):
        r = np.random.default_rng(seed)
        x = r.normal(size=(2000, 1)) + 0.5 * r.normal(size=(2000, 36))  # a shared factor: correlated
        h = (x.T @ x / len(x))[None]
        codes, scale2 = quantize_weight_int4(w, 0, h)
        np.testing.assert_equal(scale2, scale)
        assert codes.dtype == np.int8 and codes.min() >= INT4_QMIN and codes.max() <= INT4_QMAX
        w2 = w.reshape(16, -1)
        fb, rtn = output_error(w2, codes.reshape(16, -1), scale, h[0]), output_error(w2, wq.reshape(16, -1), scale, h[0])
        assert fb < 0.8 * rtn, (seed, fb, rtn)


def test_groups_are_rounded_against_their_own_moments():
    """Rows of group g use H[g]: swapping the groups' moments changes the codes of both groups."""
    rng = np.random.default_rng(2)
    w = rng.normal(size=(4, 9))
    scale = np.abs(w).max(axis=1) / 7
    hs = []
    for seed in (3, 4):
        x = np.random.default_rng(seed).normal(size=(500, 9)).cumsum(axis=1)  # strongly correlated
        hs.append(x.T @ x / len(x))
    a = round_with_error_feedback(w, scale, np.stack(hs))
    np.testing.assert_equal(a[:2], round_with_error_feedback(w[:2], scale[:2], hs[0][None]))
    np.testing.assert_equal(a[2:], round_with_error_feedback(w[2:], scale[2:], hs[1][None]))


def test_digits_cnn_conv_85_output_error_falls_with_the_calibrated_moments():
    """The layer behind the digits CNN's mixed-precision acceptance (docs/mixed-precision.md "Mixed
    precision"): with its real input moments (the training digits) the layer's output error is
    well under half of round to nearest's on the same min-MSE scales."""
    with one_torch_thread():
        g = load_torch_graph(digits_cnn_onnx())
        seen = []
        x_train = digits_split()[0][:256]
        with torch.no_grad():
            g.run({"input": x_train}, perturb={"node_Conv_85": lambda x: seen.append(x.double()) or x})
    x = seen[0].numpy()
    cols = torch.nn.functional.unfold(torch.tensor(x), 3, padding=1, stride=2).permute(0, 2, 1).reshape(-1, 144)
    h = (cols.T @ cols).numpy()[None] / len(cols)
    w = g.weights["node_Conv_85"].detach().double().numpy()
    rtn, scale = quantize_weight_int4(w, 0)
    fb, _ = quantize_weight_int4(w, 0, h)
    w2 = w.reshape(w.shape[0], -1)
    e_fb, e_rtn = output_error(w2, fb.reshape(len(w2), -1), scale, h[0]), output_error(w2, rtn.reshape(len(w2), -1), scale, h[0])
    assert e_fb < 0.5 * e_rtn, (e_fb, e_rtn)
