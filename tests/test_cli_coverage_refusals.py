"""Forms the coverage rules still refuse, through the real CLI: one stderr line naming the attribute
and the node, exit 2 -- Resize in cubic mode, Pad whose pads are computed at run time (a graph input,
or derived from the data)."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh
from test_cli_errors import assert_user_error, run_cli

W = nh.from_array(np.full((4, 3, 3, 3), 0.1, np.float32), "W")
X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])
CONV = helper.make_node("Conv", ["x", "W"], ["c"], name="conv", pads=[1, 1, 1, 1])


def _save(path, nodes, inputs, inits, out_dims):
    g = helper.make_graph([CONV, *nodes], "g", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, out_dims)],
                          [W, *inits])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    return path


@pytest.fixture
def calib(tmp_path):
    p = tmp_path / "calib.npz"
    np.savez(p, x=np.random.default_rng(0).standard_normal((4, 3, 6, 6)).astype(np.float32),
             pads=np.zeros((4, 8), np.int64))
    return p


def test_cubic_resize_names_mode_and_node(tmp_path, calib):
    path = _save(tmp_path / "cubic.onnx", [helper.make_node("Resize", ["c", "roi", "scales"], ["y"], name="up_cubic",
                                                             mode="cubic")],
                 [X], [nh.from_array(np.array([], np.float32), "roi"), nh.from_array(np.array([1, 1, 2, 2], np.float32),
                                                                                    "scales")], [1, 4, 12, 12])
    assert_user_error(run_cli("compile", path, "--calib", calib, "-o", tmp_path / "out"), "mode 'cubic'", "'up_cubic'")
    assert not (tmp_path / "out").exists()


def test_pad_with_pads_as_graph_input_names_input_and_node(tmp_path, calib):
    path = _save(tmp_path / "padin.onnx", [helper.make_node("Pad", ["c", "pads"], ["y"], name="pad_input")],
                 [X, helper.make_tensor_value_info("pads", TensorProto.INT64, [8])], [], ["n", "c", "h", "w"])
    assert_user_error(run_cli("compile", path, "--calib", calib, "-o", tmp_path / "out"), "'pad_input' (Pad)",
                      "input 'pads'", "dynamic pad")


def test_pad_with_pads_computed_from_the_data_names_input_and_node(tmp_path, calib):
    """pads = 8 copies of int64(sum(x)): every op is a supported type, only the data dependence is wrong."""
    nodes = [helper.make_node("ReduceSum", ["x"], ["s"], name="total", keepdims=0),
             helper.make_node("Cast", ["s"], ["si"], name="to_int", to=TensorProto.INT64),
             helper.make_node("Unsqueeze", ["si", "zero"], ["s1"], name="unsq"),
             helper.make_node("Concat", ["s1"] * 8, ["pads"], name="pads_of_data", axis=0),
             helper.make_node("Pad", ["c", "pads"], ["y"], name="pad_dyn")]
    path = _save(tmp_path / "paddata.onnx", nodes, [X], [nh.from_array(np.array([0], np.int64), "zero")],
                 ["n", "c", "h", "w"])
    assert_user_error(run_cli("compile", path, "--calib", calib, "-o", tmp_path / "out"), "'pad_dyn' (Pad)",
                      "input 'pads' ('pads')", "dynamic pad")
