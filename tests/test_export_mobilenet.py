"""Issue 4 acceptance: MobileNetV2 (ImageNet weights) at 96x96, compiled for the i.MX RT1060 EVK
(Cortex-M7, 1 MB SRAM enforced at link time, weights in the 8 MB external flash), runs bit-exact
under qemu (mps2-an500, Cortex-M7) against the NumPy reference; the arena is within 10 % of the
liveness lower bound; instructions per MAC are reported for every conv/dense layer.
"""
from __future__ import annotations

import pytest

import tvm_qplugin as tq
from tvm_qplugin.export import export_mcu
from tvm_qplugin.targets import get_board
from qplugin_zoo import imagenet_crops, mobilenet_v2_onnx

N_INPUTS = 8


@pytest.mark.slow
def test_mobilenet_v2_96_on_imxrt1060_bit_exact(tmp_path):
    board = get_board("imxrt1060-evk")
    art = tq.compile(mobilenet_v2_onnx(input_size=96), calib={"input": imagenet_crops(32, seed=0, size=96)},
                     int_io=True, bit_exact_inputs=1, timing_runs=1)
    x = imagenet_crops(N_INPUTS, seed=1, size=96)   # other crops than the calibration ones
    samples = [art.quantize_inputs({"input": x[i:i + 1]}) for i in range(N_INPUTS)]
    res = export_mcu(art, tmp_path / "c", board, samples=samples, workdir=tmp_path / "work")
    assert res["bit_exact"] and res["bit_exact_inputs"] == N_INPUTS, res.get("mismatches")
    mem = res["memory"]
    assert mem["ram_limit_bytes"] == 1024 * 1024                    # the board's 1 MB SRAM was enforced
    assert mem["ram_bytes"] <= 1024 * 1024
    assert mem["ext_flash_bytes"] >= mem["weights_bytes"] > 3_000_000  # weights in external flash
    assert mem["peak_arena_bytes"] <= 1.1 * mem["liveness_lower_bound_bytes"]
    layers = res["layers"]
    assert len(layers) == 53 and all(layer["instructions_per_mac"] > 0 for layer in layers)
    print(f"\nMobileNetV2-96 on {board.name} (qemu {board.emulator().qemu_machine}): "
          f"{res['instructions_per_inference']} instructions/inference, {res['instructions_per_mac']:.2f}/MAC; "
          f"arena {mem['peak_arena_bytes']} B (lower bound {mem['liveness_lower_bound_bytes']} B), "
          f"RAM {mem['ram_bytes']} B, flash {mem['flash_bytes']} B (external {mem['ext_flash_bytes']} B), "
          f"stack {mem['stack_bytes']} B")
    for layer in layers:
        print(f"  {layer['name']:5s} {layer['c_func']:22s} {layer['macs']:9d} MACs "
              f"{layer['instructions_per_mac']:6.2f} instructions/MAC")
