"""Whole small ONNX graphs through the coverage rules (Sigmoid / SiLU / HardSwish / HardSigmoid /
LeakyReLU / PRelu / Tanh, squeeze-excite, Slice, nearest Resize, dynamic-axes shape scaffolding):
each compiles integer-only, its build equals the NumPy reference bit for bit, and it tracks
ONNX Runtime's fp32 output (cosine, threshold in the message)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh
from onnx_builders import OnnxGraph, run_onnxruntime

import tvm_qplugin as tq
from tvm_qplugin.errors import UnsupportedOpError
from tvm_qplugin.ops import op_of
from tvm_qplugin.passes.graph import Graph


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.reshape(-1).astype(np.float64), b.reshape(-1).astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-12))


def _compile_and_check(path: Path, shape, min_cosine: float, rng, **kw):
    calib = rng.standard_normal((16, *shape[1:])).astype(np.float32)
    evals = rng.standard_normal((4, *shape[1:])).astype(np.float32)
    art = tq.compile(path, calib={"x": calib}, eval={"x": evals}, timing_runs=1, **kw)
    r = art.report
    assert r["integer_only"] is True and r["float_ops"] == 0, r.get("allowed_float_ops")
    assert r["bit_exact"] is True and r["bit_exact_inputs"] == 4
    got = np.concatenate([art.run({"x": evals[i:i + 1]})[0] for i in range(4)])
    want = np.concatenate([run_onnxruntime(path, evals[i:i + 1]) for i in range(4)])
    cos = _cosine(got, want)
    assert cos >= min_cosine, f"cosine {cos:.4f} vs onnxruntime fp32 (want >= {min_cosine})"
    return art


def _kernel_ops(art) -> set[str]:
    mod = art.integer_mod
    return {op_of(mod[b.args[0]])[0] for b in Graph(mod[art.integer_function]).bindings if b.op_name == "relax.call_tir"}


def test_activation_zoo_graph(tmp_path, rng):
    """SiLU, HardSwish, HardSigmoid, LeakyReLU, Tanh, PRelu after convs: lut / mul_requant /
    prelu_requant kernels, no float op left."""
    g = OnnxGraph((1, 3, 12, 12), rng)
    y = g.conv("x", 8)
    y = g.node("Mul", [y, g.node("Sigmoid", [y], g.shapes[y])], g.shapes[y])           # SiLU
    y = g.conv(y, 8)
    y = g.node("HardSwish", [y], g.shapes[y])
    y = g.conv(y, 8)
    y = g.node("LeakyRelu", [y], g.shapes[y], alpha=0.1)
    slope = g.init((rng.uniform(0.05, 0.3, (8, 1, 1))).astype(np.float32), "slope")
    y = g.node("PRelu", [g.conv(y, 8), slope], g.shapes[y])
    y = g.node("Tanh", [g.conv(y, 8)], g.shapes[y])
    y = g.node("HardSigmoid", [g.conv(y, 4)], (1, 4, 12, 12), alpha=0.2, beta=0.5)
    path = g.save(y, tmp_path / "acts.onnx")
    art = _compile_and_check(path, g.input_shape, 0.99, rng)
    assert {"lut", "mul_requant", "prelu_requant"} <= _kernel_ops(art)


def test_squeeze_excite_gate(tmp_path, rng):
    """GlobalAveragePool -> conv -> ReLU -> conv -> Sigmoid -> Mul(x, gate): a broadcast gate."""
    g = OnnxGraph((1, 4, 10, 10), rng)
    x = g.relu(g.conv("x", 16))
    s = g.node("Sigmoid", [g.conv(g.relu(g.conv(g.gap(x), 4, k=1)), 16, k=1)], (1, 16, 1, 1))
    y = g.conv(g.node("Mul", [x, s], g.shapes[x]), 8)
    path = g.save(y, tmp_path / "se.onnx")
    art = _compile_and_check(path, g.input_shape, 0.99, rng)
    assert "mul_requant" in _kernel_ops(art)


def test_focus_slice_and_nearest_resize(tmp_path, rng):
    """YOLOX's Focus (four strided Slices + Concat) and a 2x nearest Resize (asymmetric / floor, as
    ddddocr's detector) -> strided_slice and resize_nearest kernels."""
    g = OnnxGraph((1, 3, 8, 8), rng)
    ints = lambda v: g.init(np.array(v, np.int64), "i")
    parts = [g.node("Slice", ["x", ints([r, c]), ints([2**63 - 1] * 2), ints([2, 3]), ints([2, 2])], (1, 3, 4, 4))
             for r, c in ((0, 0), (1, 0), (0, 1), (1, 1))]
    y = g.conv(g.concat(parts), 8)
    roi, scales = g.init(np.array([], np.float32), "roi"), g.init(np.array([1, 1, 2, 2], np.float32), "scales")
    y = g.node("Resize", [y, roi, scales], (1, 8, 8, 8), mode="nearest", coordinate_transformation_mode="asymmetric",
               nearest_mode="floor")
    path = g.save(g.conv(y, 4), tmp_path / "focus.onnx")
    art = _compile_and_check(path, g.input_shape, 0.99, rng)
    assert {"strided_slice", "resize_nearest"} <= _kernel_ops(art)


