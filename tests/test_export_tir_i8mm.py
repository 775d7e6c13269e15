"""The ``smmla`` TIR kernel (tir_kernels_i8mm.py: Armv8.6 int8 matrix multiply, 2 pixels x 2 channels
x 8 k per instruction) in the C package of an i8mm board (graviton3: Neoverse V1, verified under
qemu-aarch64 -cpu max): every code path bit-exact against the op's NumPy twin, ``smmla`` in the
object, a candidate of the measured kernel choice only where the core has i8mm."""
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

BOARD = "graviton3"

# name: (op, x shape, x dtype, n, out dtype, qmin, qmax, multiplier range) -- every path of the kernel:
# dense (8-byte row loads, a k tail past the groups of 8, an odd row count, one row), pointwise (16-pixel zip
# transposes, groups of 4 pixels by one shuffle, an odd pixel count bytewise, k not a multiple of 8), the stores (8/16-bit
# outputs of whole tiles narrowed per channel pair: contiguous per channel, or strided words per row; else
# per tile), register tiles
# of 4 / 3 / 2 / 1 pixel pairs and 4 / 2 / 1 channel pairs, a last tile repeating a pair, uint8 flipped, the
# requantizations (shifts >= 32, all 31, 31 mixed, < 31: int64 lanes), clamps inside and at the dtype range.
I8MM_LAYERS = {
    "dense-u8-5rows-ktail-u8": ("dense_requant", (5, 44), "uint8", 24, "uint8", 0, 255, (1 / 20000, 1 / 4000)),
    "dense-s8-1row-s16-shift31-mixed": ("dense_requant", (1, 64), "int8", 10, "int16", -32768, 32767, (0.05, 0.9)),
    "dense-s8-int64-requant-6ch": ("dense_requant", (4, 16), "int8", 6, "int16", -32768, 32767, (0.3, 2.5)),
    "dense-u8-6rows-relu6-packed-stores": ("dense_requant", (6, 40), "uint8", 14, "uint8", 0, 200, (1 / 9000, 1 / 2000)),
    "dense-s8-8rows-s8-packed-stores": ("dense_requant", (8, 72), "int8", 16, "int8", -128, 127, (1 / 9000, 1 / 2000)),
    "conv1x1-u8-2x6-s16-packed-stores": ("conv2d_requant", (1, 24, 2, 6), "uint8", 8, "int16", -1000, 1000, (0.05, 0.5)),
    "conv1x1-u8-16px-relu6": ("conv2d_requant", (1, 32, 4, 8), "uint8", 16, "uint8", 0, 200, (1 / 9000, 1 / 2000)),
    "conv1x1-s8-6x6-kodd-s8": ("conv2d_requant", (1, 100, 6, 6), "int8", 12, "int8", -128, 127, (1 / 9000, 1 / 2000)),
    "conv1x1-u8-3x3-odd-s16-shift31": ("conv2d_requant", (1, 40, 3, 3), "uint8", 8, "int16", -32767, 32767,
                                       (0.5, 0.99)),
    "conv1x1-u8-14px-last-tile-repeats-s8": ("conv2d_requant", (1, 24, 7, 2), "uint8", 18, "int8", -100, 127,
                                             (1 / 9000, 1 / 2000)),
    "conv1x1-s8-48px-s32": ("conv2d_requant", (1, 20, 6, 8), "int8", 4, "int32", -8388607, 8388607, (0.01, 0.05)),
}


@pytest.mark.parametrize("name", sorted(I8MM_LAYERS))
def test_smmla_kernel_bit_exact_on_every_path(name, tmp_path):
    mod, x, _ = _one_layer(*I8MM_LAYERS[name], seed=100 + sorted(I8MM_LAYERS).index(name))
    assert "smmla\t" in run_one_kernel(mod, x, BOARD, "smmla", tmp_path, f"smmla {name}")


def test_smmla_layers_cover_every_requantization():
    """The cases above reach each requantization of tir_kernels_sdot._requant4 (shared by smmla):
    shifts >= 32 only, all 31, 31 mixed with larger, some < 31 (int64 lanes)."""
    ranges = {name: _one_layer(*case, seed=100 + sorted(I8MM_LAYERS).index(name))[2]
              for name, case in I8MM_LAYERS.items()}
    kinds = {"int64" if lo < 31 else "all31" if hi == 31 else "mixed31" if lo == 31 else "ge32" for lo, hi in ranges.values()}
    assert kinds == {"int64", "all31", "mixed31", "ge32"}, ranges


