"""Bad input through the real CLI: one line on stderr naming the file/node/shape and the fix, exit 2,
no traceback, and no half-written OUTDIR (``python -m tvm_qplugin`` in a subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvm_qplugin as tq
from cli_run import assert_user_error, run_cli

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
OPSET = 18


# --- helpers -------------------------------------------------------------------------------------


def tmp_siblings(outdir: Path) -> list[str]:
    """Leftovers of an interrupted atomic write next to ``outdir``."""
    if not outdir.parent.is_dir():
        return []
    return sorted(p.name for p in outdir.parent.iterdir()
                  if p.name.startswith(f".{outdir.name}.tmp-") or p.name.startswith(f".{outdir.name}.old-"))


def save_model(nodes, inputs, outputs, path: Path, initializers=()) -> Path:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


# --- shared fixtures (module scope: built once) --------------------------------------------------
@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli_errors")


@pytest.fixture(scope="module")
def digits_calib(work) -> Path:
    rng = np.random.default_rng(0)
    path = work / "digits_calib.npz"
    np.savez(path, input=rng.random((8, 1, 8, 8), dtype=np.float32) * 16)
    return path


@pytest.fixture(scope="module")
def dynamic_model(work) -> Path:
    """Relu on x: [N, 4] (symbolic batch dimension 'N')."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    return save_model([helper.make_node("Relu", ["x"], ["y"], name="relu0")], [x], [y], work / "dynamic.onnx")


@pytest.fixture(scope="module")
def tiny_calib(work) -> Path:
    path = work / "tiny_calib.npz"
    np.savez(path, x=np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32))
    return path


