"""Rounding ties and dtype extremes reach every kernel (issue 8): kernel_check, tie_inputs, tie_solver.

A kernel mutated to round ties down (``((1 << c) >> 1) - 1``) passes the 16-input whole-model
check because ordinary inputs never produce an exact tie; the per-kernel check must catch it.
"""
from __future__ import annotations

import numpy as np
import pytest
from onnx_builders import OnnxGraph
from tvm import tirx

import tvm_qplugin as tq
from tvm_qplugin.compiler import check_bit_exact, compare_with_reference
from tvm_qplugin.data import InputSpec, from_arrays
from tvm_qplugin.kernel_check import check_kernels, kernel_sites
from tvm_qplugin.ops import OPS
from tvm_qplugin.ops import requant as requant_ops
from tvm_qplugin.reference import ReferenceInterpreter
from tvm_qplugin.tie_inputs import (
    KernelSite,
    TieCount,
    _add_ties,
    _ties_conv,
    _ties_dense,
)
from tvm_qplugin.tie_solver import is_tie, may_tie, solve_dot, tie_step, tie_targets
from tvm_qplugin.verify import verify_outdir
from qplugin_zoo import digits_cnn_onnx, digits_split


def _round_ties_down(v, shift):
    """The mutation of issue 8: rounding constant ``2**(c-1) - 1`` instead of ``2**(c-1)``."""
    s = requant_ops.i64(shift)
    one = tirx.const(1, "int64")
    return (v + (((one << s) >> one) - one)) >> s


# --- the tie arithmetic and the solver ---

@pytest.mark.parametrize("multiplier,shift", [(5 << 28, 29), (9 << 27, 29), (3, 4), (-7, 3), (1 << 30, 30),
                                              (1422341720, 31), (12, 3), (1, 1)])
