"""MetaSchedule tuning (tvm_qplugin/tuning/): tune -> database -> compile --tuning-db, bit-exact;
a planted wrong candidate never reaches the database; SIGKILL + rerun resumes; RPC tracker with
two servers on loopback; every bad input is one line, exit status 2.

The model is one grouped 3x3 conv (2 channels per group) + ReLU (one integer kernel, 16x16x16:
not prepacked, so tuned; groups-1 and depthwise convs are tensorized by hand and left out of
tuning), large enough that a few
MetaSchedule trials beat its unscheduled loops (a database record is only applied where it is
faster than compile's default schedule). Budgets are the least that still test the thing: 2 trials
in one batch for the shared database, 4 in two batches where resume needs a second batch to kill,
2 on the RPC servers. Most of each test is TVM start-up (builder and runner processes) on a busy
2-core machine, so the CLI runs in this process (``_main``: TVM already loaded) wherever a
separate process is not the point: only the killed tune and the RPC tracker and servers are
processes of their own.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import tvm
from onnx_builders import OnnxGraph

import tvm_qplugin as tq
from tvm_qplugin.errors import QPluginError
from tvm_qplugin.targets import get_board
from tvm_qplugin.tuning.apply import resolve_tuning
from tvm_qplugin.tuning.database import META, RECORDS, TuningDB, TuningDBError
from tvm_qplugin.tuning.intrin_import import family_tensor_intrin
from tvm_qplugin.tuning.isa import isa_key, restrict_target
from tvm_qplugin.tuning.runners import InProcessBuilder
from tvm_qplugin.tuning.tuner import tune

REPO = Path(__file__).resolve().parent.parent
CLI = [sys.executable, "-m", "tvm_qplugin"]


def _main(capfd, *args) -> subprocess.CompletedProcess:
    """The CLI's ``main`` in this process, fds 1 and 2 captured (C++ log lines count against the
    one-line contract too): TVM is loaded once, where a subprocess spends seconds importing it."""
    from tvm_qplugin.cli import main

    capfd.readouterr()
    try:
        rc = main([str(a) for a in args])
    except SystemExit as e:  # argparse's refusals exit from inside parse_args
        rc = e.code
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(args, rc, out, err)


def _one_line_error(r, *needles):
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2, r.stderr[-2000:]
    assert len(lines) == 1 and lines[0].startswith("tvm-qplugin: error:"), r.stderr
    for n in needles:
        assert n in lines[0], lines[0]


@pytest.fixture(scope="module")
def conv_model(tmp_path_factory):
    d = tmp_path_factory.mktemp("model")
    g = OnnxGraph((1, 16, 16, 16))
    path = g.save(g.relu(g.conv("x", 16, k=3, groups=8)), d / "conv.onnx")  # grouped: not prepacked
    calib = d / "calib.npz"
    np.savez(calib, x=np.random.default_rng(0).normal(size=(8, 16, 16, 16)).astype(np.float32))
    return path, calib


@pytest.fixture(scope="module")
def tuned_db(conv_model, tmp_path_factory):
    """2 trials of the conv kernel, in one batch (several batches: the SIGKILL test)."""
    model, calib = conv_model
    db = tmp_path_factory.mktemp("tuned") / "db"
    res = tune(model, calib=str(calib), trials=2, trials_per_iter=2, db=db)
    return db, res


def test_tune_then_compile_with_the_database_is_bit_exact(conv_model, tuned_db, tmp_path):
    model, calib = conv_model
    db, res = tuned_db
    assert [t.op for t in res.tasks] == ["conv2d_requant"]
    task = res.tasks[0]
    assert task.trials == 2 and task.stored >= 1 and task.rejected_wrong == 0 and task.best_us > 0
    # the files are MetaSchedule's own JSONDatabase: plain TVM reads every record we wrote
    from tvm.s_tir import meta_schedule as ms

    assert len(ms.database.JSONDatabase(work_dir=str(db))) == task.stored
    # compile applies a record only where the tune measured it faster than the default schedule
    # (tested below); without that baseline the record is trusted, so the tuned kernel is built here
    trusted = tmp_path / "trusted"
    shutil.copytree(db, trusted)
    (trusted / "defaults.jsonl").unlink(missing_ok=True)
    art = tq.compile(model, calib=str(calib), tuning_db=str(trusted))
    r = art.report
    assert r["bit_exact"], "a tuned kernel broke the whole-model bit-exact check"
    assert r["tuning"]["tasks_tuned"] == 1 and r["tuning"]["tasks_untuned"] == 0, r["tuning"]
    assert r["tuning"]["trials"] == 2 and r["tuning"]["rejected_wrong"] == 0 and r["tuning"]["db"] == str(trusted)
    assert [layer["kernel"]["source"] for layer in r["layers"]] == ["tensorir-tuned"]


def test_planted_wrong_candidates_are_rejected_and_never_stored(conv_model, tmp_path):
    """Every candidate is built with the requantization's rounding constant changed (half -> a
    quarter): fast, and wrong on about a quarter of the outputs. None may enter the database."""
    model, calib = conv_model

    def wrong_rounding(mod):
        text = mod.script()
        planted = text.replace(">> T.int64(1))", ">> T.int64(2))")
        assert planted != text, "the rounding term to plant into was not found"
        return tvm.script.from_source(planted)

    db = tmp_path / "db"
    res = tune(model, calib=str(calib), trials=2, trials_per_iter=2, db=db, builder=InProcessBuilder(wrong_rounding))
    task = res.tasks[0]
    assert task.trials == 2 and task.stored == 0 and task.rejected_wrong == 2, task
    assert (db / RECORDS).read_text() == ""
    reasons = [json.loads(ln)["why"] for ln in (db / "rejected.jsonl").read_text().splitlines()]
    assert reasons == ["wrong"] * 2
    tdb = TuningDB.open(db)  # the count survives in the database folder
    assert sum(tdb.rejected_wrong.values()) == 2
    art = tq.compile(model, calib=str(calib), tuning_db=str(db))
    assert art.report["bit_exact"] and art.report["tuning"]["tasks_tuned"] == 0


def _complete_lines(path: Path) -> list[bytes]:
    data = path.read_bytes() if path.is_file() else b""
    return data[: data.rfind(b"\n") + 1].splitlines()


def test_sigkill_then_rerun_keeps_every_record_and_redoes_none(conv_model, tmp_path, capfd, caplog):
    model, calib = conv_model
    db = tmp_path / "db"
    args = ["tune", model, "--calib", calib, "--trials", 4, "--trials-per-iter", 2, "--db", db]
    p = subprocess.Popen([*CLI, *map(str, args)], cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env={**os.environ, "PYTHONPATH": str(REPO)})
    deadline = time.time() + 400
    while p.poll() is None and time.time() < deadline and not _complete_lines(db / RECORDS):
        time.sleep(0.1)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    before = _complete_lines(db / RECORDS)
    done_before = len(before) + len(_complete_lines(db / "rejected.jsonl"))
    assert before and done_before < 4, "the tune finished before it could be killed"
    with open(db / RECORDS, "ab") as f:  # and a record cut short, as a kill during the write leaves it
        f.write(b'[0,[[["GetSBlock",[],["x_pa')
    cut_line = len(before) + 1
    with caplog.at_level("WARNING"):  # the rerun: in this process (the kill needed one of its own)
        r = _main(capfd, *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert f"{db / RECORDS}:{cut_line}: truncated" in caplog.text + r.stderr, caplog.text[-3000:]
    after = _complete_lines(db / RECORDS)
    assert after[: len(before)] == before, "a finished record was lost or rewritten"
    tdb = TuningDB.open(db)
    (key,) = tdb.workloads
    assert tdb.trials_done(key) == 4, "trials were redone (or lost) across the restart"
    assert "4/4 trials" in r.stdout
    from tvm.s_tir import meta_schedule as ms

    assert len(ms.database.JSONDatabase(work_dir=str(db))) == tdb.stored[key]  # readable by plain TVM


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rpc_tracker_with_two_servers_measures_there(conv_model, tmp_path, capfd):
    from tvm import rpc

    model, calib = conv_model
    port = _free_port()
    py = [sys.executable, "-m"]
    procs = [subprocess.Popen([*py, "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port", str(port),
                               "--port-end", str(port + 1)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    logs = [tmp_path / f"server{i}.log" for i in range(2)]
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        for i, log in enumerate(logs):
            sport = _free_port()
            procs.append(subprocess.Popen([*py, "tvm.exec.rpc_server", "--tracker", f"127.0.0.1:{port}", "--key",
                                           "qtest", "--host", "127.0.0.1", "--port", str(sport), "--port-end",
                                           str(sport + 50)], stdout=log.open("w"), stderr=subprocess.STDOUT))
        while time.time() < deadline and rpc.connect_tracker("127.0.0.1", port).summary()["queue_info"].get(
                "qtest", {}).get("free", 0) < 2:
            time.sleep(0.5)
        # the tracker's answer is timed, not TVM's import (seconds under load): a fresh process that
        # has not imported TVM gets the answer within half a second
        probe = subprocess.run([sys.executable, "-c", "from tvm_qplugin.tuning.tracker import check_tracker; "
                                f"print(check_tracker('127.0.0.1', {port}, 'qtest', timeout=0.5))"],
                               capture_output=True, text=True, timeout=120)
        assert probe.returncode == 0 and probe.stdout.strip() == "2", probe.stderr[-2000:]
        db = tmp_path / "db"
        r = _main(capfd, "tune", model, "--calib", calib, "--trials", 2, "--trials-per-iter", 2, "--db", db,
                     "--rpc-tracker", f"127.0.0.1:{port}", "--rpc-key", "qtest")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "measuring on 2 RPC server(s) under key 'qtest'" in r.stderr
        stored = TuningDB.open(db).stored
        assert sum(stored.values()) >= 1
        loads = [log.read_text().count("load_module") for log in logs]
        # each candidate is loaded once to be timed and once to be verified, on the servers
        assert sum(loads) >= 2 * sum(stored.values()), loads
        _one_line_error(_main(capfd, "tune", model, "--calib", calib, "--trials", 4, "--rpc-tracker",
                                 f"127.0.0.1:{port}", "--rpc-key", "nokey"), "no RPC server is registered under key 'nokey'")
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)


def test_unreachable_tracker_fails_in_seconds(conv_model, capfd):
    model, calib = conv_model
    t = time.time()
    r = _main(capfd, "tune", model, "--calib", calib, "--trials", 4, "--rpc-tracker", f"127.0.0.1:{_free_port()}",
                 "--rpc-key", "k")
    _one_line_error(r, "cannot reach the RPC tracker")
    assert time.time() - t < 20


@pytest.mark.parametrize("trials", ["0", "-3"])
def test_trials_must_be_positive(conv_model, trials, capfd):
    model, calib = conv_model
    _one_line_error(_main(capfd, "tune", model, "--calib", calib, "--trials", trials), "--trials")


def test_unknown_board_lists_the_boards(conv_model, capfd):
    model, calib = conv_model
    _one_line_error(_main(capfd, "tune", model, "--calib", calib, "--trials", 2, "--target", "nosuchboard"),
                    "unknown target board 'nosuchboard'", "x86-host")


def test_boards_that_cannot_be_tuned_yet_are_refused(conv_model, capfd):
    model, calib = conv_model
    _one_line_error(_main(capfd, "tune", model, "--calib", calib, "--trials", 2, "--target", "nvidia-t4"),
                    "this version tunes x86 boards")   # rpi5, Cortex-M: tuned under qemu (tests/test_tuning_qemu*.py)


def _copy_with_meta(db: Path, dest: Path, **changes) -> Path:
    shutil.copytree(db, dest)
    meta = json.loads((dest / META).read_text())
    (dest / META).write_text(json.dumps({**meta, **changes}))
    return dest


def test_database_for_another_isa_or_board_is_refused(conv_model, tuned_db, tmp_path, capfd):
    model, calib = conv_model
    db, _ = tuned_db
    other_isa = _copy_with_meta(db, tmp_path / "isa", isa="avx2" if isa_key(_host()) != "avx2" else "avx512vnni")
    _one_line_error(_main(capfd, "compile", model, "--calib", calib, "--tuning-db", other_isa, "-o",
                             tmp_path / "o1"), "was tuned for board 'x86-host' ISA")
    other_board = _copy_with_meta(db, tmp_path / "board", board="rpi4")
    with pytest.raises(TuningDBError, match="tuned for board 'rpi4'"):
        resolve_tuning(other_board, get_board("x86-host"), _host())
    with pytest.raises(TuningDBError, match="tuned for board 'rpi4'"):  # nor resumed by tune
        TuningDB.for_tuning(other_board, TuningDB.open(db).info)
    (tmp_path / "broken").mkdir()
    shutil.copytree(db, tmp_path / "broken" / "db")
    (tmp_path / "broken" / "db" / META).write_text("{not json")
    with pytest.raises(TuningDBError, match="unreadable"):
        resolve_tuning(tmp_path / "broken" / "db", get_board("x86-host"), _host())


def test_corrupt_record_lines_are_skipped_with_a_warning_and_the_rest_used(tuned_db, tmp_path, caplog):
    db, res = tuned_db
    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    lines = (copy / RECORDS).read_text().splitlines()
    (copy / RECORDS).write_text("\n".join([lines[0], "{garbage", *lines[1:]]) + "\n" + lines[-1][:40])
    with caplog.at_level("WARNING"):
        tdb = TuningDB.open(copy)
    assert f"{copy / RECORDS}:2: corrupt tuning record line skipped" in caplog.text
    assert f"{copy / RECORDS}:{len(lines) + 2}: corrupt" in caplog.text
    (key,) = tdb.workloads
    assert tdb.stored[key] == len(lines) == res.tasks[0].stored
    applied = resolve_tuning(copy, get_board("x86-host"), _host())
    assert applied.db.best_record(list(applied.db.workloads.values())[0][1].mod) is not None


def test_shipped_database_is_found_by_board_and_isa(tuned_db, tmp_path, monkeypatch):
    db, _ = tuned_db
    isa = isa_key(_host())
    shutil.copytree(db, tmp_path / "x86-host" / isa)
    monkeypatch.setenv("TVM_QPLUGIN_SCHEDULES", str(tmp_path))
    applied = resolve_tuning(None, get_board("x86-host"), _host())
    assert applied.source == "shipped" and applied.db.path == tmp_path / "x86-host" / isa
    monkeypatch.setenv("TVM_QPLUGIN_SCHEDULES", str(tmp_path / "nothing"))
    assert resolve_tuning(None, get_board("x86-host"), restrict_target(_host(), "sse4.2")).db is None


def _host() -> tvm.target.Target:
    return get_board("x86-host").target()


_FAMILY_INTRIN_PROBE = """
import sys
from contextlib import ExitStack
import tvm
from tvm import te
from tvm.s_tir import meta_schedule as ms
from tvm_qplugin.targets import get_board
from tvm_qplugin.tuning.intrin_import import PACKAGE, family_tensor_intrin
from tvm_qplugin.tuning.runner_qemu import board_target

