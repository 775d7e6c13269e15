"""``tvm-qplugin tune``: the model's integer kernels tuned one task at a time into a database.

Per task (tasks.py), in call order: trials already in the database (stored or rejected) count
against ``--trials``; the rest are searched with MetaSchedule's evolutionary search and XGBoost
cost model in the task's design space (space.py), built here (runners.py), timed locally or on
the RPC boards, checked against the NumPy twin and stored (measure.py, database.py). At the end of
the task the best record and compile's default schedule are timed interleaved (compare.py): that
verdict decides whether compile applies the record. A task whose budget is spent is not touched
again: a killed tune resumes where it stopped.
"""
from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import tvm
from tvm.s_tir import meta_schedule as ms

from ..errors import QPluginError
from ..targets import get_board
from .database import DBInfo, TuningDB
from .compare import compare_default
from .intrin_import import family_tensor_intrin
from .isa import default_db_dir, isa_key, restrict_target, with_num_cores
from .measure import VerifyAndCommit
from .runners import InProcessBuilder, RemoteDevice, local_runner, rpc_runner
from .tracker import check_tracker, parse_tracker
from .space import design_space
from .tasks import KernelTask, extract_tasks
from .verify import KernelCheck, run_module

log = logging.getLogger(__name__)


@dataclass
class TaskSummary:
    name: str
    op: str
    space: str
    trials: int = 0
    stored: int = 0
    rejected_wrong: int = 0
    best_us: float | None = None
    skipped: str = ""            # why the task was not tuned (its check has no usable case)
    exhausted: bool = False      # the search space ran out before the budget

    def line(self, budget: int) -> str:
        best = f"best {self.best_us:.2f} us" if self.best_us is not None else "no valid candidate yet"
        wrong = f", {self.rejected_wrong} wrong rejected" if self.rejected_wrong else ""
        ran_out = " (search space exhausted)" if self.exhausted else ""
        return f"{self.name} ({self.op}, {self.space}): {self.trials}/{budget} trials{ran_out}, {best}{wrong}"


@dataclass
class TuneResult:
    db: Path
    board: str
    isa: str
    trials: int                                  # per-task budget
    tasks: list[TaskSummary] = field(default_factory=list)
    c_package: bool = False   # records of the C package's kernels (tune_qemu.py): found through the schedules
                              # search path by export's kernel choice, not applied by compile --tuning-db

    @property
    def rejected_wrong(self) -> int:
        return sum(t.rejected_wrong for t in self.tasks)


def integer_module(model, board, calib, input_shapes=None, preprocess=None, options=None):
    """The compile's front half (``compiler.integer_front``): tune sees the very kernels compile
    will look up."""
    from ..compiler import CompileOptions, integer_front

    opts = CompileOptions(target=board.name, **(options or {}))
    return integer_front(model, opts, board.target(), calib, input_shapes, preprocess).imod