def test_smmla_is_a_candidate_only_with_i8mm(tmp_path):
    """rpi5's Cortex-A76 has sdot but no i8mm: smmla is not measured there (its object would SIGILL:
    qemu-aarch64 -cpu cortex-a76 rejects the instruction), asking for it is a one-line refusal; graviton3 measures it beside sdot4x4; an odd channel count is not its shape."""
    from tvm_qplugin.errors import UnsupportedOpError
    from tvm_qplugin.export.c_graph import build_graph, integer_module_of
    from tvm_qplugin.export.kernel_choice import schedules_for, tir_candidates

    mod, _, _ = _one_layer(*I8MM_LAYERS["dense-u8-5rows-ktail-u8"], seed=1)
    (step,) = tir_candidates(build_graph(integer_module_of(mod)))
    assert "smmla" not in schedules_for(step, get_board("rpi5"))
    assert {"smmla", "sdot4x4"} <= set(schedules_for(step, get_board(BOARD)))
    odd, _, _ = _one_layer("dense_requant", (2, 16), "int8", 7, "int8", -128, 127, (0.01, 0.05), seed=2)
    (step,) = tir_candidates(build_graph(integer_module_of(odd)))
    assert "smmla" not in schedules_for(step, get_board(BOARD))
    with pytest.raises(UnsupportedOpError, match="smmla needs the int8 matrix multiply"):
        write_c_package(mod, tmp_path / "pkg", get_board("rpi5"), kernels={0: "smmla"})


def test_smmla_layers_reach_every_register_tile():
    """The cases above reach each tile of tir_kernels_i8mm._tile: 4, 3, 2 pairs dividing the pixel pairs,
    one tile of all 5 (3x3 maps), a last tile repeating a pair; 4, 2, 1 channel pairs."""
    from tvm_qplugin.export.tir_kernels import DenseSpec
    from tvm_qplugin.export.tir_kernels_i8mm import _pairs, _tile

    pairs, cols, repeats = set(), set(), False
    for op, xshape, xd, n, od, lo, hi, _ in I8MM_LAYERS.values():
        conv = op == "conv2d_requant"
        m, k = (xshape[2] * xshape[3], xshape[1]) if conv else xshape
        sp = DenseSpec("t", m, k, (k + 3) // 4 * 4, n, xd, od, lo, hi, "smmla", conv)
        p, c = _tile(sp)
        pairs.add(p)
        cols.add(c)
        repeats |= _pairs(sp) % p != 0
    assert {5, 4, 3, 2, 1} <= pairs and cols == {4, 2, 1} and repeats, (pairs, cols, repeats)


def test_graviton3_choice_measures_smmla_and_keeps_the_fewest(tmp_path):
    """export_mcu (compile's route) on graviton3: smmla measured beside sdot4x4 and the others, the
    fewest bit-exact instructions chosen -- smmla on a 6x6x128 -> 64 pointwise conv (two pixels per
    instruction; on 16-pixel-block maps sdot4x4's pixel-lane path, tir_kernels_sdot_px.py, now measures
    fewer: 12x12x64 0.098 against 0.101) -- the package bit-exact under qemu-aarch64 -cpu max,
    report.json's layers[].kernel naming it."""
    from tvm_qplugin.export import export_mcu
    from tvm_qplugin.report import record_c_package

    mod, x, _ = _one_layer("conv2d_requant", (1, 128, 6, 6), "uint8", 64, "uint8", 0, 255, (0.15, 0.9), seed=5)
    board = get_board(BOARD)
    res = export_mcu(mod, tmp_path / "pkg", board, samples=[[x]], workdir=tmp_path / "work")
    assert res["bit_exact"], res["mismatches"]
    ch = res["layers"][0]["kernel_choice"]
    assert ch["dropped"] == 0 and {"tensorir-smmla", "tensorir-sdot4x4"} <= set(ch["instructions"]), ch
    assert ch["source"] == "tensorir-smmla" == min(ch["instructions"], key=ch["instructions"].get), ch["why"]
    assert ch["instructions"]["tensorir-smmla"] < 0.9 * ch["instructions"]["tensorir-sdot4x4"], ch["why"]
    assert "smmla\t" in _objdump(tmp_path / "pkg" / res["package"]["tir_objects"][0])
    r = {"bit_exact": True, "layers": [{"op": "conv2d"}]}
    record_c_package(r, res, board)
    assert r["layers"][0]["kernel"]["source"] == "tensorir-smmla" and r["layers"][0]["instructions_per_mac"] < 0.11


@pytest.mark.extended
def test_compile_digits_cnn_for_graviton3(tmp_path):
    """`compile --target graviton3` end to end on the digits CNN: bit-exact under qemu-aarch64 -cpu max,
    its 4x4 pointwise conv measured with smmla among the candidates (bit-exact) and given the fewest --
    since sdot4x4's pixel-lane path (tir_kernels_sdot_px.py) that is sdot4x4, no longer smmla -- its
    chosen object holding that instruction (~1 minute: 3 layers x 7 candidates measured)."""
    rep, out = compile_digits_cnn_for(BOARD, tmp_path)
    kern = {layer["name"]: layer["kernel"] for layer in rep["layers"] if "instructions" in layer["kernel"]}
    counts = kern["lv171"]["instructions"]
    assert counts["tensorir-smmla"] and counts["tensorir-sdot4x4"], counts   # both measured, both bit-exact
    assert kern["lv171"]["source"] == min((n for n in counts if counts[n]), key=counts.get), counts
    want = {"tensorir-smmla": "smmla\t", "tensorir-sdot4x4": "sdot\t"}.get(kern["lv171"]["source"])
    objs = sorted((out / "c").glob("tir_kernels_*.o"))
    assert want is None or any(want in _objdump(o) for o in objs), objs
