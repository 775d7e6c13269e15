"""Consistency checks of an ONNX graph that the ONNX checker does not make, run before TVM sees it.

``onnx.checker.check_model`` validates structure only: a Conv whose ``kernel_shape`` contradicts its
weights, ``dilations = 0``, negative pads, a pooling window larger than its input, a declared output
shape the graph does not produce, opset 99 or a Clip with ``min > max`` all pass it, and then crash
TVM's importer or -- worse -- compile silently into something the user did not write. Every check
here names the node and says the fix; :func:`check_graph` raises one :class:`ModelLoadError` for the
first problem (cheap checks first, then ONNX's strict shape inference, which names its own node).
"""
from __future__ import annotations

import math
import re

import numpy as np
import onnx
from onnx import numpy_helper

from .errors import ModelLoadError, UnsupportedOpError, one_line

# Input element types the pipeline quantizes (floats) or passes through raw (integer ids, masks).
INPUT_DTYPES = ("float32", "float16", "float64", "int64", "int32")
# Largest weight magnitude accepted: float32 products of such weights with activations stay finite
# (|w| * |x| * fan-in < FLT_MAX for any sane activation), so the scale ratios stay representable.
MAX_WEIGHT_ABS = 1e15
_WINDOWED = ("Conv", "MaxPool", "AveragePool")


def _where(path: str, node: onnx.NodeProto, i: int) -> str:
    return f"{path!r} node {node.name or f'<unnamed #{i}>'!r} ({node.op_type})"


def _ints(node: onnx.NodeProto, name: str) -> list[int] | None:
    for a in node.attribute:
        if a.name == name:
            return list(a.ints) if a.type == onnx.AttributeProto.INTS else [int(a.i)]
    return None


def _int(node: onnx.NodeProto, name: str, default: int) -> int:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant-node outputs by name (values the graph cannot change)."""
    out = {}
    for t in model.graph.initializer:
        try:
            out[t.name] = numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001 - a malformed tensor: the importer's error names it
            continue
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value":
                    try:
                        out[n.output[0]] = numpy_helper.to_array(a.t)
                    except Exception:  # noqa: BLE001
                        pass
    return out


def _shapes(model: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple]:
    """Static shapes of every value ONNX's (lenient) shape inference can derive."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _set_input_shapes(m, input_shapes)
    try:
        inferred = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - the strict pass reports it
        return {}
    shapes = {}
    for vi in [*inferred.graph.input, *inferred.graph.value_info, *inferred.graph.output]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.HasField("shape"):
            shapes[vi.name] = tuple(d.dim_value if d.HasField("dim_value") else None
                                    for d in vi.type.tensor_type.shape.dim)
    return shapes


def _set_input_shapes(m: onnx.ModelProto, input_shapes: dict[str, tuple[int, ...]]) -> None:
    for vi in m.graph.input:
        if vi.name in input_shapes and vi.type.HasField("tensor_type"):
            shape = vi.type.tensor_type.shape
            del shape.dim[:]
            for d in input_shapes[vi.name]:
                shape.dim.add().dim_value = int(d)


