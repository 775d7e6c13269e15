"""The tuning database on disk: MetaSchedule's JSON files, written append-only and read forgivingly.

A database folder holds

* ``database_workload.json`` and ``database_tuning_record.json`` -- exactly the two files of
  ``tvm.s_tir.meta_schedule.database.JSONDatabase`` (one JSON value per line; a record line is
  ``[workload line number, record]``), so plain TVM reads what we write;
* ``tuning.json`` -- what the records are valid for: board, ISA key, TVM target (isa.py), written
  atomically (temporary file + rename);
* ``rejected.jsonl`` -- one line per measured candidate that did *not* enter the database (wrong
  result, build or run failure, duplicate), so a resumed tune counts it as done and
  ``tuning.rejected_wrong`` survives a restart; and a line ``exhausted`` for a task whose search
  space ran out before its budget (an elementwise kernel has a handful of schedules);
* ``defaults.jsonl`` -- per workload, the time of the schedule compile uses without a database
  (our default rule, or the unscheduled kernel), measured the same way: compile applies a record
  only where it is faster than that (apply.py), so a database never slows a kernel down. A line
  with ``best_us`` / ``best_faster`` is the verdict of the interleaved comparison at the end of a
  task (default and best record timed alternately, medians: tuner.py); it overrides the times
  measured apart, which under load once let a record 4.1x slower than the default be applied.

Why our own I/O rather than ``JSONDatabase``: it parses every line or fails as a whole, so one
record cut short by a SIGKILL would make the whole database unreadable. Here every line is
written with one ``write`` + ``fsync``; on reading, a line that does not parse is skipped with a
warning naming the file and line, and a tune that resumes first cuts a truncated last line away
(a half-written record is the only damage a kill can do to an append-only file).

Reading is lazy per workload: :meth:`TuningDB.open` parses every line and decodes the workloads
(cheap: ~30 ms for the shipped x86 database), but a workload's records -- MetaSchedule traces,
~3 ms each to decode, and the tensor intrinsics a packed workload's traces name, ~50 ms each to
register -- are decoded the first time that workload is looked up. A compile looks up only its
own kernels, and the shipped database's ~300 records took 2-4 s to decode in every process (each
CLI compile), longer than a small model's whole compile. What needs every record (the tune's
MetaSchedule search, ``stored`` counts, ``memory``) decodes them all first.
"""
from __future__ import annotations

import json
import logging
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import tvm
from tvm.s_tir.meta_schedule.database import MemoryDatabase, TuningRecord, Workload

from ..errors import QPluginError
from .tasks import workload_key

log = logging.getLogger(__name__)

WORKLOADS = "database_workload.json"
RECORDS = "database_tuning_record.json"
META = "tuning.json"
REJECTED = "rejected.jsonl"
DEFAULTS = "defaults.jsonl"
FORMAT = "tvm-qplugin-tuning/1"


def _register_intrinsics_of(mod: tvm.IRModule) -> None:
    """A record of a prepacked kernel's space names our tensor intrinsics, and reading it replays
    its trace: register them first (schedules/x86_int8_space.py). Called wherever a workload enters
    the database (read from disk or added by a tune), so every ``query_schedule`` on it replays."""
    from ..schedules.packing import packed_info
    from ..schedules.x86_int8_space import register_intrinsics

    func = mod["main"]
    info = packed_info(func)
    if info is not None:
        register_intrinsics(info, str(func.params[0].ty.dtype))


class TuningDBError(QPluginError, ValueError):
    """A tuning database that cannot be used: missing, unreadable, or tuned for another board/ISA."""


@dataclass(frozen=True)
class DBInfo:
    """What a database was tuned for (``tuning.json``)."""

    board: str
    isa: str
    target: str

    def to_json(self) -> dict:
        return {"format": FORMAT, "board": self.board, "isa": self.isa, "target": self.target,
                "tvm": tvm.__version__}


