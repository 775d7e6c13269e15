"""``tune --target rpi5`` (tuning/tune_qemu.py): a model's C-package TIR kernels searched by
MetaSchedule under qemu-aarch64 (instructions counted, every candidate checked bit-exact against
the op's NumPy twin), the verified records in the kernels issue's database format under
``<db>/``; and the compile side: export_mcu (compile --target rpi5's route) measures the record as
one more candidate, ``tensorir-tuned``, bit-exact. One small dense layer, 2 trials."""
from __future__ import annotations

import json

import numpy as np
import pytest
from tvm import relax

from tvm_qplugin.export import export_mcu
from tvm_qplugin.ops import const, emit
from tvm_qplugin.quant import dyadic
from tvm_qplugin.targets import get_board
from tvm_qplugin.tuning.database import RECORDS, TuningDB
from tvm_qplugin.tuning.tune_qemu import tune_tir_qemu, tuned_kernel


def one_dense():
    """(module, input): int8 (2, 32) -> 16 int8, per-channel requantization (shifts >= 33)."""
    rng = np.random.default_rng(11)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 32], "int8"))
    ds = [dyadic(float(m)) for m in rng.uniform(1 / 20000, 1 / 4000, 16)]
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(emit(bb, "dense_requant", [
                x, const(rng.integers(-128, 128, (16, 32)).astype(np.int8)),
                const(rng.integers(-4000, 4000, 16).astype(np.int32)),
                const(np.array([d.multiplier for d in ds], np.int64)), const(np.array([d.shift for d in ds], np.int64))],
                qmin=-128, qmax=127, out_dtype="int8"))
        bb.emit_func_output(y)
    xs = rng.integers(-128, 128, (2, 32)).astype(np.int8)
    xs.reshape(-1)[:2] = [-128, 127]
    return bb.finalize(), xs


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """The layer tuned for rpi5 with 2 trials into ``<root>/rpi5/dotprod`` (a schedules/ layout)."""
    mod, x = one_dense()
    root = tmp_path_factory.mktemp("schedules")
    board = get_board("rpi5")
    res = tune_tir_qemu(mod, board, trials=2, db=root / "rpi5" / "dotprod", per_iter=2)
    return mod, x, root, res


def test_tune_writes_verified_records_and_resumes(tuned):
    mod, _, root, res = tuned
    folder = root / "rpi5" / "dotprod"
    assert res.board == "rpi5" and res.isa == "dotprod" and len(res.tasks) == 1
    (task,) = res.tasks
    assert task.trials == 2, task                     # each measured candidate stored or logged rejected
    assert task.stored >= 1 and task.best_us is not None, task
    meta = json.loads((folder / "tuning.json").read_text())
    assert (meta["board"], meta["isa"]) == ("rpi5", "dotprod")
    assert len((folder / RECORDS).read_text().splitlines()) == task.stored
    assert TuningDB.open(folder).default_us              # the built-in default, measured by the same runner
    again = tune_tir_qemu(mod, get_board("rpi5"), trials=2, db=folder, per_iter=2)   # budget spent: nothing new
    assert again.tasks[0].trials == 2 and again.tasks[0].stored == task.stored


def test_export_mcu_measures_the_record_bit_exact(tuned, tmp_path, monkeypatch):
    """With the database on the schedules search path, the layer's choice has a ``tensorir-tuned``
    candidate, measured bit-exact (not dropped); the package is bit-exact under qemu-aarch64."""
    mod, x, root, _ = tuned
    monkeypatch.setenv("TVM_QPLUGIN_SCHEDULES", str(root))
    res = export_mcu(mod, tmp_path / "pkg", get_board("rpi5"), samples=[[x]], workdir=tmp_path / "work")
    assert res["bit_exact"], res.get("mismatches")
    choice = res["layers"][0]["kernel_choice"]
    assert choice["instructions"].get("tensorir-tuned"), choice["why"]    # measured and bit-exact
    assert choice["dropped"] == 0, choice["why"]


def test_no_database_no_tuned_candidate(monkeypatch, tmp_path):
    from tvm_qplugin.export.c_graph import build_graph
    from tvm_qplugin.export.kernel_choice import tir_candidates
    from tvm_qplugin.export.tir_kernels import step_spec

    monkeypatch.setenv("TVM_QPLUGIN_SCHEDULES", str(tmp_path))
    (s,) = tir_candidates(build_graph(one_dense()[0]))
    assert tuned_kernel(step_spec(s), get_board("rpi5")) is None


def test_x86_only_options_are_refused_for_rpi5():
    """--isa and an RPC tracker mean nothing for a board tuned under qemu: one line, before any work."""
    from tvm_qplugin.errors import QPluginError
    from tvm_qplugin.tuning.tuner import tune

    for opts in ({"isa": "avx2"}, {"rpc_tracker": "127.0.0.1:9190", "rpc_key": "rpi5"}):
        with pytest.raises(QPluginError, match="tuned under qemu at its own features: drop them"):
            tune("no-such-model.onnx", target="rpi5", trials=1, **opts)
