"""The float ONNX model as a PyTorch function, for gradients (Hessian traces) and input synthesis.

Why our own converter and not Relax's gradient pass or onnx2torch: Relax's ``Gradient`` pass has
no second-order support (a Hessian-vector product needs the gradient of a gradient), and
onnx2torch is one more dependency for a dozen ops. The graphs this plugin quantizes use a small,
closed set of ONNX ops; each maps to one ``torch.nn.functional`` call with the same semantics, so
the converted model is exact (tests compare it with onnxruntime).

Weights of ``Conv`` / ``Gemm`` / ``MatMul`` nodes become leaf tensors (``requires_grad``) keyed by
the ONNX node name -- the key of the compiler's ``layer_bits`` mapping. Every ``Conv`` / ``Gemm`` /
``MatMul`` node whose weight is an initializer is a *layer*; ``taps`` let callers perturb a layer's
input activation (HAWQ activation traces, ZeroQ's direct measure) or read it.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from ..errors import QPluginError, UnsupportedOpError

LAYER_OPS = ("Conv", "Gemm", "MatMul")
# ops through which an activation keeps its quantization domain: a width chosen for one side
# holds for the other (ilp.activation_ties)
PASSTHROUGH_OPS = ("Relu", "Clip", "MaxPool", "Reshape", "Flatten", "Identity", "Transpose", "Squeeze", "Unsqueeze")
JOIN_OPS = ("Add", "Concat", "Sub", "Mul")


@contextmanager
def one_torch_thread():
    """Torch on one thread for the block: the graphs' per-op work is small, and one thread is
    several times faster than two on a shared 2-core machine (Hessian traces, input synthesis)."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@dataclass(frozen=True)
class Layer:
    """A quantizable node: ONNX name, op, weight shape, MACs for one model call, input/output tensor."""

    name: str
    op: str
    weight_shape: tuple[int, ...]
    input: str
    output: str
    macs: int = 0
    bias: int = 0          # bias elements (int32 in the integer model)

    @property
    def params(self) -> int:
        return int(np.prod(self.weight_shape))


@dataclass
class TorchGraph:
    """An ONNX graph evaluated with torch ops; ``weights`` (per layer) are the differentiable leaves."""

    model: onnx.ModelProto
    consts: dict = field(default_factory=dict)     # initializer / Constant name -> torch tensor
    weights: dict = field(default_factory=dict)    # layer name -> torch weight tensor (leaf)
    layers: list[Layer] = field(default_factory=list)
    input_names: list[str] = field(default_factory=list)
    output_names: list[str] = field(default_factory=list)
    batchnorms: list[str] = field(default_factory=list)

    def run(self, inputs: dict, weights: dict | None = None, perturb: dict | None = None,
            taps: dict | None = None, bn_stats: list | None = None) -> list:
        """Evaluate the graph. ``weights``: replacement weights per layer name; ``perturb``: a
        function per layer name applied to that layer's input activation (``x -> x'``); ``taps``: a
        dict filled with each layer's input activation; ``bn_stats``: a list filled with
        ``(batch_mean, batch_std, running_mean, running_std)`` per BatchNormalization input."""
        import torch

        env = dict(self.consts)
        env.update({n: inputs[n] if isinstance(inputs[n], torch.Tensor) else torch.as_tensor(np.asarray(inputs[n]))
                    for n in self.input_names})
        weights = weights or self.weights
        by_name = {layer.name: layer for layer in self.layers}
        for node in self.model.graph.node:
            args = [env[i] if i else None for i in node.input]
            if node.name in by_name:
                x = args[0]
                if perturb and node.name in perturb:
                    x = perturb[node.name](x)
                if taps is not None:
                    taps[node.name] = x
                args = [x, weights[node.name], *args[2:]]
            elif node.op_type == "BatchNormalization" and bn_stats is not None:
                x = args[0]
                red = [0] + list(range(2, x.dim()))
                bn_stats.append((x.mean(red), (x.var(red, unbiased=False) + _attr(node, "epsilon", 1e-5)).sqrt(),
                                 args[3], (args[4] + _attr(node, "epsilon", 1e-5)).sqrt()))
            outs = _OPS[node.op_type](node, *args)
            if not isinstance(outs, tuple):
                outs = (outs,)
            env.update(zip(node.output, outs))
        return [env[n] for n in self.output_names]