def test_tie_step_names_exactly_the_ties(multiplier, shift):
    accs = np.arange(-4096, 4097)
    ties = {int(a) for a in accs if is_tie(int(a), multiplier, shift)}
    step = tie_step(multiplier, shift)
    want = set() if step is None else {int(a) for a in accs if a % step == 0 and (a // step) % 2}
    assert ties == want, f"b={multiplier} c={shift}: step {step}"


@pytest.mark.parametrize("n", [9, 144, 400])
def test_solve_dot_hits_a_visible_tie(rng, n):
    w = rng.integers(-128, 128, size=n)
    bias = int(rng.integers(-5000, 5000))
    multiplier, shift = 3 << 26, 33  # m = 7: ties at odd multiples of 64
    targets = tie_targets(-(1 << 20), 1 << 20, multiplier, shift, 0, 255)
    assert targets
    x = solve_dot(w, targets[0] - bias, 0, 255)
    assert x is not None and x.min() >= 0 and x.max() <= 255
    acc = int(np.dot(x, w)) + bias
    assert (acc * multiplier) % (1 << shift) == 1 << (shift - 1)
    y = (acc * multiplier + (1 << (shift - 1))) >> shift
    assert 0 < y <= 255, "tie hidden by the clamp"


@pytest.mark.parametrize("ma,mb,shift", [(1001 << 4, 1501 << 5, 12), (3, 5, 4), (-7 << 2, 6, 5), (0, 12, 4),
                                         (1714205747, 25327103, 32)])
def test_add_ties_match_brute_force(ma, mb, shift):
    wide = {"shift": shift, "qmin": -(2**40), "qmax": 2**40}  # no saturation: ok <=> a tie exists
    site = KernelSite("add", "add_requant", {"ma": ma, "mb": mb, **wide}, [], ((1,), "int32"))
    xv = np.arange(-128, 128)
    for u in (0, 1):
        mults = [ma, mb]
        xu, ok = _add_ties(site, mults, u, xv, (0, 255))
        for i, v in enumerate(xv):
            ties = [a for a in range(256) if is_tie(a * mults[u] + int(v) * mults[1 - u], 1, shift)]
            assert bool(ok[i]) == bool(ties) and (not ties or xu[i] == ties[0]), (u, int(v), ties[:3], xu[i])


def test_may_tie_never_drops_a_channel_with_a_visible_tie(rng):
    n = 4000
    mult = rng.integers(1, 2**31, n) >> rng.integers(0, 31, n) << rng.integers(0, 20, n)
    mult *= rng.choice([-1, 1], n)
    shift = rng.integers(0, 63, n)
    acc_lo = rng.integers(-(2**24), 2**20, n)
    acc_hi = acc_lo + rng.integers(0, 2**22, n)
    keep = may_tie(acc_lo, acc_hi, mult, shift, -128, 127)
    exact = np.array([bool(tie_targets(int(a), int(b), int(m), int(c), -128, 127))
                      for a, b, m, c in zip(acc_lo, acc_hi, mult, shift)])
    assert not (exact & ~keep).any(), np.flatnonzero(exact & ~keep)[:5]
    assert exact.sum() > 100 and keep.sum() <= exact.sum() + 0.01 * n, "prefilter too loose to save time"


def test_solve_dot_refuses_impossible_targets():
    assert solve_dot(np.array([4, -6, 2]), 7, -128, 127) is None        # gcd 2 does not divide 7
    assert solve_dot(np.array([1, 1]), 300, 0, 127) is None             # beyond 2 * 127
    assert tie_targets(0, 1 << 20, 1422341720, 31, 0, 255) == []         # needs acc = odd * 2**27


def _conv_site(rng, groups):
    o, c = 8, 4 if groups == 1 else 8
    w = rng.integers(-128, 128, size=(o, c // groups, 3, 3)).astype(np.int8)
    mult = (rng.integers(1, 64, size=o) * 2 + 1) << 20       # short mantissas: ties reachable
    shift = rng.integers(30, 33, size=o)
    params = {"strides": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": groups,
              "qmin": 0, "qmax": 255, "out_dtype": "uint8"}
    args = [((1, c, 8, 8), "uint8"), w, rng.integers(-2000, 2000, size=o).astype(np.int32), mult.astype(np.int64),
            shift.astype(np.int64)]
    return KernelSite("conv", "conv2d_requant", params, args, ((1, o, 8, 8), "uint8"))


@pytest.mark.parametrize("groups", [1, 8])
def test_conv_tie_inputs_make_every_channel_tie(rng, groups):
    site = _conv_site(rng, groups)
    count = TieCount()
    cases = _ties_conv(site, count)
    assert count.channels == 8 and count.hit + count.unreachable == 8 and count.hit >= 7
    _, w, bias, mult, shift = site.args
    ones, zeros = np.ones(8, np.int64), np.zeros(8, np.int64)
    accs = [OPS["conv2d_requant"].reference(x, w, bias, ones, zeros, **{**site.params, "qmin": -(2**40),
                                                                         "qmax": 2**40, "out_dtype": "int64"})
            for (x,) in cases]
    tied = [oc for oc in range(8) if any(is_tie(int(a), mult[oc], shift[oc]) for acc in accs for a in acc[0, oc].ravel())]
    assert len(tied) == count.hit, f"channels {tied} tie, the solver claims {count.hit}"


def test_dense_tie_inputs_make_every_channel_tie(rng):
    w = rng.integers(-128, 128, size=(5, 48)).astype(np.int8)
    mult, shift = np.full(5, 5 << 24, np.int64), np.full(5, 30, np.int64)
    bias = rng.integers(-999, 999, size=5).astype(np.int32)
    site = KernelSite("dense", "dense_requant", {"qmin": -127, "qmax": 127, "out_dtype": "int8"},
                      [((2, 48), "int8"), w, bias, mult, shift], ((2, 5), "int8"))
    count = TieCount()
    cases = _ties_dense(site, count)
    assert len(cases) == 3 and count.hit == 5
    accs = np.concatenate([x.astype(np.int64) @ w.T.astype(np.int64) + bias for (x,) in cases])
    for j in range(5):
        assert any(is_tie(int(a), mult[j], shift[j]) for a in accs[:, j]), f"channel {j}"


def test_tie_builders_count_unexpected_operand_layouts_as_unsolved():
    """A dense whose weights arrive at run time: no tie constructed, nothing raised, counted."""
    mult, shift = np.full(5, 5 << 24, np.int64), np.full(5, 30, np.int64)
    site = KernelSite("dense", "dense_requant", {"qmin": -127, "qmax": 127, "out_dtype": "int8"},
                      [((2, 48), "int8"), ((5, 48), "int8"), np.zeros(5, np.int32), mult, shift], ((2, 5), "int8"))
    count = TieCount()
    assert _ties_dense(site, count) == [] and (count.channels, count.unsolved) == (1, 1)


# --- hand-built integer modules: every tie builder against a mutated build of its kernel ---

def _kernels_module(rng):
    """``main(x, a, b)``: conv2d_requant, avg_pool2d_requant, dense_requant on ``x``'s path, a
    matmul_requant of ``a @ b``, add_requant of ``x + x`` and ``x + const``, short multiplier mantissas:
    ties are reachable, but only at accumulators (odd multiples of 2**17, 2**11, 2**15, 2**15;
    one residue mod 2**12 of ``a`` for each ``b``) that random inputs rarely hit."""
    from tvm import relax

    from tvm_qplugin.ops import const, emit

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8, 8), "uint8"))
    a = relax.Var("a", relax.TensorType((2, 6, 16), "int8"))
    b = relax.Var("b", relax.TensorType((2, 16, 5), "int8"))
    clamp = {"qmin": 0, "qmax": 255, "out_dtype": "uint8"}
    with bb.function("main", [x, a, b]):
        with bb.dataflow():
            y = emit(bb, "conv2d_requant", [x, const(rng.integers(-128, 128, (6, 4, 3, 3)).astype(np.int8)),
                                            const(rng.integers(-999, 999, 6).astype(np.int32)),
                                            const(((rng.integers(1, 60, 6) * 2 + 1) << 15).astype(np.int64)),
                                            const(np.full(6, 33, np.int64))],
                     strides=[1, 1], padding=[1, 1, 1, 1], dilation=[1, 1], groups=1, **clamp)
            y = emit(bb, "avg_pool2d_requant", [y, const(np.full((4, 4), 3 << 19, np.int64))], pool_size=[3, 3],
                     strides=[2, 2], padding=[1, 1, 1, 1], shift=31, **clamp)
            y = emit(bb, "dense_requant", [bb.emit(relax.op.reshape(y, (1, 96))),
                                           const(rng.integers(-128, 128, (7, 96)).astype(np.int8)),
                                           const(np.zeros(7, np.int32)), const(np.full(7, 5 << 12, np.int64)),
                                           const(np.full(7, 28, np.int64))], **clamp)
            z = emit(bb, "matmul_requant", [a, b], multiplier=3 << 20, shift=36, qmin=-127, qmax=127,
                     out_dtype="int8")
            s = emit(bb, "add_requant", [x, x], ma=1001 << 14, mb=1501 << 15, shift=26, **clamp)
            s2 = emit(bb, "add_requant", [x, const(rng.integers(0, 256, (1, 4, 8, 8)).astype(np.uint8))],
                      ma=1001 << 14, mb=1501 << 15, shift=26, **clamp)
            out = bb.emit_output(relax.Tuple([y, z, s, s2]))
        bb.emit_func_output(out)
    return bb.get()


def _built(mod):
    import tvm

    from tvm_qplugin.artifact import Artifact
    from tvm_qplugin.build import build

    target = tvm.target.Target({"kind": "llvm"})  # no CPU features: plain kernels, the TE requant mutated
    executable, _ = build(mod, target)
    return Artifact(mod, [], [], True, executable=executable, build_target=target)


def test_every_tie_builder_catches_its_mutated_kernel(monkeypatch):
    monkeypatch.setattr(requant_ops, "round_shift", _round_ties_down)
    art = _built(_kernels_module(np.random.default_rng(3)))
    k = check_kernels(art)
    assert {m["op"] for m in k["mismatched"]} == {"conv2d_requant", "avg_pool2d_requant", "dense_requant",
                                                  "matmul_requant", "add_requant"}
    assert all(m["detail"].startswith("tie input") for m in k["mismatched"]), k["mismatched"]
    rng = np.random.default_rng(0)  # what the whole-model checks feed: random integers, no tie
    ref = ReferenceInterpreter(art.integer_mod)
    for _ in range(16):
        q = [rng.integers(0, 256, (1, 4, 8, 8)).astype(np.uint8), rng.integers(-128, 128, (2, 6, 16)).astype(np.int8),
             rng.integers(-128, 128, (2, 16, 5)).astype(np.int8)]
        assert all(np.array_equal(g, w) for g, w in zip(art.run_integer(q), ref.run("main", *q)))


def test_every_tie_builder_hits_ties_on_the_correct_kernels():
    k = check_kernels(_built(_kernels_module(np.random.default_rng(3))))
    assert k["checked"] == 6 and k["mismatched"] == [] and k["ties_hit"] == 6
    assert k["channels"]["unsolved"] == 0 and k["channels"]["with_tie"] >= 6 + 7 + 1 + 1 + 1


# --- whole compiles: a model with reachable ties, mutated and not; the digits CNN ---

def _tie_model(tmp_path):
    """x -> Relu; minmax calibration puts x on scale 259/128 (int8) and relu(x) on scale 1 (uint8),
    so the requantize multiplies by exactly 259 / 2**7: x = 64 is the one visible tie (y = 129.5)."""
    g = OnnxGraph((1, 1, 4, 4))
    path = g.save(g.relu("x"), tmp_path / "relu.onnx")
    rng = np.random.default_rng(1)
    calib = rng.uniform(-250, 250, size=(8, 1, 4, 4)).astype(np.float32)
    calib[0, 0, 0, :2] = (-259 * 127 / 128, 255.0)
    levels = rng.integers(-120, 121, size=(16, 1, 4, 4))
    levels[levels == 64] = 62  # ordinary inputs: the tie level does not occur
    return path, {"x": calib}, {"x": (levels * (259 / 128)).astype(np.float32)}


def test_ties_down_kernel_is_caught_by_compile_and_verify(tmp_path, monkeypatch):
    path, calib, evals = _tie_model(tmp_path)
    monkeypatch.setattr(requant_ops, "round_shift", _round_ties_down)
    art = tq.compile(path, calib=calib, eval=evals, observer="minmax")
    ds = from_arrays(evals, [InputSpec("x", (1, 1, 4, 4), "float32")], "evaluation")
    assert check_bit_exact(art, ds, 16) == (True, 16), "the 16-input check alone should miss the mutation"
    r = art.report
    assert not r["bit_exact"]
    assert [m["op"] for m in r["bit_exact_kernels"]["mismatched"]] == ["requantize"]
    assert "tie input" in r["bit_exact_kernels"]["mismatched"][0]["detail"]
    res = verify_outdir(str(art.save(tmp_path / "out")), count=2)
    assert not res["bit_exact"] and res["bit_exact_kernels"]["mismatched"]


def test_unmutated_tie_model_hits_ties_and_is_bit_exact(tmp_path):
    path, calib, evals = _tie_model(tmp_path)
    art = tq.compile(path, calib=calib, eval=evals, observer="minmax")
    k = art.report["bit_exact_kernels"]
    assert art.report["bit_exact"] and k["mismatched"] == []
    assert k["ties_hit"] == 1 and k["channels"]["with_tie"] == 1


def test_compare_with_reference_names_the_first_difference_of_any_backend(tmp_path):
    """The one loop the host and GPU checks share: a backend whose output is off by one in a
    single element of the third sample is caught there, and named."""
    path, calib, evals = _tie_model(tmp_path)
    art = tq.compile(path, calib=calib, eval=evals, observer="minmax")
    ds = from_arrays(evals, [InputSpec("x", (1, 1, 4, 4), "float32")], "evaluation")
    assert compare_with_reference(art, ds, 16, art.run_integer) == (16, None)
    calls = []

    def off_by_one_once(q):
        out = [np.array(o) for o in art.run_integer(q)]
        calls.append(1)
        if len(calls) == 3:
            out[0].flat[5] += 1
        return out

    checked, first_bad = compare_with_reference(art, ds, 16, off_by_one_once)
    assert checked == 16 and first_bad is not None
    assert first_bad.startswith("output 0, batch starting at sample 2:"), first_bad


@pytest.fixture(scope="module")
def digits_artifact():
    x_train, _, x_test, _ = digits_split()
    return tq.compile(digits_cnn_onnx(), calib={"input": x_train[:256]}, eval={"input": x_test}, observer="mse")


def test_digits_every_kernel_bit_exact_on_extremes_and_ties(digits_artifact, tmp_path):
    art = digits_artifact
    k = art.report["bit_exact_kernels"]
    sites = kernel_sites(art.integer_mod, "core")
    assert k["checked"] == len(sites) >= 8 and k["mismatched"] == [] and art.report["bit_exact"]
    assert k["cases"] >= 5 * k["checked"]
    # every requant channel is accounted for; with 31-bit mantissas and int8 operands the digits
    # CNN has no reachable tie at all (ties need acc = odd * 2**(m-1), m >= 22 here)
    ch = k["channels"]
    assert ch["unsolved"] == 0 and ch["with_tie"] + ch["no_tie_reachable"] >= 16 + 32 + 32 + 32 + 16 + 10
    res = verify_outdir(str(art.save(tmp_path / "out")), count=2)
    assert res["bit_exact"] and res["bit_exact_kernels"]["checked"] == k["checked"]
