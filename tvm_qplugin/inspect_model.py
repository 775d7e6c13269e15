"""``tvm-qplugin inspect MODEL``: op counts, inputs, parameters, and what is not supported."""
from __future__ import annotations

from collections import Counter

import numpy as np

from .frontend import SUPPORTED_ONNX_OPS, graph_inputs, load_onnx, parse_input_shapes


def inspect_model(path: str, input_shape_args: list[str] | None = None) -> str:
    model = load_onnx(path)
    shapes = parse_input_shapes(input_shape_args)
    ops = Counter(n.op_type for n in model.graph.node)
    params = sum(int(np.prod(t.dims)) for t in model.graph.initializer)
    lines = [f"model   {path}", f"opset   {max(o.version for o in model.opset_import)}",
             f"params  {params:,}", "inputs"]
    for vi in graph_inputs(model):
        dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]
        dynamic = any(not isinstance(d, int) or d <= 0 for d in dims)
        note = f" -> {shapes[vi.name]}" if vi.name in shapes else (" (dynamic: needs --input-shape)" if dynamic else "")
        lines.append(f"  {vi.name}: {dims}{note}")
    lines.append("outputs")
    lines += [f"  {o.name}" for o in model.graph.output]
    lines.append("ops")
    unsupported = []
    for op, n in ops.most_common():
        ok = op in SUPPORTED_ONNX_OPS
        lines.append(f"  {op:24s} {n:5d}  {'supported' if ok else 'NOT SUPPORTED (no integer-only lowering)'}")
        if not ok:
            unsupported.append(op)
    lines.append("verdict " + ("all ops supported" if not unsupported else f"unsupported: {', '.join(unsupported)}"))
    return "\n".join(lines)