@pytest.fixture(scope="module")
def unsupported_model(work) -> Path:
    """One supported node (Relu) and three unsupported ones: two Sin, one Cos."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu_ok"),
             helper.make_node("Sin", ["a"], ["b"], name="sin_first"),
             helper.make_node("Cos", ["b"], ["c"], name="cos_only"),
             helper.make_node("Sin", ["c"], ["y"], name="sin_second")]
    return save_model(nodes, [x], [y], work / "unsupported.onnx")


# --- model file errors ---------------------------------------------------------------------------
def test_text_file_is_not_onnx(tmp_path, digits_calib):
    bad = tmp_path / "notes.onnx"
    bad.write_text("this is a text file, not a model\n")
    line = assert_user_error(run_cli("compile", bad, "--calib", digits_calib, "-o", tmp_path / "out"), bad)
    assert "not an ONNX model" in line and "re-export" in line


def test_png_renamed_onnx_is_not_onnx(tmp_path, digits_calib):
    from PIL import Image

    bad = tmp_path / "picture.onnx"
    Image.fromarray(np.arange(64 * 64 * 3, dtype=np.uint8).reshape(64, 64, 3)).save(bad, format="PNG")
    assert bad.read_bytes()[:4] == b"\x89PNG"
    line = assert_user_error(run_cli("compile", bad, "--calib", digits_calib, "-o", tmp_path / "out"), bad)
    assert "not an ONNX model" in line
    assert not (tmp_path / "out").exists()


def test_truncated_onnx(tmp_path, digits_calib):
    data = DIGITS.read_bytes()
    bad = tmp_path / "half.onnx"
    bad.write_bytes(data[: len(data) // 2])
    line = assert_user_error(run_cli("compile", bad, "--calib", digits_calib, "-o", tmp_path / "out"), bad)
    assert "truncated" in line


def test_empty_file(tmp_path, digits_calib):
    bad = tmp_path / "empty.onnx"
    bad.write_bytes(b"")
    line = assert_user_error(run_cli("compile", bad, "--calib", digits_calib, "-o", tmp_path / "out"), bad)
    assert "empty" in line


def test_missing_file(tmp_path, digits_calib):
    missing = tmp_path / "nowhere" / "model.onnx"
    line = assert_user_error(run_cli("compile", missing, "--calib", digits_calib, "-o", tmp_path / "out"), missing)
    assert "does not exist" in line


def test_directory_as_model(tmp_path, digits_calib):
    line = assert_user_error(run_cli("compile", tmp_path, "--calib", digits_calib, "-o", tmp_path / "out"), tmp_path)
    assert "directory" in line


def test_inspect_not_onnx(tmp_path):
    bad = tmp_path / "notes.onnx"
    bad.write_text("hello\n")
    assert_user_error(run_cli("inspect", bad), bad)


# --- shapes --------------------------------------------------------------------------------------
def test_dynamic_shape_needs_input_shape(tmp_path, dynamic_model, tiny_calib):
    line = assert_user_error(run_cli("compile", dynamic_model, "--calib", tiny_calib, "-o", tmp_path / "out"),
                             dynamic_model, "'x'", "'N'", "--input-shape x=1,4")
    assert "dynamic" in line
    assert not (tmp_path / "out").exists()


def test_dynamic_shape_compiles_with_input_shape(tmp_path, dynamic_model, tiny_calib):
    out = tmp_path / "out"
    r = run_cli("compile", dynamic_model, "--input-shape", "x=1,4", "--calib", tiny_calib, "-o", out)
    assert r.returncode == 0, r.stderr
    assert "Traceback" not in r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["bit_exact"] and report["integer_only"]
    assert report["inputs"][0]["name"] == "x" and report["inputs"][0]["shape"] == [1, 4]


@pytest.mark.parametrize("spec", ["x=1,a", "x1,4", "x=", "=1,4", "x=1,-4", "x=1,0"])
def test_malformed_input_shape(tmp_path, dynamic_model, tiny_calib, spec):
    line = assert_user_error(run_cli("compile", dynamic_model, "--input-shape", spec, "--calib", tiny_calib,
                                     "-o", tmp_path / "out"), f"--input-shape {spec!r}")
    assert "NAME=D1,D2" in line


def test_input_shape_unknown_name_and_wrong_rank(tmp_path, dynamic_model, tiny_calib):
    assert_user_error(run_cli("compile", dynamic_model, "--input-shape", "y=1,4", "--calib", tiny_calib,
                              "-o", tmp_path / "out"), "'y'", "['x']")
    assert_user_error(run_cli("compile", dynamic_model, "--input-shape", "x=1,4,4", "--calib", tiny_calib,
                              "-o", tmp_path / "out"), "x=1,4,4", "['N', 4]")


# --- unsupported ops -----------------------------------------------------------------------------
def test_unsupported_ops_listed_once_with_node_names(tmp_path, unsupported_model, tiny_calib):
    out = tmp_path / "out"
    line = assert_user_error(run_cli("compile", unsupported_model, "--calib", tiny_calib, "-o", out),
                             unsupported_model, "Sin", "'sin_first'", "'sin_second'", "Cos", "'cos_only'",
                             "Supported ops:")
    listing, supported = line.split("Supported ops:")
    assert listing.count("Sin (") == 1 and listing.count("Cos (") == 1, line
    assert "Relu" not in listing and "relu_ok" not in line
    assert "Conv" in supported and "Relu" in supported
    # a failed compile leaves no OUTDIR and no temp sibling
    assert not out.exists() and tmp_siblings(out) == []


def test_unsupported_ops_python_api(unsupported_model):
    with pytest.raises(tq.UnsupportedOpError, match="sin_first"):
        tq.compile(unsupported_model, calib={"x": np.zeros((4, 4), np.float32)})


# --- calibration data ----------------------------------------------------------------------------
def _calib_error(tmp_path, calib: Path, *names) -> str:
    out = tmp_path / "out"
    line = assert_user_error(run_cli("compile", DIGITS, "--calib", calib, "-o", out), calib, *names)
    assert not out.exists() and tmp_siblings(out) == []
    return line


def test_calib_wrong_shape(tmp_path):
    p = tmp_path / "shape.npz"
    np.savez(p, input=np.zeros((8, 1, 7, 7), np.float32))
    _calib_error(tmp_path, p, "'input'", "(8, 1, 7, 7)", "(N, 1, 8, 8)")


def test_calib_wrong_dtype(tmp_path):
    p = tmp_path / "dtype.npz"
    np.savez(p, input=np.zeros((8, 1, 8, 8), np.int64))
    line = _calib_error(tmp_path, p, "'input'", "int64", "float32")
    assert "astype" in line


def test_calib_empty(tmp_path):
    p = tmp_path / "empty.npz"
    np.savez(p, input=np.zeros((0, 1, 8, 8), np.float32))
    line = _calib_error(tmp_path, p, "'input'")
    assert "0 samples" in line


def test_calib_missing_input_name(tmp_path):
    p = tmp_path / "names.npz"
    np.savez(p, images=np.zeros((8, 1, 8, 8), np.float32), more=np.zeros((8, 1, 8, 8), np.float32))
    _calib_error(tmp_path, p, "['input']", "images")


@pytest.mark.parametrize("kind", ["text", "npy"])
def test_calib_not_an_npz(tmp_path, kind):
    p = tmp_path / f"calib_{kind}.npz"
    if kind == "text":
        p.write_text("1,2,3\n")
    else:
        with open(p, "wb") as f:
            np.save(f, np.zeros((8, 1, 8, 8), np.float32))
    line = _calib_error(tmp_path, p)
    assert "numpy.savez" in line


def test_calib_missing_file(tmp_path):
    _calib_error(tmp_path, tmp_path / "nope.npz")


def test_calib_image_dir_channel_mismatch(tmp_path):
    from PIL import Image

    d = tmp_path / "imgs"
    d.mkdir()
    Image.fromarray(np.zeros((12, 12, 3), np.uint8)).save(d / "a.png")
    line = _calib_error(tmp_path, d, "'input'")
    assert "--grayscale" in line


def test_calib_limit_must_be_positive(tmp_path, digits_calib):
    assert_user_error(run_cli("compile", DIGITS, "--calib", digits_calib, "--calib-limit", "0", "-o", tmp_path / "o"),
                      "--calib-limit")


# --- output directory ----------------------------------------------------------------------------
def test_output_under_proc(digits_calib):
    assert_user_error(run_cli("compile", DIGITS, "--calib", digits_calib, "-o", "/proc/tvm-qplugin-out"),
                      "/proc/tvm-qplugin-out")


def test_output_parent_is_a_file(tmp_path, digits_calib):
    f = tmp_path / "plain_file"
    f.write_text("x")
    line = assert_user_error(run_cli("compile", DIGITS, "--calib", digits_calib, "-o", f / "out"), f / "out")
    assert "is a file" in line
    assert f.read_text() == "x"


def test_output_is_a_file(tmp_path, digits_calib):
    f = tmp_path / "plain_file"
    f.write_text("x")
    assert_user_error(run_cli("compile", DIGITS, "--calib", digits_calib, "-o", f), f)
    assert f.read_text() == "x"


def test_output_is_a_foreign_directory_is_not_replaced(tmp_path, digits_calib):
    d = tmp_path / "my_documents"
    d.mkdir()
    (d / "thesis.txt").write_text("precious")
    line = assert_user_error(run_cli("compile", DIGITS, "--calib", digits_calib, "-o", d), d)
    assert "refusing" in line
    assert (d / "thesis.txt").read_text() == "precious"


# --- options -------------------------------------------------------------------------------------
def test_unknown_target(tmp_path, digits_calib):
    line = assert_user_error(run_cli("compile", DIGITS, "--calib", digits_calib, "--target", "no-such-board",
                                     "-o", tmp_path / "out"), "'no-such-board'", "x86-host")
    assert "tvm-qplugin targets" in line


@pytest.mark.parametrize("flag,value,choice", [("--observer", "median", "minmax"), ("--precision", "int3", "int8"),
                                                ("--gelu", "erf", "paper"), ("--softmax-bits", "12", "16")])
def test_unknown_option_value(tmp_path, digits_calib, flag, value, choice):
    assert_user_error(run_cli("compile", DIGITS, "--calib", digits_calib, flag, value, "-o", tmp_path / "out"),
                      flag, repr(value), choice)


def test_argparse_errors_are_one_line(tmp_path):
    assert_user_error(run_cli("compile", DIGITS), "-o/--output")
    assert_user_error(run_cli("frobnicate"), "frobnicate")


# --- verify --------------------------------------------------------------------------------------
def test_verify_on_a_directory_that_is_not_an_artifact(tmp_path):
    (tmp_path / "readme.txt").write_text("hi")
    line = assert_user_error(run_cli("verify", tmp_path), tmp_path)
    assert "not a tvm-qplugin output directory" in line


def test_verify_on_missing_directory(tmp_path):
    assert_user_error(run_cli("verify", tmp_path / "absent"), tmp_path / "absent")


# --- atomic OUTDIR -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_artifact(dynamic_model):
    rng = np.random.default_rng(2)
    return tq.compile(dynamic_model, calib={"x": rng.standard_normal((16, 4)).astype(np.float32)},
                      input_shapes=["x=1,4"])


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def test_save_failing_midway_leaves_nothing(tmp_path, tiny_artifact, monkeypatch):
    import tvm

    def broken(*_a, **_k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tvm.ir, "save_json", broken)  # after model.so was written into the temp dir
    out = tmp_path / "deep" / "out"
    with pytest.raises(tq.OutputDirError, match="No space left"):
        tiny_artifact.save(out)
    assert not out.exists() and tmp_siblings(out) == []
    assert not (tmp_path / "deep").exists()  # parents created for the save are removed too


def test_save_failing_at_last_file_keeps_previous_artifact(tmp_path, tiny_artifact):
    out = tiny_artifact.save(tmp_path / "out")
    before = _snapshot(out)
    tiny_artifact.report["unserializable"] = object()  # report.json, the last file, fails to encode
    try:
        with pytest.raises(TypeError):
            tiny_artifact.save(out)
    finally:
        del tiny_artifact.report["unserializable"]
    assert _snapshot(out) == before
    assert tmp_siblings(out) == []


def test_failing_compile_keeps_previous_artifact(tmp_path, dynamic_model, unsupported_model, tiny_calib):
    out = tmp_path / "out"
    r = run_cli("compile", dynamic_model, "--input-shape", "x=1,4", "--calib", tiny_calib, "-o", out)
    assert r.returncode == 0, r.stderr
    before = _snapshot(out)
    assert_user_error(run_cli("compile", unsupported_model, "--calib", tiny_calib, "-o", out), "sin_first")
    assert _snapshot(out) == before and tmp_siblings(out) == []


def test_recompile_replaces_only_the_artifacts_files(tmp_path, dynamic_model, tiny_calib):
    """Recompiling into an artifact directory replaces its own files (each by a rename) and keeps
    what the user put there (it used to swap the whole directory and delete them)."""
    out = tmp_path / "out"
    r1 = run_cli("compile", dynamic_model, "--input-shape", "x=1,4", "--calib", tiny_calib, "--observer", "minmax",
                 "-o", out)
    assert r1.returncode == 0, r1.stderr
    assert json.loads((out / "report.json").read_text())["observer"] == "minmax"
    assert oct(out.stat().st_mode & 0o777) == oct(0o777 & ~_umask())  # not mkdtemp's 0700
    (out / "notes.txt").write_text("mine")
    (out / "plots").mkdir()
    (out / "plots" / "a.png").write_bytes(b"png")
    old_so = (out / "model.so").stat().st_ino
    r2 = run_cli("compile", dynamic_model, "--input-shape", "x=1,4", "--calib", tiny_calib, "--observer", "mse",
                 "--int-io", "-o", out)
    assert r2.returncode == 0, r2.stderr
    assert (out / "model.so").stat().st_ino != old_so  # renamed into place, not rewritten
    assert json.loads((out / "report.json").read_text())["observer"] == "mse"
    assert json.loads((out / "io.json").read_text())["int_io"] is True
    assert sorted(p.name for p in out.iterdir()) == ["integer_module.json", "io.json", "manifest.json", "model.so",
                                                     "notes.txt", "plots", "report.html", "report.json"]
    assert (out / "notes.txt").read_text() == "mine" and (out / "plots" / "a.png").read_bytes() == b"png"
    assert tmp_siblings(out) == []
    r3 = run_cli("verify", out, "--count", "2")
    assert r3.returncode == 0, r3.stderr


def test_python_save_into_existing_artifact_replaces_it(tmp_path, tiny_artifact):
    out = tiny_artifact.save(tmp_path / "out")
    (out / "report.json").write_text("{}")
    tiny_artifact.save(out)
    assert json.loads((out / "report.json").read_text())["bit_exact"] is True
    assert tmp_siblings(out) == []


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# --- TVM importer failures and internal errors ---------------------------------------------------
def test_inconsistent_node_names_node_in_one_line(tmp_path, tiny_calib):
    """An op on the supported list used inconsistently (a Conv on a 2-D tensor, which TVM's importer
    used to choke on): ONNX's strict shape inference refuses it before TVM, one line naming the file
    and the node; nothing printed on stdout."""
    from onnx import numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    model = save_model([helper.make_node("Conv", ["x", "w"], ["y"], name="conv_2d_input")], [x], [y],
                       tmp_path / "conv2d.onnx", [w])
    r = run_cli("compile", model, "--calib", tiny_calib, "-o", tmp_path / "out")
    line = assert_user_error(r, model, "'conv_2d_input'", "Conv")
    assert "shape inference" in line and "at least 3 dimensions" in line
    assert r.stdout == ""
    assert not (tmp_path / "out").exists()


def test_inspect_malformed_input_shape(dynamic_model):
    assert_user_error(run_cli("inspect", dynamic_model, "--input-shape", "x=1;4"), "'x=1;4'")


def test_internal_error_is_one_line_and_traceback_with_verbose(monkeypatch, capsys):
    from tvm_qplugin import cli

    def boom(_args):
        raise RuntimeError("kaboom\nsecond line of a native message")

    monkeypatch.setattr(cli, "cmd_targets", boom)
    assert cli.main(["targets"]) == cli.EXIT_INTERNAL_ERROR
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("tvm-qplugin: internal error: RuntimeError:")
    assert "Traceback" not in err and "-v" in err
    assert cli.main(["-v", "targets"]) == cli.EXIT_INTERNAL_ERROR
    assert "Traceback" in capsys.readouterr().err


# --- issue 16: the fuzz campaign's crash signatures, each a one-line exit 2 now ------------------
def run_main(capfd, *args) -> subprocess.CompletedProcess:
    """The CLI's ``main`` in this process (TVM already loaded: ~10x faster than a subprocess), with
    fds 1 and 2 captured, so C++ log lines count against the one-line contract too."""
    from tvm_qplugin.cli import main

    capfd.readouterr()
    rc = main([str(a) for a in args])
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def _tiny_conv_model():
    """x[1,1,8,8] -> Conv(4, 3x3) -> Relu -> MaxPool(2) -> Flatten -> Gemm(3): the fuzz campaign's seed."""
    from onnx_builders import OnnxGraph

    g = OnnxGraph((1, 1, 8, 8), np.random.default_rng(0))
    y = g.gemm(g.flatten(g.maxpool(g.relu(g.conv("x", 4, k=3)))), 3)
    return g.model(y)


