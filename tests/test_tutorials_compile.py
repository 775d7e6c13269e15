"""tutorials/mixed_precision runs as written: the README's own commands (tests/tutorial_blocks.py)
on the digits CNN, then the outputs it promises are checked. The deep checks stay in
test_mixed_compile.py; this guards the walk-through (a renamed option or report key breaks it
here). tutorials/cuda_compile is run by test_compile_cuda.py, whose one CUDA compile it is."""
from __future__ import annotations

import json
import subprocess

from tutorial_blocks import REPO, run_python_blocks, run_readme

MIXED = REPO / "tutorials" / "mixed_precision" / "README.md"


def _ok(r: subprocess.CompletedProcess) -> str:
    assert r.returncode == 0, f"exit {r.returncode}\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}"
    return r.stdout


def test_mixed_precision_tutorial_fits_the_budget_with_int4_and_int8_layers(tmp_path):
    out = _ok(run_readme(MIXED, tmp_path))
    assert "precision mixed" in out and "bit-exact    yes" in out and "integer-only yes" in out, out
    rep = json.loads((tmp_path / "out-mixed" / "report.json").read_text())
    assert rep["precision"] == "mixed" and rep["budget"] == {"size": 7 * 1024}, rep["budget"]
    assert rep["integer_only"] and rep["bit_exact"]
    assert rep["size_bytes"]["weights"] <= 7 * 1024, rep["size_bytes"]
    bits = {layer["w_bits"] for layer in rep["layers"]}
    assert bits == {4, 8}, f"a 7 KB budget on 7.2 KB of int8 weights should mix 4 and 8 bits, got {bits}"
    printed = run_python_blocks(MIXED, tmp_path)
    plan = [(layer["name"], layer["w_bits"], layer["a_bits"]) for layer in rep["layers"]]
    # section 3: the digits ViT with --wide-inputs auto, bit-exact, every consumer's width explained
    wide_rep = json.loads((tmp_path / "out-wide" / "report.json").read_text())
    assert wide_rep["bit_exact"] and wide_rep["integer_only"]
    wide = wide_rep["wide_inputs"]
    assert wide["policy"] == "auto" and wide["measured"] and len(wide["tensors"]) > 0
    assert wide["narrowed"] == sum(t["bits"] == 8 for t in wide["tensors"]) < len(wide["tensors"])
    assert all(t["reason"].startswith(("narrowed", "kept")) for t in wide["tensors"]), wide["tensors"]
    read = {layer["name"]: layer.get("input_bits") for layer in wide_rep["layers"]}
    assert all(read[t["layer"]] == t["bits"] for t in wide["tensors"])
    same = wide["plan"]["top1_agreement"] == wide["plan"]["top1_agreement_all_16"]
    assert printed.splitlines() == [f"mixed {rep['budget']} {rep['size_bytes']}", str(plan),
                                    f"auto {len(wide['tensors'])} {wide['narrowed']} {same}"], printed
