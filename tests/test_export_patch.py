"""Patch-based execution of the C package (issue 11, deliverable 4): when the layer-wise arena is
over the RAM limit, the first layers run patch by patch (receptive-field halo recomputed) and the
package stays bit-exact with the NumPy reference of the layer-wise graph -- on the host and under
qemu on Cortex-M4 (mps2-an386), Cortex-M7 (mps2-an500) and Cortex-M55 (mps3-an547).

The model is a small synthetic CNN (MobileNetV2-shaped: a stride-2 stem, depthwise + pointwise
blocks, a residual add, max pooling, a classifier) so that a patch crosses image borders, strides,
a residual branch (the add reads a smaller tile than the 3x3 branch: a crop) and a pool.
"""
from __future__ import annotations

import copy

import numpy as np
import pytest
from onnx_builders import OnnxGraph

import tvm_qplugin as tq
from tvm_qplugin.errors import MemoryBudgetError
from tvm_qplugin.export import export_mcu, verify_c_package, write_c_package
from tvm_qplugin.export.budget import MODEL_STACK_ALLOWANCE
from tvm_qplugin.export.c_graph import build_graph
from tvm_qplugin.export.kernels_c import macs
from tvm_qplugin.export.patch_plan import Region, cut_candidates, grid_bounds, input_region, patch_graph
from tvm_qplugin.reference import ReferenceInterpreter
from tvm_qplugin.report import record_c_package
from tvm_qplugin.targets import get_board

N_INPUTS = 4


def _mobilenet_like(path):
    g = OnnxGraph((1, 3, 32, 32), rng=np.random.default_rng(0), input_name="input")
    x = g.relu(g.conv("input", 16, 3, stride=2))
    x = g.relu(g.conv(x, 16, 3, groups=16))
    x = g.relu(g.conv(x, 24, 1))
    x = g.clip(g.conv(x, 24, 3, stride=2, groups=24))
    y = g.conv(x, 16, 1)
    z = g.clip(g.conv(y, 48, 1))
    z = g.clip(g.conv(z, 48, 3, groups=48))
    x = g.add(y, g.conv(z, 16, 1))
    x = g.flatten(g.gap(g.maxpool(x, 2, 2)))
    return g.save(g.gemm(x, 10), path)


@pytest.fixture(scope="module")
def cnn(tmp_path_factory):
    d = tmp_path_factory.mktemp("patch")
    calib = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32)
    art = tq.compile(str(_mobilenet_like(d / "cnn.onnx")), calib={"input": calib}, int_io=True, bit_exact_inputs=1,
                     timing_runs=1)
    samples = [art.quantize_inputs({"input": calib[i:i + 1]}) for i in range(N_INPUTS)]
    samples[0] = [np.full_like(samples[0][0], np.iinfo(samples[0][0].dtype).max)]   # dtype extremes
    samples[1] = [np.full_like(samples[1][0], np.iinfo(samples[1][0].dtype).min)]
    ref = ReferenceInterpreter(art.integer_mod)
    want = [ref.run("main", *s) for s in samples]
    layerwise = write_c_package(art, d / "layerwise")
    budget = layerwise["arena_bytes"] + MODEL_STACK_ALLOWANCE - 1          # one byte short: must patch
    res = export_mcu(art, d / "patched", "qemu-mps2-an500", samples=samples, expected=want, ram_budget=budget,
                     workdir=d / "m7")
    return art, d, samples, want, layerwise, res


def test_patching_chosen_when_the_layerwise_arena_is_over_the_budget(cnn):
    _, _, _, _, layerwise, res = cnn
    info, mem = res["package"], res["memory"]
    assert info["patching"]["applied"] and mem["patches"] is not None
    assert mem["peak_arena_bytes"] < layerwise["arena_bytes"] == mem["layerwise_arena_bytes"]
    p = mem["patches"]
    assert p["count"] == p["grid"][0] * p["grid"][1] >= 2 and p["layers"] == len(p["patched_layers"]) >= 2
    assert p["halo_px"] > 0 and mem["patch_extra_macs"] > 0
    assert mem["patch_extra_macs"] == sum(s["macs"] for s in info["steps"]) - layerwise["macs"]
    # layers[] keeps one entry per model layer: a patched one sums its patches and is marked
    assert [layer["name"] for layer in res["layers"]] == [layer["name"] for layer in layerwise["layers"]]
    marked = [layer for layer in res["layers"] if "patched" in layer]
    assert marked and all(m["patched"]["patches"] == p["count"] and m["name"] in p["patched_layers"] for m in marked)
    assert sum(m["macs"] for m in res["layers"]) == layerwise["macs"] + mem["patch_extra_macs"]
    assert all(m["instructions_per_mac"] > 0 for m in res["layers"])
    # one copy of each layer's weights in flash, however many patches call it (MVE corrections too)
    assert info["weights_bytes"] == layerwise["weights_bytes"]
    assert info["mve_extra_bytes"] == layerwise["mve_extra_bytes"]
    print(f"\nsynthetic CNN: arena {layerwise['arena_bytes']} B layer-wise -> {mem['peak_arena_bytes']} B patched "
          f"(first {p['layers']} layers, {p['grid']} grid, halo {p['halo_px']} px, "
          f"+{mem['patch_extra_macs']} MACs = {100 * p['extra_mac_fraction']:.1f} %)")


