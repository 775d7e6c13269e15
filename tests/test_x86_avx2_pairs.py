"""AVX2's ``vpmaddubsw`` taken only where the weights prove it exact (schedules/x86_byte_pairs.py,
x86_int8.py): the pair bound itself (exhaustively, and against a saturating NumPy model of the
instruction), the reduction order that makes real-looking weights pass, and the kernels --
conv 1x1 / 3x3 / strided, dense -- bit-exact against the ops' NumPy twins on the AVX2-restricted
target, on ``vpmaddubsw`` where the check passes and on the exact ``vpmaddwd`` route where it fails.

Each kernel case is built once (module-scoped) through ``build.build`` with the integer-only
checker on the lowered module, and run on every activation pattern (all-min, all-max, random,
alternating: the u8 extremes 0 / 255, and -128 / 127 for s8 activations, +128 on the way in).
"""
from __future__ import annotations

import numpy as np
import pytest
import tvm
from conftest import assert_bit_exact
from test_x86_kernels import (
    PATTERNS,
    TARGETS,
    activations,
    asm_of,
    one_op_module,
    requant_consts,
)
from tvm import relax

from tvm_qplugin.build import build
from tvm_qplugin.ops import OPS, const, emit
from tvm_qplugin.passes.verify_tir import scan_kernels
from tvm_qplugin.schedules import pack_weights
from tvm_qplugin.schedules.intrin_x86 import AVX2, AVX2UB, byte_pair_isa, select_isa
from tvm_qplugin.schedules.packing import packed_info
from tvm_qplugin.schedules.x86_byte_pairs import (
    PAIR_LIMIT,
    k_order,
    packed_order,
    pair_can_saturate,
    saturating_pairs,
)

CONV = {"strides": [1, 1], "padding": [0, 0, 0, 0], "dilation": [1, 1], "groups": 1, "qmin": -128, "qmax": 127,
        "out_dtype": "int8"}


def vpmaddubsw_dot(a_u8: np.ndarray, w: np.ndarray) -> np.ndarray:
    """The instruction pair as the kernel runs it, in NumPy: adjacent u8 x s8 products summed into
    int16 with saturation (``vpmaddubsw``), then pairs of those summed exactly; ``a_u8 [..., K]``
    against ``w [O, K]`` (K even), summed over K."""
    prod = a_u8.astype(np.int64)[..., None, :] * w.astype(np.int64)
    pairs = np.clip(prod[..., 0::2] + prod[..., 1::2], -(2**15), 2**15 - 1)
    return pairs.sum(axis=-1)


def realistic_weights(rng, shape) -> np.ndarray:
    """Per-channel symmetric int8 weights as the quantizer makes them: heavy-tailed (Laplace; 6-14 %
    of MobileNetV2's 8-bit layers' weights are above 64 in magnitude), each output channel scaled
    so that its largest magnitude is 127."""
    w = rng.laplace(size=shape)
    peak = np.abs(w.reshape(shape[0], -1)).max(axis=1).reshape(shape[0], *[1] * (len(shape) - 1))
    return np.round(w / peak * 127).astype(np.int8)


# -- the bound ---------------------------------------------------------------------------------

@pytest.mark.parametrize("w0, w1, saturates", [
    (64, 64, False), (64, 65, True), (127, 1, False), (127, 2, True),           # same sign, up to 128
    (-64, -64, False), (-64, -65, True), (-128, 0, False), (-127, -1, False), (-128, -1, True),
    (127, -128, False), (-127, 127, False), (0, 0, False),                        # opposite signs never
])
def test_pair_bound_at_the_boundary(w0, w1, saturates):
    assert bool(pair_can_saturate(w0, w1)) is saturates
    assert bool(pair_can_saturate(w1, w0)) is saturates


def test_pair_bound_is_exact_for_every_int8_pair():
    """All 65536 weight pairs: the check says "can saturate" exactly when some activation pair
    (the extremes 0 / 255 reach the range's ends) leaves int16 -- no false alarm, no miss."""
    w0, w1 = np.meshgrid(np.arange(-128, 128), np.arange(-128, 128), indexing="ij")
    sums = [a0 * w0 + a1 * w1 for a0 in (0, 255) for a1 in (0, 255)]
    leaves = np.any([(s > 2**15 - 1) | (s < -(2**15)) for s in sums], axis=0)
    np.testing.assert_array_equal(pair_can_saturate(w0, w1), leaves)
    assert PAIR_LIMIT == 128


@pytest.mark.parametrize("signed", [False, True])
def test_saturating_model_agrees_with_the_check(rng, signed):
    """A passing layout gives the exact dot for activations at the extremes under the saturating
    model of the instruction; a failing one does not (so the check is what makes it exact). The
    offset case: s8 activations enter as ``x + 128``, u8 in [0, 255], the same bound."""
    x = activations(rng, (64, 32), "int8" if signed else "uint8", "random")
    x[0], x[1] = np.iinfo(x.dtype).max, np.iinfo(x.dtype).min
    a = x.astype(np.int64) + (128 if signed else 0)
    ok = np.tile(np.array([[64, 64, -64, -64, 127, -127, 127, 1]], np.int8), (3, 4))
    bad = ok.copy()
    bad[1, 1] = 65                                                      # 64 + 65: one pair over
    assert saturating_pairs(ok) == 0 and saturating_pairs(bad) == 1
    exact = a @ ok.astype(np.int64).T
    np.testing.assert_array_equal(vpmaddubsw_dot(a, ok), exact)
    assert not np.array_equal(vpmaddubsw_dot(a, bad), a @ bad.astype(np.int64).T)  # all-255 row saturates