def _node(m, op):
    return next(n for n in m.graph.node if n.op_type == op)


def _set(node, name, value):
    for a in list(node.attribute):
        if a.name == name:
            node.attribute.remove(a)
    node.attribute.append(helper.make_attribute(name, value))


def _weight_1e38(m):
    w = next(t for t in m.graph.initializer if t.name == _node(m, "Conv").input[1])
    w.CopyFrom(onnx.numpy_helper.from_array(np.full(onnx.numpy_helper.to_array(w).shape, 1e38, np.float32), w.name))


def _reshape_allowzero(m):
    flat = _node(m, "Flatten")
    shape = onnx.numpy_helper.from_array(np.array([1, 0], np.int64), "zero_shape")
    m.graph.initializer.append(shape)
    flat.op_type, flat.input[:] = "Reshape", [flat.input[0], "zero_shape"]
    del flat.attribute[:]
    _set(flat, "allowzero", 1)


def _output_decl(field, value):
    def mutate(m):
        tt = m.graph.output[0].type.tensor_type
        if field == "shape":
            tt.shape.dim[1].dim_value = value
        else:
            tt.elem_type = value
    return mutate


def _clip_after_relu(lo, hi):
    def mutate(m):
        relu = _node(m, "Relu")
        m.graph.initializer.extend([onnx.numpy_helper.from_array(np.array(lo, np.float32), "lo"),
                                    onnx.numpy_helper.from_array(np.array(hi, np.float32), "hi")])
        relu.op_type, relu.input[:] = "Clip", [relu.input[0], "lo", "hi"]
    return mutate


