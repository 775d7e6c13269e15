"""``tvm-qplugin tune --target <aarch64 or Cortex-M board>``: the C package's TensorIR kernels tuned
under qemu (qemu-aarch64 / qemu-system-arm) into the board's database (issue 11, deliverable 2).

On an aarch64 board the kernels that matter are not model.so's but the C package's
(export/tir_kernels.py: dense and pointwise-conv layers on 8-bit inputs, the steps of
export/kernel_choice.py's ``tir_candidates``). Per distinct kernel (same shapes, dtypes, clamp and
requantization variant: kernel_choice's shape key), its unscheduled TIR workload
(``tir_kernels._dense_module``) is searched by MetaSchedule with the board's builder and runner
(runner_qemu.py: an object for the board's ``-mcpu``/``-mattr``, linked into a harness holding the
layer's own weights and requantization, instructions counted under ``qemu-aarch64 -cpu <core>``,
an error result unless bit-exact against the op's NumPy twin). Verified records go into the
kernels issue's database format (database.py) at ``schedules/<board>/<isa>/``; the candidates
that failed (wrong, faulted, hung, did not build) are logged as rejected, so a rerun resumes and
counts them. ``run_secs`` is instructions x 1e-9 (runner_qemu.py), so the database's "us" are
thousands of instructions.

The compile side (export/kernel_choice.py, :func:`tuned_kernel`): a layer whose workload has a
record gets one more candidate, ``tensorir-tuned`` (the best record's schedule), measured beside
the hand-written C and the built-in schedules; the fewest instructions win.
"""
from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import tvm
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.database import TuningRecord

from ..errors import QPluginError
from .database import DBInfo, TuningDB
from .intrin_import import family_tensor_intrin
from .isa import default_db_dir, isa_key, shipped_db_dir
from .runner_qemu import (
    QemuObjectBuilder,
    QemuRunner,
    board_target,
    unnamed_log_handlers_set_aside,
)
from .tasks import workload_key
from .tuner import TaskSummary, TuneResult

log = logging.getLogger(__name__)


class QemuTaskSummary(TaskSummary):
    """A task's line in instructions (the qemu runner's measure), not microseconds."""

    def line(self, budget: int) -> str:
        best = (f"best {self.best_us * 1e3:.0f} instructions" if self.best_us is not None
                else "no valid candidate yet")
        wrong = f", {self.rejected_wrong} wrong rejected" if self.rejected_wrong else ""
        return f"{self.name} ({self.op}, {self.space}): {self.trials}/{budget} trials, {best}{wrong}"


def kernel_workload(spec) -> tvm.IRModule:
    """The unscheduled TIR of one kernel: what the database's records are keyed by."""
    from ..export.tir_kernels import _dense_module

    return _dense_module(spec)


def layer_workload(s, seed: int = 0) -> tuple[list[np.ndarray], np.ndarray]:
    """``(inputs, expected)`` of step ``s``'s kernel for :class:`.runner_qemu.QemuRunner`: x random
    over its dtype with both extremes, the layer's own weights (rows padded as the package pads
    them), bias (uint8 inputs: flipped, export/tir_kernels.py), multipliers and shifts; expected =
    the op's NumPy twin (the reference interpreter on the layer alone), in the kernel's layout."""
    from ..export.kernel_choice import _one_step_module, _sample
    from ..export.tir_kernels import flipped_bias, step_spec
    from ..reference import ReferenceInterpreter

    sp = step_spec(s)
    x = _sample(s.args[0].shape, s.args[0].dtype, seed)
    want = ReferenceInterpreter(_one_step_module(s)).run("main", x)
    want = np.asarray(want[0] if isinstance(want, (list, tuple)) else want)
    w = np.zeros((sp.n, sp.kp), np.int8)
    w[:, :sp.k] = np.asarray(s.args[1].val.const).reshape(sp.n, sp.k)
    bias = flipped_bias(s) if sp.flip else np.asarray(s.args[2].val.const).astype(np.int32).reshape(-1)
    mu = np.asarray(s.args[3].val.const).astype(np.int32).reshape(-1)
    sh = np.asarray(s.args[4].val.const).astype(np.int8).reshape(-1)
    # x (k, m) / y (n, m) channel-major for a pointwise conv (one image), (m, k) / (m, n) for a dense
    xs, ys = (x.reshape(sp.k, sp.m), want.reshape(sp.n, sp.m)) if sp.nchw else (x.reshape(sp.m, sp.k),
                                                                                 want.reshape(sp.m, sp.n))
    return [xs, w, bias, mu, sh], ys


