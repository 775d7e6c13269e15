"""Issue 11 acceptance (deliverable 4): MobileNetV2-96 on the i.MX RT1060 EVK with a RAM budget of
half today's layer-wise liveness bound (295 KB -> 147 KB) runs its first stages patch by patch:
peak arena <= 0.5x the layer-wise bound, extra MACs reported (< 15 %), bit-exact under qemu
(mps2-an500, Cortex-M7) against the NumPy reference of the layer-wise graph.
"""
from __future__ import annotations

import pytest

import tvm_qplugin as tq
from qplugin_zoo import imagenet_crops, mobilenet_v2_onnx
from tvm_qplugin.export import export_mcu

N_INPUTS = 4


@pytest.mark.slow
@pytest.mark.extended
def test_mobilenet_v2_96_patched_on_imxrt1060_half_the_layerwise_bound(tmp_path):
    art = tq.compile(mobilenet_v2_onnx(input_size=96), calib={"input": imagenet_crops(32, seed=0, size=96)},
                     int_io=True, bit_exact_inputs=1, timing_runs=1)
    x = imagenet_crops(N_INPUTS, seed=1, size=96)
    samples = [art.quantize_inputs({"input": x[i:i + 1]}) for i in range(N_INPUTS)]
    res = export_mcu(art, tmp_path / "c", "imxrt1060-evk", samples=samples, ram_budget=147 * 1024,
                     workdir=tmp_path / "work")
    mem = res["memory"]
    assert mem["layerwise_liveness_lower_bound_bytes"] == 295424          # today's layer-wise bound (issue 11)
    assert mem["peak_arena_bytes"] <= 0.5 * mem["layerwise_liveness_lower_bound_bytes"], mem
    p = mem["patches"]
    assert p is not None and 0 < mem["patch_extra_macs"] and p["extra_mac_fraction"] < 0.15, mem
    assert res["bit_exact"] and res["bit_exact_inputs"] == N_INPUTS, res.get("mismatches")
    print(f"\nMobileNetV2-96 on imxrt1060-evk, patched: arena {mem['peak_arena_bytes']} B "
          f"(layer-wise {mem['layerwise_arena_bytes']} B, bound {mem['layerwise_liveness_lower_bound_bytes']} B); "
          f"first {p['layers']} layers in {p['grid'][0]}x{p['grid'][1]} patches, halo {p['halo_px']} px, "
          f"+{mem['patch_extra_macs']} MACs ({100 * p['extra_mac_fraction']:.1f} %), RAM {mem['ram_bytes']} B, "
          f"{res['instructions_per_inference']} instructions/inference")
