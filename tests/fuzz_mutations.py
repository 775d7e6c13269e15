"""Seeded mutations of the fuzz campaign's inputs: ONNX models, calibration files, compiled artifacts.

Each ``*_case`` function takes a ``random.Random``, the seed inputs (:class:`Seeds`) and a fresh
case directory, writes the mutated input(s) there and returns a :class:`fuzz_driver.Case`. The
mutations cover structure, attributes, dtypes, shapes, values and raw bytes; most of them should
be refused by the cheap checks before TVM runs, a few are benign and compile (the fuzz models are
tiny, so such a case costs ~1 s).
"""
from __future__ import annotations

import copy
import json
import math
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from fuzz_driver import Case

from tvm_qplugin.manifest import write_manifest


@dataclass
class Seeds:
    """The unmutated inputs: models with their calibration files, and two compiled artifacts."""

    models: list[tuple[Path, Path]]   # (model.onnx, calib.npz)
    artifact: Path                    # compiled from models[0]
    other_artifact: Path              # compiled from models[1]: "another model's" files


# --- models --------------------------------------------------------------------------------------
_INT_LISTS = [[0], [-1], [0, 0], [1, 1], [2, 2], [5, 5], [1000, 1000], [-1, -1, -1, -1], [0, 0, 0, 0],
              [1, 1, 1, 1], [3, 3, 3, 3], [], [1, 0], [1, 2, 3]]
_INTS = [0, 1, -1, 2, 3, 99, -99, 2**31]
_FLOATS = [0.0, -1.0, 1e38, float("nan"), float("inf"), 1e-38]
_STRINGS = [b"SAME_UPPER", b"VALID", b"NOTSET", b"bogus", b""]
_ATTR_NAMES = ["kernel_shape", "strides", "pads", "dilations", "group", "axis", "allowzero", "transB", "alpha",
               "ceil_mode", "auto_pad", "epsilon", "keepdims", "perm", "count_include_pad"]
_ELEM_TYPES = [TensorProto.BOOL, TensorProto.INT8, TensorProto.UINT8, TensorProto.INT32, TensorProto.INT64,
               TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.STRING, TensorProto.COMPLEX64, 0, 999]
_OPS = ["Relu", "Conv", "MaxPool", "AveragePool", "Gemm", "MatMul", "Add", "Clip", "Reshape", "Flatten", "Softmax",
        "Sin", "Resize", "Identity", "Transpose", "Concat", "GlobalAveragePool", "NoSuchOp"]
_VALUES = [1e38, -1e38, 1e30, 0.0, float("nan"), float("inf"), -float("inf"), 1e-38, 3.0]


def _attr_value(rng: random.Random, name: str):
    kind = rng.random()
    if name == "auto_pad" or kind < 0.1:
        return rng.choice(_STRINGS)
    if kind < 0.6:
        return rng.choice(_INT_LISTS)
    if kind < 0.85:
        return rng.choice(_INTS)
    return rng.choice(_FLOATS)


def _set_attr(node: onnx.NodeProto, name: str, value) -> None:
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _mutate_attr(rng, m: onnx.ModelProto) -> str:
    node = rng.choice(list(m.graph.node))
    names = [a.name for a in node.attribute]
    name = rng.choice(names) if names and rng.random() < 0.7 else rng.choice(_ATTR_NAMES)
    if rng.random() < 0.15 and names:
        for a in list(node.attribute):
            if a.name == name:
                node.attribute.remove(a)
        return f"attr {node.name}.{name} deleted"
    value = _attr_value(rng, name)
    if isinstance(value, list) and not value and rng.random() < 0.5:
        value = [1]
    try:
        _set_attr(node, name, value)
    except (ValueError, TypeError):
        _set_attr(node, name, 0)
        value = 0
    return f"attr {node.name}.{name}={value!r}"


