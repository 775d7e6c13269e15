"""tutorials/mixed_precision and tutorials/cuda_compile run as written: each README's own commands
(tests/tutorial_blocks.py) on the digits CNN, then the outputs they promise are checked. The deep
checks of both paths stay in test_mixed_compile.py and test_compile_cuda.py; these guard the
walk-throughs (a renamed option or report key breaks them here)."""
from __future__ import annotations

import json
import subprocess
import sys

import tvm

from tutorial_blocks import REPO, python_blocks, run_readme

MIXED = REPO / "tutorials" / "mixed_precision" / "README.md"
CUDA = REPO / "tutorials" / "cuda_compile" / "README.md"


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}"
    return r.stdout


def _run_python_blocks(readme, workdir) -> str:
    """The README's ```python blocks (they read what its commands wrote), in ``workdir``."""
    blocks = python_blocks(readme)
    assert blocks, f"{readme}: no python block"
    return _ok(subprocess.run([sys.executable, "-c", "\n".join(blocks)], capture_output=True, text=True,
                              cwd=workdir, timeout=120))


def test_mixed_precision_tutorial_fits_the_budget_with_int4_and_int8_layers(tmp_path):
    out = _ok(run_readme(MIXED, tmp_path))
    assert "precision mixed" in out and "bit-exact    yes" in out and "integer-only yes" in out, out
    rep = json.loads((tmp_path / "out-mixed" / "report.json").read_text())
    assert rep["precision"] == "mixed" and rep["budget"] == {"size": 7 * 1024}, rep["budget"]
    assert rep["integer_only"] and rep["bit_exact"]
    assert rep["size_bytes"]["weights"] <= 7 * 1024, rep["size_bytes"]
    bits = {layer["w_bits"] for layer in rep["layers"]}
    assert bits == {4, 8}, f"a 7 KB budget on 7.2 KB of int8 weights should mix 4 and 8 bits, got {bits}"
    printed = _run_python_blocks(MIXED, tmp_path)
    plan = [(layer["name"], layer["w_bits"], layer["a_bits"]) for layer in rep["layers"]]
    assert printed.splitlines() == [f"mixed {rep['budget']} {rep['size_bytes']}", str(plan)], printed


def test_cuda_tutorial_builds_dp4a_ptx_without_a_gpu(tmp_path):
    out = _ok(run_readme(CUDA, tmp_path))
    assert "CUDA         sm_75" in out, out
    cuda_dir = tmp_path / "out-cuda" / "cuda"
    assert {p.name for p in cuda_dir.iterdir()} == {"model.so", "kernels.cu", "kernels.ptx"}
    assert "dp4a" in (cuda_dir / "kernels.ptx").read_text(), "the tutorial promises dp4a in the PTX"
    rep = json.loads((tmp_path / "out-cuda" / "report.json").read_text())
    assert rep["cuda"]["arch"] == "sm_75" and rep["cuda"]["dp4a_kernels"], rep["cuda"]
    if not tvm.cuda().exist:  # the README's promise: not run is said, never passed
        assert rep["cuda"]["bit_exact"] is None and "not run (no CUDA GPU" in out, out
    printed = _run_python_blocks(CUDA, tmp_path)
    assert printed.startswith("sm_75") and "cuda-dp4a" in printed, printed
