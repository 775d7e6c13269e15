"""The digits ViT (examples/digits_vit.onnx: patch embedding, 4 encoder blocks) as a C package on
Cortex-M: bit-exact under qemu on M4 (mps2-an386) and M55 (mps3-an547), with instructions per
inference and peak RAM reported -- the transformer kernels of export/kernels_c_transformer.py in a
whole model. One integer compile (division-free, the variant for cores without a fast divider)
serves both boards."""
from __future__ import annotations

from pathlib import Path

import pytest

import tvm_qplugin as tq
from qplugin_zoo import digits_split
from tvm_qplugin.export import export_mcu

VIT = Path(__file__).resolve().parents[1] / "examples" / "digits_vit.onnx"


@pytest.fixture(scope="module")
def vit():
    x_train, _, x_test, _ = digits_split()
    art = tq.compile(VIT, calib={"input": x_train[:64]}, eval={"input": x_test[:4]}, nonlinear="division-free",
                     int_io=True, timing_runs=1)
    return art, [art.quantize_inputs({"input": x_test[i:i + 1]}) for i in range(2)]


@pytest.mark.parametrize("board", ["qemu-mps2-an386", "qemu-mps3-an547"])
def test_digits_vit_bit_exact_on_cortex_m(vit, tmp_path, board):
    art, samples = vit
    res = export_mcu(art.integer_mod, tmp_path / "pkg", board, samples=samples, workdir=tmp_path / "work")
    assert res["bit_exact"] and res["bit_exact_inputs"] == 2, res.get("mismatches")
    ops = {s["op"] for s in res["package"]["steps"]}
    assert {"softmax_int", "gelu_int", "layernorm_int", "matmul_requant"} <= ops, ops
    kernels = res["kernel_functions"]
    for fn in ("qk_softmax_s16_s16", "qk_gelu_s16_s16", "qk_layernorm_s16_s16", "qk_matmul_s16_s16_s16"):
        assert kernels.get(fn, 0) > 0, f"{board}: {fn} never ran: {sorted(kernels)}"
    # instructions per inference (measured 3.53 M on M4, 2.61 M on M55): a regression guard, not a target
    assert 0 < res["instructions_per_inference"] < 5_000_000, res["instructions_per_inference"]
    mem = res["memory"]
    assert mem["peak_arena_bytes"] == mem["liveness_lower_bound_bytes"] > 0, mem
    assert mem["ram_bytes"] >= mem["peak_arena_bytes"] and mem["flash_bytes"] > mem["weights_bytes"] > 0, mem