@pytest.mark.parametrize("mode,nearest_mode,size", [
    ("half_pixel", "round_prefer_floor", (5, 11)), ("asymmetric", "floor", (16, 7)),
    ("align_corners", "round_prefer_ceil", (9, 3)), ("pytorch_half_pixel", "ceil", (12, 12))])
def test_nearest_index_maps_match_onnxruntime(mode, nearest_mode, size):
    """The compile-time index vectors reproduce ONNX Runtime's nearest Resize (read off an arange)."""
    import onnxruntime as ort

    from tvm_qplugin.passes.rules.resample import nearest_indices

    h, w = 6, 5
    sizes = nh.from_array(np.array([1, 1, *size], np.int64), "sizes")
    node = helper.make_node("Resize", ["x", "", "", "sizes"], ["y"], mode="nearest",
                            coordinate_transformation_mode=mode, nearest_mode=nearest_mode)
    graph = helper.make_graph([node], "r", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, h, w])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [sizes])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    x = np.arange(h * w, dtype=np.float32).reshape(1, 1, h, w)
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    rows, cols = nearest_indices(h, size[0], mode, nearest_mode), nearest_indices(w, size[1], mode, nearest_mode)
    np.testing.assert_array_equal(x[:, :, rows][:, :, :, cols], want)


@pytest.mark.parametrize("mode,scale", [("half_pixel", 2.0), ("align_corners", 2.0), ("asymmetric", 1.5),
                                        ("pytorch_half_pixel", 0.5)])
def test_bilinear_resize(tmp_path, rng, mode, scale):
    """Resize linear (up and down, four coordinate modes) -> resize_bilinear with 2**-10 weights."""
    g = OnnxGraph((1, 3, 8, 8), rng)
    roi, scales = g.init(np.array([], np.float32), "roi"), g.init(np.array([1, 1, scale, scale], np.float32), "scales")
    size = int(8 * scale)
    y = g.node("Resize", [g.conv("x", 4), roi, scales], (1, 4, size, size), mode="linear",
               coordinate_transformation_mode=mode)
    path = g.save(g.conv(y, 4), tmp_path / "bilinear.onnx")
    art = _compile_and_check(path, g.input_shape, 0.995, rng)
    assert "resize_bilinear" in _kernel_ops(art)


def test_cubic_resize_is_refused_with_its_mode(tmp_path, rng):
    g = OnnxGraph((1, 3, 6, 6), rng)
    roi, scales = g.init(np.array([], np.float32), "roi"), g.init(np.array([1, 1, 2, 2], np.float32), "scales")
    y = g.node("Resize", [g.conv("x", 4), roi, scales], (1, 4, 12, 12), mode="cubic")
    path = g.save(y, tmp_path / "cubic.onnx")
    with pytest.raises(UnsupportedOpError, match="Resize mode 'cubic'.*from ONNX node 'resize_"):
        tq.compile(path, calib={"x": rng.standard_normal((4, 3, 6, 6)).astype(np.float32)}, timing_runs=1)


