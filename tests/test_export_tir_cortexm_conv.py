"""Small-window conv (the 3x3 stem) TensorIR kernels of Cortex-M (export/tir_kernels_cortexm_conv.py):
the ``smlad`` (M4) and ``mve`` (M55) GEMMs packing each pixel's window, bit-exact under
qemu-system-arm against the conv2d_requant NumPy twin (stride 1 and 2, uint8 / int8 inputs with
their extremes and the flipped zero padding, 8/16-bit outputs, both requantization widths); and the
Cortex-M kernel choice measuring them beside the hand-written im2col GEMM in the whole package."""
from __future__ import annotations

import numpy as np
import pytest
from test_export_tir_cortexm_dw import M4, M55, QRANGE, _run, assert_fewest_kept

from tvm_qplugin.export.tir_kernels_cortexm_conv import Im2colSpec, is_im2col_conv
from tvm_qplugin.ops import OPS
from tvm_qplugin.targets import get_board

MNEMONIC_GEMM = {"smlad": ("smlad", "armv7e-m"), "mve": ("vmlava.s8", "armv8.1-m.main")}
# (c, h, w, o, k, stride, padding (t, l, b, r), x dtype, out dtype, shift range): the RGB stem at stride
# 2 on uint8 (its zero padding flipped with the rest), int8 at stride 1 with int16 outputs and shifts
# below 31, a 2-channel 3x3 with asymmetric padding, 5 outputs (no 4- / 2-channel tile divides it:
# smaller tiles) and every shift >= 33
CASES = [(3, 9, 10, 16, 3, 2, (1, 1, 1, 1), "uint8", "uint8", (31, 41)),
         (3, 6, 7, 8, 3, 1, (1, 1, 1, 1), "int8", "int16", (25, 36)),
         (2, 7, 6, 5, 3, 2, (0, 1, 1, 0), "int8", "int8", (33, 41))]


