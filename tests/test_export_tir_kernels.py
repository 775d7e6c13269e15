"""TensorIR-generated kernels in the C package of aarch64 boards (tir_kernels.py, kernel_choice.py):
dense_requant on uint8 / int8 inputs compiled by TVM's LLVM backend for the board's core, measured
against the hand-written C under qemu-aarch64 with the instruction-count plugin, chosen per layer,
bit-exact against the op's NumPy twin -- on rpi5 (Cortex-A76: sdot) and rpi4 (Cortex-A72: no dot
product, no SIGILL); the host's sanitizer build of the same package keeps the hand-written call."""
from __future__ import annotations

import numpy as np
import pytest
from conftest import assert_bit_exact
from tvm import relax

from tvm_qplugin.export import export_mcu, harness
from tvm_qplugin.export.c_package import write_c_package
from tvm_qplugin.export.kernel_choice import HANDWRITTEN, choose_kernels
from tvm_qplugin.export.tir_kernels import SCHEDULES
from tvm_qplugin.export.toolchain import run_tool, which
from tvm_qplugin.ops import const, emit
from tvm_qplugin.quant import dyadic
from tvm_qplugin.reference import ReferenceInterpreter
from tvm_qplugin.report import record_c_package
from tvm_qplugin.targets import get_board


def dense_model():
    """(module, input): two dense layers on 8-bit inputs -- uint8 (4, 300) -> 64 uint8 (K not a
    multiple of 16), then int8 -> 36 int16 (N not a multiple of the tiled schedule's 4 outputs)."""
    rng = np.random.default_rng(4)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 300], "uint8"))

    def layer(h, k, n, out, lo, hi):
        w = rng.integers(-127, 128, (n, k)).astype(np.int8)
        ds = [dyadic(float(m)) for m in rng.uniform(1 / 20000, 1 / 4000, n)]
        return emit(bb, "dense_requant", [h, const(w), const(rng.integers(-4000, 4000, n).astype(np.int32)),
                                          const(np.array([d.multiplier for d in ds], np.int64)),
                                          const(np.array([d.shift for d in ds], np.int64))],
                    qmin=lo, qmax=hi, out_dtype=out)

    with bb.function("main", [x]):
        with bb.dataflow():
            h = layer(x, 300, 64, "uint8", 0, 255)
            h = emit(bb, "requantize", [h], multiplier=2**30, shift=31, qmin=-128, qmax=127, out_dtype="int8")
            y = bb.emit_output(layer(h, 64, 36, "int16", -32768, 32767))
        bb.emit_func_output(y)
    xs = rng.integers(0, 256, (4, 300)).astype(np.uint8)
    xs.reshape(-1)[:2] = [0, 255]
    return bb.finalize(), xs


@pytest.fixture(scope="module")
def model():
    mod, x = dense_model()
    (want,) = ReferenceInterpreter(mod).run("main", x)
    return mod, x, want


def _objdump(obj) -> str:
    return run_tool([which("aarch64-linux-gnu-objdump"), "-d", obj], what="objdump").stdout


def run_one_kernel(mod, x, board_name: str, kernel: str, tmp_path, label: str):
    """Package ``mod`` for ``board_name`` with its step 0 on TIR kernel ``kernel``, run ``x`` under
    qemu and check the output bit-exact with the NumPy reference; returns the kernel object's
    disassembly (each test asserts the instructions its kernel is about)."""
    (want,) = ReferenceInterpreter(mod).run("main", x)
    board = get_board(board_name)
    pkg = tmp_path / "pkg"
    info = write_c_package(mod, pkg, board, kernels={0: kernel})
    assert info["steps"][0]["kernel_source"] == f"tensorir-{kernel}"
    exe = harness.build_linux(pkg, board, tmp_path / "build")
    got = harness.run_linux(exe, pkg, board, [[x]], tmp_path / "run")[0][0]
    assert_bit_exact(got, want, label)
    return _objdump(pkg / info["tir_objects"][0])


def compile_digits_cnn_for(board_name: str, tmp_path) -> tuple[dict, object]:
    """`compile --target <board>` of the digits CNN through the CLI, verified bit-exact under qemu
    on that board; returns (report.json, the output folder)."""
    import json

    from cli_run import run_cli

    from qplugin_zoo import digits_split

    np.savez(tmp_path / "calib.npz", input=digits_split()[0][:128])
    out = tmp_path / "out"
    r = run_cli("compile", "examples/digits_cnn.onnx", "--target", board_name, "--calib", tmp_path / "calib.npz",
                "-o", out)
    assert r.returncode == 0, r.stderr
    rep = json.loads((out / "report.json").read_text())
    assert rep["bit_exact"] and rep["mcu"]["bit_exact"] and rep["mcu"]["verified_on"] == board_name
    return rep, out