def _opset(m):
    m.opset_import[0].version = 99


MODEL_SIGNATURES = {
    # issue 16 table rows 1-7, then the "exit 0 on inconsistent models" list
    "weight_1e38": (_weight_1e38, ["'conv_", "magnitude 1e+38"]),
    "conv_dilations_0": (lambda m: _set(_node(m, "Conv"), "dilations", [0, 0]), ["(Conv)", "dilations=[0, 0]"]),
    "maxpool_dilations_0": (lambda m: _set(_node(m, "MaxPool"), "dilations", [0, 0]), ["(MaxPool)", "dilations"]),
    "conv_pads_-1": (lambda m: _set(_node(m, "Conv"), "pads", [-1, -1, -1, -1]), ["(Conv)", "pads=[-1, -1, -1, -1]"]),
    "maxpool_kernel_over_input": (lambda m: _set(_node(m, "MaxPool"), "kernel_shape", [20, 20]),
                                  ["(MaxPool)", "larger than its padded input"]),
    "maxpool_negative_pads": (lambda m: _set(_node(m, "MaxPool"), "pads", [-1, -1, -1, -1]), ["(MaxPool)", "pads"]),
    "bool_input": (lambda m: setattr(m.graph.input[0].type.tensor_type, "elem_type", TensorProto.BOOL),
                   ["'x'", "dtype bool"]),
    "reshape_allowzero": (_reshape_allowzero, ["(Reshape)", "allowzero=1", "[1, 0]"]),
    "no_outputs": (lambda m: m.graph.ClearField("output"), ["no graph outputs"]),
    "kernel_shape_0": (lambda m: _set(_node(m, "Conv"), "kernel_shape", [0, 0]), ["(Conv)", "kernel_shape=[0, 0]"]),
    "kernel_shape_5": (lambda m: _set(_node(m, "Conv"), "kernel_shape", [5, 5]), ["(Conv)", "contradicts"]),
    "kernel_shape_1000": (lambda m: _set(_node(m, "Conv"), "kernel_shape", [1000, 1000]), ["(Conv)", "contradicts"]),
    "opset_99": (_opset, ["opset 99"]),
    "clip_min_over_max": (_clip_after_relu(6.0, 0.0), ["(Clip)", "min=6.0 > max=0.0"]),
    "clip_min_nan": (_clip_after_relu(float("nan"), 6.0), ["(Clip)", "NaN"]),
    "declared_output_shape": (_output_decl("shape", 7), ["(Gemm)", "(3) vs (7)"]),
    "declared_output_dtype": (_output_decl("dtype", TensorProto.INT32), ["(Gemm)", "elem type"]),
}


