"""--budget is enforced on every target or refused up front; degenerate calibration data is refused;
report.json says which data the accuracy figure comes from."""
from __future__ import annotations

import logging

import numpy as np
import pytest
from onnx_builders import OnnxGraph

import tvm_qplugin as tq
from tvm_qplugin.budget import Budget, bops
from tvm_qplugin.errors import BudgetError, CalibrationError, MemoryBudgetError, QPluginError


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """conv3x3 -> relu -> conv1x1: 8x8 input, a couple of seconds to compile."""
    d = tmp_path_factory.mktemp("budget")
    g = OnnxGraph((1, 3, 8, 8))
    y = g.conv(g.relu(g.conv("x", 8, k=3)), 4, k=1)
    model = g.save(y, d / "tiny.onnx")
    calib = np.random.default_rng(1).standard_normal((8, 3, 8, 8)).astype(np.float32)
    return model, {"x": calib}


def test_budget_parse_units_and_refusals():
    b = Budget.parse("size=2KB, ram=1MB,latency=250us,bops=3G")
    assert (b.size, b.ram, b.latency, b.bops) == (2048, 1024**2, 0.25, 3e9)
    assert Budget.parse("latency=2s").latency == 2000
    for bad in ("size=lots", "speed=1", "size=-1", "size=nan", "size=1KB,size=2KB", "latency=5KB", "size"):
        with pytest.raises(QPluginError, match="--budget"):
            Budget.parse(bad)


def test_bops_is_macs_times_bits():
    assert bops([{"macs": 10, "w_bits": 8, "a_bits": 8}, {"macs": 3, "w_bits": None, "a_bits": 16}]) == 640


def test_size_budget_is_enforced_on_x86_host(tiny):
    model, calib = tiny
    with pytest.raises(BudgetError, match="size budget is 1: over by"):
        tq.compile(model, target="x86-host", calib=calib, budget="size=1B")


def test_bops_budget_is_enforced_on_x86_host(tiny):
    model, calib = tiny
    with pytest.raises(BudgetError, match="BOPs"):
        tq.compile(model, target="x86-host", calib=calib, budget="bops=1")


def test_latency_budget_is_enforced_where_the_target_runs(tiny):
    model, calib = tiny
    with pytest.raises(BudgetError, match="latency=1e-06ms on x86-host"):
        tq.compile(model, target="x86-host", calib=calib, budget="latency=0.000001ms", timing_runs=3)


def test_budgets_that_cannot_be_enforced_are_refused_before_any_work(tiny):
    model, calib = tiny
    with pytest.raises(QPluginError, match="ram=.* cannot be enforced on 'x86-host'"):
        tq.compile(model, target="x86-host", calib=calib, budget="ram=1B")
    with pytest.raises(QPluginError, match="latency=.* cannot be enforced on 'stm32f746-disco'"):
        tq.compile(model, target="stm32f746-disco", calib=calib, budget="latency=5ms")
    assert issubclass(MemoryBudgetError, BudgetError)  # one family: `except BudgetError` sees memory too


def test_generous_budgets_pass_and_are_reported(tiny):
    model, calib = tiny
    art = tq.compile(model, target="x86-host", calib=calib, budget="size=1MB,bops=1G,latency=10s", timing_runs=3)
    assert art.report["budget"] == {"size": 1024**2, "latency": 10000.0, "bops": 1e9}
    assert art.report["accuracy"]["data"] == "calibration"  # no --eval: measured on the calibration set


def test_accuracy_names_the_eval_set(tiny):
    model, calib = tiny
    ev = {"x": np.random.default_rng(2).standard_normal((4, 3, 8, 8)).astype(np.float32)}
    art = tq.compile(model, target="x86-host", calib=calib, eval=ev, timing_runs=3)
    assert art.report["accuracy"]["data"] == "eval"
    assert art.report["observer"] == "percentile"  # the one default (quant/observers.py)


def test_all_zero_calibration_data_is_refused(tiny):
    model, _ = tiny
    with pytest.raises(CalibrationError, match="calibrated range is zero for model input/output x"):
        tq.compile(model, target="x86-host", calib={"x": np.zeros((4, 3, 8, 8), np.float32)})


def test_constant_calibration_data_warns(tiny, caplog):
    model, _ = tiny
    with caplog.at_level(logging.WARNING, logger="tvm_qplugin.calibrate"):
        tq.compile(model, target="x86-host", calib={"x": np.full((4, 3, 8, 8), 0.5, np.float32)}, timing_runs=3)
    assert any("one constant value" in r.getMessage() for r in caplog.records)


def test_labels_in_an_array_dict_are_labels_as_in_an_npz():
    """``calib={"input": x, "labels": y}`` once dropped the labels silently (no top-1 figure)."""
    from tvm_qplugin.data import InputSpec, from_arrays

    specs = [InputSpec("input", (1, 4), "float32")]
    ds = from_arrays({"input": np.zeros((3, 1, 4), np.float32), "labels": np.array([0, 2, 1])}, specs)
    assert ds.labels.tolist() == [0, 2, 1] and set(ds.arrays) == {"input"}
    named = [InputSpec("labels", (1, 4), "float32")]  # an input that is called "labels" stays an input
    ds = from_arrays({"labels": np.zeros((3, 1, 4), np.float32)}, named)
    assert ds.labels is None and set(ds.arrays) == {"labels"}
