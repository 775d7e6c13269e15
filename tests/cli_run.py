"""The real CLI in a subprocess (``python -m tvm_qplugin``), for the tests that drive it."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args, cwd: Path | None = None, env: dict | None = None, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the CLI; the native-log switch of the calling environment is dropped so stderr is the CLI's own."""
    base = {k: v for k, v in os.environ.items() if k != "TVM_QPLUGIN_NATIVE_LOG"}
    return subprocess.run([sys.executable, "-m", "tvm_qplugin", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd or ROOT, env={**base, **(env or {})}, timeout=timeout)


def ok(r: subprocess.CompletedProcess) -> str:
    """Exit 0 and no error on stderr; the stdout."""
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    assert "Traceback" not in r.stderr and "error" not in r.stderr.lower(), r.stderr
    return r.stdout


def assert_user_error(r: subprocess.CompletedProcess, *names) -> str:
    """Exit 2, exactly one stderr line ``tvm-qplugin: error: ...`` containing every name; no traceback."""
    assert "Traceback" not in r.stderr, r.stderr
    assert r.returncode == 2, f"exit {r.returncode}; stderr: {r.stderr}"
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and r.stderr == lines[0] + "\n", f"expected one stderr line, got: {r.stderr!r}"
    line = lines[0]
    assert line.startswith("tvm-qplugin: error:"), line
    for n in names:
        assert str(n) in line, f"{n!r} not named in: {line}"
    return line
