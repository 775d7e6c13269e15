"""Run a tutorial README's own ```bash blocks, as a reader would, from a scratch folder.

The scratch folder stands in for the repository root the READMEs say to run from: `examples/` is
linked there, `qplugin_zoo` and this checkout's `tvm_qplugin` come from PYTHONPATH, and `python`
is this interpreter (a wrapper script: a symlink would lose the virtual environment). The test then
reads what the commands wrote, so a README whose commands drift from the CLI fails the suite.
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def bash_blocks(readme: Path) -> list[str]:
    """The ```bash fenced blocks of ``readme``, in order."""
    blocks = re.findall(r"^```bash\n(.*?)^```", readme.read_text(), flags=re.S | re.M)
    assert blocks, f"{readme}: no ```bash block to run"
    return blocks


def run_readme(readme: Path, workdir: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Every bash block of ``readme`` in one `bash -e` run inside ``workdir``; the finished process."""
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "examples").symlink_to(REPO / "examples", target_is_directory=True)
    bindir = workdir / ".bin"
    bindir.mkdir()
    (bindir / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    (bindir / "python").chmod(0o755)
    base = {k: v for k, v in os.environ.items() if k != "TVM_QPLUGIN_NATIVE_LOG"}
    env = {**base, "PATH": f"{bindir}{os.pathsep}{base['PATH']}", "PYTHONPATH": str(REPO)}
    script = "set -euo pipefail\n" + "\n".join(bash_blocks(readme))
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=workdir, env=env,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def python_blocks(readme: Path) -> list[str]:
    """The ```python fenced blocks of ``readme``, in order."""
    return re.findall(r"^```python\n(.*?)^```", readme.read_text(), flags=re.S | re.M)


def run_python_blocks(readme: Path, workdir: Path) -> str:
    """The README's ```python blocks (they read what its commands wrote), in ``workdir``; their stdout."""
    blocks = python_blocks(readme)
    assert blocks, f"{readme}: no python block"
    r = subprocess.run([sys.executable, "-c", "\n".join(blocks)], capture_output=True, text=True, cwd=workdir,
                       timeout=120, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}"
    return r.stdout
