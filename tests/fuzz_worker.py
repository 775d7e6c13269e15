"""A long-lived process that runs ``tvm_qplugin.cli.main(argv)`` in-process, one case per request.

TVM is imported once, so a case that compiles costs the compile only (~1 s for the fuzz models),
not a fresh interpreter and TVM start-up (~3 s). Each request is a JSON line on stdin; fds 1 and 2
are pointed at capture files for the call (C++ log lines included), and the answer -- exit status,
captured stdout/stderr -- goes back as one JSON line on the original stdout. A case that kills
the process (a signal) ends the worker: the driver (tests/fuzz_driver.py) sees it and restarts it.

Usage: ``python tests/fuzz_worker.py CAPTURE_DIR`` (run from the repository root).
"""
from __future__ import annotations

import json
import os
import sys
import traceback
from pathlib import Path


def _run(argv: list[str]) -> int | str:
    from tvm_qplugin.cli import main

    try:
        return main(argv)
    except SystemExit as e:  # argparse's own exits
        return e.code if isinstance(e.code, int) else 1
    except BaseException:  # noqa: BLE001 - an escaped exception is a finding: keep its traceback
        traceback.print_exc()
        return "exception"


def serve(capture_dir: Path) -> None:
    answers = os.fdopen(os.dup(1), "w", buffering=1)
    out_path, err_path = capture_dir / "stdout", capture_dir / "stderr"
    import tvm_qplugin.cli  # noqa: F401 - the cheap part now; TVM on the first compile
    import tvm  # noqa: F401 - once, before the first case, so no case pays for it

    answers.write(json.dumps({"ready": os.getpid()}) + "\n")
    for line in sys.stdin:
        req = json.loads(line)
        sys.stdout.flush()
        sys.stderr.flush()
        saved = os.dup(1), os.dup(2)
        with open(out_path, "w+b") as out, open(err_path, "w+b") as err:
            os.dup2(out.fileno(), 1)
            os.dup2(err.fileno(), 2)
            try:
                rc = _run(req["argv"])
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os.dup2(saved[0], 1)
                os.dup2(saved[1], 2)
                os.close(saved[0])
                os.close(saved[1])
        answers.write(json.dumps({"rc": rc, "stdout": out_path.read_text(errors="replace"),
                                  "stderr": err_path.read_text(errors="replace")}) + "\n")


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    serve(Path(sys.argv[1]))