@pytest.fixture(scope="module")
def tiny_conv_calib(work) -> Path:
    path = work / "tiny_conv_calib.npz"
    np.savez(path, x=np.random.default_rng(3).random((8, 1, 8, 8), dtype=np.float32))
    return path


@pytest.mark.parametrize("name", sorted(MODEL_SIGNATURES))
def test_inconsistent_model_is_refused_naming_the_node(tmp_path, capfd, tiny_conv_calib, name):
    """Each crashed (exit 70) or compiled silently (exit 0) before the ONNX graph checks."""
    mutate, names = MODEL_SIGNATURES[name]
    m = _tiny_conv_model()
    mutate(m)
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(m.SerializeToString())
    out = tmp_path / "out"
    assert_user_error(run_main(capfd, "compile", path, "--calib", tiny_conv_calib, "-o", out), path, *names)
    assert not out.exists() and tmp_siblings(out) == []


@pytest.mark.parametrize("scale", [1e30, 1e37])
def test_huge_calibration_values_one_line(tmp_path, capfd, scale):
    """digits CNN with calibration data ~1e30: "multiplier >= 2**31" was a ValueError (exit 70), and
    TVM's "BlockBuilder destroyed with remaining blocks!" followed the error line."""
    calib = tmp_path / "huge.npz"
    np.savez(calib, input=(np.random.default_rng(0).random((8, 1, 8, 8)) * 16 * scale).astype(np.float32))
    line = assert_user_error(run_main(capfd, "compile", DIGITS, "--calib", calib, "-o", tmp_path / "out"))
    assert "calibrat" in line
    assert not (tmp_path / "out").exists()


