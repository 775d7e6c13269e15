"""Drive fuzz cases through a :mod:`fuzz_worker` process and check the CLI contract on each.

The contract (DESIGN.md "Contracts", issue 16): exit 0 or 2; on 2 exactly one stderr line
``tvm-qplugin: error: ...``; never a traceback, an "internal error" (exit 70) or a signal; nothing
half-written in the output location (no ``.NAME.tmp-*`` sibling; an OUTDIR that exists is a whole
artifact whose manifest checks out, with the user's own files still there); no temporary files
left in the worker's private TMPDIR.
"""
from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CASE_TIMEOUT_S = 300


@dataclass
class Case:
    """One CLI invocation on mutated inputs. ``out``: the output location the case may write;
    ``keep``: files in ``out`` that must survive (user files in an artifact directory)."""

    name: str
    argv: list[str]
    out: Path | None = None
    keep: tuple[str, ...] = ()
    out_existed: bool = False
    dir: Path | None = None  # the case's own files: removed once it passed, kept for a failure's repro


@dataclass
class Outcome:
    case: Case
    rc: int | str | None
    stderr: str = ""
    problems: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Worker:
    """The fuzz worker subprocess, restarted after it dies (a signal is a finding)."""

    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.tmpdir = workdir / "tmp"
        self.capture = workdir / "capture"
        self.tmpdir.mkdir(parents=True, exist_ok=True)
        self.capture.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def _start(self) -> None:
        env = {**os.environ, "TMPDIR": str(self.tmpdir), "PYTHONPATH": str(ROOT)}
        env.pop("TVM_QPLUGIN_NATIVE_LOG", None)
        self.proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fuzz_worker.py"), str(self.capture)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                     cwd=ROOT, env=env, text=True, bufsize=1)
        self.starts += 1
        ready = self._read(120)
        if ready is None or "ready" not in ready:
            raise RuntimeError(f"fuzz worker did not start: {ready!r}")

    def _read(self, timeout: float) -> dict | None:
        r, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not r:
            return None
        line = self.proc.stdout.readline()
        return json.loads(line) if line else None

    def run(self, argv: list[str]) -> tuple[int | str, str, str]:
        """(exit status | "signal N" | "timeout" | "exception", stdout, stderr) of ``main(argv)``."""
        if self.proc is None or self.proc.poll() is not None:
            self._start()
        self.proc.stdin.write(json.dumps({"argv": argv}) + "\n")
        self.proc.stdin.flush()
        ans = self._read(CASE_TIMEOUT_S)
        if ans is not None:
            return ans["rc"], ans["stdout"], ans["stderr"]
        if self.proc.poll() is None:  # no answer in time: a hang
            self.proc.kill()
            self.proc.wait()
            return "timeout", "", ""
        self.proc.wait()
        code = self.proc.returncode
        err = (self.capture / "stderr").read_text(errors="replace") if (self.capture / "stderr").exists() else ""
        what = f"signal {signal.Signals(-code).name}" if code < 0 else f"worker exit {code}"
        return what, "", err

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def check_contract(case: Case, rc, stdout: str, stderr: str, tmpdir: Path) -> list[str]:
    """Every way ``case``'s run broke the contract (module doc); empty when it kept it."""
    from tvm_qplugin.errors import QPluginError
    from tvm_qplugin.manifest import OWN_FILES, check_manifest

    problems = []
    if rc not in (0, 2):
        problems.append(f"exit {rc}" + (" (internal error)" if rc == 70 else ""))
    if "Traceback" in stderr or "Traceback" in stdout:
        problems.append("traceback")
    if rc == 2:
        lines = stderr.splitlines()
        if len(lines) != 1 or stderr != lines[0] + "\n" or not lines[0].startswith("tvm-qplugin: error: "):
            problems.append(f"{len(lines)} stderr lines on exit 2")
    if case.out is not None:
        parent = case.out.parent
        if parent.is_dir():
            left = [p.name for p in parent.iterdir()
                    if p.name.startswith(f".{case.out.name}.tmp-") or p.name.startswith(f".{case.out.name}.old-")]
            if left:
                problems.append(f"half-written: {left} next to the output")
        if case.out.exists():
            if rc != 0 and not case.out_existed:
                problems.append("half-written: output created by a failed run")
            elif case.out.is_dir() and all((case.out / n).is_file() for n in OWN_FILES):
                try:
                    check_manifest(case.out)
                except QPluginError as e:
                    problems.append(f"half-written: output fails its manifest ({e})")
            missing = [k for k in case.keep if not (case.out / k).exists()]
            if missing:
                problems.append(f"user files removed from the output: {missing}")
    left = sorted(p.name for p in tmpdir.iterdir())
    if left:
        problems.append(f"temp files left: {left[:5]}")
        for p in tmpdir.iterdir():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return problems


def run_cases(cases, worker: Worker) -> list[Outcome]:
    """Run every case (an iterable: cases may be built lazily) and check each."""
    outcomes = []
    for case in cases:
        t0 = time.perf_counter()
        rc, out, err = worker.run(case.argv)
        outcome = Outcome(case, rc, err, check_contract(case, rc, out, err, worker.tmpdir), time.perf_counter() - t0)
        outcomes.append(outcome)
        if case.dir is not None and not outcome.problems:
            shutil.rmtree(case.dir, ignore_errors=True)
    return outcomes


def summary(outcomes: list[Outcome], worker: Worker) -> dict:
    """The campaign's figures (issue 16's acceptance list)."""
    def count(pred) -> int:
        return sum(1 for o in outcomes if pred(o))

    return {"cases": len(outcomes), "exit_0": count(lambda o: o.rc == 0), "exit_2": count(lambda o: o.rc == 2),
            "exit_70": count(lambda o: o.rc == 70),
            "signals": count(lambda o: isinstance(o.rc, str) and o.rc.startswith("signal")),
            "timeouts": count(lambda o: o.rc == "timeout"),
            "tracebacks": count(lambda o: "traceback" in o.problems),
            "multi_line_errors": count(lambda o: any("stderr lines" in p for p in o.problems)),
            "half_written": count(lambda o: any(p.startswith("half-written") or p.startswith("user files")
                                                for p in o.problems)),
            "temp_files_left": count(lambda o: any(p.startswith("temp files") for p in o.problems)),
            "worker_starts": worker.starts, "failures": count(lambda o: o.problems),
            "seconds": round(sum(o.seconds for o in outcomes), 1)}
