"""MetaSchedule over the tensorized x86 rules' own design spaces (schedules/x86_int8_space.py):
a prepacked groups-1 conv and a dense layer are tuning tasks as the packed kernel compile builds,
every design of their space is bit-exact against the op's NumPy twin (AVX-512 VNNI and AVX2),
a 2-trial tune stores records that compile applies (``tensorir-tuned``, whole model bit-exact),
and the end-of-task interleaved comparison decides whether a record is applied.

One tiny model (3x3 conv 8 -> 16 on 8x8, dense 1024 -> 10: two packed kernels), tuned once per
module with 2 trials per task.
"""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tvm
from onnx_builders import OnnxGraph

import tvm_qplugin as tq
from tvm_qplugin.schedules import RULES
from tvm_qplugin.schedules.intrin_x86 import AVX2, select_isa
from tvm_qplugin.schedules.packing import packed_info, packing_plan
from tvm_qplugin.targets import get_board
from tvm_qplugin.tuning.apply import resolve_tuning
from tvm_qplugin.tuning.compare import interleaved_us
from tvm_qplugin.tuning.database import DEFAULTS, TuningDB
from tvm_qplugin.tuning.isa import restrict_target, with_num_cores
from tvm_qplugin.tuning.space import design_space
from tvm_qplugin.tuning.tasks import extract_tasks, workload_of
from tvm_qplugin.tuning.tuner import integer_module, tune
from tvm_qplugin.tuning.verify import KernelCheck, run_module

PACKED_OPS = {"conv2d_requant", "dense_requant"}


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    g = OnnxGraph((1, 8, 8, 8))
    y = g.relu(g.conv("x", 16, k=3, pads=[1, 1, 1, 1]))
    path = g.save(g.gemm(g.flatten(y), 10), d / "conv_dense.onnx")
    calib = d / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).normal(size=(8, 8, 8, 8)).astype(np.float32))
    return str(path), str(calib)


def _target(isa):
    return with_num_cores(restrict_target(get_board("x86-host").target(), isa))


@pytest.fixture(scope="module")
def packed_tasks(model):
    """The packed tasks per ISA: ``{isa: [KernelTask]}`` (AVX-512 VNNI here, and AVX2 restricted)."""
    path, calib = model
    imod = integer_module(path, get_board("x86-host"), calib).mod
    return {isa: [t for t in extract_tasks(imod, _target(isa)) if t.packing is not None] for isa in (None, "avx2")}


@pytest.mark.parametrize("isa", [None, "avx2"])
def test_packed_conv_and_dense_are_tasks_whose_every_design_is_bit_exact(packed_tasks, isa):
    tasks = packed_tasks[isa]
    assert sorted(t.op for t in tasks) == ["conv2d_requant", "dense_requant"], \
        [t.describe() for t in tasks]
    target = _target(isa)
    for task in tasks:
        name, _ = design_space(task.func, target)
        assert name == f"rule:{packed_info(task.func)['rule']}"
        rule = next(r for r in RULES if type(r).__name__ == packed_info(task.func)["rule"])
        designs = rule.apply(task.func, target, tunable=True)
        assert len(designs) >= 2 and all(any(i.kind.name.startswith("Sample") for i in d.trace.insts) for d in designs)
        check = KernelCheck(task)
        for sch in designs:
            built = tvm.compile(workload_of(sch.mod["main"]), target=target)
            wrong = check.mismatch(lambda inputs: run_module(built, inputs, check.out_info))
            assert wrong is None, f"{task.describe()}: {wrong}"