def test_failed_command_prints_no_python_warnings():
    """A numpy RuntimeWarning raised on the way to a user error (NaN/inf calibration did that) used to
    print before the error line. A subprocess: pytest's own warning capture would hide it here."""
    code = ("import sys, numpy as np\nfrom tvm_qplugin import cli, errors\n"
            "def warn_then_fail(_args):\n"
            "    np.float32(1e38) * np.float32(10)  # RuntimeWarning: overflow encountered\n"
            "    raise errors.CalibrationError('bad data')\n"
            "cli.cmd_targets = warn_then_fail\nsys.exit(cli.main(['targets']))\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert_user_error(r, "bad data")


# --- tampered artifacts --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_artifacts(work, tiny_artifact, dynamic_model):
    """Two artifacts of different models (another model's files for the mixing cases)."""
    rng = np.random.default_rng(4)
    other = tq.compile(dynamic_model, calib={"x": 100 * rng.standard_normal((16, 4)).astype(np.float32)},
                       input_shapes=["x=1,4"], int_io=True)
    return tiny_artifact.save(work / "art_a"), other.save(work / "art_b")


def _tampered(tmp_path, src: Path) -> Path:
    import shutil

    art = tmp_path / "art"
    shutil.copytree(src, art)
    return art


def _edit_io(edit):
    def apply(art):
        io = json.loads((art / "io.json").read_text())
        edit(io)
        (art / "io.json").write_text(json.dumps(io))
    return apply


ARTIFACT_SIGNATURES = {  # issue 16 table rows 8-14 (row 15, 16 and the mixes below)
    "io_inputs0_is_5": (_edit_io(lambda io: io["inputs"].__setitem__(0, 5)), ["io.json", "inputs[0]"]),
    "report_is_list": (lambda art: (art / "report.json").write_text("[]"), ["report.json", "not an object"]),
    "io_shape_edited": (_edit_io(lambda io: io["inputs"][0].__setitem__("shape", [1, 5])), ["io.json", "[1, 5]"]),
    "io_inputs_empty": (_edit_io(lambda io: io.__setitem__("inputs", [])), ["io.json", "'inputs'"]),
    "io_int_io_flipped": (_edit_io(lambda io: io.__setitem__("int_io", True)), ["io.json", "main takes"]),
    "io_raw_flipped": (_edit_io(lambda io: io["inputs"][0].__setitem__("raw", True)), ["io.json", "raw"]),
    "io_shape_abc": (_edit_io(lambda io: io["inputs"][0].__setitem__("shape", "abc")), ["io.json", "'abc'"]),
    "io_shape_negative": (_edit_io(lambda io: io["inputs"][0].__setitem__("shape", [1, -4])), ["io.json", "-4"]),
}


@pytest.mark.parametrize("rehash", [False, True], ids=["as-edited", "manifest-rewritten"])
@pytest.mark.parametrize("name", sorted(ARTIFACT_SIGNATURES))
def test_tampered_artifact_is_refused(tmp_path, capfd, saved_artifacts, name, rehash):
    """As edited, the manifest names the file; with the manifest rewritten to match (a deliberate
    edit), the loader's own validation still refuses it (these were exit 70 before)."""
    from tvm_qplugin.manifest import write_manifest

    edit, names = ARTIFACT_SIGNATURES[name]
    art = _tampered(tmp_path, saved_artifacts[0])
    edit(art)
    if rehash:
        write_manifest(art)
        assert_user_error(run_main(capfd, "verify", art, "--count", "2"), *names)
    else:
        file = "report.json" if name == "report_is_list" else "io.json"
        assert_user_error(run_main(capfd, "verify", art, "--count", "2"), art / file, "SHA-256")


@pytest.mark.parametrize("name", ["integer_module.json", "model.so", "io.json"])
def test_files_from_two_artifacts_are_refused_naming_the_file(tmp_path, capfd, saved_artifacts, name):
    """Another model's integer_module.json (or .so) under this io.json exited 0 or 70 before."""
    import shutil

    art = _tampered(tmp_path, saved_artifacts[0])
    shutil.copy(saved_artifacts[1] / name, art / name)
    assert_user_error(run_main(capfd, "verify", art), art / name, "another artifact")


def test_empty_c_folder_added_is_refused(tmp_path, capfd, saved_artifacts):
    art = _tampered(tmp_path, saved_artifacts[0])
    (art / "c").mkdir()
    assert_user_error(run_main(capfd, "verify", art), art / "c", "not part of this artifact")


def test_artifact_without_manifest_is_refused(tmp_path, capfd, saved_artifacts):
    art = _tampered(tmp_path, saved_artifacts[0])
    (art / "manifest.json").unlink()
    assert_user_error(run_main(capfd, "verify", art), "manifest.json")


def test_truncated_model_so_is_never_loaded(tmp_path, saved_artifacts):
    """Half a model.so crashed the process with SIGBUS (the loader mapped a broken ELF): now the
    manifest refuses it before any dlopen. A subprocess: a crash must not take pytest down."""
    art = _tampered(tmp_path, saved_artifacts[0])
    data = (art / "model.so").read_bytes()
    (art / "model.so").write_bytes(data[: len(data) // 2])
    assert_user_error(run_cli("verify", art), art / "model.so", "truncated")


def test_user_files_next_to_an_artifact_do_not_break_it(tmp_path, capfd, saved_artifacts):
    art = _tampered(tmp_path, saved_artifacts[0])
    (art / "notes.txt").write_text("mine")
    r = run_main(capfd, "verify", art, "--count", "2")
    assert r.returncode == 0, r.stderr


def test_foreign_model_so_under_a_rewritten_manifest(tmp_path, capfd, saved_artifacts):
    """Another build's model.so with the manifest rehashed over it (a deliberate mix): the library
    refuses this io.json's inputs at run time, which was an internal error (exit 70)."""
    import shutil

    from tvm_qplugin.manifest import write_manifest

    art = _tampered(tmp_path, saved_artifacts[0])
    shutil.copy(saved_artifacts[1] / "model.so", art / "model.so")
    write_manifest(art)
    assert_user_error(run_main(capfd, "verify", art, "--count", "2"), art / "model.so", "does not run")


@pytest.mark.parametrize("argv", [
    ["compile", "/no/such/model.onnx", "--target", "x86-host", "-o", "/tmp/qplugin-never-written"],
    ["compile", "--help"],
])
def test_a_user_error_is_reported_before_tvm_loads(argv):
    """The parser imports every subcommand's module (mixed/ among them): none may pull in TVM or
    PyTorch, or each refusal costs seconds of imports before its one line (2.3 s -> 0.2 s)."""
    probe = ("import sys\nfrom tvm_qplugin.cli import main\n"
             f"try:\n    rc = main({argv!r})\nexcept SystemExit as e:\n    rc = e.code\n"
             "print(rc, 'tvm' in sys.modules, 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.stdout.split()[-3:] == [str(2 if "--help" not in argv else 0), "False", "False"], out.stdout + out.stderr
