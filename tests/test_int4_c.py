"""The C package's int4-weight kernels (export/kernels_c_int4.py, mcu/qkernels_w4.c.in) against
the NumPy twins, bit for bit: on the host (sanitized), under qemu on Cortex-M4 (SMLAD path),
Cortex-M55 (MVE path) and aarch64 Linux (rpi4), and with the widening tile shrunk so that every
layer is split into tiles (whole groups, channels of one group, dense output features)."""
from __future__ import annotations


import numpy as np
import pytest
from conftest import assert_bit_exact
from package_probe import companion_buffer_sizes
from tvm import relax

from tvm_qplugin.export import harness, kernels_c_int4
from tvm_qplugin.export.c_package import write_c_package
from tvm_qplugin.ops import const, emit
from tvm_qplugin.quant import dyadic
from tvm_qplugin.quant.int4 import pack_int4
from tvm_qplugin.reference import ReferenceInterpreter
from tvm_qplugin.targets import get_board


def _rq(rng, n, lo, hi):
    ds = [dyadic(float(m)) for m in rng.uniform(lo, hi, size=n)]
    return np.array([d.multiplier for d in ds], np.int64), np.array([d.shift for d in ds], np.int64)


def w4_zoo():
    """(module, inputs): int4 convs on every C path (im2col, pointwise, 3x3 depthwise fast path,
    generic depthwise, grouped, int16 input) and int4 dense layers, weights at the nibble extremes."""
    rng = np.random.default_rng(11)
    bb = relax.BlockBuilder()
    xu = relax.Var("xu", relax.TensorType([1, 8, 9, 7], "uint8"))
    xs = relax.Var("xs", relax.TensorType([1, 8, 9, 7], "int8"))
    xw = relax.Var("xw", relax.TensorType([1, 8, 9, 7], "int16"))
    xd = relax.Var("xd", relax.TensorType([5, 37], "int8"))

    def weights(shape):
        w = rng.integers(-8, 8, size=shape).astype(np.int8)
        w.reshape(-1)[:2] = [-8, 7]
        return pack_int4(w.reshape(shape[0], -1))

    def conv(x, c, o, k, stride=1, pad=(0, 0, 0, 0), groups=1, out="uint8", m=(1 / 200, 1 / 60)):
        shape = (o, c // groups, k, k)
        mult, shift = _rq(rng, o, *m)
        lo, hi = (0, 255) if out == "uint8" else (int(np.iinfo(out).min) + 1, int(np.iinfo(out).max))
        return emit(bb, "conv2d_requant_w4", [x, const(weights(shape)), const(rng.integers(-500, 500, o).astype(np.int32)),
                                              const(mult), const(shift)],
                    strides=[stride, stride], padding=list(pad), dilation=[1, 1], groups=groups, qmin=lo, qmax=hi,
                    out_dtype=out, w_shape=list(shape))

    def dense(x, k, n, out="int8", m=(1 / 200, 1 / 60)):
        mult, shift = _rq(rng, n, *m)
        lo, hi = int(np.iinfo(out).min), int(np.iinfo(out).max)
        return emit(bb, "dense_requant_w4", [x, const(weights((n, k))), const(rng.integers(-500, 500, n).astype(np.int32)),
                                             const(mult), const(shift)], qmin=lo, qmax=hi, out_dtype=out, w_shape=[n, k])

    with bb.function("main", [xu, xs, xw, xd]):
        with bb.dataflow():
            outs = [conv(xu, 8, 12, 3, pad=(1, 1, 1, 1)),                          # im2col, K = 72
                    conv(xs, 8, 13, 3, stride=2, pad=(1, 1, 0, 0), out="int16"),   # odd O, asymmetric pad
                    conv(xu, 8, 6, 1),                                             # pointwise, K = 8
                    conv(xw, 8, 6, 1, m=(1 / 20000, 1 / 5000)),                    # int16 input
                    conv(xu, 8, 8, 3, pad=(1, 1, 1, 1), groups=8, m=(1 / 40, 1 / 10)),   # depthwise 3x3 (K = 9, odd)
                    conv(xs, 8, 8, 5, pad=(2, 2, 2, 2), groups=8, out="int8", m=(1 / 60, 1 / 20)),  # generic dw
                    conv(xs, 8, 6, 3, pad=(1, 1, 1, 1), groups=2, out="int8"),     # grouped
                    dense(xd, 37, 11),                                             # K = 37 (odd), M = 5
                    dense(bb.emit(relax.op.reshape(xu, [1, 504])), 504, 10, "int32", m=(1 / 5000, 1 / 1000))]
            gv = [bb.emit_output(o) for o in outs]
        bb.emit_func_output(relax.Tuple(gv))
    inputs = [rng.integers(0, 256, size=(1, 8, 9, 7)).astype(np.uint8),
              rng.integers(-128, 128, size=(1, 8, 9, 7)).astype(np.int8),
              rng.integers(-20000, 20000, size=(1, 8, 9, 7)).astype(np.int16),
              rng.integers(-128, 128, size=(5, 37)).astype(np.int8)]
    return bb.finalize(), inputs


def _package(tmp_path_factory, name, tile_bytes=None):
    mod, x = w4_zoo()
    pkg = tmp_path_factory.mktemp(name) / "pkg"
    saved = kernels_c_int4.TILE_BYTES
    try:
        kernels_c_int4.TILE_BYTES = tile_bytes or saved
        info = write_c_package(mod, pkg)
    finally:
        kernels_c_int4.TILE_BYTES = saved
    extremes = [[np.full(a.shape, np.iinfo(a.dtype).min, a.dtype) for a in x],
                [np.full(a.shape, np.iinfo(a.dtype).max, a.dtype) for a in x]]
    samples = [x, *extremes]
    ref = ReferenceInterpreter(mod)
    return pkg, info, samples, [ref.run("main", *s) for s in samples]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return _package(tmp_path_factory, "w4zoo")


@pytest.fixture(scope="module")
def tiled_zoo(tmp_path_factory):
    return _package(tmp_path_factory, "w4tiled", tile_bytes=64)


def _check(got, want, where):
    assert len(got) == len(want)
    for i, (gs, ws) in enumerate(zip(got, want)):
        for j, (g, w) in enumerate(zip(gs, ws)):
            assert_bit_exact(g, w, f"{where}: sample {i} output {j}")


def test_packed_weights_go_to_flash_at_half_size(zoo):
    """Each int4 step stores ceil(K/2) bytes per output channel (+ bias, multiplier, shift)."""
    pkg, info, _, _ = zoo
    steps = [s for s in info["steps"] if s["op"] in kernels_c_int4.W4_OPS]
    assert len(steps) == 9 and all(s["c_func"].startswith(("qk_conv2d_w4_", "qk_dense_w4_")) for s in steps)
    first = steps[0]  # 12 x 72 int4 -> 12 x 36 bytes, bias 4 B, multiplier 4 B, shift 1 B per channel
    assert first["weight_bytes"] == 12 * 36 + 12 * (4 + 4 + 1)
    assert "qk_unpack_s4" in (pkg / "qkernels.c").read_text()


def test_w4_host_sanitized(zoo, tmp_path):
    pkg, _, samples, want = zoo
    exe = harness.build_host(pkg, tmp_path, cc="gcc", sanitize=True)
    _check(harness.run_host(exe, pkg, samples, tmp_path / "run"), want, "host gcc")


def test_w4_tiles_host_sanitized(tiled_zoo, tmp_path):
    """A 64-byte tile: depthwise layers widen a few groups at a time, the others a few channels."""
    pkg, info, samples, want = tiled_zoo
    exe = harness.build_host(pkg, tmp_path, cc="gcc", sanitize=True)
    _check(harness.run_host(exe, pkg, samples, tmp_path / "run"), want, "host gcc, tiled")


@pytest.mark.parametrize("board", ["qemu-mps2-an386", "qemu-mps3-an547"])
def test_w4_cortex_m(zoo, tmp_path, board):
    pkg, _, samples, want = zoo
    build = harness.build_mcu(pkg, get_board(board), tmp_path / "build")
    _check(harness.run_qemu(build, samples, tmp_path / "run").outputs, want, board)


def test_w4_tiles_cortex_m4(tiled_zoo, tmp_path):
    pkg, _, samples, want = tiled_zoo
    build = harness.build_mcu(pkg, get_board("qemu-mps2-an386"), tmp_path / "build")
    _check(harness.run_qemu(build, samples, tmp_path / "run").outputs, want, "an386 tiled")


@pytest.mark.parametrize("which", ["zoo", "tiled_zoo"])
def test_w4_buffer_size_companions_equal_the_planner(which, request, tmp_path):
    """``qk_*_w4_*_buffer_size`` on the parameter blocks model.c passes == the planner's scratch."""
    pkg, info = request.getfixturevalue(which)[:2]
    steps = [s for s in info["steps"] if s["op"] in kernels_c_int4.W4_OPS]
    assert companion_buffer_sizes(pkg, steps, tmp_path) == {s["index"]: s["scratch_bytes"] for s in steps}


def test_w4_aarch64_linux_under_qemu(zoo, tmp_path):
    """The same package cross-compiled for a Linux board (rpi4: Cortex-A72), run under qemu-aarch64."""
    pkg, _, samples, want = zoo
    b = get_board("rpi4")
    exe = harness.build_linux(pkg, b, tmp_path / "build")
    _check(harness.run_linux(exe, pkg, b, samples, tmp_path / "run"), want, "rpi4")