def dynamic_axes_model(path: Path, rng) -> Path:
    """A MatMul -> Reshape -> Add graph exported with dynamic [batch, seq] axes: its reshape target
    and an added ones-tensor are built at run time from Shape / Gather / Unsqueeze / Slice / Concat /
    ConstantOfShape / Cast / Expand, the way torch.onnx writes ``dynamic_axes`` graphs."""
    i64 = lambda v, n: nh.from_array(np.array(v, np.int64), n)
    inits = [nh.from_array((rng.standard_normal((16, 8)) * 0.25).astype(np.float32), "W"), i64([0], "zero_1d"),
             i64([2, 4], "tail"), i64(0, "zero"), i64([2], "two_1d")]
    ones = helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"], name="matmul"),
        helper.make_node("Shape", ["x"], ["shape_x"], name="shape_x"),
        helper.make_node("Slice", ["shape_x", "zero_1d", "two_1d"], ["batch_seq"], name="slice_shape"),
        helper.make_node("Gather", ["shape_x", "zero"], ["batch"], name="gather_batch", axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero_1d"], ["batch_1d"], name="unsqueeze_batch"),
        helper.make_node("Concat", ["batch_seq", "tail"], ["target"], name="concat_target", axis=0),
        helper.make_node("Reshape", ["h", "target"], ["r"], name="reshape"),
        helper.make_node("ConstantOfShape", ["target"], ["ones"], name="ones_like", value=ones),
        helper.make_node("Cast", ["batch_1d"], ["batch_f"], name="cast_batch", to=TensorProto.FLOAT),
        helper.make_node("Expand", ["batch_f", "target"], ["batch_map"], name="expand_batch"),
        helper.make_node("Mul", ["ones", "batch_map"], ["offset"], name="offset"),
        helper.make_node("Add", ["r", "offset"], ["y"], name="add_offset"),
    ]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 2, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def test_dynamic_axes_scaffolding_folds_with_input_shape(tmp_path, rng):
    path = dynamic_axes_model(tmp_path / "dyn.onnx", rng)
    art = _compile_and_check(path, (1, 5, 16), 0.999, rng, input_shapes=["x=1,5,16"])
    core_ops = {b.op_name for b in Graph(art.integer_mod["core"]).bindings if b.op_name.startswith("relax.")}
    assert core_ops <= {"relax.call_tir", "relax.reshape"}, core_ops   # no shape op reached the integer graph


def test_static_shape_nodes_are_the_scaffolding(tmp_path, rng):
    from tvm_qplugin.passes.static_shapes import folded_node_labels

    model = onnx.load(str(dynamic_axes_model(tmp_path / "dyn.onnx", rng)))
    assert folded_node_labels(model) == {"shape_x", "slice_shape", "gather_batch", "unsqueeze_batch",
                                         "concat_target", "ones_like", "cast_batch", "expand_batch", "offset"}


def test_reduce_sum_and_softmax_over_channels(tmp_path, rng):
    """ReduceSum over H (keepdims) and Softmax over the channel axis (axis=1 of NCHW): sum_requant and
    softmax_int between two permute_dims."""
    g = OnnxGraph((1, 3, 6, 8), rng)
    y = g.conv("x", 8)
    s = g.node("ReduceSum", [y, g.init(np.array([2], np.int64), "axes")], (1, 8, 1, 8), keepdims=1)
    p = g.node("Softmax", [g.conv(y, 8)], (1, 8, 6, 8), axis=1)
    out = g.node("Mul", [p, s], (1, 8, 6, 8))
    path = g.save(out, tmp_path / "sum_softmax.onnx")
    art = _compile_and_check(path, g.input_shape, 0.99, rng)
    assert {"sum_requant", "softmax_int", "mul_requant"} <= _kernel_ops(art)


def test_split_becomes_slices(tmp_path, rng):
    """ONNX Split (explicit sizes and equal sections) -> one strided_slice per piece; no tuple reaches
    the integerizer (passes/split.py)."""
    g = OnnxGraph((1, 3, 6, 6), rng)
    y = g.conv("x", 8)
    a, b = "split_a", "split_b"
    g.nodes.append(helper.make_node("Split", [y, g.init(np.array([3, 5], np.int64), "sizes")], [a, b], axis=1))
    g.shapes[a], g.shapes[b] = (1, 3, 6, 6), (1, 5, 6, 6)
    c, d = "half_a", "half_b"
    g.nodes.append(helper.make_node("Split", [b], [c, d], axis=2))
    g.shapes[c] = g.shapes[d] = (1, 5, 3, 6)
    ints = lambda v: g.init(np.array(v, np.int64), "i")
    top = g.node("Slice", [a, ints([0]), ints([3]), ints([2])], (1, 3, 3, 6))
    out = g.add(g.conv(g.node("Mul", [c, d], (1, 5, 3, 6)), 3), top)
    path = g.save(out, tmp_path / "split.onnx")
    art = _compile_and_check(path, g.input_shape, 0.99, rng)
    assert "strided_slice" in _kernel_ops(art)


