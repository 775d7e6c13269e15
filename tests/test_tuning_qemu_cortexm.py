"""``tune --target qemu-mps2-an386 | qemu-mps3-an547`` (tuning/tune_qemu.py on Cortex-M): one small
dense layer, 2 trials, each candidate an object for the board's thumbv7em / thumbv8.1m.main core,
linked into a firmware harness and counted under qemu-system-arm, checked bit-exact against the
op's NumPy twin; the verified records in ``<root>/<board>/<isa>/``; export_mcu with that root on the
search path measures the record as ``tensorir-tuned`` in the whole package, bit-exact.

``extended``: ~1.5 minutes per board on the loaded 2-core machine (MetaSchedule's start-up, TVM
builds, cross links); the Cortex-M kernels and their choice are checked cheaply in
tests/test_export_tir_kernels_cortexm.py."""
from __future__ import annotations

import json

import pytest

from tvm_qplugin.export import export_mcu
from tvm_qplugin.targets import get_board
from tvm_qplugin.tuning.database import RECORDS, TuningDB
from tvm_qplugin.tuning.tune_qemu import tune_tir_qemu

pytestmark = pytest.mark.extended

BOARDS = {"qemu-mps2-an386": "dsp", "qemu-mps3-an547": "mve"}


def one_dense():
    from test_tuning_qemu import one_dense as layer  # one home for the layer

    return layer()


@pytest.mark.parametrize("board", list(BOARDS))
def test_tune_on_cortexm_stores_verified_records_that_export_measures(board, tmp_path, monkeypatch):
    mod, x = one_dense()
    isa = BOARDS[board]
    folder = tmp_path / board / isa
    res = tune_tir_qemu(mod, get_board(board), trials=2, db=folder, per_iter=2)
    assert (res.board, res.isa) == (board, isa) and len(res.tasks) == 1
    (task,) = res.tasks
    assert task.trials == 2 and task.stored >= 1 and task.best_us is not None, task
    meta = json.loads((folder / "tuning.json").read_text())
    assert (meta["board"], meta["isa"]) == (board, isa)
    assert len((folder / RECORDS).read_text().splitlines()) == task.stored
    assert TuningDB.open(folder).default_us      # the built-in default schedule, measured by the same runner
    monkeypatch.setenv("TVM_QPLUGIN_SCHEDULES", str(tmp_path))
    out = export_mcu(mod, tmp_path / "pkg", get_board(board), samples=[[x]], workdir=tmp_path / "work")
    assert out["bit_exact"], out.get("mismatches")
    choice = out["layers"][0]["kernel_choice"]
    assert choice["instructions"].get("tensorir-tuned"), choice["why"]   # measured and bit-exact
    assert choice["dropped"] == 0, choice["why"]