def tune(model, target: str = "x86-host", trials: int = 64, calib=None, db: str | Path | None = None,
         isa: str | None = None, rpc_tracker: str | None = None, rpc_key: str | None = None, input_shapes=None,
         preprocess=None, trials_per_iter: int = 16, seed: int = 0, builder: InProcessBuilder | None = None,
         progress: Callable[[str], None] | None = None, **options) -> TuneResult:
    """Tune every integer kernel of ``model`` for ``target`` with ``trials`` trials per task.

    Parameters
    ----------
    model, target, calib, input_shapes, preprocess, **options : as :func:`tvm_qplugin.compile`
        (same calibration and options give the same kernels, hence the same workloads).
    trials : per-task budget; trials already in the database count (a rerun resumes).
    db : database folder (default ``./schedules/<board>/<isa>/``).
    isa : tune for a narrower ISA level than the target's (isa.py), e.g. ``"avx2"``.
    rpc_tracker, rpc_key : ``HOST:PORT`` and key: measure (and verify) on the tracker's boards.
    builder : an :class:`InProcessBuilder` (tests plant wrong candidates through a subclass).
    progress : called with one line per task and batch (best-so-far); default ``log.info``.
    """
    if not isinstance(trials, int) or trials < 1:
        raise QPluginError(f"--trials {trials!r}: give a positive number of trials per task")
    say = progress or log.info
    board = get_board(target)
    if (board.family == "aarch64" and board.os == "linux") or (board.family == "cortex-m" and board.tvm_target):
        # the C package's TIR kernels, under qemu-aarch64 / qemu-system-arm (tune_qemu.py)
        from .tune_qemu import tune_tir_qemu

        if isa is not None or rpc_tracker is not None or rpc_key is not None:
            raise QPluginError(f"tune --target {board.name}: --isa and --rpc-tracker/--rpc-key apply to x86 boards; "
                               f"{board.name}'s kernels are tuned under qemu at its own features: drop them")
        # the integer graph built on the host, as compile's C route builds it
        host_opts = {**options, "int_io": True}
        imod = integer_module(model, get_board("x86-host"), calib, input_shapes, preprocess, host_opts)
        return tune_tir_qemu(imod, board, trials, db, trials_per_iter, seed, say)
    if board.family != "x86" or board.tvm_target.get("kind", "llvm") != "llvm":
        # Cross boards need the candidates exported with the board's cross compiler and the
        # verifier's reference run on the board; not built yet -- refused, not half done.
        raise QPluginError(f"tune --target {board.name!r}: this version tunes x86 boards (here, or through an RPC "
                           f"tracker), aarch64 Linux and Cortex-M boards (under qemu); {board.family} boards compile with their "
                           "default schedules")
    if not board.runs_here and rpc_tracker is None:
        raise QPluginError(f"target {board.name!r} ({board.runner}) does not run here: measure on the board through "
                           "an RPC tracker with --rpc-tracker HOST:PORT --rpc-key KEY")
    remote = None
    if rpc_tracker is not None or rpc_key is not None:
        if not (rpc_tracker and rpc_key):
            raise QPluginError("--rpc-tracker HOST:PORT and --rpc-key KEY go together")
        host, port = parse_tracker(rpc_tracker)
        servers = check_tracker(host, port, rpc_key)
        runner = rpc_runner(host, port, rpc_key, servers)
        remote = RemoteDevice(host, port, rpc_key)
        say(f"measuring on {servers} RPC server(s) under key {rpc_key!r} at {rpc_tracker}")
    tvm_target = with_num_cores(restrict_target(board.target(), isa))
    key = isa_key(tvm_target)
    folder = Path(db) if db is not None else default_db_dir(board.name, key)
    tdb = TuningDB.for_tuning(folder, DBInfo(board.name, key, str(tvm_target)))
    imod = integer_module(model, board, calib, input_shapes, preprocess, options)
    tasks = extract_tasks(imod.mod, tvm_target)
    if remote is None:
        runner = local_runner()
    builder = builder or InProcessBuilder()
    result = TuneResult(folder, board.name, key, trials)
    say(f"{len(tasks)} task(s), {trials} trials each, for {board.name} / {key}; database {folder}")
    for i, task in enumerate(tasks):
        summary = _tune_task(task, i, len(tasks), tdb, tvm_target, trials, trials_per_iter, seed + i, builder,
                             runner, remote, say)
        result.tasks.append(summary)
    return result


def _summary(task: KernelTask, space: str, tdb: TuningDB) -> TaskSummary:
    key = task.key
    return TaskSummary(task.name, task.op, space, tdb.trials_done(key), tdb.stored[key], tdb.rejected_wrong[key],
                       tdb.best_run_us(task.workload), exhausted=key in tdb.exhausted)