def _lines(path: Path) -> list[tuple[int, object | None]]:
    """``(line number from 1, parsed JSON or None when the line is corrupt)`` for each line."""
    if not path.is_file():
        return []
    out = []
    for n, raw in enumerate(path.read_bytes().split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            out.append((n, json.loads(raw)))
        except (ValueError, UnicodeDecodeError):
            out.append((n, None))
    return out


def _append(path: Path, obj) -> None:
    """One line, one write, flushed to disk: a kill leaves at most this line cut short."""
    data = (json.dumps(obj, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _cut_truncated_tail(path: Path) -> None:
    """Drop a last line without its newline (a write cut short by a kill), with a warning."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if not data or data.endswith(b"\n"):
        return
    keep = data.rfind(b"\n") + 1
    line = data.count(b"\n") + 1
    log.warning("%s:%d: truncated last line (a tune killed while writing) removed", path, line)
    with open(path, "r+b") as f:
        f.truncate(keep)


class TuningDB:
    """A database folder: its records in a MetaSchedule ``MemoryDatabase`` plus trial accounting.

    Open with :meth:`open` (read: compile) or :meth:`for_tuning` (create or resume: tune).
    """

    def __init__(self, path: Path, info: DBInfo):
        self.path = Path(path)
        self.info = info
        self._memory = MemoryDatabase(module_equality="structural")
        self.workloads: dict[str, tuple[int, Workload]] = {}     # key -> (line index, workload)
        self._stored: Counter = Counter()                         # key -> records in the database (decoded keys)
        self.rejected: Counter = Counter()                        # key -> measured, not stored
        self.rejected_wrong: Counter = Counter()                  # key -> failed the reference check
        self._seen_traces: set[tuple[str, str]] = set()           # (key, trace) already stored (decoded keys)
        self._undecoded: dict[str, list[tuple[int, object]]] = {}  # key -> (line, record JSON) not decoded yet
        self.default_us: dict[str, float] = {}                    # key -> default schedule's time
        self.verdicts: dict[str, bool] = {}                       # key -> best record faster, interleaved
        self.verdict_best_us: dict[str, float] = {}               # key -> the best record's time then
        self.exhausted: set[str] = set()                          # the search had nothing new to try
        self._skipped_lines = 0

    # --- opening ---
    @classmethod
    def open(cls, path: str | Path) -> "TuningDB":
        """Read an existing database (corrupt record lines are skipped with a warning)."""
        path = Path(path)
        meta = path / META
        if not (path / WORKLOADS).is_file() or not meta.is_file():
            raise TuningDBError(f"--tuning-db {str(path)!r} is not a tuning database (needs {WORKLOADS}, {RECORDS} "
                                f"and {META}, as `tvm-qplugin tune --db DIR` writes them)")
        try:
            m = json.loads(meta.read_text())
            info = DBInfo(str(m["board"]), str(m["isa"]), str(m["target"]))
        except (ValueError, KeyError, TypeError, OSError) as e:
            raise TuningDBError(f"{str(meta)!r} is unreadable ({type(e).__name__}: {e}); re-run `tvm-qplugin tune` "
                                "into a new --db folder") from None
        db = cls(path, info)
        db._load()
        return db

    @classmethod
    def for_tuning(cls, path: str | Path, info: DBInfo) -> "TuningDB":
        """Create ``path`` or resume the database there; refuses one tuned for another board/ISA."""
        path = Path(path)
        if (path / META).is_file():
            db = cls.open(path)
            db.check_matches(info.board, info.isa, what="--db")
            for name in (WORKLOADS, RECORDS, REJECTED, DEFAULTS):
                _cut_truncated_tail(path / name)
            db = cls.open(path)
            db._compact_if_damaged()
            return db
        if path.exists() and any(path.iterdir()):
            raise TuningDBError(f"--db {str(path)!r} exists and is not a tuning database; choose an empty or new folder")
        path.mkdir(parents=True, exist_ok=True)
        tmp = path / (META + ".tmp")
        tmp.write_text(json.dumps(info.to_json(), indent=1) + "\n")
        os.replace(tmp, path / META)
        for name in (WORKLOADS, RECORDS):
            (path / name).touch()
        return cls(path, info)

    def check_matches(self, board: str, isa: str, what: str = "--tuning-db") -> None:
        """Refuse (one line) a database tuned for another board or ISA level: never applied silently."""
        if (self.info.board, self.info.isa) != (board, isa):
            raise TuningDBError(f"{what} {str(self.path)!r} was tuned for board {self.info.board!r} ISA "
                                f"{self.info.isa!r}, but this run targets board {board!r} ISA {isa!r}; tune for it "
                                f"(`tvm-qplugin tune ... --target {board}`) or pass the matching database")

    # --- reading ---
    def _load(self) -> None:
        by_line: dict[int, Workload] = {}
        for index, (n, obj) in enumerate(_lines(self.path / WORKLOADS)):
            try:
                wl = Workload.from_json(obj)
            except Exception:  # noqa: BLE001 - any undecodable line is skipped the same way
                self._skip(WORKLOADS, n, "workload")
                continue
            by_line[index] = wl
            self.workloads[workload_key(wl.mod)] = (index, self._memory.commit_workload(wl.mod))
            self._undecoded[workload_key(wl.mod)] = []
        keys = {index: workload_key(wl.mod) for index, wl in by_line.items()}
        for n, obj in _lines(self.path / RECORDS):
            try:
                index, rec_json = obj
                key = keys[int(index)]
            except Exception:  # noqa: BLE001
                self._skip(RECORDS, n, "tuning record")
                continue
            self._undecoded[key].append((n, rec_json))  # decoded on the key's first lookup (module doc)
        for n, obj in _lines(self.path / REJECTED):
            if not isinstance(obj, dict) or "workload" not in obj:
                self._skip(REJECTED, n, "rejected-candidate")
                continue
            if obj.get("why") == "exhausted":  # not a candidate: the task's end, see mark_exhausted
                self.exhausted.add(obj["workload"])
                continue
            self.rejected[obj["workload"]] += 1
            self.rejected_wrong[obj["workload"]] += obj.get("why") == "wrong"
        for n, obj in _lines(self.path / DEFAULTS):
            try:
                self.default_us[str(obj["workload"])] = float(obj["us"])
                if "best_faster" in obj:  # the last line of a workload decides, verdict or not
                    self.verdicts[str(obj["workload"])] = bool(obj["best_faster"])
                    self.verdict_best_us[str(obj["workload"])] = float(obj["best_us"])
                else:
                    self.verdicts.pop(str(obj["workload"]), None)
            except (TypeError, KeyError, ValueError):
                self._skip(DEFAULTS, n, "default-time")

    def _decode(self, key: str) -> None:
        """Decode the records of workload ``key`` into :attr:`memory` (once; a record that does not
        decode is skipped with the same warning, naming file and line, as a line that does not parse)."""
        pending = self._undecoded.pop(key, None)
        if pending is None:
            return
        workload = self.workloads[key][1]
        if pending:
            _register_intrinsics_of(workload.mod)
        for n, rec_json in pending:
            try:
                rec = TuningRecord.from_json(rec_json, workload)
            except Exception:  # noqa: BLE001 - any undecodable record is skipped the same way
                self._skip(RECORDS, n, "tuning record")
                continue
            self._memory.commit_tuning_record(rec)
            self._stored[key] += 1
            self._seen_traces.add((key, json.dumps(rec_json[0])))

    def _decode_all(self) -> None:
        for key in list(self._undecoded):
            self._decode(key)

    @property
    def memory(self) -> MemoryDatabase:
        """Every record, decoded (MetaSchedule's search reads the whole database)."""
        self._decode_all()
        return self._memory

    @property
    def stored(self) -> Counter:
        """Key -> records in the database (every record decoded; a corrupt one is not counted)."""
        self._decode_all()
        return self._stored

    @property
    def seen_traces(self) -> set[tuple[str, str]]:
        self._decode_all()
        return self._seen_traces

    @property
    def skipped_lines(self) -> int:
        """Corrupt lines skipped, records that do not decode included (all decoded first)."""
        self._decode_all()
        return self._skipped_lines

    def query_schedule(self, mod: tvm.IRModule, target: tvm.target.Target) -> tvm.s_tir.Schedule | None:
        """The best record of workload ``mod`` replayed on it (MetaSchedule's ``query_schedule``),
        decoding only that workload's records."""
        key = workload_key(mod)
        if key not in self.workloads:
            return None
        self._decode(key)
        return self._memory.query_schedule(mod, target, workload_name="main")

    def _skip(self, name: str, line: int, what: str) -> None:
        self._skipped_lines += 1
        log.warning("%s:%d: corrupt %s line skipped (the rest of the database is used)", self.path / name, line, what)

    def _compact_if_damaged(self) -> None:
        """Before appending: rewrite the record file without its corrupt lines, so that what the
        tune leaves behind is readable by plain TVM too. (Workload lines are referenced by line
        number: a corrupt one in the middle cannot be dropped, and is refused.)"""
        wl_lines = _lines(self.path / WORKLOADS)
        bad = [n for n, obj in wl_lines if obj is None]
        if bad:
            raise TuningDBError(f"{str(self.path / WORKLOADS)!r} line {bad[0]} is corrupt and records refer to "
                                "workloads by line number; restore the file or tune into a new --db folder")
        rec_lines = _lines(self.path / RECORDS)
        if all(obj is not None for _, obj in rec_lines):
            return
        tmp = self.path / (RECORDS + ".tmp")
        tmp.write_text("".join(json.dumps(obj, separators=(",", ":")) + "\n" for _, obj in rec_lines if obj is not None))
        os.replace(tmp, self.path / RECORDS)

    # --- accounting ---
    def trials_done(self, key: str) -> int:
        self._decode(key)
        return self._stored[key] + self.rejected[key]

    def best_run_us(self, mod: tvm.IRModule) -> float | None:
        rec = self.best_record(mod)
        if rec is None or not rec.run_secs:
            return None
        return 1e6 * sum(float(s) for s in rec.run_secs) / len(rec.run_secs)

    def best_record(self, mod: tvm.IRModule) -> TuningRecord | None:
        key = workload_key(mod)
        if key not in self.workloads:
            return None
        self._decode(key)
        if not self._stored[key]:
            return None
        top = self._memory.get_top_k(self.workloads[key][1], 1)
        return top[0] if top else None

    # --- writing (tune) ---
    def workload(self, mod: tvm.IRModule) -> Workload:
        """The workload of ``mod``, appended to the workload file the first time."""
        key = workload_key(mod)
        if key not in self.workloads:
            wl = self._memory.commit_workload(mod)
            _register_intrinsics_of(mod)
            index = sum(1 for _ in _lines(self.path / WORKLOADS))
            _append(self.path / WORKLOADS, wl.as_json())
            self.workloads[key] = (index, wl)
        return self.workloads[key][1]

    def commit(self, record: TuningRecord) -> bool:
        """Store a verified record (False: the same trace is stored already, nothing written)."""
        key = workload_key(record.workload.mod)
        rec_json = record.as_json()
        trace = json.dumps(rec_json[0])
        self._decode(key)
        if (key, trace) in self._seen_traces:
            return False
        index = self.workloads[key][0]
        _append(self.path / RECORDS, [index, rec_json])
        self._memory.commit_tuning_record(record)
        self._stored[key] += 1
        self._seen_traces.add((key, trace))
        return True

    def record_default(self, key: str, us: float, schedule: str) -> None:
        """The time of the schedule compile would use for ``key`` without this database."""
        _append(self.path / DEFAULTS, {"workload": key, "us": us, "schedule": schedule})
        self.default_us[key] = us

    def record_verdict(self, key: str, default_us: float, best_us: float, rounds: int, schedule: str) -> None:
        """The interleaved comparison of the default schedule and the best record (medians of
        ``rounds``): compile applies the record only if ``best_faster``."""
        default_us, best_us = float(default_us), float(best_us)
        _append(self.path / DEFAULTS, {"workload": key, "us": default_us, "schedule": schedule, "best_us": best_us,
                                       "interleaved_rounds": rounds, "best_faster": best_us < default_us})
        self.default_us[key] = default_us
        self.verdicts[key] = best_us < default_us
        self.verdict_best_us[key] = best_us

    def mark_exhausted(self, key: str, task: str) -> None:
        """MetaSchedule stopped before the budget (no new candidate in its space): a rerun, whatever
        its budget, would search the same space again for nothing."""
        _append(self.path / REJECTED, {"workload": key, "task": task, "why": "exhausted",
                                       "detail": f"search stopped after {self.trials_done(key)} trials"})
        self.exhausted.add(key)

    def reject(self, key: str, task: str, why: str, detail: str = "") -> None:
        """Log a measured candidate that is not stored (``why``: wrong | build | run | duplicate)."""
        _append(self.path / REJECTED, {"workload": key, "task": task, "why": why, "detail": detail[:300]})
        self.rejected[key] += 1
        self.rejected_wrong[key] += why == "wrong"
