"""C kernels of the transformer ops -- softmax_int, gelu_int, layernorm_int (ivit, ibert,
division-free) and the activation x activation matmul_requant -- against their NumPy twins, bit for
bit: host build under ASan + UBSan, Cortex-M4 (DSP) and Cortex-M55 (MVE) under qemu."""
from __future__ import annotations

import numpy as np
import pytest
from package_probe import check_board, check_host, full_range, packaged
from tvm import relax

from tvm_qplugin.errors import UnsupportedOpError
from tvm_qplugin.export.c_package import write_c_package
from tvm_qplugin.ops import const, emit
from tvm_qplugin.ops.nonlinear import layernorm_int_args
from tvm_qplugin.quant import nonlinear_consts as nc

VARIANTS = ("ivit", "ibert", "division-free")
L = 24        # softmax row / LayerNorm row length
INFO = {dt: np.iinfo(dt) for dt in ("int8", "int16", "int32")}


def _edge_rows(rng, dtype, rows: int) -> np.ndarray:
    """Random rows plus the edges: all equal (0 / max / min), one maximum among minimums, a ramp."""
    lo, hi = int(INFO[dtype].min), int(INFO[dtype].max)
    one = np.full(L, lo)
    one[L // 3] = hi
    edges = [np.zeros(L), np.full(L, hi), np.full(L, lo), one, np.linspace(lo, hi, L).round()]
    rand = [rng.integers(lo, hi + 1, L) for _ in range(rows - len(edges))]
    return np.stack(edges + rand).astype(dtype)


def _softmaxes(bb, x8, x16):
    out = []
    for variant in VARIANTS:
        for x, dtype, poly, out_dtype in ((x8, "int8", 1, "uint8"), (x16, "int16", 2, "int16")):
            scale = 12.0 / int(INFO[dtype].max)
            n = nc.choose_softmax_n(scale, None, L, variant)
            out.append(emit(bb, "softmax_int", [x], in_scale=scale, n=n, variant=variant, exp_poly=poly,
                            out_dtype=out_dtype))
    return out


def _gelus(bb, g8, g16):
    out = []
    for variant in VARIANTS:
        for approx in ("paper", "tanh"):
            for x, dtype, out_dtype in ((g8, "int8", "int8"), (g16, "int16", "int16")):
                qo = INFO[out_dtype]
                out.append(emit(bb, "gelu_int", [x], in_scale=8.0 / int(INFO[dtype].max), out_scale=6.0 / int(qo.max),
                                qmin=int(qo.min), qmax=int(qo.max), out_dtype=out_dtype, variant=variant, approx=approx,
                                exp_poly=2 if approx == "tanh" else 1))
    return out


def _layernorms(bb, rng, x8, x16, x32):
    out = []
    gamma, beta = rng.normal(1.0, 0.3, L), rng.normal(0.0, 0.5, L)
    for variant in VARIANTS:
        for x, dtype, in_scale in ((x8, "int8", 0.05), (x16, "int16", 3e-4), (x32, "int32", 1e-6)):
            mult, bias, params = layernorm_int_args(gamma, beta, in_scale=in_scale, out_scale=4.0 / 127, eps=1e-5,
                                                    in_dtype=dtype, c=L, qmin=-128, qmax=127, out_dtype="int8",
                                                    variant=variant)
            out.append(emit(bb, "layernorm_int", [x, const(mult), const(bias)], **params))
    return out


def _matmuls(bb, q8, k8, qu, q16, k16, x16, v16):
    """Q K^T (int8, uint8 x int8 with a broadcast batch, int16 with an int64 accumulator) and
    softmax -> P V with int16 probabilities (int32 accumulator through the row-sum bound)."""
    p = emit(bb, "softmax_int", [x16], in_scale=12.0 / 32767, n=nc.choose_softmax_n(12.0 / 32767, None, L, "ivit"),
             variant="ivit", exp_poly=2, out_dtype="int16")
    return [
        emit(bb, "matmul_requant", [q8, k8], multiplier=1 << 30, shift=40, qmin=-128, qmax=127, out_dtype="int8"),
        emit(bb, "matmul_requant", [qu, k8], multiplier=1 << 30, shift=41, qmin=-128, qmax=127, out_dtype="int8"),
        emit(bb, "matmul_requant", [q16, k16], multiplier=1 << 27, shift=44, qmin=-32768, qmax=32767,
             out_dtype="int16", acc_bits=64),
        emit(bb, "matmul_requant", [p, v16], multiplier=1 << 30, shift=45, qmin=-32768, qmax=32767, out_dtype="int16",
             a_row_sum=32767 + L),
    ]


def transformer_zoo():
    """(module, inputs): every transformer kernel in each C variant and dtype."""
    rng = np.random.default_rng(11)
    bb = relax.BlockBuilder()
    shapes = dict(x8=([2, 9, L], "int8"), x16=([2, 9, L], "int16"), x32=([9, L], "int32"),
                  g8=([256], "int8"), g16=([32, 64], "int16"),
                  q8=([2, 3, 5, 7], "int8"), k8=([3, 7, 4], "int8"), qu=([2, 1, 5, 7], "uint8"),
                  q16=([2, 6, 9], "int16"), k16=([2, 9, 6], "int16"), v16=([2, L, 5], "int16"))
    v = {name: relax.Var(name, relax.TensorType(shape, dt)) for name, (shape, dt) in shapes.items()}
    with bb.function("main", list(v.values())):
        with bb.dataflow():
            outs = (_softmaxes(bb, v["x8"], v["x16"]) + _gelus(bb, v["g8"], v["g16"])
                    + _layernorms(bb, rng, v["x8"], v["x16"], v["x32"])
                    + _matmuls(bb, v["q8"], v["k8"], v["qu"], v["q16"], v["k16"], v["x16"], v["v16"]))
            gv = [bb.emit_output(o) for o in outs]
        bb.emit_func_output(relax.Tuple(gv))

    def full(dtype, shape):
        return full_range(rng, dtype, shape)

    inputs = [np.stack([_edge_rows(rng, "int8", 9) for _ in range(2)]),
              np.stack([_edge_rows(rng, "int16", 9) for _ in range(2)]),
              _edge_rows(rng, "int32", 9),
              np.arange(-128, 128).astype(np.int8),                            # every int8 value
              np.concatenate([[-32768, -32767, -1, 0, 1, 32767], np.arange(-32763, 32768, 32)[:2042]])  # an int16 sweep
              .astype(np.int16).reshape(32, 64),
              full("int8", (2, 3, 5, 7)), full("int8", (3, 7, 4)), full("uint8", (2, 1, 5, 7)),
              full("int16", (2, 6, 9)), full("int16", (2, 9, 6)), full("int16", (2, L, 5))]
    return bb.finalize(), inputs


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return packaged(*transformer_zoo(), tmp_path_factory.mktemp("transformer"))


def test_transformer_kernels_host_sanitized(zoo, tmp_path):
    check_host(zoo, 6 + 12 + 9 + 4, tmp_path)


@pytest.mark.parametrize("board", ["qemu-mps2-an386", "qemu-mps3-an547"])
def test_transformer_kernels_cortex_m(zoo, tmp_path, board):
    check_board(zoo, 6 + 12 + 9 + 4, board, tmp_path)


def test_division_free_kernels_call_no_division(zoo):
    """The division-free softmax / GELU / LayerNorm paths are multiplies, shifts and compares: no
    ``/`` or ``%`` inside their branches of the nonlinear core (M0/M3-class cores lack fast division)."""
    import re

    src = (zoo[0] / "qkernels.c").read_text()
    for fn in ("qk_newton_q30", "qk_fix_up", "qk_recip_newton"):
        body = re.search(rf"QK_INLINE int64_t {fn}\(.*?\n}}\n", src, re.S).group(0)
        assert not re.search(r"[^/*]/[^/*]|%", body.split("{", 1)[1]), f"{fn} divides:\n{body}"


@pytest.mark.parametrize("variant", ["ivit-paper", "ibert-paper"])
def test_paper_variants_are_refused_in_one_line(tmp_path, variant):
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([2, 8], "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            o = bb.emit_output(emit(bb, "gelu_int", [x], in_scale=0.05, out_scale=0.05, qmin=-128, qmax=127,
                                    out_dtype="int8", variant=variant))
        bb.emit_func_output(o)
    with pytest.raises(UnsupportedOpError, match=rf"gelu_int .*variant {variant} has no C kernel \(C kernels: ivit"):
        write_c_package(bb.finalize(), tmp_path / "pkg")
