"""The pixel-lane path of the sdot4x4 kernel (tir_kernels_sdot_px.py; issue 11): its requantization
forms proven equal to quant/dyadic.py's rounding on a NumPy model of the NEON instructions, every path
bit-exact under qemu-aarch64 -cpu cortex-a76 against the op's NumPy twin, and MobileNetV2-96's lv2
shape at or below the issue's 0.12 instructions/MAC."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_bit_exact
from test_export_tir_kernels import _objdump, _one_layer

from tvm_qplugin.export import harness
from tvm_qplugin.export.c_graph import build_graph, integer_module_of
from tvm_qplugin.export.c_package import write_c_package
from tvm_qplugin.export.kernel_choice import _measure, _sample
from tvm_qplugin.export.kernels_c import macs
from tvm_qplugin.export.tir_kernels import step_spec
from tvm_qplugin.export.tir_kernels_sdot_px import px_applies, px_tile
from tvm_qplugin.export.toolchain import run_tool, which
from tvm_qplugin.quant.dyadic import requantize_ref
from tvm_qplugin.reference import ReferenceInterpreter
from tvm_qplugin.targets import get_board

# --- a NumPy model of the NEON instructions (Arm ARM pseudocode; int64 holds every intermediate: mu > 0) ---


def _sat(v, bits, unsigned=False):
    lo, hi = (0, (1 << bits) - 1) if unsigned else (-(1 << (bits - 1)), (1 << (bits - 1)) - 1)
    return np.clip(v, lo, hi)


def sqdmulh(a, b):
    return _sat((2 * a * b) >> 32, 32)


def sqrdmulh(a, b):
    return _sat((2 * a * b + (1 << 31)) >> 32, 32)


def rounding_shift_right(v, d):   # srshl by -d, and the shift inside sqrshrn / sqrshrun
    return (v + (1 << (d - 1))) >> d


def narrow16_model(acc, mu, shift, unsigned):
    """tir_kernels_sdot_px.narrow16, instruction by instruction."""
    if shift == 31:
        return _sat(sqrdmulh(acc, mu), 16, unsigned)                      # sqrdmulh, sqxtn / sqxtun
    # 32..47: sqdmulh, sqrshrn / sqrshrun #d; 48..62: sqdmulh, srshl -d, sqxtn / sqxtun -- the same arithmetic
    return _sat(rounding_shift_right(sqdmulh(acc, mu), shift - 31), 16, unsigned)


@pytest.mark.parametrize("out,qmin,qmax", [("int16", -32767, 32767), ("int16", -1000, 900), ("uint8", 0, 255),
                                           ("uint8", 3, 200), ("int8", -128, 127), ("int8", -100, 90)])
def test_requantization_forms_equal_the_rounding_rule(out, qmin, qmax):
    """Every shift 31..62, accumulators over all of int32 (its extremes and values next to each
    rounding boundary), multipliers over [2^30, 2^31): the instruction forms, then the 8-bit narrowing
    (uqxtn / sqxtn) and the clamp, equal requantize_ref exactly."""
    rng = np.random.default_rng(3)
    unsigned = out == "uint8"
    for shift in range(31, 63):
        mu = np.concatenate([[1 << 30, (1 << 31) - 1], rng.integers(1 << 30, 1 << 31, 62)]).astype(np.int64)
        acc = rng.integers(-(1 << 31), 1 << 31, (64, 256), dtype=np.int64)
        acc[:, :4] = [-(1 << 31), (1 << 31) - 1, 0, -1]
        # next to a rounding boundary: acc mu close to (j + 1/2) 2^shift
        j = rng.integers(-(1 << 20), 1 << 20, (64, 64))
        near = (((2 * j + 1) << (shift - 1)) // mu[:, None]) + rng.integers(-2, 3, (64, 64))
        acc[:, 4:68] = np.clip(near, -(1 << 31), (1 << 31) - 1)
        want = requantize_ref(acc, mu[:, None], shift, qmin, qmax, out)
        h = narrow16_model(acc, mu[:, None], shift, unsigned)
        got = _sat(h, 8, unsigned) if out != "int16" else h
        assert_bit_exact(np.clip(got, qmin, qmax).astype(out), want, f"{out} [{qmin}, {qmax}] shift {shift}")


# --- the kernel itself, forced (sdot4x4 dispatches here), under qemu-aarch64 -cpu cortex-a76 ---
PX_LAYERS = {
    # name: (op, x shape, x dtype, n, out dtype, qmin, qmax, multiplier range) -- every one a 16-pixel-block map
    "u8-32px-pack-8x8-s16-mixed31": ("conv2d_requant", (1, 32, 8, 8), "uint8", 16, "int16", -32767, 32767, (0.3, 0.99)),
    "s8-16px-pack-4x16-s8": ("conv2d_requant", (1, 24, 4, 4), "int8", 12, "int8", -128, 127, (1 / 9000, 1 / 300)),
    "u8-u8-clamped-sqrshrun": ("conv2d_requant", (1, 16, 4, 8), "uint8", 8, "uint8", 3, 200, (1 / 900, 1 / 30)),
    "u8-u8-shift31-sqxtun": ("conv2d_requant", (1, 12, 4, 4), "uint8", 8, "uint8", 0, 255, (0.5, 0.99)),
    "s8-s16-shift48-srshl": ("conv2d_requant", (1, 20, 8, 4), "int8", 8, "int16", -32768, 32767, (2e-6, 1e-5)),
    "s8-s8-clamped-k96": ("conv2d_requant", (1, 96, 4, 4), "int8", 24, "int8", -90, 100, (1 / 9000, 1 / 2000)),
}


def _case(name):
    return _one_layer(*PX_LAYERS[name], seed=100 + sorted(PX_LAYERS).index(name))


@pytest.mark.parametrize("name", sorted(PX_LAYERS))
def test_pixel_lane_path_bit_exact(name, tmp_path):
    mod, x, (smin, smax) = _case(name)
    (s,) = [s for s in build_graph(integer_module_of(mod)).steps if s.op == "conv2d_requant"]
    assert px_applies(step_spec(s, "sdot4x4")), name      # the case reaches this path, not sdot4x4's own
    (want,) = ReferenceInterpreter(mod).run("main", x)
    board = get_board("rpi5")
    pkg = tmp_path / "pkg"
    info = write_c_package(mod, pkg, board, kernels={0: "sdot4x4"})
    dis = _objdump(pkg / info["tir_objects"][0])
    assert ".4b[" in dis                                   # sdot by element
    if smin <= 47 and smax >= 32:
        assert "sqrshrn" in dis or "sqrshrun" in dis
    exe = harness.build_linux(pkg, board, tmp_path / "build")
    got = harness.run_linux(exe, pkg, board, [[x]], tmp_path / "run")[0][0]
    assert_bit_exact(got, want, f"sdot4x4 pixel lanes {name}")


def test_cases_reach_every_requantization_form_and_both_tiles():
    shifts, tiles = set(), set()
    for name in PX_LAYERS:
        mod, _, _ = _case(name)
        (s,) = [s for s in build_graph(integer_module_of(mod)).steps if s.op == "conv2d_requant"]
        sp = step_spec(s, "sdot4x4")
        shifts |= {"31" if c == 31 else "sqrshrn" if c <= 47 else "srshl" for c in sp.shifts}
        tiles.add(px_tile(sp))
    assert shifts == {"31", "sqrshrn", "srshl"} and tiles == {(2, 2), (1, 4)}


def test_not_taken_where_it_does_not_apply():
    """Maps not in blocks of 16 pixels, shifts below 31, int32 outputs, n k past the unrolled budget:
    sdot4x4's own pointwise path (tests/test_export_tir_kernels.py runs those)."""
    cases = [("conv2d_requant", (1, 16, 3, 4), "uint8", 8, "int16", -32767, 32767, (0.3, 0.9)),   # m = 12
             ("conv2d_requant", (1, 16, 4, 4), "uint8", 8, "uint8", 0, 255, (0.5, 2.5)),          # shifts < 31
             ("conv2d_requant", (1, 16, 4, 4), "uint8", 8, "int32", -8388607, 8388607, (0.01, 0.05)),
             ("conv2d_requant", (1, 100, 4, 4), "uint8", 96, "int16", -32767, 32767, (0.3, 0.9))]  # n k = 9600
    for i, case in enumerate(cases):
        mod, _, _ = _one_layer(*case, seed=i)
        (s,) = [s for s in build_graph(integer_module_of(mod)).steps if s.op == "conv2d_requant"]
        assert not px_applies(step_spec(s, "sdot4x4")), case