def load_torch_graph(model: str | Path | onnx.ModelProto) -> TorchGraph:
    """Convert ``model`` (after shape inference); an op outside the supported set is refused once,
    with the full list."""
    import torch

    path = model if not isinstance(model, onnx.ModelProto) else "<model>"
    proto = onnx.load(str(model)) if not isinstance(model, onnx.ModelProto) else model
    proto = onnx.shape_inference.infer_shapes(proto)
    bad = sorted({n.op_type for n in proto.graph.node if n.op_type not in _OPS})
    if bad:
        raise UnsupportedOpError(f"{path}: sensitivity / distillation run the float model in PyTorch, which "
                                 f"supports {', '.join(sorted(_OPS))}; this model also has {', '.join(bad)}: use "
                                 "--precision int8 or int4 (no per-layer search) for it")
    g = TorchGraph(proto)
    inits = {t.name for t in proto.graph.initializer}
    for t in proto.graph.initializer:
        g.consts[t.name] = torch.from_numpy(numpy_helper.to_array(t).copy())
    for node in proto.graph.node:
        if node.op_type == "Constant":
            g.consts[node.output[0]] = torch.from_numpy(numpy_helper.to_array(node.attribute[0].t).copy())
    g.input_names = [i.name for i in proto.graph.input if i.name not in inits]
    g.output_names = [o.name for o in proto.graph.output]
    shapes = _value_shapes(proto)
    for i, node in enumerate(proto.graph.node):
        if not node.name:
            node.name = f"{node.op_type}_{i}"
        if node.op_type == "BatchNormalization":
            g.batchnorms.append(node.name)
        if node.op_type in LAYER_OPS and len(node.input) > 1 and node.input[1] in inits:
            w = g.consts[node.input[1]].to(torch.float32).clone().requires_grad_(True)
            g.weights[node.name] = w
            bias = g.consts[node.input[2]].numel() if len(node.input) > 2 and node.input[2] in g.consts else 0
            g.layers.append(Layer(node.name, node.op_type, tuple(w.shape), node.input[0], node.output[0],
                                  _macs(node, tuple(w.shape), shapes.get(node.output[0])), bias))
    if not g.layers:
        raise QPluginError(f"{path}: no Conv / Gemm / MatMul node with a constant weight: nothing to choose a "
                           "width for; use --precision int8")
    return g