def _check_choices(choices):
    assert sorted(choices) == [0, 2], choices
    for ch in choices.values():
        assert ch["dropped"] == 0 and all(ch["instructions"].values()), ch  # every candidate ran bit-exact
        assert ch["instructions"][ch["source"]] == min(ch["instructions"].values()), ch
        assert "fastest bit-exact" in ch["why"], ch
        # the TIR kernels win on these layers: the hand-written C is the portable path on aarch64
        assert ch["source"] != HANDWRITTEN, ch["why"]


def test_rpi4_measured_choice_and_bit_exact_package(model, tmp_path):
    """Cortex-A72, no dot product: objects without sdot, no SIGILL under -cpu cortex-a72."""
    mod, x, want = model
    board_name = "rpi4"
    board = get_board(board_name)
    kernels, choices = choose_kernels(mod, board, tmp_path / "choice")
    _check_choices(choices)
    assert set(kernels) == set(choices)
    pkg = tmp_path / "pkg"
    info = write_c_package(mod, pkg, board, kernels=kernels)
    assert len(info["tir_objects"]) == 2
    assert {s["kernel_source"] for s in info["steps"] if s["op"] == "dense_requant"} <= {f"tensorir-{sc}"
                                                                                         for sc in SCHEDULES}
    dis = "".join(_objdump(pkg / o) for o in info["tir_objects"])
    assert ("sdot" in dis) == ("dotprod" in board.features), board_name   # rpi4's core has no dot product
    exe = harness.build_linux(pkg, board, tmp_path / "build")
    got = harness.run_linux(exe, pkg, board, [[x]], tmp_path / "run")[0][0]
    assert_bit_exact(got, want, f"{board_name} package with TIR kernels")


def test_host_build_keeps_the_handwritten_calls(model, tmp_path):
    """The same package on x86 (ASan/UBSan): the aarch64 objects are not linked, QM_TIR is 0."""
    mod, x, want = model
    pkg = tmp_path / "pkg"
    write_c_package(mod, pkg, get_board("rpi5"), kernels={0: "default", 2: "tiled"})
    assert "#if QM_TIR" in (pkg / "model.c").read_text()
    exe = harness.build_host(pkg, tmp_path / "host", cc="gcc", sanitize=True)
    assert_bit_exact(harness.run_host(exe, pkg, [[x]], tmp_path / "run")[0][0], want, "host build")


def test_the_host_board_has_no_tir_route(model):
    # (Cortex-M boards have one since issue 11's Cortex-M part: tests/test_export_tir_kernels_cortexm.py)
    assert choose_kernels(model[0], get_board("x86-host")) == ({}, {})


def test_rpi5_export_mcu_chooses_sdot_kernels_and_reports_them(model, tmp_path):
    """export_mcu (compile's route) on rpi5 (Cortex-A76): the measured choice, sdot in the chosen
    objects, the package bit-exact under qemu-aarch64, and the choice with its instructions per
    MAC in the package's layers and report.json's layers[] (report.record_c_package)."""
    mod, x, _ = model
    board = get_board("rpi5")
    res = export_mcu(mod, tmp_path / "pkg", board, samples=[[x]], workdir=tmp_path / "work")
    assert res["bit_exact"] and res["bit_exact_inputs"] == 1
    _check_choices({layer["index"]: layer["kernel_choice"] for layer in res["layers"]})
    info = res["package"]
    assert len(info["tir_objects"]) == 2 and "sdot" in "".join(_objdump(tmp_path / "pkg" / o)
                                                               for o in info["tir_objects"])
    r = {"bit_exact": True, "layers": [{"op": "dense"}, {"op": "dense"}]}
    record_c_package(r, res, board)
    for layer, pkg_layer in zip(r["layers"], res["layers"]):
        assert layer["kernel"] == pkg_layer["kernel_choice"]
        assert 0 < layer["instructions_per_mac"] < 1.0, layer