a, b = te.placeholder((32, 64), "uint8", name="a"), te.placeholder((64, 64), "int8", name="b")
k = te.reduce_axis((0, 64), "k")
c = te.compute((32, 64), lambda i, j: te.sum(a[i, k].astype("int32") * b[j, k].astype("int32"), axis=k), name="c")
mod = tvm.IRModule({"main": te.create_prim_func([a, b, c])})
vnni = tvm.target.Target({"kind": "llvm", "mtriple": "x86_64-linux-gnu", "mcpu": "cascadelake", "num-cores": 1})
for targets in ([vnni], [vnni, board_target(get_board("rpi5"))]):   # one block, then a second nested in a first
    with ExitStack() as blocks:
        for target in targets:
            blocks.enter_context(family_tensor_intrin(target))
        for target in targets:
            ctx = ms.TuneContext(mod, target=target, space_generator="post-order-apply", search_strategy="replay-trace")
            assert ctx.generate_design_space()
    assert PACKAGE not in sys.modules, "the stand-in package outlived the block"
print(" ".join(sorted(m for m in sys.modules if m.startswith(PACKAGE))))
"""


def test_a_tune_context_parses_only_its_targets_tensor_intrinsics():
    """MetaSchedule's TuneContext imports ``tvm.s_tir.tensor_intrin``: every target's TVMScript
    intrinsics, 40-47 s per tuning process. Inside ``family_tensor_intrin`` a VNNI x86 target and
    rpi5 build their default design spaces (whose rules name ``dot_16x4_vnni`` / ``dot_4x4_*``: an
    unregistered one raises) with their family's intrinsics only; CUDA's etc. are never parsed."""
    r = subprocess.run([sys.executable, "-c", _FAMILY_INTRIN_PROBE], capture_output=True, text=True, cwd=REPO,
                       timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stderr[-3000:]
    loaded = r.stdout.split()
    assert loaded == ["tvm.s_tir.tensor_intrin.arm_cpu", "tvm.s_tir.tensor_intrin.dot_product_common",
                      "tvm.s_tir.tensor_intrin.x86"], loaded


def test_isa_key_follows_the_targets_features():
    host = _host()
    avx2 = restrict_target(host, "avx2")
    assert isa_key(avx2) == "avx2" and str(avx2.attrs["mcpu"]) == str(host.attrs["mcpu"])
    with pytest.raises(QPluginError, match="cannot be reached"):
        restrict_target(avx2, "avx512vnni")
    with pytest.raises(QPluginError, match="choose one of"):
        restrict_target(host, "avx9000")


class _TiledConvRule:
    """A tunable rule in the dlight shape: the output channels split by a sampled tile size."""

    def apply(self, func, target, tunable=False):
        from tvm.s_tir.schedule import Schedule

        from tvm_qplugin.ops import op_of

        if (op_of(func) or ("",))[0] != "conv2d_requant":
            return None
        sch = Schedule(func)
        _, oc, *_ = sch.get_loops(sch.get_sblock("acc"))
        factors = sch.sample_perfect_tile(oc, n=2) if tunable else [None, 4]
        sch.split(oc, factors)
        return sch


def test_a_tunable_rule_defines_the_design_space(tuned_db):
    from tvm.s_tir import meta_schedule as ms

    from tvm_qplugin.tuning.space import design_space

    db, _ = tuned_db
    (_, wl), = TuningDB.open(db).workloads.values()
    func = wl.mod["main"]
    name, space = design_space(func, _host(), rules=[_TiledConvRule()])
    assert name == "rule:_TiledConvRule"
    target = tvm.target.Target({"kind": "llvm", "num-cores": 1})
    with family_tensor_intrin(target):   # as the tuner builds its TuneContext (not every target's intrinsics)
        ctx = ms.TuneContext(mod=wl.mod, target=target, space_generator=space, search_strategy="replay-trace",
                             task_name="t")
    (sch,) = ctx.generate_design_space()
    assert any(inst.kind.name == "SamplePerfectTile" for inst in sch.trace.insts)
    assert design_space(func, _host(), rules=[])[0] == "metaschedule-default"


def test_a_record_slower_than_the_default_schedule_is_not_applied(tuned_db, tmp_path):
    """The tune timed compile's default schedule too (defaults.jsonl); a database never makes a
    kernel slower. The same record, against a default said to take 1 s (applied) and 1 ns (not)."""
    from tvm_qplugin.tuning.database import DEFAULTS

    db, _ = tuned_db
    (_, wl), = TuningDB.open(db).workloads.values()
    kernel = tvm.IRModule({"conv": wl.mod["main"].without_attr("global_symbol")})
    assert resolve_tuning(db, get_board("x86-host"), _host()).db.default_us, "the tune did not time the default"
    key = next(iter(TuningDB.open(db).workloads))

    def with_default(us: float, name: str):
        copy = tmp_path / name
        shutil.copytree(db, copy)
        with open(copy / DEFAULTS, "a") as f:
            f.write(json.dumps({"workload": key, "us": us, "schedule": "default rule"}) + "\n")
        applied = resolve_tuning(copy, get_board("x86-host"), _host())
        return applied, applied.apply(kernel, kernel, _host())

    fast_record, out = with_default(1e6, "slow-default")
    assert fast_record.tuned and not fast_record.default_faster and not out.same_as(kernel)
    slow_record, out = with_default(0.001, "fast-default")
    assert slow_record.default_faster == ["conv"] and not slow_record.tuned and out.same_as(kernel)


def test_an_exhausted_search_is_remembered_and_not_redone(tuned_db, tmp_path):
    """A task whose space ran out before the budget is marked so; a rerun skips it (and the
    mark is not counted as a trial)."""
    db, _ = tuned_db
    copy = tmp_path / "db"
    shutil.copytree(db, copy)
    tdb = TuningDB.open(copy)
    (key,) = tdb.workloads
    trials = tdb.trials_done(key)
    tdb.mark_exhausted(key, "conv")
    again = TuningDB.open(copy)
    assert key in again.exhausted and again.trials_done(key) == trials and again.rejected_wrong[key] == 0
