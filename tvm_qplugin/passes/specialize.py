"""Specialize an ONNX graph to values the user fixes at compile time (``--input-value``).

Some exported models take a *mode* as an input and branch on it: Silero VAD takes the sample rate
``sr`` and runs ``If(sr == 16000)`` between a 16 kHz and an 8 kHz network. A deployed artifact
serves one mode, and an ``If`` has no integer lowering (nor any place in a static graph), so:

1. :func:`freeze_inputs` turns each fixed input into an initializer of the user's value;
2. :func:`inline_static_ifs` evaluates every top-level ``If`` whose condition is then a
   compile-time constant (ONNX's reference evaluator, on the constant nodes it depends on) and
   splices the taken branch into the graph (its outputs renamed to the ``If``'s own);
3. nodes nothing reads any more (the condition's chain) are dropped.

An ``If`` whose condition still depends on a model input is refused with the inputs to fix.
Only ONNX is touched here (no TVM), so the frontend's checks stay fast.
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..errors import ShapeError, UnsupportedOpError
from .static_shapes import node_label, static_nodes


def parse_input_values(items: list[str] | None) -> dict[str, np.ndarray]:
    """``["sr=16000", "mode=1,0"]`` -> ``{"sr": array(16000.), ...}`` (float64; cast to the input's
    type in :func:`freeze_inputs`)."""
    out: dict[str, np.ndarray] = {}
    for item in items or []:
        name, sep, text = item.partition("=")
        try:
            values = [float(v) for v in text.split(",") if v.strip()]
        except ValueError:
            values = []
        if not sep or not name or not values:
            raise ShapeError(f"--input-value {item!r}: expected NAME=V or NAME=V1,V2,... with numbers, e.g. sr=16000")
        out[name] = np.array(values[0] if len(values) == 1 else values)
    return out


def _inputs(model: onnx.ModelProto) -> dict[str, onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return {vi.name: vi for vi in model.graph.input if vi.name not in inits}


def freeze_inputs(model: onnx.ModelProto, values: dict[str, np.ndarray], path: str) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs named in ``values`` are initializers holding those values
    (cast to the input's element type, reshaped to its declared shape where that is static)."""
    inputs = _inputs(model)
    unknown = sorted(set(values) - set(inputs))
    if unknown:
        raise ShapeError(f"--input-value names {unknown}, but {path!r} has inputs {sorted(inputs)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    keep = [vi for vi in out.graph.input if vi.name not in values]
    del out.graph.input[:]
    out.graph.input.extend(keep)
    for name, value in values.items():
        vi = inputs[name]
        dtype = helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        dims = [d.dim_value if d.HasField("dim_value") else -1 for d in vi.type.tensor_type.shape.dim]
        arr = np.asarray(value)
        if np.issubdtype(dtype, np.integer) and not np.array_equal(arr, np.round(arr)):
            raise ShapeError(f"--input-value {name}: input {name!r} of {path!r} is {np.dtype(dtype).name}, "
                             f"got non-integer {arr.tolist()}")
        if all(d >= 0 for d in dims):
            if arr.size != int(np.prod(dims, dtype=np.int64)):
                raise ShapeError(f"--input-value {name}: {arr.size} value(s) given, input {name!r} of {path!r} "
                                 f"has shape {dims}")
            arr = arr.reshape(dims)
        out.graph.initializer.append(numpy_helper.from_array(arr.astype(dtype), name))
    return out


def _constant_value(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The value of the static tensor ``name``: the constant nodes it depends on, evaluated."""
    from onnx.reference import ReferenceEvaluator

    nodes = model.graph.node
    needed, wanted = [], {name}
    static = set(static_nodes(model)) | {i for i, n in enumerate(nodes) if n.op_type == "Constant"}
    for idx in range(len(nodes) - 1, -1, -1):
        if idx in static and wanted & set(nodes[idx].output):
            needed.append(idx)
            wanted |= set(nodes[idx].input)
    inits = [t for t in model.graph.initializer if t.name in wanted]
    graph = helper.make_graph([nodes[i] for i in reversed(needed)], "condition", [],
                              [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)], inits)
    sub = helper.make_model(graph, opset_imports=model.opset_import)
    return np.asarray(ReferenceEvaluator(sub).run(None, {})[0])


def _ancestor_inputs(model: onnx.ModelProto, name: str) -> list[str]:
    """The model inputs ``name`` depends on (what the user would fix with --input-value)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    inputs, seen, todo = set(_inputs(model)), set(), [name]
    found = []
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        if t in inputs:
            found.append(t)
        elif t in producers:
            todo.extend(producers[t].input)
    return sorted(found)


def inline_static_ifs(model: onnx.ModelProto, path: str) -> onnx.ModelProto:
    """``model`` with each top-level ``If`` on a constant condition replaced by its taken branch."""
    if not any(n.op_type == "If" for n in model.graph.node):
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    while True:
        nodes = list(graph.node)
        idx = next((i for i, n in enumerate(nodes) if n.op_type == "If"), None)
        if idx is None:
            break
        node = nodes[idx]
        static_outputs = {o for i in static_nodes(out) for o in nodes[i].output} | {t.name for t in graph.initializer}
        if node.input[0] not in static_outputs:
            needs = _ancestor_inputs(out, node.input[0])
            raise UnsupportedOpError(f"If node {node_label(node, idx)!r} of {path!r} branches on a value computed from "
                                     f"the input(s) {needs}: a static integer graph runs one branch; fix "
                                     f"{'it' if len(needs) == 1 else 'them'} at compile time with "
                                     f"{' '.join(f'--input-value {n}=V' for n in needs) or '--input-value NAME=V'}")
        taken = "then_branch" if bool(_constant_value(out, node.input[0]).reshape(-1)[0]) else "else_branch"
        branch = next(helper.get_attribute_value(a) for a in node.attribute if a.name == taken)
        existing = {o for n in nodes for o in n.output} | {t.name for t in graph.initializer}
        clash = sorted(({o for n in branch.node for o in n.output} | {t.name for t in branch.initializer}) & existing)
        if clash:
            raise UnsupportedOpError(f"If node {node_label(node, idx)!r} of {path!r}: its {taken} defines names the "
                                     f"outer graph also defines ({clash[:3]}); rename them before export")
        spliced = list(branch.node) + [helper.make_node("Identity", [b.name], [o], name=f"{node.name or 'If'}/{o}")
                                       for b, o in zip(branch.output, node.output)]
        graph.initializer.extend(branch.initializer)
        del graph.node[:]
        graph.node.extend(nodes[:idx] + spliced + nodes[idx + 1:])
    return _drop_dead_nodes(out)


def _drop_dead_nodes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Remove nodes whose outputs nothing reads (the folded condition chain) and unread initializers."""
    graph = model.graph
    live = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if live & set(node.output):
            keep.append(node)
            live |= set(node.input)
            for attr in node.attribute:  # names read inside subgraphs
                for sub in ([attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)):
                    live |= {i for n in sub.node for i in n.input}
    del graph.node[:]
    graph.node.extend(reversed(keep))
    inits = [t for t in graph.initializer if t.name in live]
    del graph.initializer[:]
    graph.initializer.extend(inits)
    return model


def specialize(model: onnx.ModelProto, values: dict[str, np.ndarray] | None, path: str) -> onnx.ModelProto:
    """``model`` with ``values`` frozen into it and its constant branches inlined."""
    if values:
        model = freeze_inputs(model, values, path)
    return inline_static_ifs(model, path)
