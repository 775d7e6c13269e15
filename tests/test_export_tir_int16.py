"""int16-input dense / pointwise conv layers on the ``smlal`` TIR kernel (tir_kernels_neon.py; issue 11:
MobileNetV2's residual stream feeding each block's expansion, 92 % of the model's instructions on rpi5 while
it ran on the hand-written C): bit-exact under qemu-aarch64 against the op's NumPy twin with the int16 extremes,
``smlal`` in the object, measured beside the hand-written kernel and chosen by instructions; the 8-bit-only
kernels refuse int16 x."""
from __future__ import annotations

import pytest
from test_export_tir_kernels import _objdump, _one_layer, run_one_kernel

from tvm_qplugin.export.c_package import write_c_package
from tvm_qplugin.targets import get_board

# name: (op, x shape, x dtype, n, out dtype, qmin, qmax, multiplier range): pointwise with pixel lanes (8-bit and
# 16-bit outputs, k not a multiple of 8), maps of 9 pixels (channel lanes, x transposed), dense (rows, a k tail),
# each requantization variant (shifts >= 32, all 31, < 31: int64 lanes)
INT16_LAYERS = {
    "conv1x1-s16-6x6-u8-relu6": ("conv2d_requant", (1, 24, 6, 6), "int16", 16, "uint8", 0, 200, (1 / 9e5, 1 / 2e5)),
    "conv1x1-s16-4x4-kodd-s16": ("conv2d_requant", (1, 20, 4, 4), "int16", 8, "int16", -32768, 32767,
                                 (1 / 900, 1 / 200)),
    "conv1x1-s16-3x3-channel-lanes-s8": ("conv2d_requant", (1, 40, 3, 3), "int16", 12, "int8", -128, 127,
                                         (1 / 9e5, 1 / 2e5)),
    "dense-s16-3rows-ktail-s16-shift31": ("dense_requant", (3, 44), "int16", 8, "int16", -32768, 32767, (0.5, 0.99)),
    "dense-s16-2rows-int64-requant-s16": ("dense_requant", (2, 32), "int16", 12, "int16", -32768, 32767, (0.3, 2.5)),
}


@pytest.mark.parametrize("name", sorted(INT16_LAYERS))
def test_smlal_int16_input_bit_exact_on_cortex_a76(name, tmp_path):
    mod, x, _ = _one_layer(*INT16_LAYERS[name], seed=300 + sorted(INT16_LAYERS).index(name))
    assert x.min() == -32768 and x.max() == 32767
    dis = run_one_kernel(mod, x, "rpi5", "smlal", tmp_path, f"smlal int16 {name} under -cpu cortex-a76")
    assert "smlal\t" in dis or "smlal2\t" in dis


def test_int16_layers_cover_every_requantization():
    ranges = [_one_layer(*case, seed=300 + i)[2] for i, (_, case) in enumerate(sorted(INT16_LAYERS.items()))]
    kinds = {"int64" if lo < 31 else "all31" if hi == 31 else "mixed31" if lo == 31 else "ge32" for lo, hi in ranges}
    assert {"int64", "all31", "ge32"} <= kinds, ranges


def test_only_smlal_is_an_int16_candidate_and_the_others_refuse(tmp_path):
    from tvm_qplugin.errors import UnsupportedOpError
    from tvm_qplugin.export.c_graph import build_graph, integer_module_of
    from tvm_qplugin.export.kernel_choice import (
        int16_candidates,
        schedules_for,
        tir_candidates,
    )

    mod, _, _ = _one_layer("conv2d_requant", (1, 16, 4, 4), "int16", 8, "int8", -128, 127, (1 / 9e5, 1 / 2e5), seed=3)
    g = build_graph(integer_module_of(mod))
    assert tir_candidates(g) == []   # the tuner's and Cortex-M's: 8-bit x only
    (step,) = int16_candidates(g)
    for board in ("rpi5", "rpi4", "graviton3"):
        assert schedules_for(step, get_board(board)) == ("smlal",), board
    with pytest.raises(UnsupportedOpError, match="int16 x has only the smlal kernel"):
        write_c_package(mod, tmp_path / "pkg", get_board("rpi5"), kernels={0: "sdot4x4"})


def test_rpi5_choice_measures_smlal_beside_the_handwritten_kernel_on_int16_x(tmp_path):
    """export_mcu on rpi5: an int16-input 12x12x24 -> 144 pointwise conv (a MobileNetV2-96 expansion) has the
    hand-written C and smlal as candidates, smlal is chosen (fewest instructions, bit-exact), report.json names it."""
    from tvm_qplugin.export import export_mcu
    from tvm_qplugin.report import record_c_package

    mod, x, _ = _one_layer("conv2d_requant", (1, 24, 12, 12), "int16", 144, "uint8", 0, 255, (1 / 9e5, 1 / 2e5), seed=7)
    board = get_board("rpi5")
    res = export_mcu(mod, tmp_path / "pkg", board, samples=[[x]], workdir=tmp_path / "work")
    assert res["bit_exact"], res["mismatches"]
    ch = res["layers"][0]["kernel_choice"]
    assert set(ch["instructions"]) == {"handwritten-c", "tensorir-smlal"} and ch["dropped"] == 0, ch
    assert ch["source"] == "tensorir-smlal", ch["why"]
    assert ch["instructions"]["tensorir-smlal"] < 0.5 * ch["instructions"]["handwritten-c"], ch["why"]
    assert "smlal" in _objdump(tmp_path / "pkg" / res["package"]["tir_objects"][0])
    r = {"bit_exact": True, "layers": [{"op": "conv2d"}]}
    record_c_package(r, res, board)
    assert r["layers"][0]["kernel"]["source"] == "tensorir-smlal" and r["layers"][0]["instructions_per_mac"] < 1.0