def test_pointwise_conv_takes_a_tir_kernel(tmp_path):
    """A 1x1 convolution (NCHW, one image): the TIR kernel packs each block of pixels transposed and
    runs the dense dot products; chosen by measurement, bit-exact in the package; a 3x3 conv is not a
    candidate."""
    rng = np.random.default_rng(6)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 40, 6, 6], "uint8"))

    def conv(h, c, o, k, pad):
        ds = [dyadic(float(m)) for m in rng.uniform(1 / 20000, 1 / 4000, o)]
        return emit(bb, "conv2d_requant", [h, const(rng.integers(-127, 128, (o, c, k, k)).astype(np.int8)),
                                           const(rng.integers(-4000, 4000, o).astype(np.int32)),
                                           const(np.array([d.multiplier for d in ds], np.int64)),
                                           const(np.array([d.shift for d in ds], np.int64))],
                    strides=[1, 1], padding=[pad] * 4, dilation=[1, 1], groups=1, qmin=0, qmax=255, out_dtype="uint8")

    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(conv(conv(x, 40, 24, 1, 0), 24, 8, 3, 1))
        bb.emit_func_output(y)
    mod = bb.finalize()
    xs = rng.integers(0, 256, (1, 40, 6, 6)).astype(np.uint8)
    board = get_board("rpi5")
    res = export_mcu(mod, tmp_path / "pkg", board, samples=[[xs]], workdir=tmp_path / "work")
    assert res["bit_exact"], res["mismatches"]
    conv1x1, conv3x3 = res["layers"]
    assert conv1x1["kernel_choice"]["dropped"] == 0 and conv1x1["kernel_choice"]["source"] != HANDWRITTEN
    assert "kernel_choice" not in conv3x3                                   # the 3x3 conv is not a candidate
    info = res["package"]
    assert info["steps"][0]["c_func"].startswith("qk_tir_conv1x1_")
    assert "sdot" in _objdump(tmp_path / "pkg" / info["tir_objects"][0])
    r = {"bit_exact": True, "layers": [{"op": "conv2d"}, {"op": "conv2d"}]}
    record_c_package(r, res, board)
    assert r["layers"][0]["kernel"] == conv1x1["kernel_choice"]
    assert r["layers"][1]["kernel"]["source"] == HANDWRITTEN                # untouched by the choice


def test_layers_of_the_same_shape_share_one_measurement(tmp_path):
    rng = np.random.default_rng(8)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([3, 32], "int8"))

    def dense(h):
        return emit(bb, "dense_requant", [h, const(rng.integers(-127, 128, (32, 32)).astype(np.int8)),
                                          const(rng.integers(-400, 400, 32).astype(np.int32)),
                                          const(np.full(32, 1 << 30, np.int64)), const(np.full(32, 38, np.int64))],
                    qmin=-128, qmax=127, out_dtype="int8")

    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(dense(dense(x)))
        bb.emit_func_output(y)
    kernels, choices = choose_kernels(bb.finalize(), get_board("rpi5"), tmp_path)
    assert sorted(choices) == [0, 1] and choices[1]["instructions"] == choices[0]["instructions"]
    assert "same shapes" in choices[1]["why"] and kernels.get(1) == kernels.get(0)
    assert sorted({p.name.split("-")[0] for p in tmp_path.iterdir()}) == ["s0"]   # measured once


def test_a_candidate_that_fails_to_build_is_dropped_and_counted(tmp_path, monkeypatch):
    """A planted TIR schedule whose build raises (as test_tuning plants wrong candidates): the layer
    still gets a kernel, the failure is named in ``why`` and counted in ``dropped``."""
    from tvm_qplugin.export import kernel_choice, tir_kernels

    real = tir_kernels._schedule

    def planted(mod, sp):
        if sp.schedule == "tiled":
            raise RuntimeError("planted build failure")
        return real(mod, sp)

    monkeypatch.setattr(tir_kernels, "_schedule", planted)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 16], "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(emit(bb, "dense_requant", [x, const(np.ones((8, 16), np.int8)),
                                                          const(np.zeros(8, np.int32)), const(np.full(8, 1 << 30)),
                                                          const(np.full(8, 36))], qmin=-128, qmax=127, out_dtype="int8"))
        bb.emit_func_output(y)
    _, choices = kernel_choice.choose_kernels(bb.finalize(), get_board("rpi5"), tmp_path)
    ch = choices[0]
    assert ch["dropped"] == 1 and ch["instructions"]["tensorir-tiled"] is None and ch["source"] != "tensorir-tiled"
    assert "tensorir-tiled dropped (RuntimeError: planted build failure)" in ch["why"]