def test_lv2_shape_at_most_012_instructions_per_mac(tmp_path):
    """MobileNetV2-96's lv2 (48x48, 32 -> 16, uint8 -> int16 clamped at -32767, shifts 31 and 32
    mixed), measured as the kernel choice measures it: 0.167 on sdot4x4's channel-lane path, 0.114 here."""
    mod, _, shifts = _one_layer("conv2d_requant", (1, 32, 48, 48), "uint8", 16, "int16", -32767, 32767,
                                (0.3, 0.99), seed=2)
    assert shifts == (31, 32)
    (s,) = [s for s in build_graph(integer_module_of(mod)).steps if s.op == "conv2d_requant"]
    x = _sample(s.args[0].shape, s.args[0].dtype, seed=2)
    (want,) = ReferenceInterpreter(mod).run("main", x)
    r = _measure(mod, get_board("rpi5"), {0: "sdot4x4"}, x, want, tmp_path)
    assert r["ok"], r["why"]
    assert r["instructions"] / macs(s) <= 0.12, r["instructions"] / macs(s)


def test_aarch64_binary_holds_only_the_prepacked_weights(tmp_path):
    """model.c keeps the hand-written call's weight array for the host build (``#else`` of QM_TIR), but on
    aarch64 nothing references it and the static const is dropped: the executable's read-only data holds
    the prepacked sdot copy alone (issue 11: no second copy of the weights in flash)."""
    mod, _, _ = _case("u8-32px-pack-8x8-s16-mixed31")
    board = get_board("rpi5")
    pkg = tmp_path / "pkg"
    write_c_package(mod, pkg, board, kernels={0: "sdot4x4"})
    src = (pkg / "model.c").read_text()
    hand = [ln.split("[")[0].split()[-1] for ln in src.splitlines() if ln.startswith("static const int8_t qm_w")]
    assert any("wsdot" in h for h in hand) and any("wsdot" not in h for h in hand), hand   # both in the source
    exe = harness.build_linux(pkg, board, tmp_path / "build")
    syms = {ln.split()[-1]: int(ln.split()[1], 16) for ln in run_tool(
        [which("aarch64-linux-gnu-nm"), "-S", exe], what="nm").stdout.splitlines() if len(ln.split()) == 4}
    kept = [h for h in hand if h in syms]
    assert len(kept) == 1 and "wsdot" in kept[0], kept
    assert syms[kept[0]] == 16 * 32          # n x k int8, once
