"""Static-shape folding: which ONNX nodes are shape scaffolding that folds to constants.

A model exported with dynamic axes (``dynamic_axes`` in ``torch.onnx.export``, optimum's
sentence-transformers exports) computes its reshape targets and broadcast masks at run time:
``Shape -> Gather -> Unsqueeze -> Concat -> Reshape``, ``ConstantOfShape``, ``Expand``, ``Range``.
Once every input shape is known (``--input-shape`` or a static export) each such value is a
compile-time constant. TVM's ``from_onnx`` evaluates shapes of static tensors while importing and
our ``FoldConstant`` (passes/canonicalize.py) folds what is left, so the integer graph never sees
them: this module only has to *prove* which nodes fold, so that the supported-op check accepts
them (``ConstantOfShape`` or ``Range`` has no integer rule of its own and needs none) and
``inspect`` can say what folded.

The proof is a forward propagation over the ONNX graph: a value is *static* when it is an
initializer, a ``Constant``, the output of ``Shape`` / ``Size`` (every tensor shape is static once
the inputs are), or the output of a pure op in :data:`FOLDABLE_OPS` whose inputs are all static.
No TVM import here: the frontend's checks run before TVM loads.
"""
from __future__ import annotations

import onnx

# ops whose outputs depend only on their inputs' values (so: static in, static out)
FOLDABLE_OPS = frozenset({
    "Gather", "Unsqueeze", "Squeeze", "Concat", "ConstantOfShape", "Slice", "Expand", "Cast", "Range", "Reshape",
    "Add", "Sub", "Mul", "Div", "Equal", "Less", "Greater", "Where", "Not", "And", "Or", "Identity", "Min", "Max",
    "Neg", "Abs", "Floor", "Ceil", "Sqrt", "Tile", "Transpose", "ReduceProd",
    "GreaterOrEqual", "LessOrEqual",  # the causal / padding masks of dynamic-axes transformers exports
})
# ops whose output is static whatever their input's values are (only its shape matters)
SHAPE_OPS = frozenset({"Shape", "Size"})
# ops accepted only where they fold: they have no integer rule (they make shapes, not data)
SCAFFOLDING_ONLY_OPS = frozenset({"ConstantOfShape", "Range", "Size"})


def node_label(node: onnx.NodeProto, index: int) -> str:
    """The node's name, or ``<unnamed #i>`` as the frontend's messages call it."""
    return node.name or f"<unnamed #{index}>"


def static_nodes(model: onnx.ModelProto) -> list[int]:
    """Indices (in graph order) of the nodes whose every output is a compile-time constant when
    all graph inputs have static shapes."""
    static = {i.name for i in model.graph.initializer} | {""}  # "" is an omitted optional input
    folded = []
    for idx, node in enumerate(model.graph.node):
        if node.op_type == "Constant" or node.op_type in SHAPE_OPS or (
                node.op_type in FOLDABLE_OPS and node.domain in ("", "ai.onnx") and all(i in static for i in node.input)):
            static.update(node.output)
            if node.op_type != "Constant":  # Constant is no scaffolding: it is a constant already
                folded.append(idx)
    return folded


def folded_node_labels(model: onnx.ModelProto) -> set[str]:
    """Labels (:func:`node_label`) of the scaffolding nodes that fold."""
    nodes = model.graph.node
    return {node_label(nodes[i], i) for i in static_nodes(model)}
