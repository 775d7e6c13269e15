"""ONNX -> float Relax with static shapes, plus the clear errors users need when it can't.

Checks happen on the ONNX graph before TVM sees it (TVM is imported only by :func:`import_onnx`, so
``load_onnx`` and the checks fail fast), so messages can name ONNX nodes and files:
not-ONNX / truncated files, dynamic dimensions without ``--input-shape``, and ops outside
:data:`SUPPORTED_ONNX_OPS` (all of them at once, with node names).
"""
from __future__ import annotations

import contextlib
import gc
import io
import logging
import re
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx

from .data import InputSpec
from .errors import ModelLoadError, ShapeError, UnsupportedOpError, last_line, one_line
from .native_log import quiet_native_stderr
from .onnx_checks import check_graph
from .passes.coverage_ops import COVERAGE_ONNX_OPS
from .passes.specialize import parse_input_values, specialize
from .passes.static_shapes import static_nodes

log = logging.getLogger(__name__)

# ONNX ops an integer rule exists for (after import + canonicalization), and ops that only
# carry shapes/constants and fold away.
SUPPORTED_ONNX_OPS = frozenset({
    "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "MaxPool", "AveragePool",
    "GlobalAveragePool", "ReduceMean", "Concat", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "BatchNormalization", "Identity", "Constant", "Shape", "Gather", "Cast", "Dropout",
    # transformer encoders: LayerNorm (native or decomposed), GELU (native, Erf or tanh form), attention + masks
    "LayerNormalization", "Softmax", "Gelu", "Erf", "Tanh", "Pow", "Sqrt", "Where", "Equal", "Less", "Greater", "And", "Or",
    "Not", "GatherND", "GatherElements", "Expand",
}) | COVERAGE_ONNX_OPS

if TYPE_CHECKING:  # annotations only: TVM loads where it is used
    import tvm


@dataclass
class ImportedModel:
    path: str
    onnx_model: onnx.ModelProto
    mod: tvm.IRModule
    inputs: list[InputSpec]
    output_names: list[str]


def load_onnx(path: str | Path) -> onnx.ModelProto:
    """Read and check an ONNX file; every failure is a :class:`ModelLoadError` naming the file."""
    p = Path(path)
    if p.is_dir():
        raise ModelLoadError(f"model {str(p)!r} is a directory, not an ONNX file; pass the path of a .onnx file")
    if not p.is_file():
        raise ModelLoadError(f"model file {str(p)!r} does not exist; check the path")
    try:
        data = p.read_bytes()
    except OSError as e:
        raise ModelLoadError(f"cannot read model file {str(p)!r}: {e.strerror or e}; check its permissions") from None
    if not data:
        raise ModelLoadError(f"model file {str(p)!r} is empty (0 bytes); re-export the model "
                             "(torch.onnx.export / tf2onnx)")
    try:
        model = onnx.load_from_string(data)
    except Exception as e:  # DecodeError, ValueError, RuntimeError, ...: the bytes are not a ModelProto
        raise ModelLoadError(f"{str(p)!r} ({len(data)} bytes) is not an ONNX model or is truncated "
                             f"({type(e).__name__}: {one_line(e)}); re-export it with torch.onnx.export / "
                             "tf2onnx") from None
    if not model.graph.node:
        raise ModelLoadError(f"{str(p)!r} parsed as protobuf but holds no ONNX graph nodes: not an ONNX model "
                             "(or truncated); re-export it with torch.onnx.export / tf2onnx")
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx.checker.ValidationError and the C++ checker's other failures
        raise ModelLoadError(f"{str(p)!r} is not a valid ONNX model: {one_line(e).rstrip('.')}; fix or re-export the "
                             "model") from None
    return model


def load_specialized(path: str | Path, input_values=None) -> onnx.ModelProto:
    """:func:`load_onnx`, then the inputs fixed by ``--input-value`` (``{name: value}`` or
    ``["name=V", ...]``) frozen in and constant ``If`` branches inlined (passes/specialize.py)."""
    if isinstance(input_values, (list, tuple)):
        input_values = parse_input_values(list(input_values))
    return specialize(load_onnx(path), input_values, str(path))


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in vi.type.tensor_type.shape.dim]


def parse_input_shapes(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x=1,3,224,224", ...]`` -> {"x": (1, 3, 224, 224)}."""
    out: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in dims.replace("x", ",").split(",") if d.strip())
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise ShapeError(f"--input-shape {item!r}: expected NAME=D1,D2,... with positive integers, "
                             "e.g. input=1,3,224,224")
        out[name] = shape
    return out


