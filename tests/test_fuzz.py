"""A seeded, bounded fuzz campaign against the CLI contract (issue 16).

Mutated ONNX models (the tiny builders' models and the digits CNN), calibration files and compiled
artifacts go through ``tvm_qplugin.cli.main`` in a long-lived worker process (tests/fuzz_worker.py:
TVM imported once; a signal kills only the worker, which is restarted and the case counted as a
failure). Every case must keep the contract checked by tests/fuzz_driver.py: exit 0 or 2, one
stderr line on 2, no traceback, no signal, nothing half-written, no temp files left.

Size: ``QPLUGIN_FUZZ_CASES`` (24) cases in `make test` (~25 s on 2 cores: the same seeded stream,
cut shorter); the 120-case campaign is `extended` (`make test-extended`). A long run::

    QPLUGIN_FUZZ_CASES=2000 python -m pytest -q -s tests/test_fuzz.py

``QPLUGIN_FUZZ_SEED`` picks another campaign; ``-s`` prints the figures (exit codes, signals,
tracebacks, half-written outputs) as one JSON line.
"""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest

from fuzz_driver import Case, Worker, run_cases, summary
from fuzz_mutations import Seeds, cases
from onnx_builders import OnnxGraph

ROOT = Path(__file__).resolve().parents[1]
CASES = int(os.environ.get("QPLUGIN_FUZZ_CASES", "24"))
FULL_CAMPAIGN_CASES = 120
SEED = int(os.environ.get("QPLUGIN_FUZZ_SEED", "16"))


def _tiny_conv(path: Path) -> Path:
    g = OnnxGraph((1, 1, 8, 8), np.random.default_rng(0))
    y = g.gemm(g.flatten(g.maxpool(g.relu(g.conv("x", 4, k=3)))), 3)
    return g.save(y, path)


def _tiny_clip_reshape(path: Path, clip: tuple[float, float] = (0.0, 6.0)) -> Path:
    g = OnnxGraph((1, 2, 6, 6), np.random.default_rng(1))
    y = g.avgpool(g.clip(g.conv("x", 4, k=3), *clip), k=2, stride=2, pads=(0, 0, 0, 0))
    y = g.add_const(g.matmul(g.reshape(y, (1, 36)), 5), np.full((5,), 0.5, np.float32))
    return g.save(y, path)


def _seeds(d: Path, worker: Worker) -> Seeds:
    d.mkdir(parents=True)
    rng = np.random.default_rng(16)
    models = []
    for build, shape, name in ((_tiny_conv, (8, 1, 8, 8), "x"), (_tiny_clip_reshape, (8, 2, 6, 6), "x")):
        model = build(d / f"{build.__name__.lstrip('_')}.onnx")
        np.savez(d / f"{model.stem}_calib.npz", **{name: rng.random(shape, dtype=np.float32)})
        models.append((model, d / f"{model.stem}_calib.npz"))
    np.savez(d / "digits_calib.npz", input=rng.random((8, 1, 8, 8), dtype=np.float32) * 16)
    models.append((ROOT / "examples" / "digits_cnn.onnx", d / "digits_calib.npz"))
    arts = []
    for i, (model, calib) in enumerate(models[:2]):
        out = d / f"artifact{i}"
        rc, _, err = worker.run(["compile", str(model), "--calib", str(calib), "-o", str(out), "--no-progress"])
        assert rc == 0, f"seed {model.name} does not compile: {err}"
        arts.append(out)
    return Seeds(models, arts[0], arts[1])


@pytest.mark.parametrize("n_cases", [CASES, pytest.param(FULL_CAMPAIGN_CASES, marks=pytest.mark.extended)],
                         ids=["make-test", "full"])
def test_fuzz_campaign(tmp_path, n_cases):
    worker = Worker(tmp_path / "worker")
    try:
        seeds = _seeds(tmp_path / "seeds", worker)
        outcomes = run_cases(cases(random.Random(SEED), seeds, tmp_path / "cases", n_cases), worker)
    finally:
        worker.close()
    figures = summary(outcomes, worker)
    print("\nfuzz figures:", json.dumps(figures))
    failures = [o for o in outcomes if o.problems]
    detail = "\n".join(f"- {o.case.name}: exit {o.rc}; {'; '.join(o.problems)}; stderr {o.stderr[-400:]!r}; "
                       f"argv {o.case.argv}" for o in failures[:25])
    assert not failures, f"{len(failures)} of {len(outcomes)} fuzz cases broke the CLI contract " \
                         f"({json.dumps(figures)}):\n{detail}"
    assert figures["exit_0"] > 0 and figures["exit_2"] > figures["exit_0"], figures  # the mix is as designed


def test_clip_to_one_value_before_a_reshape_compiles_bit_exact(tmp_path):
    """A campaign case (the clip mutation [1, 1] on the seed above): the conv's requantization
    clamps to one value, and the tensorized x86 conv's epilogue failed to tensorize (exit 70).
    Such a kernel keeps the plain rules (tests/test_x86_kernels.py); the compile is bit-exact."""
    import tvm_qplugin as tq

    model = _tiny_clip_reshape(tmp_path / "clip_one_value.onnx", clip=(1.0, 1.0))
    calib = {"x": np.random.default_rng(16).random((8, 2, 6, 6), dtype=np.float32)}
    report = tq.compile(str(model), target="x86-host", calib=calib).report
    assert report["bit_exact"] and report["integer_only"], report["bit_exact_kernels"]


def test_driver_catches_a_broken_contract(tmp_path):
    """The checks can fail: a multi-line error, a temp file left and a half-written output are each
    reported (a driver that passes everything would make the campaign above meaningless)."""
    from fuzz_driver import check_contract

    tmp = tmp_path / "tmp"
    tmp.mkdir()
    out = tmp_path / "out"
    (tmp_path / ".out.tmp-x").mkdir()
    (tmp / "leftover").write_text("")
    problems = check_contract(Case("c", [], out), 2, "", "tvm-qplugin: error: a\nwarning\n", tmp)
    assert any("stderr lines" in p for p in problems) and any("temp files" in p for p in problems)
    assert any(p.startswith("half-written") for p in problems)
    assert check_contract(Case("c", [], None), 70, "", "Traceback ...\n", tmp) == ["exit 70 (internal error)",
                                                                                    "traceback"]
