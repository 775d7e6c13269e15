"""tutorials/tune_for_your_board/tune.py runs as CI can afford it: one trial per kernel of the
digits CNN, then the tuned and default builds it prints are both bit-exact and timed. The deep
tuning checks stay in test_tuning.py; a module of its own so that ``--dist loadscope`` can run it
beside that one (a 2-core CI: the tuning tests and this walk-through are the longest scopes)."""
from __future__ import annotations

import os
import subprocess
import sys

from tutorial_blocks import REPO


def test_tune_tutorial_runs_with_a_tiny_budget(tmp_path):
    r = subprocess.run([sys.executable, str(REPO / "tutorials/tune_for_your_board/tune.py"), "--trials", "1", "--out",
                        str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=900,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-3000:]
    assert "tuned    bit-exact True" in r.stdout and "default  bit-exact True" in r.stdout, r.stdout
    assert "latency  tuned" in r.stdout
