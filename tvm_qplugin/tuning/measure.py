"""The measure callback that stands where MetaSchedule's ``AddToDatabase`` stood: verify, then store.

Why a measure callback and not a database wrapper whose ``commit_tuning_record`` verifies: the
callback sees the *built artifact* that was timed (``BuilderResult.artifact_path``), so the
check runs that very binary -- a wrapper would only see the trace and would have to rebuild
every candidate a second time. The callback runs before ``RemoveBuildArtifact`` deletes it.

Per measured candidate, in order:

1. build or run failed -> logged in ``rejected.jsonl`` (``build`` / ``run``), not stored;
2. output differs from the op's NumPy twin on the task's cases (verify.py) -> ``wrong``: counted in
   ``tuning.rejected_wrong``, never stored;
3. otherwise the record is appended to the database file (append-only, fsync'd: database.py)
   unless the same trace is stored already (``duplicate``).

The candidate ran without crashing in MetaSchedule's runner first, so running it again here (in
this process, or on the RPC board it was timed on) does not risk the tuner itself.
Note: MetaSchedule's cost model still learns a wrong candidate's time; the search may revisit
its neighbourhood, but nothing wrong can reach the database.
"""
from __future__ import annotations

import logging
from typing import Callable

from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.database import TuningRecord
from tvm.s_tir.meta_schedule.measure_callback import PyMeasureCallback

from .database import TuningDB
from .runners import InProcessBuilder, RemoteDevice
from .tasks import KernelTask, workload_key
from .verify import KernelCheck, run_module

log = logging.getLogger(__name__)


@derived_object
class VerifyAndCommit(PyMeasureCallback):
    """Store only candidates that reproduce the NumPy reference bit for bit (see module doc)."""

    def __init__(self, db: TuningDB, task: KernelTask, check: KernelCheck, builder: InProcessBuilder,
                 remote: RemoteDevice | None = None, on_batch: Callable[[], None] | None = None):
        super().__init__()
        self.db, self.task, self.check, self.builder, self.remote = db, task, check, builder, remote
        self.on_batch = on_batch

    def apply(self, task_scheduler, task_id, measure_candidates, builder_results, runner_results) -> None:
        ctx = task_scheduler.tasks_[task_id].ctx
        workload = self.db.workload(ctx.mod)
        key = workload_key(ctx.mod)
        for cand, built, ran in zip(measure_candidates, builder_results, runner_results):
            if built.error_msg is not None:
                self.db.reject(key, self.task.name, "build", str(built.error_msg))
            elif ran.error_msg is not None or not ran.run_secs:
                self.db.reject(key, self.task.name, "run", str(ran.error_msg))
            else:
                wrong = self._mismatch(str(built.artifact_path))
                if wrong is not None:
                    log.warning("%s: candidate rejected, wrong result (%s)", self.task.name, wrong)
                    self.db.reject(key, self.task.name, "wrong", wrong)
                else:
                    record = TuningRecord(cand.sch.trace, workload, ran.run_secs, ctx.target, cand.args_info)
                    if not self.db.commit(record):
                        self.db.reject(key, self.task.name, "duplicate")
            if built.artifact_path is not None:
                self.builder.forget(str(built.artifact_path))
        if self.on_batch is not None:
            self.on_batch()

    def _mismatch(self, path: str) -> str | None:
        out = self.check.out_info
        if self.remote is not None:
            rt_mod, dev, _sess = self.remote.load(path)
            return self.check.mismatch(lambda inputs: run_module(rt_mod, inputs, out, dev))
        rt_mod = self.builder.modules.get(path)
        if rt_mod is None:  # built elsewhere: load the artifact
            import tvm

            rt_mod = tvm.runtime.load_module(path)
        return self.check.mismatch(lambda inputs: run_module(rt_mod, inputs, out))
