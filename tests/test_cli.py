"""The CLI's happy paths, through ``python -m tvm_qplugin`` in a subprocess: targets, inspect,
compile (summary + report.json), verify, and --int-io."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import tvm_qplugin as tq
from cli_run import ok, run_cli
from qplugin_zoo import digits_split

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
REPORT_KEYS = ("model", "target", "precision", "nonlinear", "attention", "integer_only", "float_ops", "division_ops",
               "bit_exact", "bit_exact_inputs", "accuracy", "size_bytes", "layers", "latency_ms", "tuning", "toolchain")




@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    x_train, _, x_test, y_test = digits_split()
    d = tmp_path_factory.mktemp("cli_data")
    paths = {"calib": d / "calib.npz", "eval": d / "eval.npz"}
    np.savez(paths["calib"], input=x_train[:128])
    np.savez(paths["eval"], input=x_test[:64], labels=y_test[:64])
    return paths


@pytest.fixture(scope="module")
def compiled(tmp_path_factory, data) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("cli_out") / "digits_int8"
    r = run_cli("compile", DIGITS, "--target", "x86-host", "--calib", data["calib"], "--eval", data["eval"],
                "-o", out)
    return out, r


@pytest.fixture(scope="module")
def compiled_int_io(tmp_path_factory, data) -> tuple[Path, subprocess.CompletedProcess]:
    out = tmp_path_factory.mktemp("cli_out_int") / "digits_int_io"
    r = run_cli("compile", DIGITS, "--calib", data["calib"], "--int-io", "-o", out)
    return out, r


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def test_help_lists_every_command_with_its_purpose():
    """The five commands of the CLI contract, each with a one-line description (a dropped, renamed
    or undocumented subcommand fails)."""
    out = ok(run_cli("--help"))
    listed = dict(re.findall(r"^    (\w+)\s{2,}(\S.*)$", out, re.M))
    assert sorted(listed) == ["compile", "inspect", "sensitivity", "targets", "tune", "verify"], out


def test_targets_lists_host_with_detected_isa_features():
    out = ok(run_cli("targets"))
    host = [ln for ln in out.splitlines() if ln.startswith("x86-host")]
    assert len(host) == 1, out
    m = re.search(r"\[(.*)\]\s*$", host[0])
    assert m, f"no ISA feature list on: {host[0]}"
    features = [f.strip() for f in m.group(1).split(",") if f.strip()]
    flags = _cpu_flags()
    for f in ("sse4_2", "avx2", "avx512f", "avx512_vnni"):  # detected, not hard-coded: agree with /proc/cpuinfo
        assert (f in features) == (f in flags), (f, features)
    assert set(features) <= flags and features


def test_inspect_lists_ops_and_all_supported():
    out = ok(run_cli("inspect", DIGITS))
    assert str(DIGITS) in out
    assert re.search(r"^\s+input: \[1, 1, 8, 8\]$", out, re.M), out
    model = onnx.load(str(DIGITS))
    for op in {n.op_type for n in model.graph.node}:
        assert re.search(rf"^\s+{op}\s+\d+\s+supported$", out, re.M), (op, out)
    assert out.strip().splitlines()[-1] == "verdict all ops supported"


def test_inspect_flags_unsupported_and_dynamic(tmp_path):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node("Relu", ["x"], ["a"], name="r"), helper.make_node("Sin", ["a"], ["y"])],
                          "g", [x], [y])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 9
    onnx.save(m, str(tmp_path / "m.onnx"))
    out = ok(run_cli("inspect", tmp_path / "m.onnx"))
    assert "dynamic: needs --input-shape" in out
    assert re.search(r"^\s+Sin\s+1\s+NOT SUPPORTED", out, re.M), out
    assert out.strip().splitlines()[-1] == "verdict unsupported: Sin"
    out = ok(run_cli("inspect", tmp_path / "m.onnx", "--input-shape", "x=2,4"))
    assert "-> (2, 4)" in out


def test_compile_prints_summary_and_writes_report(compiled):
    out, r = compiled
    stdout = ok(r)
    assert f"-> {out}" in stdout or str(out) in stdout
    assert re.search(r"^integer-only yes", stdout, re.M), stdout
    assert re.search(r"^bit-exact\s+yes", stdout, re.M), stdout
    assert re.search(r"^target\s+x86-host", stdout, re.M), stdout
    assert "top-1 vs labels" in stdout  # --eval carried labels
    assert sorted(p.name for p in out.iterdir()) == ["integer_module.json", "io.json", "manifest.json", "model.so",
                                                     "report.html", "report.json"]
    report = json.loads((out / "report.json").read_text())
    for key in REPORT_KEYS:
        assert key in report, key
    assert report["integer_only"] is True and report["float_ops"] == 0
    assert report["bit_exact"] is True and report["bit_exact_inputs"] >= 16
    assert report["target"] == "x86-host" and report["model"] == str(DIGITS)
    assert report["accuracy"]["inputs"] == 64 and report["accuracy"]["top1_int"] >= 0.9


def test_verify_outdir_bit_exact(compiled, data):
    out, r = compiled
    ok(r)
    res = json.loads(ok(run_cli("verify", out, "--count", "8")))
    assert res["bit_exact"] is True and res["inputs"] == 8 and res["mismatches"] == []
    assert res["integer_only"] is True and res["float_ops"] == 0
    res = json.loads(ok(run_cli("verify", out, "--inputs", data["eval"], "--count", "5")))
    assert res["bit_exact"] is True and res["inputs"] == 5


def test_int_io_build(compiled_int_io, data):
    out, r = compiled_int_io
    stdout = ok(r)
    assert re.search(r"^bit-exact\s+yes", stdout, re.M), stdout
    io = json.loads((out / "io.json").read_text())
    assert io["int_io"] is True
    assert io["inputs"][0]["dtype"] in ("int8", "uint8") and io["outputs"][0]["dtype"] == "int32"
    art = tq.load(out)
    assert art.int_io
    x = np.load(data["eval"])["input"][:1]
    q = art.inputs[0].qtype.quantize(x)
    assert q.dtype == np.dtype(io["inputs"][0]["dtype"])
    y = art.run_integer([q])[0]
    assert y.dtype == np.int32 and y.shape == (1, 10)
    res = json.loads(ok(run_cli("verify", out, "--count", "4")))
    assert res["bit_exact"] is True and res["inputs"] == 4