def test_multi_output_graph(tmp_path, rng):
    """A detector-style graph with two outputs (box map, class map): the importer's output tuple
    binding is no op to integerize (passes/outputs.py)."""
    g = OnnxGraph((1, 3, 8, 8), rng)
    feat = g.relu(g.conv("x", 8))
    boxes, classes = g.conv(feat, 4, k=1), g.node("Sigmoid", [g.conv(feat, 3, k=1)], (1, 3, 8, 8))
    model = g.model(boxes)
    model.graph.output.append(helper.make_tensor_value_info(classes, TensorProto.FLOAT, [1, 3, 8, 8]))
    path = tmp_path / "two_heads.onnx"
    onnx.save(model, str(path))
    calib = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    art = tq.compile(path, calib={"x": calib}, eval={"x": calib[:4]}, timing_runs=1)
    assert art.report["integer_only"] is True and art.report["bit_exact"] is True
    got = art.run({"x": calib[:1]})
    want = run_onnxruntime_all(path, calib[:1])
    assert len(got) == len(want) == 2
    for gi, wi in zip(got, want):
        assert _cosine(gi, wi) >= 0.99, f"cosine {_cosine(gi, wi):.4f}"


def run_onnxruntime_all(path, x):
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})


def test_coverage_graph_on_cortex_m(tmp_path, rng):
    """SiLU, squeeze-excite gate, Focus slices, nearest Resize, PRelu, Tanh through the C package on
    a Cortex-M4 board (qemu): bit-exact against the NumPy reference."""
    g = OnnxGraph((1, 3, 8, 8), rng)
    ints = lambda v: g.init(np.array(v, np.int64), "i")
    parts = [g.node("Slice", ["x", ints([r, c]), ints([2**63 - 1] * 2), ints([2, 3]), ints([2, 2])], (1, 3, 4, 4))
             for r, c in ((0, 0), (1, 0), (0, 1), (1, 1))]
    y = g.conv(g.concat(parts), 8)
    y = g.node("Mul", [y, g.node("Sigmoid", [y], g.shapes[y])], g.shapes[y])
    gate = g.node("Sigmoid", [g.conv(g.gap(y), 8, k=1)], (1, 8, 1, 1))
    y = g.node("Mul", [y, gate], g.shapes[y])
    roi, scales = g.init(np.array([], np.float32), "roi"), g.init(np.array([1, 1, 2, 2], np.float32), "scales")
    y = g.node("Resize", [y, roi, scales], (1, 8, 8, 8), mode="nearest", coordinate_transformation_mode="asymmetric",
               nearest_mode="floor")
    y = g.node("PRelu", [g.conv(y, 4), g.init(np.full((4, 1, 1), 0.2, np.float32), "slope")], (1, 4, 8, 8))
    y = g.node("Tanh", [y], (1, 4, 8, 8))
    path = g.save(y, tmp_path / "mcu.onnx")
    calib = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    art = tq.compile(path, target="qemu-mps2-an386", calib={"x": calib}, eval={"x": calib[:4]}, timing_runs=1)
    r = art.report
    assert r["integer_only"] is True and r["bit_exact"] is True, r.get("bit_exact")
    assert r["mcu"]["bit_exact"] is True and r["mcu"]["bit_exact_inputs"] >= 4, r["mcu"]   # ran under qemu
    assert {"lut", "mul_requant", "strided_slice", "resize_nearest", "prelu_requant"} <= _kernel_ops(art)


@pytest.mark.parametrize("value", [0.0, 0.75])
def test_constant_pad(tmp_path, rng, value):
    """ONNX Pad (constant) -> R.nn.pad (passes/pad.py measures the importer's kernel) -> pad_constant."""
    g = OnnxGraph((1, 3, 6, 6), rng)
    pads = g.init(np.array([0, 0, 1, 2, 0, 0, 3, 0], np.int64), "pads")
    y = g.node("Pad", [g.relu(g.conv("x", 4)), pads, g.init(np.array(value, np.float32), "v")], (1, 4, 10, 8),
               mode="constant")
    path = g.save(g.conv(y, 4, pads=(0, 0, 0, 0)), tmp_path / "pad.onnx")
    art = _compile_and_check(path, g.input_shape, 0.99, rng)
    assert "pad_constant" in _kernel_ops(art)


@pytest.mark.parametrize("mode", ["reflect", "edge"])
def test_reflect_and_edge_pad(tmp_path, rng, mode):
    """Pad reflect / edge (TOPI mirror / replicate kernels, measured by passes/pad.py) -> pad_mirror."""
    g = OnnxGraph((1, 3, 6, 6), rng)
    pads = g.init(np.array([0, 0, 2, 1, 0, 0, 1, 3], np.int64), "pads")
    y = g.node("Pad", [g.conv("x", 4), pads], (1, 4, 9, 10), mode=mode)
    path = g.save(g.conv(y, 4), tmp_path / f"{mode}.onnx")
    art = _compile_and_check(path, g.input_shape, 0.99, rng)
    assert "pad_mirror" in _kernel_ops(art)