def resolve_input_specs(model: onnx.ModelProto, path: str, shapes: dict[str, tuple[int, ...]]) -> list[InputSpec]:
    specs = []
    names = [vi.name for vi in graph_inputs(model)]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise ShapeError(f"--input-shape names {unknown}, but {path!r} has inputs {names}")
    for vi in graph_inputs(model):
        dims = _dims(vi)
        if not vi.type.HasField("tensor_type"):
            raise ShapeError(f"input {vi.name!r} of {path!r} is not a tensor ({vi.type.WhichOneof('value')}); "
                             "only tensor inputs are supported")
        try:
            dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
        except (KeyError, ValueError, TypeError):
            raise ShapeError(f"input {vi.name!r} of {path!r} has no usable element type "
                             f"(elem_type={vi.type.tensor_type.elem_type}); re-export the model with typed "
                             "inputs") from None
        if not vi.type.tensor_type.HasField("shape") and vi.name not in shapes:
            raise ShapeError(f"input {vi.name!r} of {path!r} has unknown rank; fix it with --input-shape "
                             f"{vi.name}=D1,D2,...")
        if vi.name in shapes:
            shape = shapes[vi.name]
            if not vi.type.tensor_type.HasField("shape"):
                pass  # unknown rank: the user's shape is all there is
            elif len(shape) != len(dims) or any(isinstance(d, int) and d > 0 and d != s for d, s in zip(dims, shape)):
                raise ShapeError(f"--input-shape {vi.name}={','.join(map(str, shape))} does not match the model's "
                                 f"input shape {dims} in {path!r}")
        else:
            dynamic = [i for i, d in enumerate(dims) if not (isinstance(d, int) and d > 0)]
            if dynamic:
                raise ShapeError(f"input {vi.name!r} of {path!r} has dynamic shape {dims}; fix it with --input-shape "
                                 f"{vi.name}={','.join('1' if not (isinstance(d, int) and d > 0) else str(d) for d in dims)}")
            shape = tuple(int(d) for d in dims)
        specs.append(InputSpec(vi.name, tuple(shape), dtype))
    return specs


def check_supported(model: onnx.ModelProto, path: str) -> None:
    """Raise one :class:`UnsupportedOpError` listing every unsupported op once, with its node names."""
    bad: "OrderedDict[str, list[str]]" = OrderedDict()
    folded = set(static_nodes(model))  # shape scaffolding: folds to constants (passes/static_shapes.py)
    for i, node in enumerate(model.graph.node):
        if i not in folded and (node.op_type not in SUPPORTED_ONNX_OPS or node.domain not in ("", "ai.onnx")):
            op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
            bad.setdefault(op, []).append(repr(node.name) if node.name else f"<unnamed #{i}>")
    if bad:
        listing = "; ".join(f"{op} (node{'s' if len(ns) > 1 else ''} {', '.join(ns[:5])}"
                            f"{f' and {len(ns) - 5} more' if len(ns) > 5 else ''})" for op, ns in bad.items())
        raise UnsupportedOpError(f"{path!r} uses {len(bad)} op type(s) with no integer-only lowering: {listing}. "
                                 f"Supported ops: {', '.join(sorted(SUPPORTED_ONNX_OPS))}; replace or remove these "
                                 "nodes before export")


# Relax ops whose ONNX source has another name (the rest match case- and underscore-blind)
_ONNX_SOURCES = {"matmul": ("MatMul", "Gemm"), "layer_norm": ("LayerNormalization", "ReduceMean"),
                 "gelu": ("Gelu", "Erf"), "gelu_tanh": ("Gelu", "Tanh"), "conv2d": ("Conv",),
                 "mean": ("ReduceMean", "GlobalAveragePool"), "take": ("Gather",), "power": ("Pow",),
                 "image.resize2d": ("Resize",), "strided_slice": ("Slice",), "multiply": ("Mul", "HardSwish")}


def onnx_nodes_for(model: onnx.ModelProto, relax_op: str) -> list[str]:
    """Names of the ONNX nodes a Relax op can come from (TVM's importer keeps no node names)."""
    short = relax_op.removeprefix("relax.").removeprefix("nn.")
    types = _ONNX_SOURCES.get(short, ())
    names = [n.name or f"<unnamed #{i}>" for i, n in enumerate(model.graph.node)
             if n.op_type in types or n.op_type.lower() == short.replace("_", "")]
    return names


