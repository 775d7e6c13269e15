"""Per-pass tests (TVM style): build a tiny ONNX graph, run one pass, check structure and numerics.

* canonicalize -- FoldBatchNorm, NormalizeClip: the structure the integerize rules rely on, and
  the float numerics unchanged (TVM before/after, and onnxruntime on the ONNX file).
* integerize -- types (integer only, unsigned after ReLU, wide outputs) and SQNR vs float.
* pooling / concat / layout rules -- compiled build == NumPy reference bit for bit, close to float.
"""
from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
import tvm
from tvm import relax

import tvm_qplugin as tq
from conftest import assert_bit_exact
from onnx_builders import OnnxGraph, run_onnxruntime
from tvm_qplugin.frontend import import_onnx
from tvm_qplugin.ops import op_of
from tvm_qplugin.passes.canonicalize import NormalizeClip, canonicalize
from tvm_qplugin.passes.graph import Graph, dtype_of
from tvm_qplugin.passes.verify import verify_integer_only, verify_lowered_tir
from tvm_qplugin.reference import ReferenceInterpreter

TARGET = tvm.target.Target.from_device(tvm.cpu())
F32_MAX = float(np.finfo(np.float32).max)


# --- helpers ----------------------------------------------------------------------------------

def run_relax(mod: tvm.IRModule, x: np.ndarray) -> np.ndarray:
    vm = relax.VirtualMachine(tvm.compile(mod, target=TARGET), tvm.cpu())
    return vm["main"](tvm.runtime.tensor(np.ascontiguousarray(x))).numpy()


def op_counts(mod: tvm.IRModule, func: str = "main") -> Counter:
    return Counter(b.op_name for b in Graph(mod[func]).bindings)


def kernel_ops(mod: tvm.IRModule, func: str = "core") -> list[tuple[str, str]]:
    """``(op, result dtype)`` of every binding of ``func``; call_tir reports its integer op name."""
    out = []
    for b in Graph(mod[func]).bindings:
        name = b.op_name
        if name == "relax.call_tir":
            described = op_of(mod[b.args[0]])
            name = described[0] if described else f"call_tir:{b.args[0].name_hint}"
        try:
            out.append((name, dtype_of(b.var)))
        except AttributeError:
            out.append((name, "tuple"))
    return out


def assert_close(got: np.ndarray, want: np.ndarray, rtol: float = 1e-4, what: str = ""):
    assert got.shape == want.shape, f"{what}: shape {got.shape} != {want.shape}"
    np.testing.assert_allclose(got, want, rtol=rtol, atol=rtol * float(np.abs(want).max()), err_msg=what)


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    assert ref.shape == got.shape, f"shape {got.shape} != {ref.shape}"
    noise = float(((ref.astype(np.float64) - got) ** 2).sum())
    return math.inf if noise == 0 else 10 * math.log10(float((ref.astype(np.float64) ** 2).sum()) / noise)


