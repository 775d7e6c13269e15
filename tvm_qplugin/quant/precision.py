"""Per-layer precision: which weighted layers a model has, under which ONNX node names, and the
validated ``{onnx_node: (w_bits, a_bits)}`` plan a compile integerizes them with.

The plan is what ``compile(precision=..., layer_bits=...)`` and ``--layer-bits FILE.json`` give,
and what the mixed-precision ILP (tvm_qplugin/mixed/) will produce: one mapping from the ONNX node
names a user knows to the widths. TVM's ONNX importer keeps no node names, so the weighted ONNX
nodes (Conv / ConvTranspose / Gemm / MatMul with a constant weight) are matched to the float
graph's weighted bindings (conv2d / matmul with a constant operand) in graph order, each pair
checked by its weight's element count.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import QPluginError

W_BITS = (4, 8)
A_BITS = (4, 8)          # conv / dense input widths with kernels (4: requantized to 15 / 16 levels in int8)
A_BITS_ASKED = (4, 8, 16)
WEIGHTED_ONNX_OPS = ("Conv", "ConvTranspose", "Gemm", "MatMul")


@dataclass(frozen=True)
class WeightedLayer:
    """A conv / dense layer of the float graph: its Relax binding and the ONNX node behind it."""

    var_name: str        # the float graph's binding (what the integerize rules see)
    onnx_node: str       # the ONNX node name (the plan's key); the Relax name when unmatched
    op: str              # "conv2d" | "dense"
    weight_size: int


def weighted_bindings(func) -> list[tuple[str, str, int]]:
    """``(var name, op, weight elements)`` of every conv2d / matmul-with-constant binding of a
    float Relax function, in order (what QConv2D / QDense will take)."""
    from ..passes.graph import Graph, const_value

    found = []
    for b in Graph(func).bindings:
        if b.op_name not in ("relax.nn.conv2d", "relax.matmul"):
            continue
        w = const_value(b.args[1])
        if w is None or (b.op_name == "relax.matmul" and w.ndim != 2):
            continue
        found.append((b.name, "conv2d" if b.op_name == "relax.nn.conv2d" else "dense", int(w.size)))
    return found


def weighted_onnx_nodes(model) -> list[tuple[str, int]]:
    """``(node name, weight elements)`` of the ONNX nodes with a constant weight, in graph order."""
    consts = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].HasField("t"):
            consts[n.output[0]] = int(np.prod(n.attribute[0].t.dims))
    return [(n.name or f"<unnamed #{i}>", consts[n.input[1]]) for i, n in enumerate(model.graph.node)
            if n.op_type in WEIGHTED_ONNX_OPS and len(n.input) > 1 and n.input[1] in consts]


def weighted_layers(func, onnx_model) -> tuple[list[WeightedLayer], bool]:
    """The weighted layers of ``func`` with their ONNX node names, and whether the names are the
    ONNX ones (False: counts or weight sizes disagree, or no ONNX model; Relax names are used)."""
    relax_side = weighted_bindings(func)
    onnx_side = weighted_onnx_nodes(onnx_model) if onnx_model is not None else []
    matched = len(onnx_side) == len(relax_side) and all(
        size == osize for (_, _, size), (_, osize) in zip(relax_side, onnx_side))
    return [WeightedLayer(var, onnx_side[i][0] if matched else var, op, size)
            for i, (var, op, size) in enumerate(relax_side)], matched


def load_layer_bits(source) -> dict[str, tuple[int, int]]:
    """``{node: (w_bits, a_bits)}`` from a mapping or a JSON file path (``--layer-bits``), with the
    shape of every entry checked (the widths themselves are checked against the model later)."""
    where = "layer_bits"
    if isinstance(source, (str, Path)):
        where = str(source)
        try:
            source = json.loads(Path(source).read_text())
        except FileNotFoundError:
            raise QPluginError(f"--layer-bits {where}: no such file") from None
        except (OSError, ValueError) as e:
            raise QPluginError(f"--layer-bits {where}: not a JSON file ({' '.join(str(e).split())})") from None
    if not isinstance(source, dict):
        raise QPluginError(f"{where}: expected a mapping {{onnx_node_name: [w_bits, a_bits]}}, got "
                           f"{type(source).__name__}")
    plan = {}
    for node, bits in source.items():
        if (not isinstance(bits, (list, tuple)) or len(bits) != 2
                or not all(isinstance(b, (int, np.integer)) and not isinstance(b, bool) for b in bits)):
            raise QPluginError(f"{where}: node {node!r}: expected [w_bits, a_bits] (two integers), got {bits!r}")
        plan[str(node)] = (int(bits[0]), int(bits[1]))
    return plan


def uniform_plan(layers: list[WeightedLayer], w_bits: int, keep_ends_8: bool) -> dict[str, tuple[int, int]]:
    """Every layer at ``w_bits`` weights and 8-bit activations; with ``keep_ends_8`` the first and
    the last weighted layer stay 8-bit (HAWQ's convention: the stem sees raw pixels and the
    classifier's errors land directly on the logits, and both are small)."""
    plan = {layer.onnx_node: (w_bits, 8) for layer in layers}
    if keep_ends_8 and layers:
        plan[layers[0].onnx_node] = plan[layers[-1].onnx_node] = (8, 8)
    return plan


def check_plan(asked: dict[str, tuple[int, int]], layers: list[WeightedLayer], names_matched: bool) -> None:
    """Refuse, in one line naming the node, an entry the model or the kernels cannot honour."""
    known = {layer.onnx_node: layer for layer in layers}
    for node, (w, a) in asked.items():
        if node not in known:
            hint = "" if names_matched else " (this model's weighted layers could not be matched to ONNX nodes; " \
                                            "use the Relax names)"
            shown = ", ".join(repr(n) for n in list(known)[:6]) + (" ..." if len(known) > 6 else "")
            raise QPluginError(f"layer_bits: node {node!r} is not a conv / dense / matmul-with-constant layer of this "
                               f"model{hint}; weighted layers: {shown}")
        op = known[node].op
        if w not in W_BITS:
            raise QPluginError(f"layer_bits: node {node!r} ({op}): w_bits {w} is not available; choose 4 or 8")
        if a not in A_BITS:
            why = "not a width" if a not in A_BITS_ASKED else "no kernel takes it yet"
            raise QPluginError(f"layer_bits: node {node!r} ({op}): a_bits {a} ({why}); {op} inputs can be 4 or 8 "
                               "bits (int16 stays the compiler's choice for the residual stream)")
