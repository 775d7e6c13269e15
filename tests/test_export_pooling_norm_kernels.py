"""C kernels of the sentence-embedding heads (masked_mean_requant, l2_normalize_int), of Pad
reflect / edge (pad_mirror) and of LogSoftmax (log_softmax_int, each exponential variant) against
their NumPy twins, bit for bit: host build under ASan + UBSan, and Cortex-M4 under qemu."""
from __future__ import annotations

import numpy as np
import pytest
from package_probe import check_board, check_host, full_range, packaged
from test_ops_pad_log_softmax import log_softmax_params
from tvm import relax

from tvm_qplugin.ops import const, emit
from tvm_qplugin.ops.log_softmax import log2_table
from tvm_qplugin.ops.pooling_norm import masked_mean_table

B, T, D = 5, 7, 6
N_OUT = 11


def heads_zoo():
    """(module, inputs): masked means of int8 / int16 hidden states under uint8 and int32 masks (every
    count from 0 to T), L2 normalisation of int8 / int16 / int32 rows (a zero row, one-hot rows), and
    the two chained as in a sentence-embedding head; reflect and edge pads; log-softmax rows (an
    all-zero row: log(1/D) exactly) in the three exponential variants."""
    rng = np.random.default_rng(5)
    bb = relax.BlockBuilder()
    h8 = relax.Var("h8", relax.TensorType([B, T, D], "int8"))
    h16 = relax.Var("h16", relax.TensorType([B, T, D], "int16"))
    mu = relax.Var("mu", relax.TensorType([B, T], "uint8"))
    mi = relax.Var("mi", relax.TensorType([B, T], "int32"))
    r32 = relax.Var("r32", relax.TensorType([3, D], "int32"))
    t8, s8 = masked_mean_table(0.9, T, "int8")
    t16, s16 = masked_mean_table(1 / 3, T, "int16")
    with bb.function("main", [h8, h16, mu, mi, r32]):
        with bb.dataflow():
            outs = [
                emit(bb, "masked_mean_requant", [h8, mu, const(t8)], shift=s8, qmin=-128, qmax=127, out_dtype="int8"),
                emit(bb, "masked_mean_requant", [h16, mi, const(t16)], shift=s16, qmin=-32768, qmax=32767,
                     out_dtype="int16"),
                emit(bb, "l2_normalize_int", [h8], pre_shift=-8),
                emit(bb, "l2_normalize_int", [h16], pre_shift=0),
                emit(bb, "l2_normalize_int", [r32], pre_shift=16),
                emit(bb, "l2_normalize_int", [emit(bb, "masked_mean_requant", [h16, mu, const(t16)], shift=s16,  # the
                                                   qmin=-32768, qmax=32767, out_dtype="int16")], pre_shift=0),  # head: arena
                emit(bb, "pad_mirror", [h8], before=[0, 2, 1], after=[4, 6, 5], mode="reflect"),   # widest reflect
                emit(bb, "pad_mirror", [h16], before=[3, 0, 9], after=[1, 8, 0], mode="edge"),
                *[emit(bb, "log_softmax_int", [h, const(log2_table())], **log_softmax_params(scale, D, variant, 1 / 256))
                  for h, scale, variant in ((h8, 0.08, "ivit"), (h16, 0.0004, "ibert"), (h8, 0.03, "division-free"))],
            ]
            gv = [bb.emit_output(o) for o in outs]
        bb.emit_func_output(relax.Tuple(gv))

    def edge(dtype, shape):
        return full_range(rng, dtype, shape)

    x8, x16, x32 = edge("int8", (B, T, D)), edge("int16", (B, T, D)), edge("int32", (3, D))
    x8[1, 0] = 0                              # all-zero row
    x16[2, 3] = 0
    x16[2, 3, 4] = -32768                     # one-hot row: -1.0
    x16[1] = 32767                            # full rows of the largest value: the largest sum
    x32[0] = 0
    counts = [0, T, 1, T - 1, 3]
    mask = np.array([[1] * n + [0] * (T - n) for n in counts])
    return bb.finalize(), [x8, x16, mask.astype(np.uint8), (mask * rng.integers(1, 9, (B, T))).astype(np.int32), x32]


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    return packaged(*heads_zoo(), tmp_path_factory.mktemp("heads"))


def test_head_kernels_host_sanitized(zoo, tmp_path):
    check_host(zoo, N_OUT, tmp_path)


def test_head_kernels_cortex_m4(zoo, tmp_path):
    check_board(zoo, N_OUT, "qemu-mps2-an386", tmp_path)