def images(rng: np.random.Generator, n: int, c: int, h: int, w: int) -> np.ndarray:
    """Random but image-like inputs: smooth low-frequency fields + a little noise, normalized."""
    coarse = rng.uniform(0, 1, size=(n, c, (h + 3) // 4 + 1, (w + 3) // 4 + 1))
    smooth = np.repeat(np.repeat(coarse, 4, axis=2), 4, axis=3)[:, :, :h, :w]
    img = np.clip(smooth + rng.normal(0, 0.05, size=smooth.shape), 0, 1)
    return ((img - 0.45) / 0.25).astype(np.float32)


def compile_and_check_exact(path, calib: np.ndarray, evals: np.ndarray, n_manual: int = 3, **options):
    """tq.compile + the bit-exact checks: the report's, and the reference interpreter run here."""
    art = tq.compile(path, calib={"x": calib}, eval={"x": evals}, **options)
    r = art.report
    assert r["integer_only"] and r["float_ops"] == 0, r["allowed_float_ops"]
    assert r["bit_exact"] and r["bit_exact_inputs"] >= min(len(evals), 16)
    ref = ReferenceInterpreter(art.integer_mod)
    qt = art.inputs[0].qtype
    for i in range(n_manual):
        q = qt.quantize(evals[i : i + 1])
        got, want = art.run_integer([q]), ref.run("core", q)
        assert len(got) == len(want) == 1
        assert_bit_exact(got[0], want[0], f"compiled vs reference, input {i}")
    return art


def float_vs_quant(art, path, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.concatenate([run_onnxruntime(path, xs[i : i + 1]) for i in range(len(xs))])
    q = np.concatenate([art.run({"x": xs[i : i + 1]})[0] for i in range(len(xs))])
    return f, q


# --- canonicalize: FoldBatchNorm --------------------------------------------------------------

def _conv_bn(g):
    return g.batchnorm(g.conv("x", 6))


def _conv_nobias_bn(g):
    return g.batchnorm(g.conv("x", 6, bias=False))


def _depthwise_bn_relu(g):
    return g.relu(g.batchnorm(g.conv(g.conv("x", 4, k=1), 4, k=3, stride=2, groups=4)))


def _conv_explicit_affine(g):
    """Sub/Div/Mul/Add by per-channel constants written out in ONNX (shapes (C,1,1) and (1,C,1,1))."""
    y = g.conv("x", 5, k=3, stride=2, pads=(0, 1, 1, 0))
    y = g.sub_const(y, g.rng.uniform(-1, 1, (5, 1, 1)))
    y = g.div_const(y, g.rng.uniform(0.5, 2.0, (1, 5, 1, 1)))
    y = g.mul_const(y, g.rng.uniform(-2, 2, (5, 1, 1)))
    return g.add_const(y, g.rng.uniform(-1, 1, (1, 5, 1, 1)))


def _conv_scalar_mul(g):
    return g.add_const(g.mul_const(g.conv("x", 4), np.float32(-1.7)), np.float32(0.3))


def _gemm_bn(g):
    return g.batchnorm(g.gemm(g.flatten("x"), 7))


def _matmul_mul_add(g):
    y = g.matmul(g.flatten("x"), 7)
    return g.add_const(g.mul_const(y, g.rng.uniform(0.5, 2, 7)), g.rng.uniform(-1, 1, 7))


def _gemm_alpha_beta(g):
    """Gemm alpha/beta: the importer scales the *input* by alpha (a scalar multiply before matmul)."""
    x = g.flatten("x")
    n, k = g.shapes[x]
    w = g.init((g.rng.standard_normal((k, 7)) / np.sqrt(k)).astype(np.float32))
    b = g.init(g.rng.standard_normal(7).astype(np.float32), "b")
    return g.batchnorm(g.node("Gemm", [x, w, b], (n, 7), alpha=0.5, beta=2.0))


def _input_div_conv_bn(g):
    """An in-model input normalization ``x / 4`` then ``* 1.5`` (scalars) before a padded conv."""
    y = g.mul_const(g.div_const("x", np.float32(4.0)), np.float32(1.5))
    return g.batchnorm(g.conv(y, 5, stride=2))


FOLD_CASES = {
    "conv_bn": (_conv_bn, (1, 3, 8, 8), "relax.nn.conv2d", {}),
    "conv_nobias_bn": (_conv_nobias_bn, (1, 3, 8, 8), "relax.nn.conv2d", {}),
    "depthwise_bn_relu": (_depthwise_bn_relu, (1, 3, 9, 9), "relax.nn.conv2d", {"relax.nn.relu": 1}),
    "conv_sub_div_mul_add": (_conv_explicit_affine, (1, 3, 8, 7), "relax.nn.conv2d", {}),
    "conv_scalar_mul_add": (_conv_scalar_mul, (1, 3, 6, 6), "relax.nn.conv2d", {}),
    "gemm_bn": (_gemm_bn, (2, 3, 2, 2), "relax.matmul", {"relax.reshape": 1}),       # Flatten
    "matmul_mul_add": (_matmul_mul_add, (2, 3, 2, 2), "relax.matmul", {"relax.reshape": 1}),
    "gemm_alpha_beta_bn": (_gemm_alpha_beta, (2, 3, 2, 2), "relax.matmul", {"relax.reshape": 1}),
    "input_scale_conv_bn": (_input_div_conv_bn, (1, 3, 7, 7), "relax.nn.conv2d", {}),
}


@pytest.mark.parametrize("case", sorted(FOLD_CASES))
def test_fold_batch_norm(tmp_path, case):
    build, shape, linear_op, extra = FOLD_CASES[case]
    g = OnnxGraph(shape, np.random.default_rng(7))
    path = g.save(build(g), tmp_path / f"{case}.onnx")
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)

    original = import_onnx(path).mod
    want_tvm = run_relax(original, x)
    canonical = canonicalize(import_onnx(path).mod)

    ops = op_counts(canonical)
    linear = [b for b in Graph(canonical["main"]).bindings if b.op_name in ("relax.nn.conv2d", "relax.matmul")]
    conv_count = 2 if case == "depthwise_bn_relu" else 1
    assert ops[linear_op] == conv_count, ops
    assert not ops & Counter({"relax.multiply": 1, "relax.subtract": 1, "relax.divide": 1, "relax.nn.batch_norm": 1,
                              "Tuple": 1, "TupleGetItem": 1, "relax.call_tir": 1}), ops
    # one bias add per linear op, reading the linear op directly, and nothing else
    adds = [b for b in Graph(canonical["main"]).bindings if b.op_name == "relax.add"]
    assert len(adds) == conv_count, ops
    assert linear[-1].var.same_as(adds[-1].args[0]) and isinstance(adds[-1].args[1], tvm.ir.GenericConst)
    assert sum(ops.values()) == 2 * conv_count + sum(extra.values()), ops
    for op, n in extra.items():
        assert ops[op] == n, ops

    got = run_relax(canonical, x)
    assert_close(got, want_tvm, 1e-4, f"{case}: canonical vs imported (TVM)")
    assert_close(got, run_onnxruntime(path, x), 1e-4, f"{case}: canonical vs onnxruntime")


def test_fold_batch_norm_keeps_shared_conv_unfolded_but_exact(tmp_path):
    """A conv read by BN *and* a residual add cannot take BN's scale: the pass must leave it alone."""
    g = OnnxGraph((1, 4, 6, 6), np.random.default_rng(3))
    c = g.conv("x", 4)
    path = g.save(g.add(g.batchnorm(c), c), tmp_path / "shared.onnx")
    x = np.random.default_rng(2).standard_normal((1, 4, 6, 6)).astype(np.float32)
    want = run_relax(import_onnx(path).mod, x)
    canonical = canonicalize(import_onnx(path).mod)
    assert op_counts(canonical)["relax.nn.conv2d"] == 1
    assert_close(run_relax(canonical, x), want, 1e-4, "shared conv")
    assert_close(run_relax(canonical, x), run_onnxruntime(path, x), 1e-4, "shared conv vs onnxruntime")


def test_fold_batch_norm_leaves_non_channel_constants(tmp_path):
    """Per-element (not per-channel) scales and ``c - conv`` are not foldable; numerics unchanged."""
    g = OnnxGraph((1, 3, 5, 5), np.random.default_rng(4))
    y = g.mul_const(g.conv("x", 4), g.rng.uniform(0.5, 2, (1, 4, 5, 5)))
    y = g.node("Sub", [g.init(g.rng.uniform(-1, 1, (4, 1, 1)).astype(np.float32)), y], g.shapes[y])
    path = g.save(y, tmp_path / "nonchannel.onnx")
    x = np.random.default_rng(5).standard_normal((1, 3, 5, 5)).astype(np.float32)
    canonical = canonicalize(import_onnx(path).mod)
    ops = op_counts(canonical)
    assert ops["relax.multiply"] == 1 and ops["relax.subtract"] == 1, ops
    assert_close(run_relax(canonical, x), run_onnxruntime(path, x), 1e-4, "non-channel constants")


def test_scalar_prescale_shared_input_not_folded(tmp_path):
    """``y = x * 2`` read by a conv *and* a residual add keeps its multiply (folding would change
    the add); numerics unchanged."""
    g = OnnxGraph((1, 3, 6, 6), np.random.default_rng(6))
    y = g.mul_const("x", np.float32(2.0))
    path = g.save(g.add(g.conv(y, 3), y), tmp_path / "shared_scale.onnx")
    x = np.random.default_rng(7).standard_normal((1, 3, 6, 6)).astype(np.float32)
    canonical = canonicalize(import_onnx(path).mod)
    assert op_counts(canonical)["relax.multiply"] == 1
    assert_close(run_relax(canonical, x), run_onnxruntime(path, x), 1e-4, "shared scalar multiply")


def test_scalar_prescale_integerizes(tmp_path):
    """In-model ``x / 4`` before a conv and Gemm ``alpha`` compile integer-only (the scalars live in
    the weights) and bit-exact."""
    g = OnnxGraph((1, 3, 6, 6), np.random.default_rng(13))
    y = g.relu(g.conv(g.div_const("x", np.float32(4.0)), 4))
    y = g.flatten(g.gap(y))
    w = g.init((g.rng.standard_normal((4, 5)) * 0.5).astype(np.float32))
    path = g.save(g.node("Gemm", [y, w, g.init(np.ones(5, np.float32), "b")], (1, 5), alpha=0.25, beta=3.0),
                  tmp_path / "prescale.onnx")
    rng = np.random.default_rng(14)
    art = compile_and_check_exact(path, images(rng, 16, 3, 6, 6), images(rng, 4, 3, 6, 6))
    names = [op for op, _ in kernel_ops(art.integer_mod) if op != "DataflowVar"]
    assert names == ["conv2d_requant", "sum_requant", "relax.reshape", "dense_requant"], names
    f, q = float_vs_quant(art, path, images(rng, 4, 3, 6, 6))
    assert sqnr_db(f, q) >= 25.0, f"SQNR {sqnr_db(f, q):.1f} dB"


def test_conv_bn_relu_integerizes(tmp_path):
    """End to end: Conv -> BN -> ReLU compiles (the canonical graph holds no dead BN tuple)."""
    g = OnnxGraph((1, 3, 8, 8), np.random.default_rng(8))
    path = g.save(g.relu(g.batchnorm(g.conv("x", 6))), tmp_path / "cbr.onnx")
    rng = np.random.default_rng(9)
    art = compile_and_check_exact(path, images(rng, 16, 3, 8, 8), images(rng, 4, 3, 8, 8))
    assert [op for op, _ in kernel_ops(art.integer_mod) if op != "DataflowVar"] == ["conv2d_requant"]


# --- canonicalize: NormalizeClip --------------------------------------------------------------

@pytest.mark.parametrize("lo,hi", [(0.0, 6.0), (0.0, None), (None, 6.0), (-1.5, 2.5)])
def test_normalize_clip(tmp_path, lo, hi):
    g = OnnxGraph((1, 3, 6, 6), np.random.default_rng(11))
    path = g.save(g.clip(g.conv("x", 4), lo, hi), tmp_path / "clip.onnx")
    imported = import_onnx(path).mod
    assert op_counts(imported)["relax.call_tir"] == (lo is not None) + (hi is not None)  # TOPI max/min kernels

    mod = NormalizeClip(relax.transform.FoldConstant()(imported))
    mod = relax.transform.DeadCodeElimination(["main"])(relax.transform.CanonicalizeBindings()(mod))
    for m in (mod, canonicalize(import_onnx(path).mod)):
        ops = op_counts(m)
        assert ops["relax.clip"] == 1 and ops["relax.call_tir"] == 0, ops
        assert not {"relax.maximum", "relax.minimum", "relax.where", "relax.isnan"} & set(ops), ops
        (clip,) = [b for b in Graph(m["main"]).bindings if b.op_name == "relax.clip"]
        got_lo, got_hi = float(clip.args[1].value), float(clip.args[2].value)
        assert got_lo == (lo if lo is not None else -F32_MAX)
        assert got_hi == (hi if hi is not None else F32_MAX)
        assert math.isfinite(got_lo) and math.isfinite(got_hi)
        assert Graph(m["main"]).producer(clip.args[0]).op_name == "relax.add"  # conv bias, clip reads it
    x = (np.random.default_rng(12).standard_normal((1, 3, 6, 6)) * 3).astype(np.float32)
    want = run_onnxruntime(path, x)
    assert_close(run_relax(canonicalize(import_onnx(path).mod), x), want, 1e-5, "clip numerics")
    if lo is not None:
        assert (want == lo).any(), "fixture should saturate at the lower bound"


@pytest.mark.parametrize("first,second,want", [
    ((0.0, 6.0), (1.0, 3.0), (1.0, 3.0)),     # nested: intersection
    ((0.0, 1.0), (2.0, 3.0), (2.0, 2.0)),     # disjoint: the constant 2
    ((2.0, 3.0), (0.0, 1.0), (1.0, 1.0)),     # disjoint the other way: the constant 1
    # min > max is refused at the ONNX edge (tests/test_cli_errors.py); NormalizeClip's handling of it
    # is covered structurally in tests/test_pass_structure.py
])
def test_normalize_clip_merges_clips(tmp_path, first, second, want):
    g = OnnxGraph((1, 3, 5, 5), np.random.default_rng(15))
    y = g.clip(g.conv("x", 4), *first)
    if second is not None:
        y = g.clip(y, *second)
    path = g.save(y, tmp_path / "clips.onnx")
    canonical = canonicalize(import_onnx(path).mod)
    (clip,) = [b for b in Graph(canonical["main"]).bindings if b.op_name == "relax.clip"]
    assert (float(clip.args[1].value), float(clip.args[2].value)) == want
    x = (np.random.default_rng(16).standard_normal((1, 3, 5, 5)) * 3).astype(np.float32)
    assert_close(run_relax(canonical, x), run_onnxruntime(path, x), 1e-5, f"clips {first} then {second}")


# --- integerize: conv -> relu -> conv -> add -> relu -> maxpool -> GAP -> gemm ---------------

@pytest.fixture(scope="module")
def small_cnn(tmp_path_factory):
    g = OnnxGraph((1, 3, 12, 12), np.random.default_rng(21))
    a = g.relu(g.conv("x", 8))
    c = g.relu(g.add(g.conv(a, 8), a))
    y = g.gemm(g.flatten(g.gap(g.maxpool(c, 2, 2))), 10)
    path = g.save(y, tmp_path_factory.mktemp("small") / "small_cnn.onnx")
    rng = np.random.default_rng(22)
    calib, evals = images(rng, 32, 3, 12, 12), images(rng, 16, 3, 12, 12)
    art = compile_and_check_exact(path, calib, evals)
    return path, art, evals


def test_integerize_integer_only(small_cnn):
    _, art, _ = small_cnn
    rep = verify_integer_only(art.integer_mod)
    assert rep.integer_only and rep.float_ops == [] and rep.kernels >= 6
    assert verify_lowered_tir(art.integer_mod) == []
    core = art.integer_mod["core"]
    for p in core.params:
        assert dtype_of(p) in ("int8", "uint8"), dtype_of(p)
    for op, dt in kernel_ops(art.integer_mod):
        assert dt.startswith(("int", "uint")), (op, dt)
    # main is the float shell: quantize -> core -> dequantize
    main_ops = [op for op, _ in kernel_ops(art.integer_mod, "main")]
    assert main_ops[0] == "quantize" and "dequantize" in main_ops


def test_integerize_types_follow_relu_and_output(small_cnn):
    _, art, _ = small_cnn
    ops = [(op, dt) for op, dt in kernel_ops(art.integer_mod) if op != "DataflowVar"]
    names = [op for op, _ in ops]
    for op in ("conv2d_requant", "add_requant", "max_pool2d", "sum_requant", "dense_requant"):
        assert op in names, names
    convs = [dt for op, dt in ops if op == "conv2d_requant"]
    assert len(convs) == 2
    assert convs[0] == "uint8", "conv -> relu (fused) must produce unsigned"
    assert convs[1].startswith("int"), "conv without ReLU must stay signed"
    assert dict(ops)["add_requant"] == "uint8", "add -> relu (fused) must produce unsigned"
    assert dict(ops)["max_pool2d"] == "uint8" and dict(ops)["sum_requant"] == "uint8"
    assert "relax.nn.relu" not in names and "relax.clip" not in names
    assert ops[-1] == ("dense_requant", "int32"), ops
    out = art.outputs[0]
    assert out.qtype.dtype == "int32" and out.qtype.qmax >= 2**23 - 1 and out.shape == (1, 10)
    assert art.report["outputs"][0]["dtype"] == "int32"


def test_integerize_sqnr_vs_float(small_cnn):
    path, art, evals = small_cnn
    f, q = float_vs_quant(art, path, evals)
    assert sqnr_db(f, q) >= 25.0, f"SQNR {sqnr_db(f, q):.1f} dB"
    assert (f.argmax(1) == q.argmax(1)).mean() >= 0.85


# --- pooling, concat and layout rules ---------------------------------------------------------

def _exact_single_op(tmp_path, build, shape, name):
    """x -> op: the output must equal the float op applied to the dequantized input (pooling is
    exact up to the rounding of the wide int32 output). minmax calibration and inputs drawn from
    the calibration set keep every value inside the calibrated ranges (no clipping)."""
    g = OnnxGraph(shape, np.random.default_rng(31))
    path = g.save(build(g), tmp_path / f"{name}.onnx")
    calib = np.random.default_rng(32).standard_normal((16, *shape[1:])).astype(np.float32)
    evals = calib[::3]
    art = compile_and_check_exact(path, calib, evals, observer="minmax")
    qt = art.inputs[0].qtype
    for i in range(3):
        q = qt.quantize(evals[i : i + 1])
        want = run_onnxruntime(path, qt.dequantize(q))
        got = art.run({"x": evals[i : i + 1]})[0]
        assert got.shape == want.shape, f"{name}: shape {got.shape} != onnxruntime {want.shape}"
        out_scale = art.outputs[0].qtype.scale
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=out_scale + 1e-6 * np.abs(want).max(), err_msg=name)
    return art


@pytest.mark.parametrize("count_include_pad", [0, 1])
@pytest.mark.parametrize("h,k,s,pads", [(7, 3, 2, (1, 1, 1, 1)), (6, 3, 1, (1, 1, 1, 1)), (5, 3, 2, (0, 1, 1, 0)),
                                        (6, 2, 2, (0, 0, 1, 1))])
def test_avg_pool_padding_exact(tmp_path, h, k, s, pads, count_include_pad):
    _exact_single_op(tmp_path, lambda g: g.avgpool("x", k, s, pads, count_include_pad), (1, 3, h, h),
                     f"avgpool_cip{count_include_pad}")


@pytest.mark.parametrize("h,k,s,pads", [(5, 2, 2, (1, 1, 1, 1)), (7, 2, 2, (1, 1, 1, 1)), (6, 3, 2, (0, 0, 0, 0)),
                                        (7, 3, 2, (1, 1, 1, 1)), (7, 3, 3, (1, 1, 0, 0))])
def test_max_pool_ceil_mode_exact(tmp_path, h, k, s, pads):
    """ceil_mode: output size as the float graph (and onnxruntime) have it, values exact. The
    (5, 2, 2, pads 1) case has a last ceil window starting in the padding, which Relax drops."""
    art = _exact_single_op(tmp_path, lambda g: g.maxpool("x", k, s, pads, ceil_mode=True), (1, 2, h, h + 1),
                           "maxpool_ceil")
    assert art.outputs[0].qtype == art.inputs[0].qtype  # max pooling keeps the input type


@pytest.mark.parametrize("pool", ["avg0", "avg1", "max_ceil"])
def test_pool_inside_network(tmp_path, pool):
    """conv -> pool -> relu -> conv: the pool runs on a requantized intermediate tensor."""
    g = OnnxGraph((1, 3, 9, 9), np.random.default_rng(41))
    y = g.conv("x", 6)
    if pool == "max_ceil":
        y = g.maxpool(y, 2, 2, (1, 1, 1, 1), ceil_mode=True)
    else:
        y = g.avgpool(y, 3, 2, (1, 1, 1, 1), count_include_pad=int(pool[-1]))
    path = g.save(g.conv(g.relu(y), 5), tmp_path / f"net_{pool}.onnx")
    rng = np.random.default_rng(42)
    art = compile_and_check_exact(path, images(rng, 32, 3, 9, 9), images(rng, 8, 3, 9, 9))
    names = [op for op, _ in kernel_ops(art.integer_mod)]
    assert ("max_pool2d" if pool == "max_ceil" else "avg_pool2d_requant") in names
    f, q = float_vs_quant(art, path, images(rng, 8, 3, 9, 9))
    assert sqnr_db(f, q) >= 25.0, f"{pool}: SQNR {sqnr_db(f, q):.1f} dB"


def test_concat_uint8_and_int8_branches(tmp_path):
    g = OnnxGraph((1, 3, 8, 8), np.random.default_rng(51))
    a = g.relu(g.conv("x", 4))          # unsigned branch
    b = g.conv("x", 3, k=1)             # signed branch
    y = g.conv(g.concat([a, b], axis=1), 5)
    path = g.save(y, tmp_path / "concat.onnx")
    rng = np.random.default_rng(52)
    art = compile_and_check_exact(path, images(rng, 32, 3, 8, 8), images(rng, 8, 3, 8, 8))
    core = Graph(art.integer_mod["core"])
    (cat,) = [bd for bd in core.bindings if bd.op_name == "relax.concat"]
    in_types = [dtype_of(f) for f in cat.args[0].fields]
    # both branches aligned onto the concat's one signed type (the ReLU branch was unsigned)
    assert in_types[0] == in_types[1] == dtype_of(cat.var) and in_types[0] in ("int8", "int16"), in_types
    branch_types = [dt for op, dt in kernel_ops(art.integer_mod) if op == "conv2d_requant"]
    assert len(branch_types) == 3 and "uint8" in branch_types[:2], branch_types
    f, q = float_vs_quant(art, path, images(rng, 8, 3, 8, 8))
    assert sqnr_db(f, q) >= 25.0, f"SQNR {sqnr_db(f, q):.1f} dB"


def test_layout_ops_pass_integers_through(tmp_path):
    """Transpose / Reshape / Unsqueeze / Squeeze / Flatten: same integers, same type, no requantize."""
    g = OnnxGraph((1, 3, 6, 6), np.random.default_rng(61))
    y = g.relu(g.conv("x", 4, stride=2))                 # (1, 4, 3, 3) uint8
    y = g.transpose(y, (0, 2, 3, 1))                     # (1, 3, 3, 4)
    y = g.reshape(y, (1, 9, 4))
    y = g.unsqueeze(y, (0,))                             # (1, 1, 9, 4)
    y = g.squeeze(y, (1,))                               # (1, 9, 4)
    y = g.gemm(g.flatten(y), 6)
    path = g.save(y, tmp_path / "layout.onnx")
    rng = np.random.default_rng(62)
    art = compile_and_check_exact(path, images(rng, 32, 3, 6, 6), images(rng, 8, 3, 6, 6))
    ops = [(op, dt) for op, dt in kernel_ops(art.integer_mod) if op != "DataflowVar"]
    names = [op for op, _ in ops]
    assert names[0] == "conv2d_requant" and names[-1] == "dense_requant", names
    middle = ops[1:-1]
    assert "relax.permute_dims" in [op for op, _ in middle], names
    assert all(op.startswith("relax.") and dt == "uint8" for op, dt in middle), middle
    assert "requantize" not in names
    f, q = float_vs_quant(art, path, images(rng, 8, 3, 6, 6))
    assert sqnr_db(f, q) >= 25.0, f"SQNR {sqnr_db(f, q):.1f} dB"