def _check_window(node, i, path, consts, shapes) -> None:
    where = _where(path, node, i)
    for name in ("strides", "dilations", "kernel_shape"):
        v = _ints(node, name)
        if v is not None and any(d < 1 for d in v):
            raise ModelLoadError(f"{where}: {name}={v} must be positive integers; fix the attribute and re-export")
    pads = _ints(node, "pads")
    if pads is not None and any(p < 0 for p in pads):
        raise ModelLoadError(f"{where}: pads={pads} must not be negative; fix the attribute and re-export")
    x_shape = shapes.get(node.input[0]) if node.input else None
    kernel = _ints(node, "kernel_shape")
    if node.op_type == "Conv" and len(node.input) > 1:
        w = consts.get(node.input[1])
        w_shape = tuple(w.shape) if w is not None else shapes.get(node.input[1])
        if w_shape and kernel is not None and tuple(kernel) != tuple(w_shape[2:]):
            raise ModelLoadError(f"{where}: kernel_shape={kernel} contradicts its weights {node.input[1]!r} of shape "
                                 f"{list(w_shape)} (kernel {list(w_shape[2:])}); drop the attribute or fix it")
        if w_shape and kernel is None:
            kernel = list(w_shape[2:])
    if not x_shape or kernel is None or any(d is None for d in x_shape[2:]) or len(x_shape) != len(kernel) + 2:
        return
    dil = _ints(node, "dilations") or [1] * len(kernel)
    pads = pads or [0] * (2 * len(kernel))
    if len(dil) != len(kernel) or len(pads) != 2 * len(kernel):
        raise ModelLoadError(f"{where}: kernel_shape {kernel}, dilations {dil} and pads {pads} disagree in rank; "
                             "fix the attributes and re-export")
    auto_pad = next((a.s.decode(errors="replace") for a in node.attribute if a.name == "auto_pad"), "NOTSET")
    for ax, (size, k, d) in enumerate(zip(x_shape[2:], kernel, dil)):
        span = (k - 1) * d + 1
        padded = size + (pads[ax] + pads[ax + len(kernel)] if auto_pad in ("NOTSET", "VALID") else span - 1)
        if span > padded:
            raise ModelLoadError(f"{where}: its window ({span} with kernel {k}, dilation {d}) is larger than its "
                                 f"padded input ({padded}) along spatial axis {ax} of input shape {list(x_shape)}; "
                                 "fix kernel_shape/pads or the input shape")


def _check_clip(node, i, path, consts) -> None:
    bounds = []
    for k, default in ((1, -math.inf), (2, math.inf)):
        if len(node.input) > k and node.input[k]:
            v = consts.get(node.input[k])
            bounds.append(None if v is None or v.size != 1 else float(np.asarray(v, np.float64).reshape(())))
        else:
            bounds.append(float(default))
    lo, hi = bounds
    if any(b is not None and math.isnan(b) for b in bounds):
        raise ModelLoadError(f"{_where(path, node, i)}: min={lo}, max={hi}: a NaN bound; give finite bounds")
    if lo is not None and hi is not None and lo > hi:
        raise ModelLoadError(f"{_where(path, node, i)}: min={lo} > max={hi}: the output would be constant; fix the "
                             "bounds (min <= max)")


def _check_reshape(node, i, path, consts) -> None:
    shape = consts.get(node.input[1]) if len(node.input) > 1 else None
    if _int(node, "allowzero", 0) and shape is not None and np.any(np.asarray(shape) == 0):
        raise ModelLoadError(f"{_where(path, node, i)}: allowzero=1 with target shape {np.asarray(shape).tolist()} "
                             "makes an empty tensor; set allowzero=0 (copy the dimension) or fix the shape")


# Parameter operands of the ops whose weights are quantized: (op, input positions). Other constants
# (attention masks of -3.4e38, -inf) are legitimately huge and never quantized as weights.
_WEIGHT_INPUTS = {"Conv": (1, 2), "Gemm": (1, 2), "MatMul": (1,), "BatchNormalization": (1, 2, 3, 4)}


def _check_weights(model: onnx.ModelProto, path: str, consts: dict[str, np.ndarray]) -> None:
    for i, node in enumerate(model.graph.node):
        for k in _WEIGHT_INPUTS.get(node.op_type, ()):
            v = consts.get(node.input[k]) if len(node.input) > k else None
            if v is not None and np.issubdtype(v.dtype, np.floating) and v.size:
                _check_weight(_where(path, node, i), node.input[k], v)


def _check_weight(where: str, name: str, v: np.ndarray) -> None:
    a = np.abs(v.astype(np.float64))
    if not np.all(np.isfinite(a)):
        raise ModelLoadError(f"{where}: weight {name!r} holds NaN or Inf; fix the weights and re-export")
    if a.max() > MAX_WEIGHT_ABS:
        raise ModelLoadError(f"{where}: weight {name!r} holds a value of magnitude {a.max():.3g}, beyond "
                             f"{MAX_WEIGHT_ABS:g} (float32 arithmetic on it overflows); fix the weights")