def name_onnx_nodes(err: UnsupportedOpError, model: onnx.ModelProto | None) -> UnsupportedOpError:
    """``err`` (from integerize) restated with the ONNX node names behind each refused Relax op
    (unchanged for a model that is not ONNX)."""
    if not err.problems or model is None:
        return err
    parts = []
    for var, op, why in err.problems:
        nodes = onnx_nodes_for(model, op)
        where = ""
        if nodes:
            shown = ", ".join(repr(n) for n in nodes[:3]) + (f" and {len(nodes) - 3} more" if len(nodes) > 3 else "")
            where = f", from ONNX node{'s' if len(nodes) > 1 else ''} {shown}"
        parts.append(f"{op.removeprefix('relax.')} ({why}{where}; Relax var {var})")
    return UnsupportedOpError(f"cannot integerize {len(parts)} op(s): {'; '.join(parts)}. Rewrite these nodes into "
                              "a supported form (`tvm-qplugin inspect MODEL.onnx` lists what is supported)",
                              err.problems)


def _failed_node(model: onnx.ModelProto, printed: str) -> str:
    """Name the node TVM's importer choked on, from its "Error converting operator OP" line."""
    m = re.search(r"Error converting operator (\w+)", printed)
    if not m:
        return ""
    op = m.group(1)
    names = [n.name or f"<unnamed #{i}>" for i, n in enumerate(model.graph.node) if n.op_type == op]
    if len(names) == 1:
        return f" at node {names[0]!r} ({op})"
    return f" at a {op} node (one of {', '.join(map(repr, names[:5]))}{' ...' if len(names) > 5 else ''})"


def import_onnx(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None,
                input_values=None) -> ImportedModel:
    """Load, specialize (``input_values``), check and import ``path`` into a float Relax module
    with static shapes."""
    from tvm.relax.frontend.onnx import from_onnx

    path = str(path)
    model = load_specialized(path, input_values)
    specs = resolve_input_specs(model, path, input_shapes or {})
    check_supported(model, path)
    check_graph(model, path, {s.name: s.shape for s in specs})
    printed = io.StringIO()
    error = None
    # The importer prints to stdout and TVM's C++ side logs to fd 2 on failure: keep both off the
    # user's terminal so the CLI's error stays one line.
    with quiet_native_stderr(), contextlib.redirect_stdout(printed), contextlib.redirect_stderr(printed):
        shapes = {s.name: list(s.shape) for s in specs}
        try:
            mod = from_onnx(model, shape_dict=shapes, dtype_dict={s.name: s.dtype for s in specs},
                            keep_params_in_input=False)
        except Exception as e:  # the importer raises bare TVM errors: wrap with the file and node
            error = f"{type(e).__name__}: {last_line(e)}"
            # where TVM's own folding of shape scaffolding failed, ours (passes/static_fold.py) may not
            from .passes.static_fold import fold_static_subgraph
            try:
                folded = fold_static_subgraph(model, {k: tuple(v) for k, v in shapes.items()})
                if folded is not None:
                    mod = from_onnx(folded, shape_dict=shapes, dtype_dict={s.name: s.dtype for s in specs},
                                    keep_params_in_input=False)
                    error = None
            except Exception:  # noqa: BLE001 - the first error (the importer's, on the user's graph) names the node
                pass
            # a failed import leaves a BlockBuilder whose destructor logs a warning: collect it here,
            # muted. Only then: a full collection costs 0.4-1 s with TVM loaded, on every compile
            gc.collect()
    if error is not None:
        raise ModelLoadError(f"TVM's ONNX importer failed on {path!r}{_failed_node(model, printed.getvalue())}: "
                             f"{one_line(error).rstrip('.')}; simplify the model (e.g. onnxsim) or check that op's "
                             "attributes") from None
    return ImportedModel(path, model, mod, specs, [o.name for o in model.graph.output])


def import_model(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None,
                 input_values=None) -> ImportedModel:
    """:func:`import_onnx`, or the TFLite front end for a ``.tflite`` file (frontend_tflite.py)."""
    from .frontend_tflite import import_tflite, is_tflite

    if is_tflite(path):
        if input_values:
            raise ShapeError("--input-value applies to ONNX models (it folds their If branches); "
                             f"{str(path)!r} is a TFLite model")
        return import_tflite(path, input_shapes)
    return import_onnx(path, input_shapes, input_values)


_ = np