def _mutate_initializer(rng, m: onnx.ModelProto) -> str:
    if not m.graph.initializer:
        return _mutate_attr(rng, m)
    t = rng.choice(list(m.graph.initializer))
    a = numpy_helper.to_array(t).copy()
    how = rng.choice(["value", "one", "dtype", "shape", "empty"])
    if how == "value" and a.dtype.kind == "f":
        a[...] = rng.choice(_VALUES)
    elif how == "one" and a.size and a.dtype.kind == "f":
        a.reshape(-1)[rng.randrange(a.size)] = rng.choice(_VALUES)
    elif how == "dtype":
        a = a.astype(rng.choice([np.int32, np.int64, np.float16, np.float64, np.bool_, np.int8]))
    elif how == "shape" and a.ndim:
        a = a.reshape(-1)[: max(0, a.size - rng.choice([1, a.size // 2 or 1]))]
        if rng.random() < 0.5:
            a = a[None]
    else:
        a = np.zeros((0,), a.dtype)
    t.CopyFrom(numpy_helper.from_array(a, t.name))
    return f"initializer {t.name} {how}"


def _mutate_io(rng, m: onnx.ModelProto) -> str:
    vi = rng.choice([*m.graph.input, *m.graph.output])
    tt = vi.type.tensor_type
    how = rng.choice(["dtype", "dim", "rank", "symbolic", "drop_outputs", "extra_output"])
    if how == "dtype":
        tt.elem_type = rng.choice(_ELEM_TYPES)
    elif how == "dim" and tt.shape.dim:
        d = rng.choice(list(tt.shape.dim))
        d.Clear()
        d.dim_value = rng.choice([0, 1, 2, 7, 9, 1000])
    elif how == "rank":
        if tt.shape.dim and rng.random() < 0.5:
            del tt.shape.dim[-1]
        else:
            tt.shape.dim.add().dim_value = rng.choice([1, 3])
    elif how == "symbolic" and tt.shape.dim:
        d = rng.choice(list(tt.shape.dim))
        d.Clear()
        d.dim_param = "N"
    elif how == "drop_outputs":
        del m.graph.output[:]
    else:
        inner = rng.choice(list(m.graph.node)).output[0]
        m.graph.output.append(helper.make_tensor_value_info(inner, TensorProto.FLOAT, None))
    return f"io {vi.name} {how}"


def _mutate_structure(rng, m: onnx.ModelProto) -> str:
    nodes = m.graph.node
    how = rng.choice(["remove", "rewire", "dangling", "op_type", "duplicate", "opset", "domain"])
    i = rng.randrange(len(nodes))
    if how == "remove":
        del nodes[i]
    elif how == "rewire" and nodes[i].input:
        names = [v.name for v in m.graph.input] + [o for n in nodes for o in n.output]
        nodes[i].input[rng.randrange(len(nodes[i].input))] = rng.choice(names)
    elif how == "dangling" and nodes[i].input:
        nodes[i].input[0] = "no_such_value"
    elif how == "op_type":
        nodes[i].op_type = rng.choice(_OPS)
    elif how == "duplicate":
        dup = copy.deepcopy(nodes[i])
        dup.name += "_dup"
        del dup.output[:]
        dup.output.append(nodes[i].output[0] + "_dup")
        nodes.append(dup)
    elif how == "opset":
        m.opset_import[0].version = rng.choice([0, 1, 7, 11, 13, 17, 21, 99])
    else:
        nodes[i].domain = rng.choice(["com.microsoft", "bogus"])
    return f"structure {how} at node #{i}"


def _mutate_special(rng, m: onnx.ModelProto) -> str:
    """The issue's named shapes: Clip bounds, Reshape allowzero, pooling windows, dilations, pads."""
    nodes = list(m.graph.node)
    clips = [n for n in nodes if n.op_type == "Clip" and len(n.input) == 3]
    reshapes = [n for n in nodes if n.op_type == "Reshape"]
    windows = [n for n in nodes if n.op_type in ("Conv", "MaxPool", "AveragePool")]
    how = rng.choice(["clip", "reshape", "window"])
    if how == "clip" and clips:
        n = rng.choice(clips)
        lo, hi = rng.choice([(6.0, 0.0), (float("nan"), 6.0), (0.0, float("nan")), (1.0, 1.0), (-1e38, 1e38)])
        for name, v in ((n.input[1], lo), (n.input[2], hi)):
            for t in m.graph.initializer:
                if t.name == name:
                    t.CopyFrom(numpy_helper.from_array(np.array(v, np.float32), name))
        return f"clip {n.name} [{lo}, {hi}]"
    if how == "reshape" and reshapes:
        n = rng.choice(reshapes)
        target = rng.choice([[1, 0], [-1, -1], [0], [1, 7], [1, -1], [0, -1]])
        for t in m.graph.initializer:
            if t.name == n.input[1]:
                t.CopyFrom(numpy_helper.from_array(np.array(target, np.int64), t.name))
        _set_attr(n, "allowzero", rng.choice([0, 1]))
        return f"reshape {n.name} to {target}"
    if windows:
        n = rng.choice(windows)
        name = rng.choice(["kernel_shape", "dilations", "pads", "strides"])
        value = rng.choice({"kernel_shape": [[0, 0], [5, 5], [1000, 1000], [20, 20], [1, 1]],
                            "dilations": [[0, 0], [1, 1], [2, 2], [9, 9]],
                            "pads": [[-1, -1, -1, -1], [0, 0, 0, 0], [1, 1, 1, 1], [9, 9, 9, 9]],
                            "strides": [[0, 0], [1, 1], [2, 2], [100, 100]]}[name])
        _set_attr(n, name, value)
        return f"window {n.name}.{name}={value}"
    return _mutate_attr(rng, m)


_MODEL_MUTATORS = [_mutate_attr, _mutate_initializer, _mutate_io, _mutate_structure, _mutate_special]


def _apply(mutator, rng: random.Random, m: onnx.ModelProto) -> str:
    """One mutation; one a graph (already mutated) cannot take -- no nodes left, a Reshape without
    its shape input -- is skipped rather than ending the campaign."""
    try:
        return mutator(rng, m)
    except (IndexError, KeyError, ValueError, TypeError) as e:
        return f"{mutator.__name__} skipped ({type(e).__name__})"


def model_case(rng: random.Random, seeds: Seeds, d: Path) -> Case:
    # the digits CNN is the real model but compiles ~5x slower than the tiny ones: a fifth of the cases
    src, calib = rng.choices(seeds.models, weights=[5, 4, 1][: len(seeds.models)])[0]
    path = d / "model.onnx"
    if rng.random() < 0.12:  # raw bytes: truncated, flipped, padded
        data = bytearray(src.read_bytes())
        how = rng.choice(["truncate", "flip", "append", "empty"])
        if how == "truncate":
            data = data[: rng.randrange(len(data))]
        elif how == "flip":
            for _ in range(rng.choice([1, 4, 32])):
                data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        elif how == "append":
            data += bytes(rng.randrange(256) for _ in range(64))
        else:
            data = bytearray()
        path.write_bytes(bytes(data))
        desc = f"{src.name} bytes {how}"
    else:
        m = onnx.load(str(src))
        descs = [_apply(rng.choice(_MODEL_MUTATORS), rng, m) for _ in range(rng.choice([1, 1, 1, 2]))]
        path.write_bytes(m.SerializeToString())
        desc = f"{src.name}: " + "; ".join(descs)
    out = d / "out"
    return Case(desc, ["compile", str(path), "--calib", str(calib), "-o", str(out), "--no-progress"], out, dir=d)


# --- calibration files ---------------------------------------------------------------------------
def calib_case(rng: random.Random, seeds: Seeds, d: Path) -> Case:
    model, src = seeds.models[0]
    with np.load(src) as z:
        arrays = {k: z[k] for k in z.files}
    key = next(iter(arrays))
    a = arrays[key]
    path = d / "calib.npz"
    how = rng.choice(["scale", "nan", "dtype", "shape", "keys", "labels", "bytes", "npy", "dir", "scale", "nan", "bytes",
                      "constant"])
    if how == "scale":
        with np.errstate(over="ignore"):  # float32 overflow to inf is one of the mutations
            arrays[key] = (a.astype(np.float64) * rng.choice([1e30, 1e37, 1e38, 1e300, -1e20, 1e-30])).astype(
                rng.choice([np.float32, np.float64]))
    elif how == "nan":
        a = a.copy()
        a.reshape(-1)[rng.randrange(a.size)] = rng.choice([math.nan, math.inf, -math.inf])
        arrays[key] = a
    elif how == "dtype":
        arrays[key] = a.astype(rng.choice([np.int8, np.int64, np.float16, np.float64, np.bool_, np.complex64,
                                           np.uint8]))
    elif how == "shape":
        arrays[key] = rng.choice([a[0], a[:0], a[:, :, :-1], a[None], a.reshape(-1), np.float32(1.0), a[:1]])
    elif how == "keys":
        arrays = rng.choice([{"wrong": a}, {key: a, "extra": a}, {}])
    elif how == "labels":
        arrays["labels"] = rng.choice([np.zeros(len(a), np.int64), np.zeros(len(a) + 1, np.int64),
                                       np.full(len(a), 0.5), np.zeros((len(a), 2), np.int64), np.array(["x"] * len(a))])
    elif how == "constant":
        arrays[key] = np.full_like(a, rng.choice([0.0, 1.0, -3.0]))
    if how == "bytes":
        np.savez(path, **arrays)
        data = bytearray(path.read_bytes())
        if rng.random() < 0.5:
            data = data[: rng.randrange(len(data))]
        else:
            for _ in range(8):
                data[rng.randrange(len(data))] ^= 0xFF
        path.write_bytes(bytes(data))
    elif how == "npy":
        path = d / "calib.npy"
        np.save(path, a)
    elif how == "dir":
        path = d / "images"
        path.mkdir()
        (path / "a.png").write_bytes(rng.choice([b"", b"\x89PNG\r\n\x1a\n broken", bytes(range(64))]))
    else:
        np.savez(path, **arrays)
    out = d / "out"
    return Case(f"calibration {how}", ["compile", str(model), "--calib", str(path), "-o", str(out), "--no-progress"],
                out, dir=d)


# --- artifacts -----------------------------------------------------------------------------------
_JSON_VALUES = [5, "abc", [], {}, None, True, False, -8, [1, 1, -8, 8], [1, 1, 8, 9], 1e300, [0], "int4"]


def _json_paths(v, prefix=()):
    yield prefix
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _json_paths(x, (*prefix, k))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _json_paths(x, (*prefix, i))


def _edit_json(rng, path: Path) -> str:
    doc = json.loads(path.read_text())
    where = rng.choice(list(_json_paths(doc)))
    value = rng.choice(_JSON_VALUES)
    if not where:
        doc = value
    else:
        parent = doc
        for k in where[:-1]:
            parent = parent[k]
        if isinstance(parent, dict) and rng.random() < 0.2:
            del parent[where[-1]]
            value = "<deleted>"
        else:
            parent[where[-1]] = value
    path.write_text(json.dumps(doc))
    return f"{path.name}{list(where)}={value!r}"


def artifact_case(rng: random.Random, seeds: Seeds, d: Path) -> Case:
    art = d / "art"
    shutil.copytree(seeds.artifact, art)
    other = seeds.other_artifact
    how = rng.choice(["json", "json_remanifest", "swap", "swap_remanifest", "so", "manifest", "delete", "c_dir",
                      "user_files", "recompile"])
    keep: tuple[str, ...] = ()
    if how.startswith("json"):
        desc = _edit_json(rng, art / rng.choice(["io.json", "report.json", "io.json"]))
    elif how.startswith("swap"):
        name = rng.choice(["integer_module.json", "io.json", "report.json", "model.so"])
        shutil.copy(other / name, art / name)
        desc = f"{name} from another artifact"
    elif how == "so":
        data = bytearray((art / "model.so").read_bytes())
        what = rng.choice(["half", "zero", "flip", "empty"])
        data = {"half": data[: len(data) // 2], "zero": bytearray(len(data)), "empty": bytearray()}.get(what, data)
        if what == "flip":
            for _ in range(16):
                data[rng.randrange(len(data))] ^= 0xFF
        (art / "model.so").write_bytes(bytes(data))
        desc = f"model.so {what}"
    elif how == "manifest":
        desc = _edit_json(rng, art / "manifest.json")
    elif how == "delete":
        name = rng.choice(["manifest.json", "report.json", "io.json", "integer_module.json", "model.so"])
        (art / name).unlink()
        desc = f"{name} deleted"
    elif how == "c_dir":
        (art / "c").mkdir()
        if rng.random() < 0.5:
            (art / "c" / "qmodel.json").write_text(rng.choice(["{}", "[]", "junk"]))
        desc = "c/ folder added"
    elif how == "user_files":
        (art / "notes.txt").write_text("mine")
        keep = ("notes.txt",)
        desc = "user file added"
    else:  # compile into the existing artifact directory holding user files: they must survive
        (art / "notes.txt").write_text("mine")
        (art / "plots").mkdir()
        model, calib = seeds.models[0]
        return Case("recompile into an artifact with user files",
                    ["compile", str(model), "--calib", str(calib), "-o", str(art), "--no-progress"], art,
                    keep=("notes.txt", "plots"), out_existed=True, dir=d)
    if how.endswith("remanifest"):  # a consistent tamper: the deeper checks must catch what hashes cannot
        write_manifest(art)
        desc += " (manifest rewritten)"
    return Case(f"artifact {desc}", ["verify", str(art), "--count", "2"], None, keep=keep, dir=d)


def cases(rng: random.Random, seeds: Seeds, root: Path, n: int):
    """``n`` cases, lazily (each writes its files just before it runs): 4/9 models, 2/9 calibration
    files, 3/9 artifacts (the cheapest: most stop at the manifest)."""
    kinds = [model_case] * 4 + [calib_case] * 2 + [artifact_case] * 3
    for i in range(n):
        d = root / f"case{i:05d}"
        d.mkdir(parents=True)
        yield rng.choice(kinds)(rng, seeds, d)
