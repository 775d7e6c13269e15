"""The compile side: choose the database, put its schedules in place of the default rules' ones,
and say in ``report.json`` which kernels were tuned.

Choice (:func:`resolve_tuning`): ``--tuning-db DIR`` if given, else the database shipped for the
board at the target's ISA level (``schedules/<board>/<isa>/``, isa.py), else none. A database
tuned for another board or ISA is refused with a one-line error, never applied silently.

Application (:meth:`AppliedTuning.apply`): per integer kernel, MetaSchedule's
``Database.query_schedule`` on the kernel's workload (tasks.py) replays the best stored trace on
the unscheduled kernel (for a prepacked kernel: on the packed one, in its tensorized rule's space);
the result replaces the kernel the default rules scheduled -- where the tune measured it faster
than that default schedule (database.py ``defaults.jsonl``: the interleaved verdict taken at the
end of the task where there is one). Kernels
without a record, or whose default schedule is faster, keep the default rule's schedule. Every kernel -- tuned or not -- then goes
through compile's whole-model bit-exact check against the NumPy reference.
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path

import tvm
from tvm import relax

from ..errors import QPluginError
from ..ops import OPS, op_of
from ..schedules.intrin_x86 import ISA_BY_NAME
from ..schedules.packing import packed_info
from .database import TuningDB
from .isa import isa_key, shipped_db_dir
from .tasks import workload_key, workload_of

log = logging.getLogger(__name__)


@dataclass
class AppliedTuning:
    """The database a compile uses (or None) and, after :meth:`apply`, what it tuned."""

    db: TuningDB | None
    source: str = "none"                              # "user" | "shipped" | "none" | "c-package"
    tuned: dict[str, str] = field(default_factory=dict)      # kernel name -> workload key
    untuned: list[str] = field(default_factory=list)         # integer kernels without a record
    default_faster: list[str] = field(default_factory=list)  # a record exists, the default schedule is faster
    tensorized: dict[str, dict] = field(default_factory=dict)  # prepacked kernels: name -> packed_info

    def apply(self, original: tvm.IRModule, scheduled: tvm.IRModule, target: tvm.target.Target) -> tvm.IRModule:
        """``scheduled`` with every integer kernel the database covers replaced by its tuned schedule
        (looked up by the kernel of ``original``, before the default rules changed it)."""
        updates = {}
        for gv, func in original.functions.items():
            described = op_of(func) if isinstance(func, tvm.tirx.PrimFunc) else None
            if described is None or not OPS[described[0]].integer_only:
                continue
            info = packed_info(func)
            if info is not None:  # prepacked for a tensorized rule: its default schedule, or a record in its space
                self.tensorized[gv.name_hint] = info
            sch = None
            if self.db is not None and self.db.best_run_us(workload_of(func)) is not None:
                sch = self.db.query_schedule(workload_of(func), target)  # decodes this workload's records only
            if sch is None:
                if info is None:  # a prepacked kernel without a record keeps its rule's default quietly
                    self.untuned.append(gv.name_hint)
                continue
            if not self._beats_default(workload_of(func)):
                self.default_faster.append(gv.name_hint)
                continue
            updates[gv] = sch.mod["main"].without_attr("global_symbol")
            self.tuned[gv.name_hint] = workload_key(workload_of(func))
        if not updates:
            return scheduled
        scheduled = scheduled.clone() if hasattr(scheduled, "clone") else scheduled
        for gv, func in updates.items():
            scheduled.update_func(gv, func)
        return scheduled

    def _beats_default(self, workload: tvm.IRModule) -> bool:
        """The best record is faster than compile's default schedule: as the tune's interleaved
        end-of-task comparison decided (tuner.py ``compare_default``), else as it measured both
        apart (a database without any baseline is trusted)."""
        key = workload_key(workload)
        if key in self.db.verdicts:
            return self.db.verdicts[key]
        baseline = self.db.default_us.get(key)
        best = self.db.best_run_us(workload)
        return baseline is None or best is None or best < baseline

    def report(self, mod: tvm.IRModule, layers) -> tuple[dict, list[dict]]:
        """``(report.json "tuning", layers[].kernel in layer order)`` (DESIGN.md); report.py writes
        them. Warns naming untuned kernels."""
        db = self.db
        keys = set(self.tuned.values())
        section = {
            "trials": sum(db.trials_done(k) for k in keys) if db else 0,
            "tasks_tuned": len(self.tuned),
            "tasks_untuned": len(self.untuned),
            "rejected_wrong": sum(db.rejected_wrong[k] for k in keys) if db else 0,
            "db": str(db.path) if db else None,
            "db_source": self.source,
            "isa": db.info.isa if db else None,
            "untuned": list(self.untuned),
            "default_faster": list(self.default_faster),
            "tensorized": list(self.tensorized),
        }
        if self.source == "c-package":  # the deliverable's kernels are C (export/), not TensorIR
            section["tasks_untuned"] = 0
            return section, []
        if db is not None and self.untuned:
            names = ", ".join(self.untuned[:8]) + (f" and {len(self.untuned) - 8} more" if len(self.untuned) > 8 else "")
            log.warning("tuning database %s has no record for %d kernel(s), default schedules used: %s (tune this "
                        "model: `tvm-qplugin tune`)", db.path, len(self.untuned), names)
        kernel_of = kernel_of_var(mod)
        from ..schedules.x86_int4 import int4_kernel_note

        return section, [int4_kernel_note(self._kernel_source(k), k, self.tensorized)
                         for k in (kernel_of.get(info.var) for info in layers)]

    def _kernel_source(self, name: str | None) -> dict:
        db = self.db
        if name in self.tuned:
            return {"source": "tensorir-tuned", "why": f"MetaSchedule record in {db.path}"}
        if name in self.tensorized:
            info = self.tensorized[name]
            isa = ISA_BY_NAME.get(info.get("isa", ""))
            on = f" on {isa.mnemonic} ({isa.name})" if isa is not None else ""
            pairs = f"; {info['pairs']}" if "pairs" in info else ""  # AVX2's byte-pair decision (x86_int8.py)
            return {"source": "tensorir-default", "why": f"weights prepacked, scheduled by the {info['rule']} rule{on} "
                    f"({_rule_file(info['rule'])}){pairs}"}
        if name in self.default_faster:
            return {"source": "tensorir-default", "why": f"the default schedule measured faster than the best "
                    f"record in {db.path}"}
        if db is None:
            return {"source": "tensorir-default", "why": "no tuning database for this board/ISA"}
        return {"source": "tensorir-default", "why": f"no record for {name} in {db.path}"}


def _rule_file(rule: str) -> str:
    """``schedules/<module>.py`` of the schedule rule class named ``rule`` (layers[].kernel.why)."""
    from ..schedules import RULES

    module = next((type(r).__module__ for r in RULES if type(r).__name__ == rule), "")
    return f"schedules/{module.rsplit('.', 1)[-1]}.py"


def kernel_of_var(mod: tvm.IRModule) -> dict:
    """Relax var -> name of the kernel its ``call_tir`` binds."""
    call_tir = tvm.ir.Op.get("relax.call_tir")
    out = {}
    for _, func in mod.functions.items():
        if not isinstance(func, relax.Function):
            continue
        for block in func.body.blocks:
            for b in block.bindings:
                if isinstance(b.value, relax.Call) and b.value.op.same_as(call_tir):
                    out[b.var] = b.value.args[0].name_hint
    return out


def resolve_tuning(tuning_db: str | Path | None, board, target: tvm.target.Target, builds_tvm: bool = True) -> AppliedTuning:
    """The database for this compile (module doc); raises ``TuningDBError`` for a wrong one."""
    isa = isa_key(target)
    if tuning_db is not None:
        if not builds_tvm:
            raise QPluginError(f"--tuning-db: target {board.name!r} is built as a C package, which has no TensorIR "
                               "kernels to tune; drop --tuning-db")
        db = TuningDB.open(tuning_db)
        db.check_matches(board.name, isa)
        return AppliedTuning(db, "user")
    if not builds_tvm:
        return AppliedTuning(None, "c-package")
    shipped = shipped_db_dir(board.name, isa)
    if shipped is None:
        return AppliedTuning(None)
    return AppliedTuning(shipped_db(shipped), "shipped")


def shipped_db(folder: Path) -> TuningDB:
    """The shipped database in ``folder``, read once per process while its files stay unchanged.
    A compile decodes only the records of its own kernels (database.py: lazy per workload); sharing
    the database keeps what one compile decoded for the next compile of the process (a test run, a
    benchmark, a notebook). Sharing is safe: a compile only reads the database (lookups, verdicts),
    and a tune that rewrites the folder changes the files' stamps, so the next compile reads it anew."""
    stamp = tuple((p.name, p.stat().st_mtime_ns, p.stat().st_size) for p in sorted(Path(folder).iterdir()) if p.is_file())
    return _open_unchanged(str(folder), stamp)


@functools.lru_cache(maxsize=4)
def _open_unchanged(folder: str, stamp: tuple) -> TuningDB:  # stamp: part of the cache key only
    return TuningDB.open(folder)