def test_reflect_pad_wider_than_the_axis_is_refused_by_name(tmp_path, rng):
    g = OnnxGraph((1, 3, 6, 6), rng)
    y = g.node("AveragePool", [g.conv("x", 4)], (1, 4, 2, 2), kernel_shape=[3, 3], strides=[3, 3])
    pads = g.init(np.array([0, 0, 2, 0, 0, 0, 1, 0], np.int64), "pads")      # 2 + 1 > 2 * (2 - 1)
    y = g.node("Pad", [y, pads], (1, 4, 5, 2), mode="reflect")
    path = g.save(y, tmp_path / "reflect.onnx")
    with pytest.raises(UnsupportedOpError, match=r"Pad mode 'reflect' \(kernel mirror_pad.*at most the axis size - 1"):
        tq.compile(path, calib={"x": rng.standard_normal((4, 3, 6, 6)).astype(np.float32)}, timing_runs=1)


@pytest.mark.parametrize("k,stride,pads,out_pad,groups", [(2, 2, (0, 0, 0, 0), (0, 0), 1), (3, 2, (1, 1, 1, 1), (1, 1), 1),
                                                          (4, 2, (1, 1, 1, 1), (0, 0), 2), (3, 1, (1, 0, 1, 0), (0, 0), 1)])
def test_conv_transpose(tmp_path, rng, k, stride, pads, out_pad, groups):
    """ConvTranspose (stride, padding, output_padding, groups) -> zero_insert + conv2d_requant, with a
    bias and a ReLU fused into the conv (passes/conv_transpose.py)."""
    g = OnnxGraph((1, 3, 5, 6), rng)
    y = g.conv("x", 4)
    _, c, h, w = g.shapes[y]
    wt = g.init((rng.standard_normal((c, 6 // groups, k, k)) * 0.3).astype(np.float32), "wt")
    bias = g.init((rng.standard_normal(6) * 0.1).astype(np.float32), "bt")
    oh = (h - 1) * stride + k - pads[0] - pads[2] + out_pad[0]
    ow = (w - 1) * stride + k - pads[1] - pads[3] + out_pad[1]
    y = g.relu(g.node("ConvTranspose", [y, wt, bias], (1, 6, oh, ow), strides=[stride, stride], pads=list(pads),
                      output_padding=list(out_pad), group=groups))
    path = g.save(g.conv(y, 3), tmp_path / "convt.onnx")
    art = _compile_and_check(path, g.input_shape, 0.99, rng)
    ops = _kernel_ops(art)
    assert "conv2d_requant" in ops and ("zero_insert" in ops) == (stride > 1), ops


def test_torch_dynamic_axes_export_compiles_at_a_new_shape(tmp_path, rng):
    """torch.onnx.export with ``dynamic_axes`` (batch, seq): the exporter's own Shape / Gather /
    Unsqueeze / Concat / ConstantOfShape scaffolding folds at --input-shape x=1,7,16, a shape the
    model was not traced at; the rest (Linear, reshape, softmax, a mask product) integerizes."""
    import torch

    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.out = torch.nn.Linear(16, 32), torch.nn.Linear(8, 4)

        def forward(self, x):
            b, t, _ = x.shape
            h = torch.softmax(self.inp(x).reshape(b, t, 4, 8), dim=-1)
            return self.out(h * torch.ones(b, t, 1, 1, dtype=x.dtype)).reshape(b, t * 4, 4)

    torch.manual_seed(0)
    path = tmp_path / "dyn_torch.onnx"
    torch.onnx.export(Block().eval(), (torch.randn(2, 5, 16),), str(path), input_names=["x"], output_names=["y"],
                      dynamo=False, opset_version=17,
                      dynamic_axes={"x": {0: "batch", 1: "seq"}, "y": {0: "batch", 1: "seq4"}})
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    assert {"Shape", "Gather", "ConstantOfShape", "Concat"} <= ops, ops      # the scaffolding is really there
    art = _compile_and_check(path, (1, 7, 16), 0.99, rng, input_shapes=["x=1,7,16"])
    assert art.report["bit_exact"] is True


@pytest.mark.parametrize("axis", [1, -1])
def test_log_softmax_on_any_axis(tmp_path, rng, axis):
    """LogSoftmax over the channels (permuted last and back) and over the last axis -> log_softmax_int."""
    g = OnnxGraph((1, 3, 6, 6), rng)
    y = g.node("LogSoftmax", [g.conv("x", 8)], (1, 8, 6, 6), axis=axis)
    path = g.save(y, tmp_path / "log_softmax.onnx")
    art = _compile_and_check(path, g.input_shape, 0.999, rng)
    assert "log_softmax_int" in _kernel_ops(art)
