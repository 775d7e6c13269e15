"""``tvm-qplugin inspect MODEL``: op counts, inputs, parameters, a coverage table, what is not supported.

Two levels, as the compiler sees the model:

* ONNX ops: each is ``supported`` (an integer rule takes what it imports to), ``folds`` (shape
  scaffolding that becomes a constant once the input shapes are static: passes/static_shapes.py),
  or ``NOT SUPPORTED``. The folded nodes are named.
* coverage: when every input shape is known and every op is supported, the model is imported and
  canonicalized, and each Relax op is listed with the integerize rule that takes it, or every
  rule's reason for refusing it (passes/integerize.py ``find_unsupported`` asks the same rules).
"""
from __future__ import annotations

from collections import Counter

import numpy as np

from .errors import QPluginError
from .frontend import SUPPORTED_ONNX_OPS, graph_inputs, load_specialized, parse_input_shapes, resolve_input_specs
from .passes.static_shapes import node_label, static_nodes

_SHOWN_FOLDED = 12


def inspect_model(path: str, input_shape_args: list[str] | None = None,
                  input_value_args: list[str] | None = None) -> str:
    from .frontend_tflite import is_tflite

    if is_tflite(path):
        return _inspect_tflite(path, parse_input_shapes(input_shape_args))
    model = load_specialized(path, input_value_args)
    shapes = parse_input_shapes(input_shape_args)
    ops = Counter(n.op_type for n in model.graph.node)
    folded = set(static_nodes(model))
    folded_ops = Counter(model.graph.node[i].op_type for i in folded)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    lines = [f"model   {path}", f"opset   {max(o.version for o in model.opset_import)}",
             f"params  {params:,}", "inputs"]
    dynamic_inputs = False
    for vi in graph_inputs(model):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]
        dynamic = any(not isinstance(d, int) or d <= 0 for d in dims)
        dynamic_inputs |= dynamic and vi.name not in shapes
        note = f" -> {shapes[vi.name]}" if vi.name in shapes else (" (dynamic: needs --input-shape)" if dynamic else "")
        lines.append(f"  {vi.name}: {dims}{note}")
    lines.append("outputs")
    lines += [f"  {o.name}" for o in model.graph.output]
    lines.append("ops")
    unsupported = []
    for op, n in ops.most_common():
        nf = folded_ops.get(op, 0)
        if nf == n:
            status = "folds (shape scaffolding: a constant once input shapes are static)"
        elif op in SUPPORTED_ONNX_OPS:
            status = "supported" if nf == 0 else f"supported ({nf} of them fold as shape scaffolding)"
        else:
            status = "NOT SUPPORTED (no integer-only lowering)"
            unsupported.append(op)
        lines.append(f"  {op:24s} {n:5d}  {status}")
    if folded:
        names = [node_label(model.graph.node[i], i) for i in sorted(folded)]
        more = f" and {len(names) - _SHOWN_FOLDED} more" if len(names) > _SHOWN_FOLDED else ""
        lines.append(f"folded  {len(names)} node(s): {', '.join(names[:_SHOWN_FOLDED])}{more}")
    if not unsupported and not dynamic_inputs:
        lines += coverage_table(path, model, shapes, input_value_args)
    lines.append("verdict " + ("all ops supported" if not unsupported else f"unsupported: {', '.join(unsupported)}"))
    return "\n".join(lines)


def _inspect_tflite(path: str, shapes: dict) -> str:
    from .frontend_tflite import SUPPORTED_TFLITE_OPS, input_specs, load_tflite, op_counts, output_names

    model = load_tflite(path)
    sg = model.Subgraphs(0)
    lines = [f"model   {path} (TFLite)", "inputs"]
    for j in range(sg.InputsLength()):
        t = sg.Tensors(sg.Inputs(j))
        lines.append(f"  {t.Name().decode()}: {[int(d) for d in t.ShapeAsNumpy()]}")
    lines += ["outputs", *[f"  {n}" for n in output_names(model)], "ops"]
    unsupported = []
    for op, n in op_counts(model).most_common():
        ok = op in SUPPORTED_TFLITE_OPS
        unsupported += [] if ok else [op]
        lines.append(f"  {op:24s} {n:5d}  {'supported' if ok else 'NOT SUPPORTED (no integer-only lowering)'}")
    if not unsupported:
        try:
            input_specs(model, path, shapes)
            lines += coverage_table(path, None, shapes)
        except QPluginError as e:
            lines.append(f"coverage  not available: {e}")
    lines.append("verdict " + ("all ops supported" if not unsupported else f"unsupported: {', '.join(unsupported)}"))
    return "\n".join(lines)


def coverage_table(path: str, model, shapes: dict, input_values=None) -> list[str]:
    """``coverage`` lines: each Relax op of the canonical float graph, its count, and the integerize
    rule(s) that take it or the reasons every rule gives for refusing it."""
    from tvm import relax

    from .frontend import import_model
    from .passes.canonicalize import canonicalize
    from .passes.graph import Graph
    from .passes.integerize import RULES, IntegerizeConfig, IntegerizeContext

    try:
        if model is not None:  # ONNX: the shapes checked first (TFLite's were by the caller)
            resolve_input_specs(model, path, shapes)
        graph = Graph(canonicalize(import_model(path, shapes, input_values).mod)["main"])
    except QPluginError as e:
        return [f"coverage  not available: {e}"]
    ctx = IntegerizeContext(graph, {}, IntegerizeConfig(), relax.BlockBuilder())
    rows: dict[str, Counter] = {}
    for b in graph.bindings:
        rules = RULES.get(b.op_name, [])
        reasons = [r.check(ctx, b) for r in rules]
        taker = next((type(r).__name__ for r, why in zip(rules, reasons) if why is None), None)
        verdict = f"rule {taker}" if taker else ("REFUSED: " + ("; ".join(reasons) if rules else "no integer rule"))
        rows.setdefault(b.op_name.removeprefix("relax."), Counter())[verdict] += 1
    lines = ["coverage (Relax ops after import + canonicalize: op, count, rule or reason)"]
    for op, verdicts in rows.items():
        for verdict, n in verdicts.most_common():
            lines.append(f"  {op:24s} {n:5d}  {verdict}")
    return lines
