"""Tiny ONNX graphs built with onnx.helper for the pass and property tests.

:class:`OnnxGraph` accumulates nodes and initializers and tracks the static shape of every value it
creates, so a test (or a hypothesis strategy) can chain layers without working shapes out by hand.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def pool_out(size: int, k: int, s: int, p0: int, p1: int, ceil_mode: bool = False, d: int = 1) -> int:
    """Output size; in ceil mode a last window starting in the bottom/right padding is dropped
    (onnxruntime, PyTorch and Relax agree on this)."""
    span = size + p0 + p1 - d * (k - 1) - 1
    if not ceil_mode:
        return span // s + 1
    n = -(-span // s) + 1
    return n - 1 if (n - 1) * s >= size + p0 else n


class OnnxGraph:
    """A builder of a single-input, single-output float32 ONNX graph."""

    def __init__(self, input_shape: tuple[int, ...], rng: np.random.Generator | None = None, input_name: str = "x"):
        self.rng = rng if rng is not None else np.random.default_rng(0)
        self.input_name = input_name
        self.input_shape = tuple(input_shape)
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, ...]] = {input_name: self.input_shape}
        self._n = 0

    # --- plumbing ---
    def _name(self, prefix: str) -> str:
        self._n += 1
        return f"{prefix}{self._n}"

    def init(self, value: np.ndarray, prefix: str = "w") -> str:
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    def node(self, op: str, inputs: list[str], out_shape: tuple[int, ...], **attrs) -> str:
        out = self._name(op.lower() + "_")
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.shapes[out] = tuple(int(d) for d in out_shape)
        return out

    # --- layers ---
    def conv(self, x: str, out_ch: int, k: int = 3, stride: int = 1, pads=None, groups: int = 1, bias: bool = True,
             w_scale: float | None = None) -> str:
        n, c, h, w = self.shapes[x]
        pads = list(pads) if pads is not None else [k // 2] * 4  # (top, left, bottom, right)
        fan_in = (c // groups) * k * k
        w_scale = w_scale if w_scale is not None else np.sqrt(2.0 / fan_in)
        wt = (self.rng.standard_normal((out_ch, c // groups, k, k)) * w_scale).astype(np.float32)
        ins = [x, self.init(wt)]
        if bias:
            ins.append(self.init((self.rng.standard_normal(out_ch) * 0.1).astype(np.float32), "b"))
        oh = pool_out(h, k, stride, pads[0], pads[2])
        ow = pool_out(w, k, stride, pads[1], pads[3])
        return self.node("Conv", ins, (n, out_ch, oh, ow), kernel_shape=[k, k], strides=[stride, stride], pads=pads,
                         group=groups)

    def batchnorm(self, x: str, eps: float = 1e-5) -> str:
        c = self.shapes[x][1]
        gamma = self.rng.uniform(0.5, 2.0, c).astype(np.float32)
        beta = self.rng.uniform(-0.5, 0.5, c).astype(np.float32)
        mean = self.rng.uniform(-0.5, 0.5, c).astype(np.float32)
        var = self.rng.uniform(0.5, 2.0, c).astype(np.float32)
        ins = [x] + [self.init(v, p) for v, p in ((gamma, "gamma"), (beta, "beta"), (mean, "mean"), (var, "var"))]
        return self.node("BatchNormalization", ins, self.shapes[x], epsilon=eps)

    def relu(self, x: str) -> str:
        return self.node("Relu", [x], self.shapes[x])

    def clip(self, x: str, lo: float | None = 0.0, hi: float | None = 6.0) -> str:
        ins = [x, self.init(np.array(lo, np.float32), "lo") if lo is not None else ""]
        if hi is not None:
            ins.append(self.init(np.array(hi, np.float32), "hi"))
        while ins and ins[-1] == "":
            ins.pop()
        return self.node("Clip", ins, self.shapes[x])

    def add(self, a: str, b: str) -> str:
        return self.node("Add", [a, b], np.broadcast_shapes(self.shapes[a], self.shapes[b]))

    def mul_const(self, x: str, c: np.ndarray) -> str:
        return self.node("Mul", [x, self.init(np.asarray(c, np.float32), "c")],
                         np.broadcast_shapes(self.shapes[x], np.shape(c)))

    def add_const(self, x: str, c: np.ndarray) -> str:
        return self.node("Add", [x, self.init(np.asarray(c, np.float32), "c")],
                         np.broadcast_shapes(self.shapes[x], np.shape(c)))

    def sub_const(self, x: str, c: np.ndarray) -> str:
        return self.node("Sub", [x, self.init(np.asarray(c, np.float32), "c")],
                         np.broadcast_shapes(self.shapes[x], np.shape(c)))

    def div_const(self, x: str, c: np.ndarray) -> str:
        return self.node("Div", [x, self.init(np.asarray(c, np.float32), "c")],
                         np.broadcast_shapes(self.shapes[x], np.shape(c)))

    def maxpool(self, x: str, k: int = 2, stride: int = 2, pads=(0, 0, 0, 0), ceil_mode: bool = False) -> str:
        n, c, h, w = self.shapes[x]
        oh = pool_out(h, k, stride, pads[0], pads[2], ceil_mode)
        ow = pool_out(w, k, stride, pads[1], pads[3], ceil_mode)
        return self.node("MaxPool", [x], (n, c, oh, ow), kernel_shape=[k, k], strides=[stride, stride],
                         pads=list(pads), ceil_mode=int(ceil_mode))

    def avgpool(self, x: str, k: int = 3, stride: int = 2, pads=(1, 1, 1, 1), count_include_pad: int = 0) -> str:
        n, c, h, w = self.shapes[x]
        oh = pool_out(h, k, stride, pads[0], pads[2])
        ow = pool_out(w, k, stride, pads[1], pads[3])
        return self.node("AveragePool", [x], (n, c, oh, ow), kernel_shape=[k, k], strides=[stride, stride],
                         pads=list(pads), count_include_pad=count_include_pad)

    def gap(self, x: str) -> str:
        n, c = self.shapes[x][:2]
        return self.node("GlobalAveragePool", [x], (n, c, 1, 1))

    def flatten(self, x: str, axis: int = 1) -> str:
        s = self.shapes[x]
        return self.node("Flatten", [x], (int(np.prod(s[:axis])), int(np.prod(s[axis:]))), axis=axis)

    def reshape(self, x: str, shape: tuple[int, ...]) -> str:
        return self.node("Reshape", [x, self.init(np.array(shape, np.int64), "shape")], shape)

    def transpose(self, x: str, perm: tuple[int, ...]) -> str:
        s = self.shapes[x]
        return self.node("Transpose", [x], tuple(s[p] for p in perm), perm=list(perm))

    def squeeze(self, x: str, axes: tuple[int, ...]) -> str:
        s = self.shapes[x]
        return self.node("Squeeze", [x, self.init(np.array(axes, np.int64), "axes")],
                         tuple(d for i, d in enumerate(s) if i not in axes))

    def unsqueeze(self, x: str, axes: tuple[int, ...]) -> str:
        s = list(self.shapes[x])
        for a in sorted(axes):
            s.insert(a, 1)
        return self.node("Unsqueeze", [x, self.init(np.array(axes, np.int64), "axes")], tuple(s))

    def concat(self, xs: list[str], axis: int = 1) -> str:
        shape = list(self.shapes[xs[0]])
        shape[axis] = sum(self.shapes[x][axis] for x in xs)
        return self.node("Concat", xs, tuple(shape), axis=axis)

    def gemm(self, x: str, out_features: int, bias: bool = True, trans_b: bool = True) -> str:
        n, k = self.shapes[x]
        w = (self.rng.standard_normal((out_features, k)) * np.sqrt(1.0 / k)).astype(np.float32)
        ins = [x, self.init(w if trans_b else w.T.copy())]
        if bias:
            ins.append(self.init((self.rng.standard_normal(out_features) * 0.1).astype(np.float32), "b"))
        return self.node("Gemm", ins, (n, out_features), transB=int(trans_b))

    def matmul(self, x: str, out_features: int) -> str:
        k = self.shapes[x][-1]
        w = (self.rng.standard_normal((k, out_features)) * np.sqrt(1.0 / k)).astype(np.float32)
        return self.node("MatMul", [x, self.init(w)], (*self.shapes[x][:-1], out_features))

    # --- output ---
    def model(self, output: str) -> onnx.ModelProto:
        graph = helper.make_graph(
            self.nodes, "tiny",
            [helper.make_tensor_value_info(self.input_name, TensorProto.FLOAT, list(self.input_shape))],
            [helper.make_tensor_value_info(output, TensorProto.FLOAT, list(self.shapes[output]))],
            initializer=self.inits,
        )
        m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="tvm_qplugin-tests")
        m.ir_version = 8
        onnx.checker.check_model(m)
        return m

    def save(self, output: str, path: str | Path) -> Path:
        path = Path(path)
        onnx.save(self.model(output), str(path))
        return path


def run_onnxruntime(path: str | Path, x: np.ndarray, input_name: str = "x") -> np.ndarray:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # ceil-mode pools: ONNX's shape inference disagrees with the runtime
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return sess.run(None, {input_name: x})[0]
