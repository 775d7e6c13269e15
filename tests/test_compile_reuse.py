"""What a compile reuses instead of redoing (test-time / compile-time savings that must not change
results): the shipped tuning database is read once per process while its files are unchanged, a
lookup decodes only its own workload's records, a successful model import runs no full garbage
collection, and the evaluation's float outputs come from the calibration's observing build."""
from __future__ import annotations

import gc
import json
import os
import shutil

import numpy as np
import tvm

from tvm_qplugin.calibrate import FloatRunner
from tvm_qplugin.frontend import import_model
from tvm_qplugin.passes.canonicalize import canonicalize
from tvm_qplugin.tuning.apply import shipped_db
from tvm_qplugin.tuning.database import RECORDS, DBInfo, TuningDB
from tvm_qplugin.tuning.isa import shipped_db_dir
from qplugin_zoo import digits_cnn_onnx, digits_split


def test_shipped_db_is_read_once_until_its_files_change(tmp_path):
    folder = tmp_path / "db"
    TuningDB.for_tuning(folder, DBInfo("x86-host", "avx512vnni", "llvm"))
    first = shipped_db(folder)
    assert shipped_db(folder) is first                   # unchanged files: the same database, not re-read
    records = next(p for p in folder.iterdir() if p.name.endswith("tuning_record.json"))
    stat = records.stat()
    os.utime(records, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # a tune rewrote the folder
    again = shipped_db(folder)
    assert again is not first and shipped_db(folder) is again


def _shipped_subset(tmp_path, keep: tuple[int, ...]):
    """A copy of the shipped x86 database (every workload line) with the records of the workloads
    on lines ``keep`` only: the lookups below decode a few records, not ~300. Also returns the record
    lines kept, per workload line."""
    shipped = shipped_db_dir("x86-host", "avx512vnni")
    folder = tmp_path / "db"
    shutil.copytree(shipped, folder)
    lines = [line for line in (shipped / RECORDS).read_text().splitlines() if json.loads(line)[0] in keep]
    (folder / RECORDS).write_text("".join(line + "\n" for line in lines))
    return folder, {i: [n for n, line in enumerate(lines, 1) if json.loads(line)[0] == i] for i in keep}


def _workload_at(db: TuningDB, line_index: int) -> tvm.IRModule:
    return next(wl.mod for index, wl in db.workloads.values() if index == line_index)


def test_a_lookup_decodes_only_its_workloads_records_and_finds_what_a_full_read_finds(tmp_path, host_target):
    """Line 22 is a prepacked kernel's workload (its traces name our tensor intrinsics), line 4 a
    plain one. A compile looks its kernels up one by one; the lazily read database must answer
    exactly as the fully decoded one does."""
    folder, kept = _shipped_subset(tmp_path, (22, 4))
    lazy = TuningDB.open(folder)
    assert len(lazy._memory.get_all_tuning_records()) == 0          # opening decodes no record
    packed = _workload_at(lazy, 22)
    best = lazy.best_record(packed)
    assert len(lazy._memory.get_all_tuning_records()) == len(kept[22])   # only this workload's
    full = TuningDB.open(folder)
    assert {full.workloads[k][0]: n for k, n in full.stored.items() if n} == {22: len(kept[22]), 4: len(kept[4])}
    want = full.best_record(packed)
    assert [float(s) for s in best.run_secs] == [float(s) for s in want.run_secs]
    assert str(best.trace) == str(want.trace)
    got = lazy.query_schedule(packed, host_target)
    tvm.ir.assert_structural_equal(got.mod, full.memory.query_schedule(packed, host_target, workload_name="main").mod)
    plain = _workload_at(lazy, 4)
    assert lazy.best_run_us(plain) == full.best_run_us(plain) is not None
    assert lazy.stored == full.stored and lazy.seen_traces == full.seen_traces and lazy.skipped_lines == 0


def test_a_record_that_does_not_decode_is_skipped_naming_file_and_line(tmp_path, caplog):
    """Valid JSON, but not a MetaSchedule record: skipped with the warning of a corrupt line when its
    workload is looked up, and the workload's other records still used."""
    folder, kept = _shipped_subset(tmp_path, (23,))
    lines = (folder / RECORDS).read_text().splitlines()
    lines[1] = json.dumps([23, {"not": "a tuning record"}])
    (folder / RECORDS).write_text("".join(line + "\n" for line in lines))
    db = TuningDB.open(folder)
    with caplog.at_level("WARNING"):
        assert db.best_record(_workload_at(db, 23)) is not None
    assert f"{folder / RECORDS}:2: corrupt tuning record line skipped" in caplog.text
    assert sum(db.stored.values()) == len(kept[23]) - 1 and db.skipped_lines == 1


def test_a_successful_import_runs_no_full_garbage_collection():
    """frontend.py collects what a *failed* import leaves (with TVM's native log muted); a full
    collection costs 0.4-1 s with TVM loaded, and every compile imports its model. Automatic
    collections are off here, so every collection seen is one the import asked for."""
    generations = []

    def watch(phase, info):
        if phase == "start":
            generations.append(info["generation"])

    import_model(digits_cnn_onnx())  # warm: what a first import loads lazily is not this test's business
    gc.disable()
    gc.callbacks.append(watch)
    try:
        imported = import_model(digits_cnn_onnx())
    finally:
        gc.callbacks.remove(watch)
        gc.enable()
    assert imported.mod is not None and 2 not in generations, generations


def test_observing_float_build_gives_the_plain_builds_outputs_bit_for_bit(host_target):
    """evaluate() reads the outputs of the calibration's build (every intermediate also returned):
    they must be the plain build's, bit for bit, or the accuracy figures would move."""
    mod = canonicalize(import_model(digits_cnn_onnx()).mod)
    observing, plain = FloatRunner(mod, host_target), FloatRunner(mod, host_target, observe=False)
    assert observing.num_taps > 0 and plain.num_taps == 0
    _, _, x_test, _ = digits_split()
    for i in range(8):
        batch = {"input": x_test[i:i + 1]}
        taps, outs = observing.run(batch)
        none, outs_only = observing.run(batch, taps=False)
        _, want = plain.run(batch)
        assert len(taps) == observing.num_taps and none == []
        for got, alone, w in zip(outs, outs_only, want):
            assert got.dtype == w.dtype == np.float32 and got.tobytes() == w.tobytes() == alone.tobytes()