def test_a_kernel_packed_by_a_rule_without_a_design_space_is_no_task(tmp_path):
    """A depthwise conv is prepacked and tensorized by a rule with no design space
    (schedules/x86_depthwise.py, x86_depthwise_pairs.py): no task (nothing MetaSchedule could search); the groups-1 conv
    after it, packed by a rule with a space (tuning/space.py's ``rule_space``), is one."""
    g = OnnxGraph((1, 8, 8, 8))
    y = g.conv(g.relu(g.conv("x", 8, k=3, pads=[1, 1, 1, 1], groups=8)), 16, k=3, pads=[1, 1, 1, 1])
    path = g.save(g.relu(y), tmp_path / "dw_conv.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(0).normal(size=(4, 8, 8, 8)).astype(np.float32))
    imod = integer_module(str(path), get_board("x86-host"), str(tmp_path / "calib.npz")).mod
    target = _target(None)
    packed_by = sorted(packed_info(p.func)["rule"] for p in packing_plan(imod, target).values())
    # AVX2 hosts: stride-1 depthwise on the row-pair rule (schedules/x86_depthwise_pairs.py), no space either
    depthwise = "DepthwiseRowPairs" if select_isa(target, "uint8") is AVX2 else "DepthwiseConv2DTensorized"
    assert packed_by == sorted(["Conv2DTensorized", depthwise]), packed_by
    tasks = extract_tasks(imod, target)
    assert [packed_info(t.func)["rule"] for t in tasks if t.packing is not None] == ["Conv2DTensorized"], \
        [t.describe() for t in tasks]


@pytest.fixture(scope="module")
def tuned(model, tmp_path_factory):
    path, calib = model
    db = tmp_path_factory.mktemp("tuned") / "db"
    return db, tune(path, calib=calib, trials=2, trials_per_iter=2, db=db)


def test_a_two_trial_tune_stores_records_that_compile_applies_bit_exact(model, tuned, tmp_path):
    path, calib = model
    db, res = tuned
    packed = [t for t in res.tasks if t.op in PACKED_OPS]
    assert len(packed) == 2 and all(t.space.startswith("rule:") and t.stored >= 1 and not t.rejected_wrong
                                    for t in packed), [t.line(2) for t in packed]
    tdb = TuningDB.open(db)
    assert {k for k in tdb.verdicts} >= {k for k, n in tdb.stored.items() if n}, "no interleaved verdict stored"
    # force the verdict to "record faster", as it may go either way on this machine, to see it applied
    forced = tmp_path / "forced"
    shutil.copytree(db, forced)
    with open(forced / DEFAULTS, "a") as f:
        for key in tdb.verdicts:
            f.write(json.dumps({"workload": key, "us": 1e6, "schedule": "default rule", "best_us": 1.0,
                                "interleaved_rounds": 1, "best_faster": True}) + "\n")
    r = tq.compile(path, calib=calib, tuning_db=str(forced)).report
    assert r["bit_exact"], "a tuned tensorized kernel broke the whole-model bit-exact check"
    assert [layer["kernel"]["source"] for layer in r["layers"]] == ["tensorir-tuned"] * 2, r["layers"]
    assert r["tuning"]["tasks_tuned"] == 2, r["tuning"]


def test_the_interleaved_verdict_decides_a_record_slower_than_the_default_is_not_applied(model, tuned, tmp_path):
    path, calib = model
    db, _ = tuned
    key = next(k for k, n in TuningDB.open(db).stored.items() if n)
    target = _target(None)

    def with_verdict(best_faster: bool, name: str):
        copy = tmp_path / name
        shutil.copytree(db, copy)
        with open(copy / DEFAULTS, "a") as f:  # the tune's times measured apart say the record is faster
            f.write(json.dumps({"workload": key, "us": 1e6, "schedule": "default rule"}) + "\n")
            f.write(json.dumps({"workload": key, "us": 5.0, "schedule": "default rule", "best_us": 9.0 if not best_faster
                                else 1.0, "interleaved_rounds": 9, "best_faster": best_faster}) + "\n")
        return resolve_tuning(copy, get_board("x86-host"), target)

    slower = with_verdict(False, "slower")
    assert slower.db.verdicts[key] is False and not slower._beats_default(slower.db.workloads[key][1].mod)
    faster = with_verdict(True, "faster")
    assert faster._beats_default(faster.db.workloads[key][1].mod)


def test_interleaved_timing_tells_a_slower_kernel_from_a_faster_one():
    """The comparison's clock: a kernel doing 8x the work of another measures slower, interleaved."""
    from tvm import te

    def kernel(n):
        x = te.placeholder((n,), "int32", name="x")
        y = te.compute((n,), lambda i: x[i] * 3 + 1, name="y")
        return tvm.compile(te.create_prim_func([x, y]), target="llvm")

    small, big = kernel(1 << 12), kernel(1 << 15)
    out = type("Info", (), {"shape": (1 << 12,), "dtype": "int32"})()
    # the same input buffer for both (big reads past n? no: each takes its own shape) -> time separately sized
    fast_us, = interleaved_us([small], [np.zeros(1 << 12, np.int32)], out, rounds=3)
    out_big = type("Info", (), {"shape": (1 << 15,), "dtype": "int32"})()
    slow_us, = interleaved_us([big], [np.zeros(1 << 15, np.int32)], out_big, rounds=3)
    assert slow_us > fast_us


def test_the_byte_pair_conv_is_timed_by_the_tuners_runner(packed_tasks):
    """AVX2's byte-pair conv gathers through an int32 index table (``k_order``): the runner fills
    int32 arguments with zeros (runners.alloc_for_timing), not MetaSchedule's random values that
    index outside the input -- with those the timing worker died of SIGSEGV and the conv could be
    neither timed nor tuned on AVX2."""
    from tvm_qplugin.tuning.runners import local_runner
    from tvm_qplugin.tuning.tuner import _measure_default

    (conv,) = [t for t in packed_tasks["avx2"] if t.op == "conv2d_requant"]
    assert packed_info(conv.func)["isa"] == "avx2ub", packed_info(conv.func)  # reordered K: a k_order argument
    assert "k_order" in conv.func.script()
    measured = _measure_default(conv, _target("avx2"), local_runner())
    assert measured is not None and measured[0] > 0, measured