def test_k_order_pairs_large_weights_with_small_or_opposite_ones(rng):
    """Natural order when it passes; else a permutation (every index once) whose packed pairs
    are all safe for every channel, checked by the saturating model at the extremes."""
    natural = np.array([[100, -100, 28, 100]], np.int8)
    np.testing.assert_array_equal(k_order(natural), np.arange(4))
    w = realistic_weights(rng, (48, 96))
    assert saturating_pairs(w) > 0
    order = k_order(w)
    assert order is not None and sorted(order[order >= 0]) == list(range(96))
    reordered = np.where(order >= 0, w[:, np.maximum(order, 0)], 0)
    assert saturating_pairs(reordered) == 0
    a = np.concatenate([np.full((1, len(order)), 255), activations(rng, (8, len(order)), "uint8", "random")])
    np.testing.assert_array_equal(vpmaddubsw_dot(a, reordered), a @ reordered.astype(np.int64).T)


def test_k_order_spacers_and_budget():
    """An index that conflicts with every other one (127 in one channel, -127 in another, against
    indices large in both) gets a zero-weight spacer; past the budget there is no order."""
    w = np.array([[127, 100, 100, 100], [-127, -100, -100, -100]], np.int8)
    order = k_order(w, max_extra=4)
    assert order is not None and (order < 0).sum() == 4 and sorted(order[order >= 0]) == [0, 1, 2, 3]
    assert k_order(w, max_extra=3) is None
    assert packed_order(w, 4, reorder=True) is None   # budget K/8 = 0
    assert packed_order(w, 4, reorder=False) is None
    assert packed_order(np.array([[64, 64, 1, 2, 3]], np.int8), 4, reorder=False).tolist() == [0, 1, 2, 3, 4, 5, 6, 7]


def test_byte_pairs_only_on_avx2_for_8_bit_activations():
    assert byte_pair_isa(select_isa(TARGETS["avx2"], "uint8"), "uint8") is AVX2UB
    assert byte_pair_isa(select_isa(TARGETS["avx2"], "int8"), "int8") is AVX2UB
    assert byte_pair_isa(AVX2, "int16") is None
    assert byte_pair_isa(select_isa(TARGETS["vnni"], "uint8"), "uint8") is None
    assert AVX2UB.mnemonic == "vpmaddubsw" and AVX2.mnemonic == "vpmaddwd"


# -- the kernels ---------------------------------------------------------------------------------

