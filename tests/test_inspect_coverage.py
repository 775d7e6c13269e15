"""``inspect``'s coverage table: folded shape scaffolding named, each Relax op with the rule that
takes it or the reason it is refused."""
from __future__ import annotations

import re

import numpy as np
from onnx_builders import OnnxGraph
from test_coverage_graphs import dynamic_axes_model

from tvm_qplugin.inspect_model import inspect_model


def test_inspect_names_folded_scaffolding_and_rules(tmp_path, rng):
    path = dynamic_axes_model(tmp_path / "dyn.onnx", rng)
    out = inspect_model(str(path), ["x=1,5,16"])
    assert re.search(r"^\s+ConstantOfShape\s+1\s+folds", out, re.MULTILINE), out
    assert re.search(r"^\s+Mul\s+1\s+folds", out, re.MULTILINE), out            # the Mul of two shape-derived tensors
    assert re.search(r"^\s+MatMul\s+1\s+supported$", out, re.MULTILINE), out
    folded = re.search(r"^folded\s+9 node\(s\): (.*)$", out, re.MULTILINE)
    assert folded and "ones_like" in folded.group(1) and "matmul" not in folded.group(1), out
    assert re.search(r"^\s+matmul\s+1\s+rule QDense$", out, re.MULTILINE), out
    assert re.search(r"^\s+add\s+1\s+rule QAdd$", out, re.MULTILINE), out
    assert out.splitlines()[-1] == "verdict all ops supported"


def test_inspect_coverage_gives_the_refusal_reason(tmp_path, rng):
    g = OnnxGraph((1, 3, 6, 6), rng)
    roi, scales = g.init(np.array([], np.float32), "roi"), g.init(np.array([1, 1, 2, 2], np.float32), "scales")
    y = g.node("Resize", [g.node("Sigmoid", [g.conv("x", 4)], (1, 4, 6, 6)), roi, scales], (1, 4, 12, 12), mode="cubic")
    out = inspect_model(str(g.save(y, tmp_path / "m.onnx")))
    assert re.search(r"^\s+image\.resize2d\s+1\s+REFUSED: Resize mode 'cubic'", out, re.MULTILINE), out
    assert re.search(r"^\s+sigmoid\s+1\s+rule QLookup$", out, re.MULTILINE), out
    assert re.search(r"^\s+nn\.conv2d\s+1\s+rule QConv2D", out, re.MULTILINE), out
