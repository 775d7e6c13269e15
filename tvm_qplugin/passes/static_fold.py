"""Our own folding of ONNX shape scaffolding, for the graphs TVM's importer cannot fold itself.

:mod:`.static_shapes` proves which nodes are compile-time constants once the input shapes are
static, and TVM's ``from_onnx`` evaluates most of them while importing. Some dynamic-axes exports
defeat it: torch's dynamo exporter writes ``Shape(x, start=0, end=1)`` pieces concatenated into
``Reshape`` targets, and the importer loses the data's shape (``Reshape expects the input tensor
to have known shape``). For those the frontend retries on a copy of the model whose static nodes
are replaced by their values (initializers), computed here node by node with ONNX's own reference
implementation (``onnx.reference``): every such node is pure and small (it makes shapes and
index vectors, not data), and ``Shape`` / ``Size`` read the shape alone, from the values folded so
far, the graph inputs' static shapes or ONNX shape inference. No TVM import here.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper, shape_inference
from onnx.reference import ReferenceEvaluator

from .static_shapes import static_nodes


def _shape_op(node: onnx.NodeProto, shape: tuple[int, ...]) -> np.ndarray:
    """``Shape`` (with its ``start`` / ``end`` attributes) or ``Size`` of a tensor of ``shape``."""
    if node.op_type == "Size":
        return np.array(int(np.prod(shape)), np.int64)
    attrs = {a.name: a.i for a in node.attribute}
    rank = len(shape)
    start, end = attrs.get("start", 0), attrs.get("end", rank)
    start, end = (max(0, min(rank, v + rank if v < 0 else v)) for v in (start, end))
    return np.array(shape[start:end], np.int64)


class _Shapes:
    """Static shapes of graph values: inputs as given, the rest from ONNX shape inference (run once, lazily)."""

    def __init__(self, model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]):
        self.model, self.known, self.inferred = model, dict(input_shapes), None

    def __call__(self, name: str) -> tuple[int, ...] | None:
        if name in self.known:
            return self.known[name]
        if self.inferred is None:
            m = onnx.ModelProto()
            m.CopyFrom(self.model)
            del m.graph.value_info[:]
            for vi in m.graph.input:
                if vi.name in self.known:
                    for d, n in zip(vi.type.tensor_type.shape.dim, self.known[vi.name]):
                        d.Clear()
                        d.dim_value = n
            m = shape_inference.infer_shapes(m, data_prop=True)
            self.inferred = {}
            for vi in list(m.graph.value_info) + list(m.graph.output):
                dims = vi.type.tensor_type.shape.dim
                if all(d.HasField("dim_value") for d in dims):
                    self.inferred[vi.name] = tuple(d.dim_value for d in dims)
        return self.inferred.get(name)


def fold_static_subgraph(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> onnx.ModelProto | None:
    """A copy of ``model`` with every static node (:func:`~.static_shapes.static_nodes`) replaced by
    an initializer holding its value; None when there is nothing to fold or a value cannot be computed
    (a ``Shape`` of a tensor whose shape inference leaves symbolic)."""
    indices = static_nodes(model)
    if not indices:
        return None
    nodes = model.graph.node
    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    shapes = _Shapes(model, input_shapes)
    for idx in [i for i, n in enumerate(nodes) if n.op_type == "Constant"] + indices:
        node = nodes[idx]
        if node.op_type in ("Shape", "Size"):
            src = node.input[0]
            shape = values[src].shape if src in values else shapes(src)
            if shape is None:
                return None
            values[node.output[0]] = _shape_op(node, tuple(shape))
            continue
        feeds = {name: values[name] for name in node.input if name}
        outs = ReferenceEvaluator(node).run(None, feeds)
        values.update(zip(node.output, outs))
    folded = set(indices)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.node[:]
    out.graph.node.extend(n for i, n in enumerate(nodes) if i not in folded)
    needed = {name for n in out.graph.node for name in n.input} | {o.name for o in model.graph.output}
    have = {t.name for t in model.graph.initializer}
    for i in indices:
        for name in nodes[i].output:
            if name in needed and name not in have:
                out.graph.initializer.append(numpy_helper.from_array(np.asarray(values[name]), name))
    del out.graph.value_info[:]   # symbolic shapes of the dynamic export would contradict the folded values
    return out
