"""TFLite -> float Relax (TVM's own ``relax.frontend.tflite``), for the float ``.tflite`` models edge
users already have (MediaPipe's detectors and landmark models).

A float TFLite model is NHWC with fp16 or fp32 weights (``DEQUANTIZE`` of fp16 constants is a
cast, not quantization). After import: ``ConvertLayout`` turns every conv into NCHW / OIHW, the
layout our integer conv kernels and C package take (the activations' transposes it leaves
between layout-agnostic ops are exact integer copies), and ``FoldConstant`` folds the weight
casts and transposes. From there the pipeline is the ONNX one.

Already-quantized TFLite models (int8 / uint8 tensors with TFLite's zero points) are refused:
this tool builds its own integer graph from a float model, with its own verified numerics.
Errors name the file and the operator (by its index in the subgraph, as TFLite has no node names).
"""
from __future__ import annotations

import contextlib
import gc
import io
from collections import Counter
from pathlib import Path

from .data import InputSpec
from .errors import ModelLoadError, ShapeError, UnsupportedOpError, last_line, one_line
from .native_log import quiet_native_stderr

TFLITE_SUFFIX = ".tflite"
# TFLite builtins with an integer lowering once imported (or that fold: fp16 weight casts)
SUPPORTED_TFLITE_OPS = frozenset({
    "CONV_2D", "DEPTHWISE_CONV_2D", "FULLY_CONNECTED", "ADD", "SUB", "MUL", "RELU", "RELU6", "RELU_N1_TO_1",
    "LOGISTIC", "TANH", "HARD_SWISH", "PRELU", "LEAKY_RELU", "PAD", "PADV2", "MAX_POOL_2D", "AVERAGE_POOL_2D",
    "MEAN", "RESHAPE", "SQUEEZE", "CONCATENATION", "TRANSPOSE", "SOFTMAX", "RESIZE_NEAREST_NEIGHBOR",
    "RESIZE_BILINEAR", "DEQUANTIZE", "STRIDED_SLICE", "SLICE",
})
_FLOAT_TYPES = {0: "float32", 1: "float16"}  # tflite.TensorType


def is_tflite(path: str | Path) -> bool:
    return str(path).lower().endswith(TFLITE_SUFFIX)


def _tflite_module():
    try:
        import tflite  # noqa: PLC0415 - optional: only TFLite users need it
    except ImportError:
        raise ModelLoadError("reading .tflite models needs the `tflite` package: pip install tflite") from None
    return tflite


def load_tflite(path: str | Path):
    """The parsed ``tflite.Model``; every failure a :class:`ModelLoadError` naming the file."""
    tflite = _tflite_module()
    p = Path(path)
    if not p.is_file():
        raise ModelLoadError(f"model file {str(p)!r} does not exist; check the path")
    data = p.read_bytes()
    try:
        model = tflite.Model.GetRootAsModel(data, 0)
        if model.SubgraphsLength() < 1 or model.Subgraphs(0).OperatorsLength() < 1:
            raise ValueError("no subgraph with operators")
    except Exception as e:  # flatbuffers raises bare struct / index errors on foreign bytes
        raise ModelLoadError(f"{str(p)!r} ({len(data)} bytes) is not a TFLite model or is truncated "
                             f"({type(e).__name__}: {one_line(e)}); re-convert it with tf.lite.TFLiteConverter") \
            from None
    return model


