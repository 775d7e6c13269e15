"""Mixed precision: the focused Hutchinson phase (issue 13's spread target on the top layers).

A small layer next to a big one: whole-model probes give the small layer's block the big block's
cross terms as noise; probes on the small layer alone remove them. Checked against the exact
Hessian (torch.autograd.functional.hessian) of a model small enough to build it.
"""
from __future__ import annotations

import numpy as np
import pytest

from tests.onnx_builders import OnnxGraph
from tests.test_mixed_sensitivity import _exact_block_traces
from tvm_qplugin.mixed.sensitivity import PILOT_PROBES, _HessianProbes, relative_spread, sensitivity
from tvm_qplugin.mixed.torch_graph import load_torch_graph


pytestmark = pytest.mark.usefixtures("single_torch_thread")


def _small_then_big(tmp_path):
    """conv 1->2 (18 weights), then Gemm 32->48 (1536 weights), then Gemm 48->3 (144)."""
    g = OnnxGraph((1, 1, 4, 4), rng=np.random.default_rng(3))
    h = g.node("Sigmoid", [g.conv("x", 2)], (1, 2, 4, 4))
    h = g.node("Sigmoid", [g.gemm(g.flatten(h), 48)], (1, 48))
    return g.save(g.gemm(h, 3), tmp_path / "small_big.onnx")


def _data():
    rng = np.random.default_rng(0)
    return {"x": rng.standard_normal((4, 1, 4, 4)).astype(np.float32)}, np.array([0, 1, 2, 1])


def test_focused_probes_remove_the_big_blocks_cross_terms(tmp_path):
    tg = load_torch_graph(_small_then_big(tmp_path))
    inputs, labels = _data()
    exact = _exact_block_traces(tg, inputs, labels)[:3]
    hvp = _HessianProbes(tg, inputs, labels, seed=1)
    whole, _ = hvp.rows(96)
    alone, _ = hvp.rows(96, only=[0])
    assert np.isnan(alone[:, 1:]).all()  # the other blocks were not probed
    spread_whole, spread_alone = relative_spread(whole[:, [0]])[0], relative_spread(alone[:, [0]])[0]
    assert spread_alone < spread_whole / 3, (spread_whole, spread_alone)
    est, stderr = alone[:, 0].mean(), spread_alone * abs(alone[:, 0].mean())
    assert abs(est - exact[0]) <= 4 * stderr + 1e-6, (est, exact[0], stderr)


def test_sensitivity_focuses_on_unresolved_top_layers_until_the_target(tmp_path):
    path = _small_then_big(tmp_path)
    inputs, labels = _data()
    s = sensitivity(path, inputs, labels, probes=PILOT_PROBES + 1600, samples=4, direct=False, cache=False,
                    target_spread=0.1)
    name = s.layers[0]["name"]
    assert name in s.top_layers and name in s.focused_layers, (s.top_layers, s.focused_layers)
    others = [layer["name"] for layer in s.layers if layer["name"] not in s.focused_layers]
    assert all(s.probes_per_layer[n] == PILOT_PROBES for n in others)  # the whole-model pilot's
    # a focused layer's trace: its own probes alone (one HVP each), counted in the total
    assert s.probes == PILOT_PROBES + sum(s.probes_per_layer[n] for n in s.focused_layers)
    assert all(s.trace_w_spread[n] < 0.1 for n in s.top_layers), s.trace_w_spread
    assert s.probes < PILOT_PROBES + 1600, s.probes_per_layer  # stopped at the target, in blocks of 16


def test_a_focused_probe_equals_the_whole_graph_hvp_with_v_zero_elsewhere(tmp_path):
    """The focused HVP runs the double backward from that layer's gradient to that layer only
    (``_HessianProbes._hvp``); it must be the same product as the whole second-order graph with
    ``v`` zero on every other block and activation -- only cheaper."""
    import torch

    tg = load_torch_graph(_small_then_big(tmp_path))
    inputs, labels = _data()
    hvp = _HessianProbes(tg, inputs, labels, seed=5)
    gen = torch.Generator().manual_seed(5)  # the probes rows() draws, drawn again
    for layer in (0, 1):
        rows, _ = hvp.rows(3, only=[layer])
        for got in rows[:, layer]:
            v = torch.randint(0, 2, hvp.leaves[layer].shape, generator=gen).to(hvp.leaves[layer].dtype) * 2 - 1
            vs = [v if i == layer else torch.zeros_like(t) for i, t in enumerate(hvp.leaves)]
            whole = torch.autograd.grad(hvp.grads, hvp.leaves, grad_outputs=vs, retain_graph=True)[layer]
            assert got == pytest.approx(float((v * whole).sum()), rel=1e-5, abs=1e-7)