def test_report_json_memory_and_layer_marks(cnn):
    """report.json as the CLI writes it for a board (report.record_c_package on export_mcu's result)."""
    art, _, _, _, _, res = cnn
    r = copy.deepcopy(art.report)
    record_c_package(r, res, get_board("qemu-mps2-an500"))
    mem = r["memory"]
    assert {"peak_arena_bytes", "layerwise_arena_bytes", "patches", "patch_extra_macs"} <= set(mem)
    convs = [layer for layer in r["layers"] if layer["op"] in ("conv2d", "dense")]
    patched = [layer["name"] for layer in convs if layer.get("patched")]
    assert len(patched) == sum(1 for layer in res["layers"] if "patched" in layer) >= 2
    assert all(layer["instructions_per_mac"] > 0 for layer in convs)


def test_patched_package_bit_exact_on_cortex_m7(cnn):
    _, _, _, _, _, res = cnn
    assert res["bit_exact"] and res["bit_exact_inputs"] == N_INPUTS, res["mismatches"]
    assert res["memory"]["ram_bytes"] <= res["memory"]["ram_limit_bytes"]


def test_patched_package_bit_exact_on_host_cortex_m4_and_m55(cnn):
    """M55 (MVE) also checks that the per-layer weight-sum corrections are shared by the patches."""
    _, d, samples, want, _, _ = cnn
    for board in ("host", "qemu-mps2-an386", "qemu-mps3-an547"):
        v = verify_c_package(d / "patched", board, samples, expected=want, workdir=d / f"v-{board}", count=False)
        assert v["bit_exact"] and v["inputs"] == N_INPUTS, (board, v["mismatches"])


def test_cuts_and_grids_equal_the_layerwise_graph(cnn, tmp_path):
    """Beyond the chosen schedule: a cut after the stride-2 depthwise (3x3 tiles over 8x8: uneven)
    and the last cut (through the residual add and the pool, 2x3 tiles), on the host."""
    art, _, samples, want, _, _ = cnn
    cuts = cut_candidates(build_graph(art.integer_mod))
    assert len(cuts) >= 4 and cuts[0] == 1 and 4 in cuts
    for n, grid in ((4, (3, 3)), (cuts[-1], (2, 3))):
        pkg = tmp_path / f"n{n}g{grid[0]}{grid[1]}"
        info = write_c_package(art, pkg, patch=(n, grid))
        assert info["patching"]["applied"] and info["patching"]["layers"] == n
        v = verify_c_package(pkg, "host", samples, expected=want, workdir=tmp_path / f"w{n}", count=False)
        assert v["bit_exact"], (n, grid, v["mismatches"])


def test_tile_padding_only_at_image_borders(cnn):
    """A 3x3 stride-2 pad-1 conv: the top-left patch keeps the layer's padding, an interior patch
    has none (its halo rows are real data), the bottom-right one reads no row past the image."""
    art = cnn[0]
    g = build_graph(art.integer_mod)
    conv = g.steps[0]
    assert conv.op == "conv2d_requant" and list(conv.params["padding"]) == [1, 1, 1, 1]
    x = conv.args[0]
    assert input_region(conv, Region(0, 8, 0, 8), x) == Region(0, 16, 0, 16)
    assert input_region(conv, Region(4, 8, 4, 8), x) == Region(7, 16, 7, 16)
    assert input_region(conv, Region(8, 16, 8, 16), x) == Region(15, 32, 15, 32)
    g2, info = patch_graph(g, 1, (2, 2))
    pads = [list(s.params["padding"]) for s in g2.steps if s.op == "conv2d_requant" and "_patch" in s.params]
    assert pads == [[1, 1, 0, 0], [1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert info.extra_macs == 0          # one layer: the patches' outputs do not overlap
    g3, info3 = patch_graph(g, 2, (2, 2))  # two: the depthwise 3x3 needs a 1-pixel halo of the stem's output
    assert info3.extra_macs == sum(macs(s) for s in g3.steps if "_patch" in s.params) - macs(conv) - macs(g.steps[1])
    assert info3.extra_macs == 4 * 16 * 3 * 9 * (9 * 9 - 8 * 8)   # each 8x8 tile of lv1 needs 9x9 of lv
    assert grid_bounds(10, 3) == [(0, 3), (3, 6), (6, 10)]
    with pytest.raises(ValueError, match="cannot run patch by patch"):   # through the global pool: no plane
        patch_graph(g, len(g.steps), (2, 2))


def test_budget_patching_cannot_meet_is_one_line_naming_the_smallest_arena(cnn, tmp_path):
    art = cnn[0]
    with pytest.raises(MemoryBudgetError, match=r"even patch-based execution .* needs (\d+) bytes of arena") as e:
        export_mcu(art, tmp_path / "c", "qemu-mps2-an386", ram_budget=MODEL_STACK_ALLOWANCE + 512, verify=False)
    msg = str(e.value)
    assert "\n" not in msg and "raise the budget to at least" in msg
