"""The MetaSchedule runner under qemu (tuning/runner_qemu.py): a candidate object for the board
(rpi5, Cortex-A76) linked into a harness, its instructions counted under qemu-aarch64 with the
plugin, kept only when bit-exact against the op's NumPy twin -- a wrong candidate is an error
result, counted, never a measurement; and a short MetaSchedule search through it."""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from tvm.s_tir import meta_schedule as ms

from tvm_qplugin.errors import QPluginError
from tvm_qplugin.export.tir_kernels import DenseSpec, _dense_module, _schedule
from tvm_qplugin.ops import OPS
from tvm_qplugin.targets import get_board
from tvm_qplugin.tuning.runner_qemu import QemuRunner, board_target, tune_dense_qemu

SPEC = DenseSpec("t", 2, 64, 64, 16, "int8", "int8", -128, 127)


def _workload():
    rng = np.random.default_rng(2)
    x = rng.integers(-128, 128, (SPEC.m, SPEC.k)).astype(np.int8)
    w = rng.integers(-128, 128, (SPEC.n, SPEC.k)).astype(np.int8)
    b = rng.integers(-5000, 5000, SPEC.n).astype(np.int32)
    mu = rng.integers(2**29, 2**31 - 1, SPEC.n).astype(np.int32)
    sh = rng.integers(30, 34, SPEC.n).astype(np.int8)
    want = OPS["dense_requant"].reference(x, w, b, mu.astype(np.int64), sh.astype(np.int64), qmin=-128, qmax=127,
                                          out_dtype="int8")
    return [x, w, b, mu, sh], want


def _object(spec, tmp_path, board):
    path = tmp_path / f"{spec.schedule}-{spec.qmax}" / "kernel.o"
    path.parent.mkdir()
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        tvm.tirx.build(_schedule(_dense_module(spec), spec), target=board_target(board)).write_to_file(str(path))
    return path


def test_runner_counts_exact_candidates_and_rejects_wrong_ones(tmp_path):
    board = get_board("rpi5")
    inputs, want = _workload()
    runner = QemuRunner(board, inputs, want)
    good = [_object(DenseSpec(**{**SPEC.__dict__, "schedule": s}), tmp_path, board) for s in ("default", "tiled")]
    wrong = _object(DenseSpec(**{**SPEC.__dict__, "qmax": 100}), tmp_path, board)  # clamps at 100: not the twin
    futures = runner.run([ms.runner.RunnerInput(str(p), "cpu", []) for p in [*good, wrong]])
    res = [f.result() for f in futures]
    assert all(r.error_msg is None and float(r.run_secs[0]) > 0 for r in res[:2]), [r.error_msg for r in res]
    assert runner.instructions[0] != runner.instructions[1]   # the two schedules really differ
    assert res[2].run_secs is None and "wrong" in res[2].error_msg
    assert runner.failures == {"wrong": 1}


def test_a_board_without_an_emulated_cpu_is_refused_in_one_line():
    """aarch64 Linux boards and Cortex-M boards run under qemu; a GPU board does not."""
    with pytest.raises(QPluginError, match="nvidia-t4 is neither an aarch64 Linux board nor a Cortex-M board"):
        QemuRunner(get_board("nvidia-t4"), *_workload())


@pytest.mark.extended
def test_metaschedule_search_under_qemu(tmp_path):
    """Two MetaSchedule trials through the builder and runner (minutes on a loaded 2-core machine):
    every measured candidate was bit-exact (the runner errors the others), the default is measured
    by the same runner as the baseline."""
    r = tune_dense_qemu(SPEC, get_board("rpi5"), tmp_path / "tune", trials=2, per_iter=2)
    assert r["default_instructions"] > 0
    assert r["measured"] + sum(r["failures"].values()) >= 1, r
