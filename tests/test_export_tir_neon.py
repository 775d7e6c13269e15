"""The ``smlal`` TIR kernel (tir_kernels_neon.py: NEON widening multiply-accumulate by element, no dot
product needed) on rpi4 (Cortex-A72, qemu-aarch64 -cpu cortex-a72): every code path bit-exact against the
op's NumPy twin, ``smlal`` in the object, no SIGILL; chosen by measurement over the plain-loop schedules."""
from __future__ import annotations

import pytest
from test_export_tir_kernels import (
    _objdump,
    _one_layer,
    compile_digits_cnn_for,
    run_one_kernel,
)

from tvm_qplugin.export.c_package import write_c_package
from tvm_qplugin.targets import get_board

BOARD = "rpi4"

# name: (op, x shape, x dtype, n, out dtype, qmin, qmax, multiplier range): pointwise (lanes = 4 pixels: 2, 3 or 1
# lane vectors per tile, channels past the last tile repeated, k not a multiple of 8; maps of 9 or 1 pixels:
# lanes = channels, x transposed bytewise, strided stores), dense (lanes = 4 channels,
# rows widened, a k tail, one row), uint8 flipped, each requantization (shifts >= 32, all 31, 31 mixed, < 31)
NEON_LAYERS = {
    "conv1x1-u8-16px-relu6": ("conv2d_requant", (1, 32, 4, 4), "uint8", 16, "uint8", 0, 200, (1 / 9000, 1 / 2000)),
    "conv1x1-s8-6x6-kodd-5ch-s8": ("conv2d_requant", (1, 100, 6, 6), "int8", 5, "int8", -128, 127, (1 / 9000, 1 / 2000)),
    "conv1x1-u8-2x2-s16-shift31": ("conv2d_requant", (1, 20, 2, 2), "uint8", 6, "int16", -32767, 32767, (0.5, 0.99)),
    "conv1x1-u8-3x3-channel-lanes-u8": ("conv2d_requant", (1, 40, 3, 3), "uint8", 8, "uint8", 0, 255,
                                        (1 / 9000, 1 / 2000)),
    "conv1x1-s8-1x1-channel-lanes-s16": ("conv2d_requant", (1, 20, 1, 1), "int8", 12, "int16", -32768, 32767,
                                         (0.05, 0.9)),
    "dense-u8-5rows-ktail-u8": ("dense_requant", (5, 44), "uint8", 24, "uint8", 0, 255, (1 / 20000, 1 / 4000)),
    "dense-s8-1row-s16-shift31-mixed": ("dense_requant", (1, 64), "int8", 12, "int16", -32768, 32767, (0.05, 0.9)),
    "dense-s8-int64-requant-s32": ("dense_requant", (3, 16), "int8", 8, "int32", -8388607, 8388607, (0.3, 2.5)),
}


@pytest.mark.parametrize("name", sorted(NEON_LAYERS))
def test_smlal_kernel_bit_exact_on_cortex_a72(name, tmp_path):
    mod, x, _ = _one_layer(*NEON_LAYERS[name], seed=200 + sorted(NEON_LAYERS).index(name))
    dis = run_one_kernel(mod, x, BOARD, "smlal", tmp_path, f"smlal {name} under -cpu cortex-a72")
    assert "smlal\t" in dis and "sdot" not in dis