def operator_names(model) -> list[str]:
    """Builtin operator name of each operator of the main subgraph, in order."""
    from tflite.BuiltinOperator import BuiltinOperator

    names = {v: k for k, v in vars(BuiltinOperator).items() if not k.startswith("_")}
    sg = model.Subgraphs(0)
    out = []
    for i in range(sg.OperatorsLength()):
        code = model.OperatorCodes(sg.Operators(i).OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        out.append(names.get(builtin, f"CUSTOM({code.CustomCode().decode(errors='replace')})"
                              if code.CustomCode() else str(builtin)))
    return out


def op_counts(model) -> Counter:
    return Counter(operator_names(model))


def check_supported_tflite(model, path: str) -> None:
    """One :class:`UnsupportedOpError` listing every unsupported operator (with its indices), and a
    refusal of already-quantized models."""
    sg = model.Subgraphs(0)
    bad: dict[str, list[int]] = {}
    for i, name in enumerate(operator_names(model)):
        if name not in SUPPORTED_TFLITE_OPS:
            bad.setdefault(name, []).append(i)
    if bad:
        listing = "; ".join(f"{op} (operator{'s' if len(ix) > 1 else ''} #{', #'.join(map(str, ix[:5]))})"
                            for op, ix in bad.items())
        raise UnsupportedOpError(f"{path!r} uses {len(bad)} TFLite op type(s) with no integer-only lowering: {listing}. "
                                 f"Supported: {', '.join(sorted(SUPPORTED_TFLITE_OPS))}")
    for j in range(sg.InputsLength()):
        t = sg.Tensors(sg.Inputs(j))
        if t.Type() not in _FLOAT_TYPES:
            raise UnsupportedOpError(f"{path!r} is an already-quantized TFLite model (input {t.Name().decode()!r} has "
                                     f"TFLite type {t.Type()}); give the float model: this tool quantizes it itself")


def input_specs(model, path: str, shapes: dict[str, tuple[int, ...]]) -> list[InputSpec]:
    sg = model.Subgraphs(0)
    specs = []
    names = [sg.Tensors(sg.Inputs(j)).Name().decode() for j in range(sg.InputsLength())]
    unknown = sorted(set(shapes) - set(names))
    if unknown:
        raise ShapeError(f"--input-shape names {unknown}, but {path!r} has inputs {names}")
    for j, name in enumerate(names):
        t = sg.Tensors(sg.Inputs(j))
        dims = [int(d) for d in t.ShapeAsNumpy()]
        shape = shapes.get(name, tuple(dims))
        if any(d <= 0 for d in shape):
            raise ShapeError(f"input {name!r} of {path!r} has dynamic shape {dims}; fix it with --input-shape "
                             f"{name}={','.join(str(max(d, 1)) for d in dims)}")
        specs.append(InputSpec(name, tuple(shape), "float32"))
    return specs


def output_names(model) -> list[str]:
    sg = model.Subgraphs(0)
    return [sg.Tensors(sg.Outputs(j)).Name().decode() for j in range(sg.OutputsLength())]


def import_tflite(path: str | Path, input_shapes: dict | None = None):
    """Load, check and import ``path`` into a float NCHW Relax module (an ``ImportedModel``)."""
    import tvm
    from tvm import relax
    from tvm.relax.frontend.tflite import from_tflite

    from .frontend import ImportedModel

    path = str(path)
    model = load_tflite(path)
    check_supported_tflite(model, path)
    specs = input_specs(model, path, input_shapes or {})
    error = None
    with quiet_native_stderr(), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
        try:
            mod = from_tflite(model, shape_dict={s.name: list(s.shape) for s in specs},
                              dtype_dict={s.name: s.dtype for s in specs})
            mod = tvm.ir.transform.Sequential([
                relax.transform.ConvertLayout({"relax.nn.conv2d": ["NCHW", "OIHW"]}),
                relax.transform.FoldConstant(),
            ])(mod)
        except Exception as e:  # the importer raises bare TVM errors: wrap with the file
            error = f"{type(e).__name__}: {last_line(e)}"
            gc.collect()  # muted, what the failed import left (frontend.py: only on failure, ~0.5 s each)
    if error is not None:
        raise ModelLoadError(f"TVM's TFLite importer failed on {path!r}: {one_line(error).rstrip('.')}; check the "
                             "operators `tvm-qplugin inspect` lists") from None
    return ImportedModel(path, None, mod, specs, output_names(model))