# The sdot4x4 kernel (tir_kernels_sdot.py) on single layers, one package each, forced (not chosen): every
# code path of the kernel -- dense tiles of 8 / 4 channels, rows past m, a k tail, the pointwise packs (16
# pixels / 4 pixels / bytewise), the saturating-narrow, tbl, int16-transposed and strided stores, the 32-bit (shift >= 33) and
# 64-bit requantization -- bit-exact against the op's NumPy twin under qemu-aarch64 -cpu cortex-a76.
# (The 16-pixel maps have n k > tir_kernels_sdot_px.PX_MAX_NK, so that they stay on this kernel's channel-lane
# path; its pixel-lane path, where sdot4x4 sends smaller ones: tests/test_export_tir_sdot_px.py.)
SDOT_LAYERS = {
    # name: (op, x shape, x dtype, n, out dtype, qmin, qmax, multiplier range)
    "dense-u8-rows-clamped-8ch": ("dense_requant", (5, 48), "uint8", 24, "uint8", 0, 255, (1 / 20000, 1 / 4000)),
    "dense-s8-ktail-s16-shift31-mixed": ("dense_requant", (3, 36), "int8", 20, "int16", -32768, 32767, (0.05, 0.9)),
    "conv1x1-u8-16px-relu6": ("conv2d_requant", (1, 96, 4, 8), "uint8", 88, "uint8", 0, 200, (1 / 9000, 1 / 2000)),
    "conv1x1-s8-4px-s8": ("conv2d_requant", (1, 24, 3, 4), "int8", 8, "int8", -128, 127, (1 / 9000, 1 / 2000)),
    "conv1x1-u8-bytewise-s16": ("conv2d_requant", (1, 16, 3, 3), "uint8", 12, "int16", -32768, 32767, (0.01, 0.9)),
    "conv1x1-s8-16px-s16": ("conv2d_requant", (1, 80, 2, 8), "int8", 104, "int16", -32768, 32767, (0.01, 0.9)),
    "conv1x1-u8-4px-s16-clamped": ("conv2d_requant", (1, 16, 2, 2), "uint8", 8, "int16", -1000, 1000, (0.05, 0.5)),
    "conv1x1-u8-16px-s16-shift31": ("conv2d_requant", (1, 64, 4, 4), "uint8", 132, "int16", -32767, 32767, (0.5, 0.99)),
    "dense-s8-int64-requant": ("dense_requant", (2, 16), "int8", 8, "int16", -32768, 32767, (0.3, 2.5)),
    "conv1x1-u8-bytewise-u8": ("conv2d_requant", (1, 16, 3, 5), "uint8", 8, "uint8", 0, 255, (1 / 9000, 1 / 2000)),
    # k > SMALL_K: the 8-channel x 8- or 12-pixel register tiles (tir_kernels_sdot._pointwise_tile)
    "conv1x1-u8-8x8-s16-shift31": ("conv2d_requant", (1, 100, 4, 4), "uint8", 88, "int16", -32767, 32767, (0.3, 0.9)),
    "conv1x1-u8-3x3-one-tile-s16": ("conv2d_requant", (1, 104, 3, 3), "uint8", 8, "int16", -32767, 32767,
                                    (1 / 9000, 1 / 2000)),
    "conv1x1-s8-6x6-12px-u8": ("conv2d_requant", (1, 100, 6, 6), "int8", 12, "uint8", 0, 255, (1 / 9000, 1 / 2000)),
    "conv1x1-u8-20px-last-tile-repeats-s8": ("conv2d_requant", (1, 112, 5, 4), "uint8", 16, "int8", -100, 127,
                                             (1 / 9000, 1 / 2000)),
    # one row: 5 and 4 groups of 4 channels per tile, a k tail
    "dense-u8-1row-20ch-s32": ("dense_requant", (1, 200), "uint8", 20, "int32", -8388607, 8388607, (0.01, 0.05)),
    "dense-s8-1row-16ch-ktail": ("dense_requant", (1, 68), "int8", 16, "int8", -128, 127, (1 / 9000, 1 / 2000)),
}


def _one_layer(op, xshape, xdtype, n, out, lo, hi, mrange, seed):
    """(module, input): one layer, random weights, the input holding the dtype's extremes (whole rows of them)."""
    rng = np.random.default_rng(seed)
    k = int(np.prod(xshape[1:2] if op == "conv2d_requant" else xshape[1:]))
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(xshape), xdtype))
    ds = [dyadic(float(m)) for m in rng.uniform(*mrange, n)]
    w = rng.integers(-128, 128, (n, k) if op == "dense_requant" else (n, k, 1, 1)).astype(np.int8)
    w.reshape(n, -1)[0, :] = -128                                   # a channel of the weight extreme
    args = [const(w), const(rng.integers(-4000, 4000, n).astype(np.int32)),
            const(np.array([d.multiplier for d in ds], np.int64)), const(np.array([d.shift for d in ds], np.int64))]
    conv = {"strides": [1, 1], "padding": [0] * 4, "dilation": [1, 1], "groups": 1} if op == "conv2d_requant" else {}
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(emit(bb, op, [x, *args], qmin=lo, qmax=hi, out_dtype=out, **conv))
        bb.emit_func_output(y)
    info = np.iinfo(xdtype)
    xs = rng.integers(info.min, int(info.max) + 1, xshape, dtype=np.int64)
    flat = xs.reshape(-1)
    flat[: k] = info.min                                            # whole runs of both extremes
    flat[k: 2 * k] = info.max
    return bb.finalize(), xs.astype(xdtype), (min(d.shift for d in ds), max(d.shift for d in ds))