def _workload(c, h, w, o, k, stride, pad, xd, od, shifts, seed):
    """(spec, inputs, expected) of one kernel: x over its whole range (extremes first), weights with
    -128 and 127, multipliers in [2^30, 2^31), the twin's output (o, oh * ow)."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(xd)
    x = rng.integers(info.min, int(info.max) + 1, (1, c, h, w)).astype(xd)
    x.reshape(-1)[:3] = [info.min, info.max, info.min]
    wt = rng.integers(-128, 128, (o, c, k, k)).astype(np.int8)
    wt[0] = -128
    wt[1, 0, 0, 0] = 127
    kk = c * k * k
    kp = (kk + 3) // 4 * 4
    wp = np.zeros((o, kp), np.int8)
    wp[:, :kk] = wt.reshape(o, kk)
    b = rng.integers(-5000, 5000, o).astype(np.int32)
    mu = rng.integers(2**30, 2**31 - 1, o).astype(np.int32)
    sh = rng.integers(shifts[0], shifts[1] + 1, o).astype(np.int8)
    sh[0] = shifts[0]
    lo, hi = QRANGE[od]
    want = OPS["conv2d_requant"].reference(x, wt, b, mu.astype(np.int64), sh.astype(np.int64), strides=[stride] * 2,
                                           padding=list(pad), dilation=[1, 1], groups=1, qmin=lo, qmax=hi,
                                           out_dtype=od)
    _, _, oh, ow = want.shape
    bias = (b.astype(np.int64) + (128 * wt.reshape(o, -1).astype(np.int64).sum(axis=1) if xd == "uint8" else 0))
    sp = Im2colSpec("qk_tir_case", oh * ow, kk, kp, o, xd, od, lo, hi, "smlad", True, bool(sh.min() >= 33),
                    (int(sh.min()), int(sh.max())), c=c, h=h, w=w, kh=k, kw=k, sh=stride, sw=stride, pt=pad[0],
                    pl=pad[1], ow=ow)
    return sp, [x.reshape(-1), wp.reshape(-1), bias.astype(np.int32), mu, sh], want.reshape(-1)


@pytest.mark.parametrize("board,schedule", [(M4, "smlad"), (M55, "mve")])
def test_im2col_kernels_are_bit_exact_under_qemu_with_their_instruction(board, schedule, tmp_path):
    b = get_board(board)
    for i, case in enumerate(CASES):
        sp, inputs, want = _workload(*case, seed=i)
        _run(Im2colSpec(**{**sp.__dict__, "schedule": schedule}), b, inputs, want, tmp_path / f"c{i}",
             MNEMONIC_GEMM[schedule])


def test_only_small_3x3_windows_are_im2col_candidates():
    """The RGB / grey 3x3 stems are; a 3x3 conv on 4 channels (36 taps), a 2x2 patch embedding (the
    digits ViT's: its compile stays without a choice run) and a depthwise conv are not."""
    from test_export_tir_dw import dw_model

    from tvm_qplugin.export.c_graph import build_graph, integer_module_of

    def step(mod):
        (s,) = build_graph(integer_module_of(mod)).steps
        return s

    assert is_im2col_conv(step(conv_model(3, 8, 8, 2, "uint8", seed=1)))
    assert is_im2col_conv(step(conv_model(1, 8, 8, 1, "int8", seed=1)))
    assert not is_im2col_conv(step(conv_model(4, 8, 8, 1, "int8", seed=1)))
    assert not is_im2col_conv(step(conv_model(1, 8, 8, 2, "uint8", seed=1, k=2)))
    assert not is_im2col_conv(step(dw_model(4, 6, 6, 1, "int8", "int8", -128, 127, seed=1)))


def conv_model(c, o, hw, stride, x_dtype, seed, k=3):
    """One k x k conv (groups 1; 3x3: pad 1) of a (1, c, hw, hw) map to int8, shifts around 31..40."""
    from tvm import relax

    from tvm_qplugin.ops import const, emit
    from tvm_qplugin.quant import dyadic

    rng = np.random.default_rng(seed)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, c, hw, hw], x_dtype))
    ds = [dyadic(float(m)) for m in np.exp(rng.uniform(np.log(1 / 3000), np.log(1 / 2), o))]
    w8 = rng.integers(-128, 128, (o, c, k, k)).astype(np.int8)
    w8.reshape(-1)[:2] = [-128, 127]
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(emit(bb, "conv2d_requant", [
                x, const(w8), const(rng.integers(-3000, 3000, o).astype(np.int32)),
                const(np.array([d.multiplier for d in ds], np.int64)), const(np.array([d.shift for d in ds], np.int64))],
                strides=[stride, stride], padding=[k // 3] * 4, dilation=[1, 1], groups=1, qmin=-128, qmax=127,
                out_dtype="int8"))
        bb.emit_func_output(y)
    return bb.finalize()


# M55 measures both kinds (make test); M4's single kind is extended
@pytest.mark.parametrize("board,kinds", [pytest.param(M4, {"smlad"}, marks=pytest.mark.extended), (M55, {"smlad", "mve"})])
def test_export_measures_the_im2col_candidates_and_runs_the_fastest_bit_exact(board, kinds, tmp_path, monkeypatch):
    """The RGB stem's TIR kinds measured beside the hand-written im2col GEMM in the whole package (none
    dropped), the fewest instructions kept and said why; that package bit-exact under qemu."""
    from tvm_qplugin.export import export_mcu
    from tvm_qplugin.export.kernel_choice import HANDWRITTEN, _sample

    monkeypatch.setenv("TVM_QPLUGIN_SCHEDULES", str(tmp_path / "no-db"))
    mod = conv_model(3, 8, 12, 2, "uint8", seed=4)
    x = _sample((1, 3, 12, 12), "uint8", seed=2)
    res = export_mcu(mod, tmp_path / "pkg", get_board(board), samples=[[x]], workdir=tmp_path / "work")
    if assert_fewest_kept(res, kinds) != HANDWRITTEN:
        assert res["package"]["steps"][0]["c_func"] == "qk_tir_conv_0", res["package"]["steps"][0]
