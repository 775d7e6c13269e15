"""ONNX -> float Relax with static shapes, plus the clear errors users need when it can't.

Checks happen on the ONNX graph before TVM sees it, so messages can name ONNX nodes and files:
not-ONNX / truncated files, dynamic dimensions without ``--input-shape``, and ops outside
:data:`SUPPORTED_ONNX_OPS` (all of them at once, with node names).
"""
from __future__ import annotations

import logging
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import tvm
from google.protobuf.message import DecodeError

from .data import InputSpec
from .errors import ModelLoadError, ShapeError, UnsupportedOpError

log = logging.getLogger(__name__)

# ONNX ops an integer rule exists for (after import + canonicalization), and ops that only
# carry shapes/constants and fold away.
SUPPORTED_ONNX_OPS = frozenset({
    "Conv", "Gemm", "MatMul", "Add", "Sub", "Mul", "Div", "Relu", "Clip", "MaxPool", "AveragePool",
    "GlobalAveragePool", "ReduceMean", "Concat", "Flatten", "Reshape", "Transpose", "Squeeze", "Unsqueeze",
    "BatchNormalization", "Identity", "Constant", "Shape", "Gather", "Cast", "Dropout",
})


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
    if not p.is_file():
        raise ModelLoadError(f"model file {str(p)!r} does not exist")
    data = p.read_bytes()
    if not data:
        raise ModelLoadError(f"model file {str(p)!r} is empty")
    try:
        model = onnx.load_from_string(data)
    except (DecodeError, ValueError, RuntimeError) as e:
        raise ModelLoadError(f"{str(p)!r} is not an ONNX model or is truncated ({type(e).__name__}: {e}); "
                             "re-export it with torch.onnx.export / tf2onnx") from None
    if not model.graph.node:
        raise ModelLoadError(f"{str(p)!r} parsed as protobuf but holds no ONNX graph nodes: not an ONNX model")
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as e:
        first = str(e).strip().splitlines()[0]
        raise ModelLoadError(f"{str(p)!r} is not a valid ONNX model: {first}") from None
    return model


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
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type).name
        if vi.name in shapes:
            shape = shapes[vi.name]
            if len(shape) != len(dims) or any(isinstance(d, int) and d > 0 and d != s for d, s in zip(dims, shape)):
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
    bad: "OrderedDict[str, list[str]]" = OrderedDict()
    for node in model.graph.node:
        if node.op_type not in SUPPORTED_ONNX_OPS:
            bad.setdefault(node.op_type, []).append(node.name or "<unnamed>")
    if bad:
        listing = "; ".join(f"{op} (nodes: {', '.join(ns[:5])}{' ...' if len(ns) > 5 else ''})" for op, ns in bad.items())
        raise UnsupportedOpError(f"{path!r} uses op(s) with no integer-only lowering: {listing}. "
                                 f"Supported: {', '.join(sorted(SUPPORTED_ONNX_OPS))}")


def import_onnx(path: str | Path, input_shapes: dict[str, tuple[int, ...]] | None = None) -> ImportedModel:
    """Load, check and import ``path`` into a float Relax module with static shapes."""
    from tvm.relax.frontend.onnx import from_onnx

    path = str(path)
    model = load_onnx(path)
    specs = resolve_input_specs(model, path, input_shapes or {})
    check_supported(model, path)
    try:
        mod = from_onnx(model, shape_dict={s.name: list(s.shape) for s in specs},
                        dtype_dict={s.name: s.dtype for s in specs}, keep_params_in_input=False)
    except Exception as e:  # the importer raises bare TVM errors: wrap with the file name
        raise ModelLoadError(f"TVM's ONNX importer failed on {path!r}: {str(e).strip().splitlines()[-1]}") from e
    return ImportedModel(path, model, mod, specs, [o.name for o in model.graph.output])


_ = np
