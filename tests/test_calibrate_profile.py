"""calibrate.py and profile.py tested directly on tiny graphs (sub-second builds, no ONNX).

Calibration: a float graph whose every value is a multiple of 1/8, so each observed tensor, its
min-max range and its per-channel mean are exact in float32/float64 and can be stated from NumPy.
Profiling: a real integer module (integerize + build, two calls of one shared conv kernel) run
under the VM instrument; the aggregation functions are also fed hand-written call lists.
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import ir as I
from tvm.script import relax as R

from tvm_qplugin import profile
from tvm_qplugin.artifact import Artifact, IOSpec
from tvm_qplugin.build import build
from tvm_qplugin.calibrate import FloatRunner, Ranges, calibrate
from tvm_qplugin.data import InputSpec, from_arrays
from tvm_qplugin.errors import CalibrationError
from tvm_qplugin.ops import op_of
from tvm_qplugin.passes.graph import Graph
from tvm_qplugin.passes.integerize import IntegerizeConfig, integerize

TARGET = tvm.target.Target.from_device(tvm.cpu())
SPEC = [InputSpec("x", (2, 3, 2, 2), "float32")]      # model batch of 2 samples


@I.ir_module
class Affine:
    @R.function
    def main(x: R.Tensor((2, 3, 2, 2), "float32")) -> R.Tensor((2, 12), "float32"):
        with R.dataflow():
            y = R.multiply(x, R.const(2.0, "float32"))
            z = R.subtract(y, R.const(1.0, "float32"))
            r = R.nn.relu(z)
            gv = R.reshape(r, (2, 12))
            R.output(gv)
        return gv


def _float_twins(x: np.ndarray) -> dict[str, np.ndarray]:
    y = x * np.float32(2)
    z = y - np.float32(1)
    r = np.maximum(z, 0)
    return {"x": x, "y": y, "z": z, "r": r, "gv": r.reshape(len(x) // 2, 2, 12)}


# 4 samples = 2 batches; the second batch reaches further (to tell `limit` from all batches)
SAMPLES = (np.arange(-12, 36).reshape(4, 3, 2, 2) / 8).astype(np.float32)  # the first batch alone also reaches the ReLU


@pytest.fixture(scope="module")
def runner() -> FloatRunner:
    return FloatRunner(Affine, TARGET)


def test_float_runner_taps_every_float_tensor(runner):
    assert [v.name for v in runner.observed] == ["x", "y", "z", "r", "gv"]
    taps, outs = runner.run({"x": SAMPLES[:2]})
    want = _float_twins(SAMPLES[:2])
    for v, got in zip(runner.observed, taps):
        np.testing.assert_array_equal(got, want[v.name].reshape(got.shape), err_msg=v.name)
    assert len(outs) == 1
    np.testing.assert_array_equal(outs[0], want["r"].reshape(2, 12))


def _by_name(ranges: Ranges, runner: FloatRunner) -> dict[str, tuple[float, float]]:
    return {v.name: ranges[v] for v in runner.observed}


def test_minmax_is_the_largest_magnitude_and_inputs_keep_their_extremes(runner):
    ranges = calibrate(runner, from_arrays({"x": SAMPLES}, SPEC), method="minmax")
    t = _float_twins(SAMPLES)
    amax = {k: float(np.abs(v).max()) for k, v in t.items()}
    assert _by_name(ranges, runner) == {
        "x": (float(SAMPLES.min()), float(SAMPLES.max())),   # the input: observed lo/hi, not symmetric
        "y": (-amax["y"], amax["y"]),                          # signed: symmetric around 0
        "z": (-amax["z"], amax["z"]),
        "r": (0.0, amax["r"]),                                 # never negative: unsigned range
        "gv": (0.0, amax["gv"]),
    }
    for v in runner.observed:   # every element of both batches went into the histogram
        assert ranges.histograms[v].counts.sum() == SAMPLES.size, v.name


def test_limit_uses_only_the_first_batches(runner):
    ranges = calibrate(runner, from_arrays({"x": SAMPLES}, SPEC), method="minmax", limit=2)
    first = _float_twins(SAMPLES[:2])
    got = _by_name(ranges, runner)
    assert got["x"] == (float(SAMPLES[:2].min()), float(SAMPLES[:2].max()))
    assert got["y"][1] == float(np.abs(first["y"]).max()) < float(np.abs(2 * SAMPLES).max())


def test_channel_means_are_per_channel_means_over_all_samples(runner):
    ranges = calibrate(runner, from_arrays({"x": SAMPLES}, SPEC), method="minmax")
    t = _float_twins(SAMPLES)
    for v in runner.observed:
        a = t[v.name].astype(np.float64)
        want = a.mean(axis=(0, 2, 3)) if a.ndim == 4 else a.reshape(-1, a.shape[-1]).mean(axis=0)
        np.testing.assert_array_equal(ranges.channel_means[v], want, err_msg=v.name)


def test_mse_clips_the_tail_that_minmax_keeps(runner):
    """Gaussian data: MSE trades the rare largest values for resolution, min-max keeps them; the
    model input keeps its observed extremes under either method."""
    data = np.random.default_rng(8).standard_normal((2048, 3, 2, 2)).astype(np.float32)
    ds = from_arrays({"x": data}, SPEC)
    mse, minmax = (_by_name(calibrate(runner, ds, method=m), runner) for m in ("mse", "minmax"))
    amax_y = float(np.abs(2 * data).max())
    assert minmax["y"] == (-amax_y, amax_y)
    assert mse["y"][0] == -mse["y"][1] and mse["y"][1] < 0.95 * amax_y, (mse["y"], amax_y)
    assert mse["x"] == minmax["x"] == (float(data.min()), float(data.max()))


@I.ir_module
class Reciprocal:
    @R.function
    def main(x: R.Tensor((2, 3), "float32")) -> R.Tensor((2, 3), "float32"):
        with R.dataflow():
            gv = R.divide(R.const(1.0, "float32"), x)
            R.output(gv)
        return gv


def test_an_activation_overflowing_to_inf_names_the_tensor_and_batch():
    data = np.ones((4, 3), np.float32)
    data[3, 1] = 0.0      # finite input (accepted by the data checks), 1/0 = inf inside the model
    ds = from_arrays({"x": data}, [InputSpec("x", (2, 3), "float32")])
    with pytest.raises(CalibrationError, match=r"calibration batch 2: float tensor gv \(non-finite"):
        calibrate(FloatRunner(Reciprocal, TARGET), ds, method="minmax")


# --- profile.py ----------------------------------------------------------------------------------

RNG = np.random.default_rng(3)
W1, W2 = (RNG.normal(size=(4, 4, 3, 3)).astype(np.float32) * 0.2 for _ in range(2))


@I.ir_module
class TwoConvs:
    """uint8 in, conv+ReLU twice (same shapes and types: one shared kernel), max pool."""

    @R.function
    def main(x: R.Tensor((1, 4, 6, 6), "float32")) -> R.Tensor((1, 4, 3, 3), "float32"):
        with R.dataflow():
            a = R.nn.conv2d(x, R.const(W1), padding=[1, 1, 1, 1])
            ra = R.nn.relu(a)
            b = R.nn.conv2d(ra, R.const(W2), padding=[1, 1, 1, 1])
            rb = R.nn.relu(b)
            gv = R.nn.max_pool2d(rb, pool_size=[2, 2], strides=[2, 2])
            R.output(gv)
        return gv


@pytest.fixture(scope="module")
def art() -> Artifact:
    g = Graph(TwoConvs["main"])
    named = {v.name: v for v in list(g.params) + [b.var for b in g.bindings]}
    by_name = {"x": (0.0, 1.0), "a": (-4.0, 4.0), "ra": (0.0, 4.0), "b": (-4.0, 4.0), "rb": (0.0, 4.0),
               "gv": (0.0, 4.0)}
    im = integerize(TwoConvs, Ranges({named[n]: r for n, r in by_name.items()}, {}),
                    IntegerizeConfig(bias_correction=False))
    executable, _ = build(im.mod, TARGET)
    io = [[IOSpec(name, shape, qt) for name, shape, qt in specs] for specs in (im.inputs, im.outputs)]
    return Artifact(im.mod, io[0], io[1], int_io=False, executable=executable)


def _core_calls(art: Artifact) -> list[tuple[relax.Var, str]]:
    return [(b.var, b.args[0].name_hint) for b in Graph(art.integer_mod["core"]).bindings
            if b.op_name == "relax.call_tir"]


def _kernels(art: Artifact) -> dict[str, str]:
    """kernel symbol -> qplugin.op, for every PrimFunc of the integer module."""
    return {gv.name_hint: op_of(f)[0] for gv, f in art.integer_mod.functions.items() if isinstance(f, tvm.tirx.PrimFunc)}


def test_fixture_shares_one_conv_kernel(art):
    names = [name for _, name in _core_calls(art)]
    assert len(names) == 3 and names[0] == names[1] != names[2], names


def test_instrumented_runs_time_every_kernel_call_in_order(art):
    runs = profile.instrumented_runs(art, 3)
    assert len(runs) == 3
    kernels = _kernels(art)
    sequences = [[sym for sym, _ in calls if sym in kernels] for calls in runs]
    # main: quantize, then core's three calls in binding order, then dequantize -- in every run
    want = ["quantize", "conv2d_requant", "conv2d_requant", "max_pool2d", "dequantize"]
    for seq in sequences:
        assert [kernels[s] for s in seq] == want, seq
    for calls in runs:
        assert all(us > 0 for _, us in calls), calls
        core = [us for sym, us in calls if sym == "core"]
        inside = sum(us for sym, us in calls if kernels.get(sym) in ("conv2d_requant", "max_pool2d"))
        assert len(core) == 1 and inside < core[0], (inside, core)   # nested calls fit in the caller


def test_binding_times_follow_call_order_for_a_shared_kernel(art):
    (a, conv), (b, _), (p, pool) = _core_calls(art)
    quant, deq = (s for s, op in _kernels(art).items() if op in ("quantize", "dequantize"))
    runs = [[(quant, 9.0), ("vm.builtin.alloc_tensor", 5.0), (conv, 1.0), (conv, 20.0), (pool, 3.0), ("core", 30.0),
             (deq, 9.0)],
            [(quant, 9.0), (conv, 3.0), (conv, 40.0), (pool, 5.0), ("core", 50.0), (deq, 9.0)],
            [(quant, 9.0), (conv, 2.0), (conv, 30.0), (pool, 4.0), ("core", 40.0), (deq, 9.0)]]
    assert profile.binding_times(art, runs) == {a: 2.0, b: 30.0, p: 4.0}      # medians per call
    # a call of one of core's kernels outside the contiguous core sequence is not core's
    assert profile.binding_times(art, [[(pool, 99.0)] + r for r in runs]) == {a: 2.0, b: 30.0, p: 4.0}
    assert profile.binding_times(art, [runs[0][:3] + runs[0][4:]]) == {}       # a call missing: no guess


def test_binding_times_of_a_real_run_are_positive_and_cover_core(art):
    times = profile.binding_times(art, profile.instrumented_runs(art, 3))
    assert set(times) == {v for v, _ in _core_calls(art)}
    assert all(t > 0 for t in times.values()), times


def test_kernel_times_sum_calls_then_take_the_median():
    runs = [[("a", 1.0), ("a", 2.0), ("b", 5.0)], [("a", 3.0), ("b", 7.0)], [("a", 4.0), ("b", 6.0), ("a", 1.0)]]
    assert profile.kernel_times(runs) == {"a": 3.0, "b": 6.0}


def test_by_op_groups_kernels_by_op_and_ignores_the_rest(art):
    sym = {op: s for s, op in _kernels(art).items()}
    times = {sym["conv2d_requant"]: 30.0, sym["max_pool2d"]: 10.0, sym["quantize"]: 8.0, sym["dequantize"]: 2.0,
             "core": 55.0, "vm.builtin.alloc_storage": 90.0}
    assert profile.by_op(art, times) == [
        {"op": "conv2d_requant", "us": 30.0, "kernels": 1, "share": 0.6},
        {"op": "max_pool2d", "us": 10.0, "kernels": 1, "share": 0.2},
        {"op": "quantize", "us": 8.0, "kernels": 1, "share": 0.16},
        {"op": "dequantize", "us": 2.0, "kernels": 1, "share": 0.04},
    ]


def test_by_op_of_a_real_run_covers_every_op_and_shares_sum_to_one(art):
    rows = profile.by_op(art, profile.kernel_times(profile.instrumented_runs(art, 3)))
    assert {r["op"] for r in rows} == {"quantize", "conv2d_requant", "max_pool2d", "dequantize"}
    assert all(r["us"] >= 0 and r["kernels"] == 1 for r in rows), rows
    assert [r["us"] for r in rows] == sorted((r["us"] for r in rows), reverse=True)
    assert sum(r["share"] for r in rows) == pytest.approx(1.0, abs=1e-3)