@pytest.mark.parametrize("name", sorted(SDOT_LAYERS))
def test_sdot4x4_kernel_bit_exact_on_every_path(name, tmp_path):
    mod, x, _ = _one_layer(*SDOT_LAYERS[name], seed=sorted(SDOT_LAYERS).index(name))
    assert "sdot\t" in run_one_kernel(mod, x, "rpi5", "sdot4x4", tmp_path, f"sdot4x4 {name}")


def test_sdot4x4_layers_cover_every_requantization():
    """The cases above reach each requantization of tir_kernels_sdot._requant4: shifts >= 32 only
    (sqdmulh + srshl), all 31 (sqrdmulh), 31 mixed with larger (select), some < 31 (int64 lanes)."""
    ranges = {name: _one_layer(*case, seed=sorted(SDOT_LAYERS).index(name))[2] for name, case in SDOT_LAYERS.items()}
    kinds = {"int64" if lo < 31 else "all31" if hi == 31 else "mixed31" if lo == 31 else "ge32" for lo, hi in ranges.values()}
    assert kinds == {"int64", "all31", "mixed31", "ge32"}, ranges


def test_sdot4x4_is_no_candidate_without_dotprod(model, tmp_path):
    """rpi4's core has no dot product: the sdot kernel is not measured there (its object would SIGILL),
    and asking for it by hand is a one-line refusal, not a crash."""
    from tvm_qplugin.errors import UnsupportedOpError
    from tvm_qplugin.export.c_graph import build_graph, integer_module_of
    from tvm_qplugin.export.kernel_choice import schedules_for, tir_candidates

    steps = tir_candidates(build_graph(integer_module_of(model[0])))
    assert all("sdot4x4" not in schedules_for(s, get_board("rpi4")) for s in steps)
    assert "sdot4x4" in schedules_for(steps[0], get_board("rpi5"))
    with pytest.raises(UnsupportedOpError, match="sdot4x4 needs the dot-product extension"):
        write_c_package(model[0], tmp_path / "pkg", get_board("rpi4"), kernels={0: "sdot4x4"})


def test_shift33_requantization_clamps_in_the_scheduled_kernels(tmp_path):
    """Every shift >= 33 (the 32-bit requantization of tir_kernels._dense_module) with outputs past
    qmax: the clamp must stay. TVM's bound analysis of ``x >> (SH - 32)`` over the int8 shift's
    whole range once removed it, and the uint8 cast wrapped 273 to 17 (found by the qemu tuner's
    default-schedule baseline on the digits CNN)."""
    rng = np.random.default_rng(12)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([4, 64], "int8"))
    ds = [dyadic(float(m)) for m in rng.uniform(1 / 200, 1 / 50, 16)]
    assert min(d.shift for d in ds) >= 33
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(emit(bb, "dense_requant", [
                x, const(rng.integers(-128, 128, (16, 64)).astype(np.int8)), const(np.zeros(16, np.int32)),
                const(np.array([d.multiplier for d in ds], np.int64)), const(np.array([d.shift for d in ds], np.int64))],
                qmin=0, qmax=255, out_dtype="uint8"))
        bb.emit_func_output(y)
    mod = bb.finalize()
    xs = rng.integers(-128, 128, (4, 64)).astype(np.int8)
    (want,) = ReferenceInterpreter(mod).run("main", xs)
    assert (want == 255).sum() >= 4 and (want == 0).sum() >= 4       # both ends of the clamp are reached
    board = get_board("rpi5")
    pkg = tmp_path / "pkg"
    write_c_package(mod, pkg, board, kernels={0: "default"})
    got = harness.run_linux(harness.build_linux(pkg, board, tmp_path / "build"), pkg, board, [[xs]], tmp_path / "run")
    assert_bit_exact(got[0][0], want, "default schedule, shifts >= 33")