def check_graph(model: onnx.ModelProto, path: str, input_shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse a graph that is inconsistent or that no integer build can honour (module doc).

    ``input_shapes`` are the resolved static input shapes (``resolve_input_specs``).
    """
    if not model.graph.output:
        raise ModelLoadError(f"{path!r} declares no graph outputs, so it computes nothing; re-export it with its "
                             "outputs")
    newest = onnx.defs.onnx_opset_version()
    for op in model.opset_import:
        if op.domain in ("", "ai.onnx") and not 1 <= op.version <= newest:
            raise ModelLoadError(f"{path!r} imports ONNX opset {op.version}; this ONNX ({onnx.__version__}) knows "
                                 f"opsets 1-{newest}: re-export with a released opset (e.g. 17)")
    for vi in model.graph.input:
        if vi.name in input_shapes and vi.type.HasField("tensor_type"):
            try:
                dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
            except (KeyError, ValueError, TypeError):
                continue  # resolve_input_specs names it
            if dtype not in INPUT_DTYPES:
                raise ModelLoadError(f"input {vi.name!r} of {path!r} has dtype {dtype}; supported input dtypes are "
                                     f"{', '.join(INPUT_DTYPES)}: cast it inside the model")
    consts = _constants(model)
    _check_weights(model, path, consts)
    shapes = _shapes(model, input_shapes)
    for i, node in enumerate(model.graph.node):
        if node.op_type in _WINDOWED and node.domain in ("", "ai.onnx"):
            _check_window(node, i, path, consts, shapes)
        elif node.op_type == "Clip":
            _check_clip(node, i, path, consts)
        elif node.op_type == "Reshape":
            _check_reshape(node, i, path, consts)
        elif node.op_type == "Pad":
            _check_pad(node, i, path, consts, model)
    _strict_shape_inference(model, path, input_shapes)


_PAD_INPUTS = ("pads", "constant_value", "axes")   # Pad's inputs after the data, by their ONNX names


def _check_pad(node, i, path, consts, model) -> None:
    """Pad's pads / value / axes must be known at compile time: constants, or shape scaffolding
    that folds (passes/static_shapes.py); a pad width computed from the data cannot be integerized."""
    from .passes.static_shapes import static_nodes

    names = [n for n in node.input[1:] if n and n not in consts]
    if not names:
        return
    nodes = model.graph.node
    static = {o for k in static_nodes(model) for o in nodes[k].output}
    for idx, name in enumerate(node.input[1:]):
        if name and name not in consts and name not in static:
            raise UnsupportedOpError(f"{_where(path, node, i)}: input {_PAD_INPUTS[idx]!r} ({name!r}) is computed at "
                                     "run time (a dynamic pad); only constant pads have an integer-only lowering: "
                                     "re-export the model with fixed padding")


def _strict_shape_inference(model: onnx.ModelProto, path: str, input_shapes: dict[str, tuple[int, ...]]) -> None:
    """ONNX's own full inference: declared output shapes/dtypes that the graph does not produce, and
    the per-op attribute rules, each naming its node."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    _set_input_shapes(m, input_shapes)
    if any(n.op_type in _WINDOWED and _ceil_mode(n) for n in m.graph.node):
        # ONNX's shape inference lacks the ceil-mode rule that the last window must start inside the
        # (left-padded) input -- ONNX Runtime, PyTorch and the operator spec since opset 19 apply
        # it -- so it infers one row/column too many and would refuse valid models. For such models
        # the declared shapes are not compared (the attribute rules still are).
        del m.graph.value_info[:]
        for out in m.graph.output:
            out.type.tensor_type.ClearField("shape")
    try:
        onnx.shape_inference.infer_shapes(m, check_type=True, strict_mode=True, data_prop=True)
    except Exception as e:  # noqa: BLE001 - InferenceError and the C++ side's other failures
        text = one_line(e)
        m = re.search(r"\(op_type:(\w+), node name: ([^)]*)\): (.*?)(?= \(op_type:|$)", text)
        if m:
            op, node, why = m.group(1), m.group(2), re.sub(r"\[\w+Error\] ", "", m.group(3)).strip().rstrip(".")
            where = f"node {node!r} ({op})"
        else:
            where, why = "the graph", re.sub(r"\[\w+Error\] ", "", text).strip().rstrip(".")
        raise ModelLoadError(f"{path!r} is inconsistent at {where}: {why} (ONNX shape inference); fix the node or "
                             "the declared shapes and re-export") from None


def _ceil_mode(node: onnx.NodeProto) -> bool:
    return any(a.name == "ceil_mode" and a.i for a in node.attribute)

