"""Instructions per layer on aarch64 boards (issue 11): one profiled run of the whole C package under
qemu-aarch64 with the instruction-count plugin (harness.count_linux), so report.json's layers[] has
``instructions_per_mac`` for every conv / dense layer -- the hand-written ones (stem, depthwise)
as well as those on a TensorIR kernel -- and not only for the layers kernel_choice measured alone.

The digits CNN on rpi5 (Cortex-A76), its pointwise convs on the sdot kernel, the rest hand-written
(~20 s, most of it the host compile); `compile --target rpi5` checks the same in report.json
(tests/test_mcu_cli.py)."""
from __future__ import annotations

import pytest

import tvm_qplugin as tq
from qplugin_zoo import digits_split
from tvm_qplugin.export import verify_c_package, write_c_package
from tvm_qplugin.export.c_graph import build_graph, integer_module_of
from tvm_qplugin.export.kernel_choice import schedules_for, tir_candidates
from tvm_qplugin.targets import get_board

BOARD = "rpi5"
SDOT = "sdot4x4"


@pytest.fixture(scope="module")
def counted(tmp_path_factory):
    """(package info, verify_c_package's result with the cost) of the digits CNN on rpi5."""
    xtr, _, xte, _ = digits_split()
    art = tq.compile("examples/digits_cnn.onnx", calib={"input": xtr[:128]}, int_io=True, bit_exact_inputs=1,
                     timing_runs=1)
    board = get_board(BOARD)
    g = build_graph(integer_module_of(art.integer_mod))
    kernels = {s.index: SDOT for s in tir_candidates(g) if SDOT in schedules_for(s, board)}
    assert kernels, "the digits CNN has pointwise convs the sdot kernel takes"
    tmp = tmp_path_factory.mktemp("a64cost")
    info = write_c_package(art, tmp / "c", board, kernels=kernels)
    samples = [art.quantize_inputs({"input": xte[i:i + 1]}) for i in range(2)]
    res = verify_c_package(tmp / "c", board, samples, mod=art.integer_mod, workdir=tmp / "work", count=True)
    return info, res


def test_every_conv_and_dense_layer_is_counted(counted):
    info, res = counted
    assert res["bit_exact"] and res["board"] == BOARD, res.get("mismatches")
    cost = res["cost"]
    assert cost["board"] == BOARD and cost["emulator"] == "qemu-aarch64 -cpu cortex-a76"
    layers = {layer["name"]: layer for layer in cost["layers"]}
    assert list(layers) == [layer["name"] for layer in info["layers"]]   # export_mcu zips the two
    for layer in cost["layers"]:
        assert layer["instructions"] > 0 and layer["instructions_per_mac"] > 0, layer
    ops = {st["name"]: (st["op"], st.get("kernel_source")) for st in info["steps"]}
    assert {ops[n][1] for n in layers} >= {"handwritten-c", f"tensorir-{SDOT}"}, ops   # both kinds counted
    assert any(f.startswith("qk_dw") for f in cost["functions"]), cost["functions"]   # the depthwise kernel ran
    assert any(f.startswith("qk_tir_conv1x1") for f in cost["functions"]), cost["functions"]


def test_the_counts_add_up_to_the_whole_run(counted):
    """Per-step counts are the deltas between consecutive marks: they sum to the inference exactly;
    the layers with MACs are part of it, and the program (startup, file I/O) runs more."""
    cost = counted[1]["cost"]
    steps = cost["steps"]
    assert len(steps) == len(counted[0]["steps"])
    assert sum(st["instructions"] for st in steps) == cost["instructions_per_inference"]
    assert 0 < sum(layer["instructions"] for layer in cost["layers"]) <= cost["instructions_per_inference"]
    assert cost["macs"] == sum(layer["macs"] for layer in cost["layers"]) > 0
    assert cost["instructions_per_mac"] == round(cost["instructions_per_inference"] / cost["macs"], 4)
    assert cost["program_instructions"] > cost["instructions_per_inference"]
    # (per function, not summed: kernels the linker folded into one body share its address range)
    assert all(0 < n <= cost["instructions_per_inference"] for n in cost["functions"].values()), cost["functions"]
