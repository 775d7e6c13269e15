"""MobileNetV2-96 on rpi5 from TensorIR-generated kernels (issue 11's aarch64 acceptance): export_mcu (the
route of `compile --target rpi5`) measures every candidate layer under qemu-aarch64 -cpu cortex-a76, the
package runs bit-exact, the stem takes im2col-sdot, every pointwise projection and the classifier sdot4x4 at
or below 0.12 instructions/MAC, the 17 int16-input pointwise convs smlal at or below 0.56 (extended: ~10 minutes, most of it the measurements)."""
from __future__ import annotations

import pytest

import tvm_qplugin as tq
from qplugin_zoo import imagenet_crops, mobilenet_v2_onnx
from tvm_qplugin.export import export_mcu
from tvm_qplugin.targets import get_board


@pytest.mark.extended
def test_mobilenet_v2_96_on_rpi5_tir_kernels(tmp_path):
    art = tq.compile(mobilenet_v2_onnx(input_size=96), calib={"input": imagenet_crops(32, seed=0, size=96)},
                     int_io=True, bit_exact_inputs=1, timing_runs=1)
    x = imagenet_crops(2, seed=1, size=96)
    samples = [art.quantize_inputs({"input": x[i:i + 1]}) for i in range(2)]
    res = export_mcu(art, tmp_path / "c", get_board("rpi5"), samples=samples, workdir=tmp_path / "work")
    assert res["bit_exact"] and res["bit_exact_inputs"] == 2, res.get("mismatches")
    chosen = {layer["name"]: layer for layer in res["layers"] if "kernel_choice" in layer}
    assert chosen["lv"]["kernel_choice"]["source"] == "tensorir-im2col-sdot", chosen["lv"]["kernel_choice"]["why"]
    sdot = [layer for layer in chosen.values() if layer["kernel_choice"]["source"] == "tensorir-sdot4x4"]
    assert len(sdot) == 18, sorted(chosen)
    for layer in sdot:   # the measurement alone (the choice's), per MAC
        ch = layer["kernel_choice"]
        assert ch["instructions"]["tensorir-sdot4x4"] <= 0.12 * layer["macs"], (layer["name"], ch["why"])
    # the 17 pointwise convs on the int16 residual stream: smlal (tir_kernels_neon.py), 3.2-4.1 -> <= 0.55/MAC
    smlal = [layer for layer in chosen.values() if layer["kernel_choice"]["source"] == "tensorir-smlal"]
    assert len(smlal) == 17, sorted(chosen)
    for layer in smlal:
        ch = layer["kernel_choice"]
        assert ch["instructions"]["tensorir-smlal"] <= 0.56 * layer["macs"], (layer["name"], ch["why"])
        assert ch["instructions"]["tensorir-smlal"] < 0.2 * ch["instructions"]["handwritten-c"], ch["why"]
    assert res["instructions_per_inference"] < 21_000_000, res["instructions_per_inference"]
