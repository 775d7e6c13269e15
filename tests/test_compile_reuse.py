"""What a compile reuses instead of redoing (test-time / compile-time savings that must not change
results): the shipped tuning database is read once per process while its files are unchanged, and
the evaluation's float outputs come from the calibration's observing build."""
from __future__ import annotations

import os

import numpy as np

from tvm_qplugin.calibrate import FloatRunner
from tvm_qplugin.frontend import import_model
from tvm_qplugin.passes.canonicalize import canonicalize
from tvm_qplugin.tuning.apply import shipped_db
from tvm_qplugin.tuning.database import DBInfo, TuningDB
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