def test_smlal_layers_cover_every_requantization_and_tile():
    from tvm_qplugin.export.tir_kernels import DenseSpec
    from tvm_qplugin.export.tir_kernels_neon import _tile

    ranges, tiles = [], set()
    for i, (name, case) in enumerate(sorted(NEON_LAYERS.items())):
        ranges.append(_one_layer(*case, seed=200 + i)[2])
        op, xshape, xd, n, od, lo, hi, _ = case
        conv = op == "conv2d_requant"
        m, k = (xshape[2] * xshape[3], xshape[1]) if conv else xshape
        tiles.add(_tile(DenseSpec("t", m, k, (k + 3) // 4 * 4, n, xd, od, lo, hi, "smlal", conv)))
    kinds = {"int64" if lo < 31 else "all31" if hi == 31 else "mixed31" if lo == 31 else "ge32" for lo, hi in ranges}
    assert kinds == {"int64", "all31", "mixed31", "ge32"}, ranges
    assert {lt for lt, _ in tiles} == {1, 2, 3} and {et for _, et in tiles} >= {1, 3, 4}, tiles


def test_rpi4_choice_takes_smlal_over_the_plain_loops(tmp_path):
    """export_mcu on rpi4: smlal measured beside the hand-written C and the plain-loop schedules (no sdot,
    no smmla: the A72 has neither), chosen where it is fewest -- on a 12x12x64 -> 64 pointwise conv it is
    (0.41 instructions/MAC against the default schedule's 0.73) -- bit-exact, report.json naming it."""
    from tvm_qplugin.export import export_mcu
    from tvm_qplugin.report import record_c_package

    mod, x, _ = _one_layer("conv2d_requant", (1, 64, 12, 12), "uint8", 64, "uint8", 0, 255, (0.15, 0.9), seed=5)
    board = get_board(BOARD)
    res = export_mcu(mod, tmp_path / "pkg", board, samples=[[x]], workdir=tmp_path / "work")
    assert res["bit_exact"], res["mismatches"]
    ch = res["layers"][0]["kernel_choice"]
    assert ch["dropped"] == 0 and "tensorir-smlal" in ch["instructions"], ch
    assert not {"tensorir-sdot4x4", "tensorir-smmla"} & set(ch["instructions"]), ch
    assert ch["source"] == "tensorir-smlal", ch["why"]
    assert ch["instructions"]["tensorir-smlal"] < 0.7 * ch["instructions"]["tensorir-default"], ch["why"]
    assert "smlal\t" in _objdump(tmp_path / "pkg" / res["package"]["tir_objects"][0])
    r = {"bit_exact": True, "layers": [{"op": "conv2d"}]}
    record_c_package(r, res, board)
    assert r["layers"][0]["kernel"]["source"] == "tensorir-smlal" and r["layers"][0]["instructions_per_mac"] < 0.5


def test_smlal_is_no_candidate_where_neither_pixels_nor_channels_come_in_fours(tmp_path):
    from tvm_qplugin.errors import UnsupportedOpError
    from tvm_qplugin.export.c_graph import build_graph, integer_module_of
    from tvm_qplugin.export.kernel_choice import schedules_for, tir_candidates

    mod, _, _ = _one_layer("conv2d_requant", (1, 16, 3, 3), "uint8", 6, "uint8", 0, 255, (0.01, 0.05), seed=3)
    (step,) = tir_candidates(build_graph(integer_module_of(mod)))
    assert "smlal" not in schedules_for(step, get_board(BOARD)) and "default" in schedules_for(step, get_board(BOARD))
    with pytest.raises(UnsupportedOpError, match="smlal needs the pixels or the output channels in groups of 4"):
        write_c_package(mod, tmp_path / "pkg", get_board(BOARD), kernels={0: "smlal"})


@pytest.mark.extended
def test_compile_digits_cnn_for_rpi4(tmp_path):
    """`compile --target rpi4` end to end on the digits CNN: bit-exact under qemu-aarch64 -cpu cortex-a72 (no
    SIGILL), both 1x1 convs on smlal (measured fewest), smlal in their objects (~1 minute)."""
    rep, out = compile_digits_cnn_for(BOARD, tmp_path)
    chosen = {layer["name"]: layer["kernel"]["source"] for layer in rep["layers"] if "instructions" in layer["kernel"]}
    assert chosen["lv171"] == chosen["lv231"] == "tensorir-smlal", chosen
    objs = sorted((out / "c").glob("tir_kernels_qk_tir_conv1x1_*.o"))
    assert len(objs) == 2 and all("smlal\t" in _objdump(o) for o in objs), objs