def tune_tir_qemu(imod, board, trials: int, db=None, per_iter: int = 8, seed: int = 0, progress=None) -> TuneResult:
    """Tune the TIR kernels of integer module ``imod`` for an aarch64 or Cortex-M ``board`` (module doc), ``trials``
    per distinct kernel (trials already in the database count: a rerun resumes)."""
    from ..export.c_graph import build_graph, integer_module_of
    from ..export.kernel_choice import _shape_key, tir_candidates
    from ..export.tir_kernels import _schedule, step_spec

    say = progress or log.info
    target = board_target(board)
    key = isa_key(target)
    folder = Path(db) if db is not None else default_db_dir(board.name, key)
    tdb = TuningDB.for_tuning(folder, DBInfo(board.name, key, str(target)))
    steps, seen = [], set()
    for s in tir_candidates(build_graph(integer_module_of(imod))):
        if _shape_key(s) not in seen:
            seen.add(_shape_key(s))
            steps.append(s)
    result = TuneResult(folder, board.name, key, trials, c_package=True)
    say(f"{len(steps)} TIR kernel(s), {trials} trials each, for {board.name} / {key} under qemu; database {folder}")
    for i, s in enumerate(steps):
        sp = step_spec(s)
        wl = kernel_workload(sp)
        wkey = workload_key(wl)
        head, name = f"[{i + 1}/{len(steps)}]", sp.name
        left = trials - tdb.trials_done(wkey)
        if left > 0:
            inputs, want = layer_workload(s, seed=seed + i)
            runner, builder = QemuRunner(board, inputs, want), QemuObjectBuilder(board)
            tdb.workload(wl)
            if wkey not in tdb.default_us:   # the built-in default schedule, measured by the same runner
                with tempfile.TemporaryDirectory(prefix="tvm_qplugin_qdef_") as tmp:
                    obj = Path(tmp) / "kernel.o"
                    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
                        tvm.tirx.build(_schedule(wl, sp), target=target).write_to_file(str(obj))
                    (fut,) = runner.run([ms.runner.RunnerInput(str(obj), "cpu", [])])
                    res = fut.result()
                if res.error_msg is None:
                    tdb.record_default(wkey, float(res.run_secs[0]) * 1e6, "tensorir-default (instructions x 1 ns)")
            _search(tdb, wl, wkey, name, target, builder, runner, left, per_iter, seed + i)
        best = tdb.best_run_us(wl)
        summary = QemuTaskSummary(name, s.op, "post-order-apply", tdb.trials_done(wkey), tdb.stored[wkey],
                                  tdb.rejected_wrong[wkey], best)
        result.tasks.append(summary)
        say(f"{head} {summary.line(trials)}")
    return result


def _search(tdb, wl, wkey, name, target, builder, runner, trials, per_iter, seed) -> None:
    """One MetaSchedule search of ``trials`` candidates; its verified records into ``tdb``, the
    others logged as rejected (why: the runner's failure kind, or build)."""
    before = dict(runner.failures)
    with (tempfile.TemporaryDirectory(prefix="tvm_qplugin_qtune_") as work, unnamed_log_handlers_set_aside(),
          family_tensor_intrin(target)):   # the ARM intrinsics only, not every target's (intrin_import.py)
        msdb = ms.tune_tir(wl, target, work, max_trials_global=trials, num_trials_per_iter=min(per_iter, trials),
                           builder=builder, runner=runner, seed=seed)
        records = list(msdb.get_all_tuning_records())
    target_wl = tdb.workload(wl)
    good = 0
    for rec in records:
        secs = [float(x) for x in (rec.run_secs or [])]
        if not secs or max(secs) >= 1e9:   # a failed candidate: MetaSchedule keeps it with no / huge time
            continue
        good += tdb.commit(TuningRecord(rec.trace, target_wl, rec.run_secs, rec.target, rec.args_info))
    failed = 0
    for kind, n in runner.failures.items():
        for _ in range(n - before.get(kind, 0)):
            tdb.reject(wkey, name, "wrong" if kind == "wrong" else "run", f"qemu runner: {kind}")
            failed += 1
    for _ in range(max(0, len(records) - good - failed)):   # built nothing, or a duplicate trace
        tdb.reject(wkey, name, "build", "did not build or repeated a stored trace")


def tuned_kernel(spec, board):
    """The best tuning record's schedule of ``spec``'s kernel in the database shipped for ``board``
    (``schedules/<board>/<isa>/``, or ``$TVM_QPLUGIN_SCHEDULES``), as a
    :class:`~tvm_qplugin.export.tir_kernels.TunedKernel`; None without a database or record."""
    from ..export.tir_kernels import TunedKernel

    try:
        folder = shipped_db_dir(board.name, isa_key(board_target(board)))
    except QPluginError:
        return None
    if folder is None:
        return None
    tdb = TuningDB.open(folder)
    wl = kernel_workload(spec)
    rec = tdb.best_record(wl)
    if rec is None:
        return None
    sch = tvm.s_tir.Schedule(wl)
    rec.trace.apply_to_schedule(sch, remove_postproc=False)
    return TunedKernel(sch.mod)
