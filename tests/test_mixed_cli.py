"""Mixed precision on the command line: ``sensitivity``, budgets, ``--calib distill`` refusals (the
compile on distilled data is test_report_html's: one compile serves both)."""
from __future__ import annotations

import json

import numpy as np

from tests.onnx_builders import OnnxGraph
from tests.test_cli import DIGITS, ok, run_cli


def tiny_model(tmp_path, batchnorm: bool = False):
    g = OnnxGraph((1, 1, 8, 8), rng=np.random.default_rng(2), input_name="input")
    h = g.conv("input", 8)
    h = g.relu(g.batchnorm(h) if batchnorm else h)
    r = g.relu(g.add(h, g.conv(h, 8)))
    return g.save(g.gemm(g.flatten(g.gap(g.conv(r, 16, stride=2))), 4), tmp_path / "m.onnx")


def _data(tmp_path, n: int = 64):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=x, labels=rng.integers(0, 4, n))
    return tmp_path / "calib.npz"


def test_sensitivity_prints_the_table_and_writes_the_plan(tmp_path):
    model, calib = tiny_model(tmp_path), _data(tmp_path)
    out = ok(run_cli("sensitivity", model, "--calib", calib, "--eval", calib, "--budget", "size=70%",
                     "--probes", "64", "--samples", "16", "-o", tmp_path / "out"))
    assert "omega_w4" in out and "plan         size=70%" in out, out
    res = json.loads((tmp_path / "out" / "sensitivity.json").read_text())
    assert set(res["plan"]["bits"]) == {layer["name"] for layer in res["sensitivity"]["layers"]}
    assert res["plan"]["size"] <= 0.7 * res["uniform"]["int8"]["size"]
    assert res["sensitivity"]["probes"] <= 64 and (tmp_path / "out" / "report.html").is_file()


def _one_error_line(r, pattern: str) -> str:
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and pattern in lines[0], r.stderr
    return lines[0]


def test_budget_errors_are_one_line(tmp_path):
    model, calib = tiny_model(tmp_path), _data(tmp_path)
    args = ("sensitivity", model, "--calib", calib, "--probes", "16", "--samples", "8", "--budget")
    _one_error_line(run_cli(*args, "size=10%"), "is infeasible: the smallest feasible size is")
    _one_error_line(run_cli(*args, "speed=3"), "expected each of size=")
    _one_error_line(run_cli(*args, "latency=3ms"), "no per-layer latency was measured")


def test_distill_on_folded_batchnorms_is_refused_before_any_work(tmp_path):
    line = _one_error_line(run_cli("compile", DIGITS, "--calib", "distill", "-o", tmp_path / "o"),
                           "has no BatchNormalization node")
    assert "folded" in line
    _one_error_line(run_cli("sensitivity", DIGITS, "--calib", "distill"), "has no BatchNormalization node")
