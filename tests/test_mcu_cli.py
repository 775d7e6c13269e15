"""`compile --target <Cortex-M board>` end to end: C package in OUT/c, bit-exact under qemu,
memory in report.json, `verify OUT` re-runs it; budgets fail with a one-line error."""
from __future__ import annotations

import json

import numpy as np
import pytest

from cli_run import run_cli
from qplugin_zoo import digits_split


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("mcu")
    x_train, _, x_test, y_test = digits_split()
    np.savez(d / "calib.npz", input=x_train[:128])
    np.savez(d / "eval.npz", input=x_test[:48], labels=y_test[:48])
    return d




# [nrf52840] (Cortex-M4) is `extended`: the M4 CLI compile + qemu check is test_tutorials_mcu.py's, the
# M4 C package on that board test_export_tutorial.py's
@pytest.mark.parametrize("board", [pytest.param("nrf52840", marks=pytest.mark.extended), "qemu-mps3-an547"])
def test_compile_for_board_and_verify(data, board):
    out = data / f"out-{board}"
    r = run_cli("compile", "examples/digits_cnn.onnx", "--target", board, "--calib", data / "calib.npz", "--eval",
            data / "eval.npz", "-o", out)
    assert r.returncode == 0, r.stderr
    assert "C package    bit-exact yes under emulation" in r.stdout
    rep = json.loads((out / "report.json").read_text())
    assert rep["integer_only"] and rep["bit_exact"] and rep["mcu"]["bit_exact"]
    mem = rep["memory"]
    assert mem["peak_arena_bytes"] <= 1.1 * mem["liveness_lower_bound_bytes"]
    assert mem["flash_bytes"] > mem["weights_bytes"] > 0 and mem["stack_bytes"] > 0
    assert all(layer.get("instructions_per_mac") for layer in rep["layers"])
    assert (out / "c" / "model.h").is_file() and (out / "c" / "CMakeLists.txt").is_file()
    v = run_cli("verify", out, "--count", "3")
    assert v.returncode == 0, v.stderr
    res = json.loads(v.stdout)
    assert res["bit_exact"] and res["c_package_host"]["bit_exact"] and res["c_package_board"]["bit_exact"]


def test_budget_overflow_is_a_one_line_error(data):
    out = data / "out-budget"
    r = run_cli("compile", "examples/digits_cnn.onnx", "--target", "nrf52840", "--calib", data / "calib.npz",
            "--budget", "ram=1KB", "-o", out)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tvm-qplugin: error:") and "Traceback" not in r.stderr
    assert not out.exists()


def test_bad_budget_syntax(data):
    r = run_cli("compile", "examples/digits_cnn.onnx", "--target", "nrf52840", "--calib", data / "calib.npz",
            "--budget", "ram=lots", "-o", data / "x")
    assert r.returncode == 2 and "--budget" in r.stderr


def test_compile_for_aarch64_linux_board(data):
    """Linux boards get the same C package as a deploy bundle, run under qemu-aarch64 on the board's core."""
    out = data / "out-rpi5"
    r = run_cli("compile", "examples/digits_cnn.onnx", "--target", "rpi5", "--calib", data / "calib.npz", "-o", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["mcu"]["bit_exact"] and rep["mcu"]["verified_on"] == "rpi5" and rep["bit_exact"]
    convs = [layer for layer in rep["layers"] if layer["op"] in ("conv2d", "dense")]   # all counted, hand-written too
    assert convs and all(layer["instructions_per_mac"] > 0 for layer in convs), convs
    assert 0 < sum(layer["instructions"] for layer in convs) <= rep["mcu"]["instructions_per_inference"]
    assert (out / "c" / "model.h").is_file() and (out / "io.json").is_file()
    runner = out / "c" / "runner" / "qmodel_runner"
    assert runner.is_file() and runner.read_bytes()[:4] == b"\x7fELF" and (out / "c" / "runner" / "runner.c").is_file()
    assert runner.read_bytes()[18] == 0xB7  # e_machine EM_AARCH64