def _boundary_weights(o: int, k: int) -> np.ndarray:
    """Every natural pair at the bound: 64 + 64, -64 - 64, 127 + 1, -128 + 0 (128 exactly)."""
    row = np.array([64, 64, -64, -64, 127, 1, -128, 0], np.int8)
    return np.tile(row, (o, k // 8))


def _full_range_weights(rng, shape) -> np.ndarray:
    """Uniform over [-127, 127]: far too many large weights for any safe order."""
    return rng.integers(-127, 128, shape).astype(np.int8)


# case -> (op, x dtype, x shape, weights, params, expected ISA, pairs note starts with)
def _cases():
    rng = np.random.default_rng(7)
    s2 = {**CONV, "strides": [2, 2], "padding": [1, 1, 1, 1]}
    k3 = {**CONV, "padding": [1, 0, 1, 2]}
    dense = {"qmin": -128, "qmax": 127, "out_dtype": "int8"}
    return {
        "1x1-u8-reordered": ("conv2d_requant", "uint8", (1, 96, 5, 7), realistic_weights(rng, (24, 96, 1, 1)), CONV,
                             "avx2ub", "vpmaddubsw"),
        "1x1-s8-reordered": ("conv2d_requant", "int8", (1, 64, 6, 6), realistic_weights(rng, (16, 64, 1, 1)), CONV,
                             "avx2ub", "vpmaddubsw"),
        "1x1-u8-boundary": ("conv2d_requant", "uint8", (1, 64, 4, 4), _boundary_weights(16, 64).reshape(16, 64, 1, 1),
                            CONV, "avx2ub", "vpmaddubsw: no pair can saturate (checked at compile time)"),
        "1x1-u8-fails": ("conv2d_requant", "uint8", (1, 64, 5, 7), _full_range_weights(rng, (24, 64, 1, 1)), CONV,
                         "avx2", "vpmaddwd: "),
        "3x3-s8-padded": ("conv2d_requant", "int8", (1, 8, 9, 9), realistic_weights(rng, (16, 8, 3, 3)), k3,
                          "avx2ub", "vpmaddubsw"),
        "3x3-u8-stride2": ("conv2d_requant", "uint8", (1, 16, 12, 12), realistic_weights(rng, (16, 16, 3, 3)), s2,
                           "avx2ub", "vpmaddubsw"),
        "dense-u8-boundary": ("dense_requant", "uint8", (6, 64), _boundary_weights(24, 64), dense, "avx2ub",
                              "vpmaddubsw: no pair can saturate (checked at compile time)"),
        "dense-s8-small": ("dense_requant", "int8", (2, 3, 32), rng.integers(-64, 65, (16, 32)).astype(np.int8), dense,
                           "avx2ub", "vpmaddubsw"),
        "dense-u8-natural-fails": ("dense_requant", "uint8", (4, 96), realistic_weights(rng, (16, 96)), dense, "avx2",
                                   "vpmaddwd: "),
    }


CASES = _cases()


@pytest.fixture(scope="module", params=sorted(CASES))
def built(request):
    """(case, consts, the VM's main, the packed kernel's description, the assembly, checker findings)."""
    op, xdt, xshape, wt, params, _isa, _note = CASES[request.param]
    rng = np.random.default_rng(11)
    acc_bits = 8 + int(np.log2(np.prod(wt.shape[1:]))) + 6
    consts = [wt, *requant_consts(rng, wt.shape[0], acc_bits)]
    mod = one_op_module(op, np.zeros(xshape, xdt), consts, **params)
    target = TARGETS["avx2"]
    infos = [packed_info(f) for f in pack_weights(mod, target).functions.values() if isinstance(f, tvm.tirx.PrimFunc)]
    findings = {}
    executable, _ = build(mod, target, check=lambda lowered: findings.update(scan_kernels(lowered, "main")))
    main = relax.VirtualMachine(executable, tvm.cpu())["main"]
    return request.param, consts, main, next(i for i in infos if i), asm_of(executable), findings


def test_avx2_kernel_bit_exact_at_extremes(built):
    case, consts, main, _info, _asm, _findings = built
    op, xdt, xshape, _wt, params, _isa, _note = CASES[case]
    rng = np.random.default_rng(2)
    for pattern in PATTERNS:
        x = activations(rng, xshape, xdt, pattern)
        got = main(tvm.runtime.tensor(x)).numpy()
        assert_bit_exact(got, OPS[op].reference(x, *consts, **params), f"{case} {pattern}")


def test_vpmaddubsw_only_where_the_weights_prove_it(built):
    case, _consts, _main, info, asm, findings = built
    _op, _xdt, _xshape, _wt, _params, isa, note = CASES[case]
    assert info["isa"] == isa and info["pairs"].startswith(note), f"{case}: {info}"
    assert ("vpmaddubsw" in asm) is (isa == "avx2ub"), case
    assert "vpmaddwd" in asm  # the pairs' int32 sum (vpmaddubsw route) or the dot itself
    assert not any(findings.values()), f"integer-only checker: {findings}"


def test_kernel_shared_by_two_calls_takes_the_longer_order_or_falls_back_whole(rng):
    """One PrimFunc, two calls: their orders need different spacer counts, so the kernel's K is
    the longer one and each call pads its own; with one call's weights unsafe the kernel (both
    calls) keeps vpmaddwd. Bit-exact either way."""
    x = activations(rng, (1, 64, 4, 4), "uint8", "max")
    params = {**CONV, "qmin": 0, "qmax": 255, "out_dtype": "uint8"}
    spaced = realistic_weights(rng, (64, 64, 1, 1)) // 2  # |w| <= 64: safe in any order
    spaced[:2, :, 0, 0] = [[10], [-10]]
    spaced[:2, :4, 0, 0] = [[127], [-127]]        # 4 indices that no other index pairs with: 4 spacers
    for second, isa in ((realistic_weights(rng, (64, 64, 1, 1)) // 2, "avx2ub"), (_full_range_weights(rng, (64, 64, 1, 1)), "avx2")):
        c1, c2 = requant_consts(rng, 64, 20), requant_consts(rng, 64, 20)
        bb = relax.BlockBuilder()
        xv = relax.Var("x", relax.TensorType(x.shape, "uint8"))
        with bb.function("main", [xv]):
            with bb.dataflow():
                y1 = emit(bb, "conv2d_requant", [xv, const(spaced), *[const(c) for c in c1]], **params)
                out = bb.emit_output(emit(bb, "conv2d_requant", [y1, const(second), *[const(c) for c in c2]], **params))
            bb.emit_func_output(out)
        mod = bb.get()
        infos = [packed_info(f) for f in pack_weights(mod, TARGETS["avx2"]).functions.values()
                 if isinstance(f, tvm.tirx.PrimFunc)]
        assert [i["isa"] for i in infos] == [isa], infos
        if isa == "avx2ub":
            assert "spacers" in infos[0]["pairs"], infos[0]
        got = relax.VirtualMachine(build(mod, TARGETS["avx2"])[0], tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
        ref = OPS["conv2d_requant"].reference(OPS["conv2d_requant"].reference(x, spaced, *c1, **params), second, *c2,
                                              **params)
        assert_bit_exact(got, ref, f"two calls, second on {isa}")
