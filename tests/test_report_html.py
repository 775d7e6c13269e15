"""report.html: produced next to report.json by a real compile, self-contained (opens offline).

The compile calibrates on distilled inputs (``--calib distill``, ZeroQ) of a small model with
batch-norms: one compile checks both that the CLI wires distillation in and that the page is made."""
from __future__ import annotations

import base64
import io
import json
import re

import numpy as np
import pytest
from PIL import Image

from tests.test_cli import ok, run_cli
from tests.test_mixed_cli import tiny_model
from tvm_qplugin.report_html import render

EXTERNAL = re.compile(r"https?://|//cdn|<script[^>]*\bsrc=|<link\b|url\(|@import", re.I)


def _figures(page: str) -> list[Image.Image]:
    """Every <img> of the page, decoded; each must be an embedded PNG."""
    srcs = re.findall(r"<img[^>]*\bsrc='([^']*)'", page)
    assert srcs and all(s.startswith("data:image/png;base64,") for s in srcs), [s[:40] for s in srcs]
    images = [Image.open(io.BytesIO(base64.b64decode(s.split(",", 1)[1]))) for s in srcs]
    for im in images:
        im.load()
        assert im.format == "PNG" and im.width > 100 and im.height > 100
        assert len(set(np.asarray(im.convert("L")).ravel().tolist())) > 8  # something was drawn
    return images


def _sections(page: str) -> dict[str, str]:
    parts = re.split(r"<h2>(.*?)</h2>", page)
    return dict(zip(parts[1::2], parts[2::2]))


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    d = tmp_path_factory.mktemp("html")
    model = tiny_model(d, batchnorm=True)
    np.savez(d / "eval.npz", input=np.random.default_rng(1).standard_normal((32, 1, 8, 8)).astype(np.float32))
    # pixels 0..255 -> (p * 8/255 - 4) / 1: inputs in [-4, 4], as the Gaussian eval inputs nearly all are
    r = run_cli("compile", model, "--calib", "distill", "--scale", str(8 / 255), "--mean", "4", "--std", "1",
                "--eval", d / "eval.npz", "-o", d / "out")
    ok(r)
    return d / "out", r


def test_compile_calibrates_on_distilled_inputs(compiled):
    out, r = compiled
    from tvm_qplugin.mixed.distill import CLASS_WEIGHT, DEFAULT_SAMPLES, DISTILL_OBSERVER

    assert f"distilled    {DEFAULT_SAMPLES} calibration inputs from the batch-norm statistics in" in r.stderr
    report = json.loads((out / "report.json").read_text())
    assert report["bit_exact"] and report["integer_only"]
    cal = report["calibration"]
    assert cal["source"] == "distill" and report["timing_s"]["distill"] > 0
    assert np.allclose(cal["input_range"], [[-4.0], [4.0]], atol=1e-5), cal["input_range"]
    assert cal["class_weight"] == CLASS_WEIGHT  # a 4-class classifier: the class term was used
    assert report["observer"] == cal["observer"] == DISTILL_OBSERVER  # no --observer: distilled data's default
    assert report["accuracy"]["value"] >= 0.9, report["accuracy"]  # agreement with fp32 on real-valued inputs


def test_compile_writes_a_self_contained_report_html(compiled):
    compiled, _ = compiled
    page = (compiled / "report.html").read_text()
    assert (compiled / "report.json").is_file()
    assert not EXTERNAL.search(page), EXTERNAL.search(page)
    sections = _sections(page)
    for title in ("Per-tensor SQNR along the graph", "Latency per layer", "Memory"):
        assert "<img" in sections[title], f"{title}: no figure"
    assert len(_figures(page)) == 3


def _mixed(layers: int = 3) -> dict:
    names = [f"conv{i}" for i in range(layers)]
    per = lambda v: {n: {"4": v * (i + 1), "8": v * (i + 1) / 256} for i, n in enumerate(names)}  # noqa: E731
    sens = {"layers": [{"name": n, "op": "Conv", "params": 100 * (i + 1)} for i, n in enumerate(names)], "probes": 64,
            "trace_w": {n: 1.0 + i for i, n in enumerate(names)}, "trace_w_spread": {n: 0.05 for n in names},
            "omega_w": per(1e-3), "direct_w": per(1e-2), "direct_a": {n: {"8": 1e-5, "16": 1e-9} for n in names}}
    point = lambda size, acc: {"size": size, "bops": size * 64.0, "latency": None, "acc": acc}  # noqa: E731
    return {"model": "m.onnx", "metric": "accuracy (simulated)", "sensitivity": sens,
            "uniform": {"int8": point(600, 0.99), "int4": point(300, 0.90)},
            "front": [point(300, 0.90), point(450, 0.97), point(600, 0.99)],
            "plan": dict(point(450, 0.97), bits={n: [4 if i == 0 else 8, 8] for i, n in enumerate(names)})}


def test_mixed_sections_draw_the_front_and_the_per_layer_bits():
    page = render(None, _mixed())
    assert not EXTERNAL.search(page)
    sections = _sections(page)
    assert "<img" in sections["Accuracy vs size (Pareto front)"]
    assert "latency per layer was not measured" in sections["Accuracy vs BOPs"]
    assert "(4, 8)" in sections["Per-layer bits and sensitivity"]  # conv0's chosen widths in the table
    assert len(_figures(page)) == 3
    # with measured latency the second front is against latency
    m = _mixed()
    for p in [*m["front"], *m["uniform"].values(), m["plan"]]:
        p["latency"] = p["size"] / 1000
    assert "Accuracy vs latency" in _sections(render(None, m))
