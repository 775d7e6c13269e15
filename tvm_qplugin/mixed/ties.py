"""Which layers must share an activation width: those whose inputs are one quantized domain.

A tensor keeps its quantization through ReLU / Clip / MaxPool / Reshape (the integer model does
not requantize there), and the operands of a residual Add or a Concat are brought to one scale
and width with their result. Union-find over the ONNX tensors along those ops gives the domains;
the layers reading from one domain are tied on ``a_bits``.
"""
from __future__ import annotations

import onnx

from .torch_graph import JOIN_OPS, PASSTHROUGH_OPS, Layer


def activation_domains(model: onnx.ModelProto) -> dict[str, str]:
    """ONNX tensor name -> the representative tensor of its quantized domain."""
    parent: dict[str, str] = {}

    def find(t: str) -> str:
        parent.setdefault(t, t)
        while parent[t] != t:
            parent[t] = parent[parent[t]]
            t = parent[t]
        return t

    def union(a: str, b: str) -> None:
        parent[find(a)] = find(b)

    consts = {t.name for t in model.graph.initializer} | {o for n in model.graph.node if n.op_type == "Constant"
                                                           for o in n.output}
    for node in model.graph.node:
        data = [i for i in node.input if i and i not in consts]
        if node.op_type in PASSTHROUGH_OPS and data or node.op_type in JOIN_OPS:
            for i in data:
                union(i, node.output[0])
    return {t: find(t) for t in list(parent)}


def activation_ties(model: onnx.ModelProto, layers: list[Layer]) -> list[tuple[int, int, str]]:
    """``(i, j, "a")`` for consecutive layers reading one domain (a chain ties the whole group)."""
    domains = activation_domains(model)
    groups: dict[str, list[int]] = {}
    for i, layer in enumerate(layers):
        groups.setdefault(domains.get(layer.input, layer.input), []).append(i)
    return [(g[k], g[k + 1], "a") for g in groups.values() for k in range(len(g) - 1)]