def _tune_task(task, index, count, tdb, target, trials, per_iter, seed, builder, runner, remote, say) -> TaskSummary:
    space_name, space = design_space(task.func, target)
    head = f"[{index + 1}/{count}]"
    left = trials - tdb.trials_done(task.key)
    if left <= 0 or task.key in tdb.exhausted:
        summary = _summary(task, space_name, tdb)
        say(f"{head} {summary.line(trials)} (done)")
        return summary
    check = KernelCheck(task, seed=seed)
    default = tvm.compile(task.workload, target=target)
    if check.keep_cases_passing(lambda inputs: run_module(default, inputs, check.out_info)) == 0:
        summary = _summary(task, space_name, tdb)
        summary.skipped = "the unscheduled kernel itself differs from its NumPy twin on random inputs"
        say(f"{head} {task.name}: not tuned ({summary.skipped})")
        return summary
    tdb.workload(task.workload)
    if task.key not in tdb.default_us:
        measured = _measure_default(task, target, runner)
        if measured is not None:
            tdb.record_default(task.key, *measured)
    baseline = tdb.default_us.get(task.key)
    vs = f" (compile's default schedule: {baseline:.2f} us)" if baseline is not None else ""

    shown = [-1]

    def on_batch():  # an empty batch (the search found nothing new) says nothing
        line = _summary(task, space_name, tdb)
        if line.trials != shown[0]:
            shown[0] = line.trials
            say(f"{head} {line.line(trials)}{vs}")

    per_iter = max(1, min(per_iter, left))
    with family_tensor_intrin(target):   # not every target's intrinsics: 40-47 s per process (intrin_import.py)
        ctx = ms.TuneContext(mod=task.workload, target=target, space_generator=space,
                             search_strategy=_search(per_iter, trials), task_name=task.name, rand_state=seed,
                             num_threads=_threads(), logger=_quiet_logger())
    callbacks = [VerifyAndCommit(tdb, task, check, builder, remote, on_batch),
                 ms.measure_callback.RemoveBuildArtifact(), ms.measure_callback.UpdateCostModel()]
    with tempfile.TemporaryDirectory(prefix="tvm_qplugin_ms_") as work_dir:
        ms.tune_tasks(tasks=[ctx], task_weights=[1.0], work_dir=work_dir, max_trials_global=left,
                      max_trials_per_task=left, num_trials_per_iter=per_iter, builder=builder, runner=runner,
                      database=tdb.memory, cost_model=ms.cost_model.XGBModel(num_tuning_cores=_threads()),
                      measure_callbacks=callbacks, task_scheduler=ms.task_scheduler.RoundRobin())
    if tdb.trials_done(task.key) < trials:
        tdb.mark_exhausted(task.key, task.name)
        say(f"{head} {task.name}: search space exhausted after {tdb.trials_done(task.key)} trials")
    if remote is None:  # on an RPC board the tune's own measurements stand (timed there, alike)
        decided = compare_default(task, tdb, target, check.cases[0], check.out_info)
        if decided is not None:
            d_us, b_us = decided
            say(f"{head} {task.name}: interleaved, default {d_us:.2f} us vs best record {b_us:.2f} us: "
                f"{'record applied' if b_us < d_us else 'default kept'}")
    return _summary(task, space_name, tdb)


def _measure_default(task: KernelTask, target, runner) -> tuple[float, str] | None:
    """Time the schedule compile uses without a database (default rule, else unscheduled) with the
    tune's own runner, so records and baseline are measured alike (None if it fails to run)."""
    import os
    import shutil

    from tvm.s_tir.meta_schedule.arg_info import ArgInfo

    from ..schedules import apply_default_schedules

    mod, n_ruled = apply_default_schedules(task.workload, target)
    folder = tempfile.mkdtemp(prefix="tvm_qplugin_default_")
    try:
        path = os.path.join(folder, "kernel.so")
        tvm.compile(mod, target=target).export_library(path)
        (future,) = runner.run([ms.runner.RunnerInput(path, {"llvm": "cpu"}.get(target.kind.name, target.kind.name),
                                                          ArgInfo.from_entry_func(mod))])
        res = future.result()
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if res.error_msg is not None or not res.run_secs:
        log.warning("%s: its default schedule did not run under the tuner's runner: %s", task.name, res.error_msg)
        return None
    secs = [float(s) for s in res.run_secs]
    return 1e6 * sum(secs) / len(secs), "default rule" if n_ruled else "unscheduled"


def _search(per_iter: int, trials: int) -> ms.search_strategy.EvolutionarySearch:
    """MetaSchedule's evolutionary search, its population scaled to the budget: the default 512
    candidates x 4 generations cost ~100 s per batch on a busy 2-core machine, more than a small
    budget's measurements; 64 trials per task and up get the defaults."""
    population = max(32, min(512, 8 * trials))
    return ms.search_strategy.EvolutionarySearch(population_size=population, init_min_unmeasured=min(50, population // 2),
                                                 genetic_num_iters=4 if trials >= 64 else 1)


def _threads() -> int:
    from tvm.s_tir.meta_schedule.utils import cpu_count

    return max(1, cpu_count(logical=False))


def _quiet_logger() -> logging.Logger:
    """MetaSchedule's per-task log (INFO: every generation) goes to ours at DEBUG level."""
    return logging.getLogger("tvm_qplugin.tuning.metaschedule")