def _value_shapes(proto: onnx.ModelProto) -> dict:
    out = {}
    for vi in list(proto.graph.value_info) + list(proto.graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        if dims and all(d > 0 for d in dims):
            out[vi.name] = tuple(dims)
    return out


def _macs(node, w_shape: tuple, out_shape: tuple | None) -> int:
    """Multiply-accumulates of one call: output elements x reduction length."""
    if out_shape is None:
        return 0
    reduce = int(np.prod(w_shape[1:])) if node.op_type == "Conv" else (
        w_shape[1] if node.op_type == "Gemm" and _attr(node, "transB", 0) else w_shape[0])
    return int(np.prod(out_shape)) * reduce


def _attr(node, name, default=None):
    for a in node.attribute:
        if a.name == name:
            return onnx.helper.get_attribute_value(a)
    return default


def _conv(node, x, w, b=None):
    import torch.nn.functional as F

    k = len(w.shape) - 2
    pads = _attr(node, "pads", [0] * 2 * k)
    if _attr(node, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET"):
        raise QPluginError(f"ONNX Conv {node.name!r}: auto_pad is not supported here; export with explicit pads")
    if pads[:k] != pads[k:]:
        x = F.pad(x, [p for i in reversed(range(k)) for p in (pads[i], pads[i + k])])
        pads = [0] * 2 * k
    conv = F.conv2d if k == 2 else F.conv1d
    return conv(x, w, b, stride=_attr(node, "strides", [1] * k), padding=pads[:k],
                dilation=_attr(node, "dilations", [1] * k), groups=_attr(node, "group", 1))


def _gemm(node, a, b, c=None):
    if _attr(node, "transA", 0):
        a = a.t()
    if _attr(node, "transB", 0):
        b = b.t()
    y = _attr(node, "alpha", 1.0) * (a @ b)
    return y if c is None else y + _attr(node, "beta", 1.0) * c


def _clip(node, x, lo=None, hi=None):
    import torch

    lo = _attr(node, "min") if lo is None else lo
    hi = _attr(node, "max") if hi is None else hi
    return torch.clamp(x, min=None if lo is None else float(lo), max=None if hi is None else float(hi))


def _pool(node, x, kind):
    import torch.nn.functional as F

    k = _attr(node, "kernel_shape")
    pads = _attr(node, "pads", [0] * 2 * len(k))
    strides = _attr(node, "strides", [1] * len(k))
    if pads[: len(k)] != pads[len(k):]:
        x = F.pad(x, [p for i in reversed(range(len(k))) for p in (pads[i], pads[i + len(k)])],
                  value=float("-inf") if kind == "max" else 0.0)
        pads = [0] * 2 * len(k)
    if kind == "max":
        return F.max_pool2d(x, k, strides, pads[: len(k)], ceil_mode=bool(_attr(node, "ceil_mode", 0)))
    return F.avg_pool2d(x, k, strides, pads[: len(k)], ceil_mode=bool(_attr(node, "ceil_mode", 0)),
                        count_include_pad=bool(_attr(node, "count_include_pad", 0)))


def _reduce_mean(node, x, axes=None):
    axes = _attr(node, "axes") if axes is None else [int(a) for a in axes.tolist()]
    return x.mean(dim=tuple(axes), keepdim=bool(_attr(node, "keepdims", 1)))


def _reshape(node, x, shape):
    shape = [int(s) for s in shape.tolist()]
    shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    if shape and shape[0] == 1 and x.shape[0] > 1:
        shape[0] = x.shape[0]  # exported at batch 1 (static shapes), run here on a batch of samples
    return x.reshape(shape)


def _batchnorm(node, x, scale, bias, mean, var):
    import torch.nn.functional as F

    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=_attr(node, "epsilon", 1e-5))


def _squeeze(node, x, axes=None):
    axes = _attr(node, "axes") if axes is None else axes.tolist()
    for a in sorted((int(a) % x.dim() for a in axes), reverse=True):
        x = x.squeeze(a)
    return x


def _unsqueeze(node, x, axes=None):
    axes = _attr(node, "axes") if axes is None else axes.tolist()
    rank = x.dim() + len(axes)
    for a in sorted(int(a) % rank for a in axes):
        x = x.unsqueeze(a)
    return x


def _softmax(node, x):
    return x.softmax(dim=_attr(node, "axis", -1))


def _layer_norm(node, x, scale, bias=None):
    import torch.nn.functional as F

    axis = _attr(node, "axis", -1) % x.dim()
    return F.layer_norm(x, tuple(x.shape[axis:]), scale, bias, eps=_attr(node, "epsilon", 1e-5))


def _flatten(node, x):
    axis = _attr(node, "axis", 1)
    return x.reshape(int(np.prod(x.shape[:axis])), -1)


def _ops():
    import torch

    return {
        "Conv": _conv, "Gemm": _gemm, "MatMul": lambda n, a, b: a @ b,
        "Relu": lambda n, x: torch.relu(x), "Clip": _clip, "Sigmoid": lambda n, x: torch.sigmoid(x),
        "Erf": lambda n, x: torch.erf(x), "LayerNormalization": _layer_norm,
        "Add": lambda n, a, b: a + b, "Sub": lambda n, a, b: a - b, "Mul": lambda n, a, b: a * b,
        "Div": lambda n, a, b: a / b,
        "MaxPool": lambda n, x: _pool(n, x, "max"), "AveragePool": lambda n, x: _pool(n, x, "avg"),
        "GlobalAveragePool": lambda n, x: x.mean(dim=tuple(range(2, x.dim())), keepdim=True),
        "ReduceMean": _reduce_mean, "Reshape": _reshape, "Flatten": _flatten,
        "Concat": lambda n, *xs: torch.cat(xs, dim=_attr(n, "axis")),
        "Identity": lambda n, x: x, "Squeeze": _squeeze, "Unsqueeze": _unsqueeze, "Transpose": lambda n, x: x.permute(*_attr(n, "perm")),
        "BatchNormalization": _batchnorm, "Softmax": _softmax,
        "Constant": lambda n: None,
    }


class _LazyOps(dict):
    """The op table, built on first use so that importing this module does not import torch."""

    def _fill(self):
        if not dict.__len__(self):
            self.update(_ops())

    def __contains__(self, k):
        self._fill()
        return dict.__contains__(self, k)

    def __getitem__(self, k):
        self._fill()
        return dict.__getitem__(self, k)

    def __iter__(self):
        self._fill()
        return dict.__iter__(self)


_OPS = _LazyOps()
