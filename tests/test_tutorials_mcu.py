"""tutorials/cortex_m_transformer runs as written: the README's own commands (tests/tutorial_blocks.py)
compile the digits ViT for the Cortex-M4 board and check it bit-exact under qemu; then its Python
snippet reads the report. The kernel-level checks on M4 and M55 stay in test_export_vit_mcu.py."""
from __future__ import annotations

import json
import subprocess
import sys

from tutorial_blocks import REPO, python_blocks, run_readme

README = REPO / "tutorials" / "cortex_m_transformer" / "README.md"


def test_cortex_m_transformer_tutorial_is_bit_exact_under_qemu(tmp_path):
    r = run_readme(README, tmp_path)
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}"
    assert "C package    bit-exact yes under emulation" in r.stdout, r.stdout
    rep = json.loads((tmp_path / "out-vit-m4" / "report.json").read_text())
    assert rep["nonlinear"] == "division-free" and rep["integer_only"] and rep["bit_exact"]
    assert 0 < rep["mcu"]["instructions_per_inference"] < 5_000_000, rep["mcu"]  # README: 3.53 M
    (snippet,) = python_blocks(README)
    p = subprocess.run([sys.executable, "-c", snippet], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert p.returncode == 0, p.stderr[-3000:]
    assert [int(v) for v in p.stdout.split()] == [rep["mcu"]["instructions_per_inference"],
                                                  rep["memory"]["peak_arena_bytes"], rep["memory"]["ram_bytes"]]
