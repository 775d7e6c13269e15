"""``im2col-sdot`` (tir_kernels_sdot_conv.py; issue 11): a small-channel conv -- MobileNetV2's 3x3 stem
-- as a TensorIR kernel on rpi5: every path bit-exact under qemu-aarch64 -cpu cortex-a76 against the
op's NumPy twin, measured and chosen over the hand-written C by the kernel choice and named in the
package, no candidate (and a one-line refusal when forced) without the dot product."""
from __future__ import annotations

import numpy as np
import pytest
from test_export_tir_kernels import run_one_kernel
from tvm import relax

from tvm_qplugin.errors import UnsupportedOpError
from tvm_qplugin.export.c_graph import build_graph, integer_module_of
from tvm_qplugin.export.c_package import write_c_package
from tvm_qplugin.export.kernel_choice import HANDWRITTEN, choose_kernels, schedules_for
from tvm_qplugin.export.tir_kernels import step_spec
from tvm_qplugin.export.tir_kernels_sdot_conv import im2col_applies, im2col_step
from tvm_qplugin.ops import const, emit
from tvm_qplugin.quant import dyadic
from tvm_qplugin.targets import get_board

CONVS = {
    # name: (x shape, n, kernel, stride, padding, out dtype, qmin, qmax, multiplier range)
    "stem-3ch-s2-k27-u8": ((1, 3, 32, 32), 16, 3, 2, 1, "uint8", 0, 255, (1 / 9000, 1 / 300)),
    "4ch-s1-k36-s16-clamped": ((1, 4, 16, 16), 12, 3, 1, 1, "int16", -32767, 30000, (0.3, 0.99)),
    "2ch-valid-k18-s8-clamped": ((1, 2, 18, 18), 8, 3, 1, 0, "int8", -100, 120, (1 / 900, 1 / 60)),
}


def _conv(xshape, n, kk, stride, pad, out, lo, hi, mrange, seed=0):
    """(module, input): one conv2d_requant, int8 x with whole rows of both extremes, random weights with a
    channel of -128."""
    rng = np.random.default_rng(seed)
    c = xshape[1]
    ds = [dyadic(float(m)) for m in rng.uniform(*mrange, n)]
    w = rng.integers(-128, 128, (n, c, kk, kk)).astype(np.int8)
    w[0] = -128
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(list(xshape), "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit_output(emit(bb, "conv2d_requant", [
                x, const(w), const(rng.integers(-4000, 4000, n).astype(np.int32)),
                const(np.array([d.multiplier for d in ds], np.int64)), const(np.array([d.shift for d in ds], np.int64))],
                strides=[stride, stride], padding=[pad] * 4, dilation=[1, 1], groups=1, qmin=lo, qmax=hi,
                out_dtype=out))
        bb.emit_func_output(y)
    xs = rng.integers(-128, 128, xshape).astype(np.int8)
    xs[0, 0, 0, :], xs[0, -1, -1, :] = -128, 127
    return bb.finalize(), xs


def _step(mod):
    (s,) = [s for s in build_graph(integer_module_of(mod)).steps if s.op == "conv2d_requant"]
    return s


@pytest.mark.parametrize("name", sorted(CONVS))
def test_im2col_sdot_bit_exact(name, tmp_path):
    mod, x = _conv(*CONVS[name], seed=sorted(CONVS).index(name))
    s = _step(mod)
    assert im2col_step(s) and im2col_applies(step_spec(s, "im2col-sdot")), name
    assert "sdot\t" in run_one_kernel(mod, x, "rpi5", "im2col-sdot", tmp_path, f"im2col-sdot {name}")


def test_the_choice_measures_it_and_picks_it_on_rpi5(tmp_path):
    """The stem's shape class: measured against the hand-written kernel, both bit-exact, the TIR kernel
    with over 5x fewer instructions, chosen (the package's call and name: test_im2col_sdot_bit_exact)."""
    mod, _ = _conv(*CONVS["stem-3ch-s2-k27-u8"], seed=7)
    board = get_board("rpi5")
    kernels, choices = choose_kernels(mod, board, tmp_path / "choice")
    ch = choices[0]
    assert ch["dropped"] == 0 and set(ch["instructions"]) == {HANDWRITTEN, "tensorir-im2col-sdot"}, ch
    assert ch["source"] == "tensorir-im2col-sdot" and kernels == {0: "im2col-sdot"}, ch["why"]
    assert ch["instructions"]["tensorir-im2col-sdot"] * 5 < ch["instructions"][HANDWRITTEN], ch["instructions"]


def test_no_candidate_without_dotprod_and_refusals(tmp_path):
    mod, _ = _conv(*CONVS["stem-3ch-s2-k27-u8"])
    s = _step(mod)
    assert schedules_for(s, get_board("rpi4")) == () and schedules_for(s, get_board("rpi5")) == ("im2col-sdot",)
    with pytest.raises(UnsupportedOpError, match="im2col-sdot needs the dot-product extension"):
        write_c_package(mod, tmp_path / "pkg", get_board("rpi4"), kernels={0: "im2col-sdot"})
    with pytest.raises(UnsupportedOpError, match="conv has only the im2col-sdot kernel, not sdot4x4"):
        write_c_package(mod, tmp_path / "pkg", get_board("rpi5"), kernels={0: "sdot4x4"})


def test_not_offered_for_pointwise_wide_or_uint8_convs():
    cases = [((1, 3, 32, 32), 16, 1, 1, 0),   # 1x1: the pointwise kernels
             ((1, 8, 16, 16), 16, 3, 1, 1),   # K = 72 > IM2COL_MAX_K
             ((1, 3, 20, 20), 16, 3, 1, 1)]   # output rows of 20 pixels: no 16-pixel blocks
    for xshape, n, kk, stride, pad in cases:
        mod, _ = _conv(xshape, n, kk, stride, pad, "uint8", 0, 255, (1 / 9000, 1 / 300))
        assert not im2col_step(_step(mod)), (xshape, kk)
