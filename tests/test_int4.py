"""int4 weights, below the model level: the two-per-byte packing, the min-MSE quantizer, the
``_w4`` conv / dense kernels bit-exact against their NumPy twins on the AVX-512 VNNI and the
AVX2 targets, and the per-layer plan's checks and refusals (quant/precision.py, compiler.py)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import tvm
from conftest import assert_bit_exact, host_runs
from test_x86_kernels import INSTRUCTION, TARGETS, activations, asm_of, one_op_module, requant_consts
from tvm import relax

from tvm_qplugin.build import build
from tvm_qplugin.compiler import CompileOptions, resolve_layer_bits
from tvm_qplugin.errors import QPluginError
from tvm_qplugin.ops import OPS
from tvm_qplugin.ops.int4_linear import weight_operand
from tvm_qplugin.passes.rules.linear import quantize_weight_per_channel
from tvm_qplugin.quant.int4 import pack_int4, quantize_weight_int4, unpack_int4
from tvm_qplugin.quant.precision import WeightedLayer, load_layer_bits
from tvm_qplugin.schedules import pack_weights
from tvm_qplugin.schedules.packing import packed_info

PATTERNS = ("min", "max", "random", "alternating")
PLAIN_TARGET = tvm.target.Target({"kind": "llvm", "mcpu": "x86-64"})  # SSE2 only: no tensorized rule


def check_patterns(rng, op, x_shape, xdt, consts, target_name, **params):
    """Build ``op`` once through build.build (the route of a compile) for ``target_name``; run it on
    all-qmin, all-qmax, random and alternating inputs, each == the NumPy twin bit for bit. Returns
    the packed kernel's description (None: plain TE kernel) and the assembly."""
    x0 = activations(rng, x_shape, xdt, "random")
    mod = one_op_module(op, x0, consts, **params)
    infos = [packed_info(f) for f in pack_weights(mod, TARGETS.get(target_name) or PLAIN_TARGET).functions.values()
             if isinstance(f, tvm.tirx.PrimFunc)]
    target = TARGETS.get(target_name) or PLAIN_TARGET
    executable, _ = build(mod, target)
    vm = relax.VirtualMachine(executable, tvm.cpu())
    for pattern in PATTERNS if host_runs(target) else ():  # run where this CPU has the ISA
        x = activations(rng, x_shape, xdt, pattern)
        got = vm["main"](tvm.runtime.tensor(x)).numpy()
        assert_bit_exact(got, OPS[op].reference(x, *consts, **params), f"{op} {xdt} {pattern} on {target_name}")
    return next((i for i in infos if i), None), asm_of(executable)


def nibbles(rng, shape) -> np.ndarray:
    """Random int4 codes over the whole nibble range, both extremes (-8 and 7) planted."""
    w = rng.integers(-8, 8, shape).astype(np.int8)
    w.reshape(-1)[:4] = [-8, 7, -8, 7]
    return w


@pytest.mark.parametrize("k", [1, 2, 7, 16, 27])
def test_pack_unpack_round_trip_every_code(k):
    """All 16 codes in both nibble positions, odd and even row lengths (odd K: last high nibble 0)."""
    codes = np.arange(-8, 8, dtype=np.int8)
    w = np.stack([np.resize(codes, k), np.resize(codes[::-1], k), np.full(k, -8, np.int8), np.full(k, 7, np.int8)])
    packed = pack_int4(w)
    assert packed.dtype == np.int8 and packed.shape == (4, (k + 1) // 2)
    np.testing.assert_equal(unpack_int4(packed, k), w)
    if k % 2:
        assert not (packed.view(np.uint8)[:, -1] >> 4).any(), "odd K: the padding nibble must be 0"


def test_pack_layout_is_low_nibble_first():
    """The byte contract the C package and the TE kernel read: element 2i low, 2i+1 high."""
    packed = pack_int4(np.array([[1, -2, -8, 7, 3]], np.int8))
    assert packed.view(np.uint8).tolist() == [[0xE1, 0x78, 0x03]]


def test_pack_refuses_values_that_would_wrap():
    with pytest.raises(ValueError, match=r"outside \[-8, 7\]"):
        pack_int4(np.array([[8, 0]]))
    with pytest.raises(ValueError, match=r"outside \[-8, 7\]"):
        pack_int4(np.array([[-9, 0]]))


def test_int4_quantizer_is_symmetric_and_beats_max_scaling(rng):
    """Codes in [-7, 7]; per channel, the chosen clip never has more squared error than
    max / 7 scaling, and strictly less on heavy-tailed (Laplace) channels; an all-zero channel
    gets scale 1 and zeros."""
    w = rng.laplace(size=(8, 3, 3, 3))
    w[5] = 0.0
    wq, scale = quantize_weight_int4(w, 0)
    assert wq.dtype == np.int8 and wq.min() >= -7 and wq.max() <= 7
    assert scale[5] == 1.0 and not wq[5].any()
    err = ((wq * scale[:, None, None, None] - w) ** 2).sum(axis=(1, 2, 3))
    amax = np.abs(w).max(axis=(1, 2, 3))
    s_max = np.where(amax > 0, amax / 7, 1.0)[:, None, None, None]
    err_max = ((np.clip(np.floor(w / s_max + 0.5), -7, 7) * s_max - w) ** 2).sum(axis=(1, 2, 3))
    assert (err <= err_max + 1e-12).all()
    assert (err[amax > 0] < err_max[amax > 0]).sum() >= 5, (err, err_max)


def test_weight_operand_packs_only_at_four_bits(rng):
    wq, _ = quantize_weight_per_channel(rng.normal(size=(4, 3, 3, 3)), 0)
    assert weight_operand("conv2d_requant", wq, 8) == ("conv2d_requant", wq, {})
    op, stored, params = weight_operand("conv2d_requant", np.clip(wq, -7, 7), 4)
    assert op == "conv2d_requant_w4" and stored.shape == (4, 14) and params == {"w_shape": [4, 3, 3, 3]}


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("xdt", ["uint8", "int8"])
@pytest.mark.parametrize("case", [
    {"c": 3, "o": 16, "hw": (9, 9), "k": 3, "stride": 2, "pad": (1, 1, 1, 1), "groups": 1},   # stem: K = 27 (odd)
    {"c": 16, "o": 8, "hw": (5, 7), "k": 1, "stride": 1, "pad": (0, 0, 0, 0), "groups": 1},   # pointwise
    {"c": 12, "o": 12, "hw": (6, 6), "k": 3, "stride": 1, "pad": (0, 1, 2, 1), "groups": 12},  # depthwise: K = 9
])
def test_w4_conv_bit_exact_at_extremes(rng, target_name, xdt, case):
    """The packed kernel through build.build, the route of a compile, == the twin bit for bit; it
    runs on the int8 tensorized rule (widened at build: schedules/x86_int4.py) and its dot
    instruction."""
    x_shape = (1, case["c"], *case["hw"])
    w = nibbles(rng, (case["o"], case["c"] // case["groups"], case["k"], case["k"]))
    params = {"strides": [case["stride"]] * 2, "padding": list(case["pad"]), "dilation": [1, 1],
              "groups": case["groups"], "qmin": -128, "qmax": 127, "out_dtype": "int8", "w_shape": list(w.shape)}
    consts = [pack_int4(w.reshape(w.shape[0], -1)), *requant_consts(rng, case["o"], 16)]
    info, asm = check_patterns(rng, "conv2d_requant_w4", x_shape, xdt, consts, target_name, **params)
    rule = "Conv2DTensorized" if case["groups"] == 1 else \
        "DepthwiseRowPairs" if target_name == "avx2" and case["stride"] == 1 else "DepthwiseConv2DTensorized"
    assert info is not None and info["rule"] == rule and info["int4"] == "widened at build", info
    if case["groups"] == 1:
        assert INSTRUCTION[target_name][xdt] in asm
        if target_name == "avx2":  # int4 weights (|w| <= 8) always pass AVX2's byte-pair proof
            assert info["pairs"].startswith("vpmaddubsw") and "vpmaddubsw" in asm, info
    # the twin widens the packed rows to exactly the int8 op's weights: same output
    x = activations(rng, x_shape, xdt, "alternating")
    np.testing.assert_equal(OPS["conv2d_requant_w4"].reference(x, *consts, **params),
                            OPS["conv2d_requant"].reference(x, w, *consts[1:], **{k: v for k, v in params.items()
                                                                                   if k != "w_shape"}))


@pytest.mark.parametrize("xdt", ["uint8", "int8"])
def test_w4_conv_plain_kernel_widens_per_call(rng, xdt):
    """Where no tensorized rule applies (SSE2 only), the TE kernel's own ``w_unpacked`` stage runs."""
    w = nibbles(rng, (6, 4, 3, 3))
    params = {"strides": [1, 1], "padding": [1, 1, 1, 1], "dilation": [1, 1], "groups": 1, "qmin": -128,
              "qmax": 127, "out_dtype": "int8", "w_shape": [6, 4, 3, 3]}
    info, _ = check_patterns(rng, "conv2d_requant_w4", (1, 4, 5, 6), xdt,
                             [pack_int4(w.reshape(6, -1)), *requant_consts(rng, 6, 16)], "plain", **params)
    assert info is None


@pytest.mark.parametrize("target_name", ["vnni", "avx2"])
@pytest.mark.parametrize("xdt", ["uint8", "int8", "int16"])
@pytest.mark.parametrize("k", [37, 96])
def test_w4_dense_bit_exact_at_extremes(rng, target_name, xdt, k):
    """K = 96: the int8 tensorized GEMM on the widened rows; K = 37 (odd: the padding nibble, no
    whole dot steps) stays the plain TE kernel that widens per call."""
    n = 24
    w = nibbles(rng, (n, k))
    params = {"qmin": -128, "qmax": 127, "out_dtype": "int8", "w_shape": [n, k]}
    info, _ = check_patterns(rng, "dense_requant_w4", (2, 3, k), xdt,
                             [pack_int4(w), *requant_consts(rng, n, 8 + (8 if xdt == "int16" else 0))], target_name,
                             **params)
    if k == 96 and xdt != "int16":
        assert info is not None and info["rule"] == "DenseTensorized" and info["int4"] == "widened at build", info
    if k == 37:
        assert info is None


LAYERS = [WeightedLayer(f"lv{i}", name, op, 100) for i, (name, op) in
          enumerate([("stem", "conv2d"), ("mid1", "conv2d"), ("mid2", "conv2d"), ("fc", "dense")])]


def test_int4_plan_keeps_first_and_last_layer_at_8_unless_asked():
    assert resolve_layer_bits("int8", LAYERS) == {n: (8, 8) for n in ("stem", "mid1", "mid2", "fc")}
    assert resolve_layer_bits("int4", LAYERS) == {"stem": (8, 8), "mid1": (4, 8), "mid2": (4, 8), "fc": (8, 8)}
    assert resolve_layer_bits("int4", LAYERS, layer_bits={"stem": (4, 8), "mid2": (8, 4)}) == {
        "stem": (4, 8), "mid1": (4, 8), "mid2": (8, 4), "fc": (8, 8)}
    assert resolve_layer_bits("mixed", LAYERS, layer_bits={"mid1": (4, 4)}) == {
        "stem": (8, 8), "mid1": (4, 4), "mid2": (8, 8), "fc": (8, 8)}


@pytest.mark.parametrize("plan, match", [
    ({"nope": (4, 8)}, r"node 'nope' is not a conv / dense .*weighted layers: 'stem'"),
    ({"mid1": (2, 8)}, r"node 'mid1' \(conv2d\): w_bits 2 is not available; choose 4 or 8"),
    ({"fc": (8, 16)}, r"node 'fc' \(dense\): a_bits 16 \(no kernel takes it yet\)"),
    ({"mid2": (4, 3)}, r"node 'mid2' \(conv2d\): a_bits 3 \(not a width\)"),
])
def test_layer_bits_refusals_name_the_node(plan, match):
    with pytest.raises(QPluginError, match=match) as e:
        resolve_layer_bits("int8", LAYERS, layer_bits=plan)
    assert "\n" not in str(e.value)


def test_mixed_plan_is_laid_over_int8_with_nothing_kept_at_the_ends():
    plan = resolve_layer_bits("mixed", LAYERS, layer_bits={LAYERS[0].onnx_node: (4, 8)})
    assert plan[LAYERS[0].onnx_node] == (4, 8) and all(plan[layer.onnx_node] == (8, 8) for layer in LAYERS[1:])


def test_mixed_without_a_budget_or_plan_is_refused():
    with pytest.raises(QPluginError, match=r"--precision mixed needs a --budget with size= and/or bops=") as e:
        CompileOptions(precision="mixed", budget="latency=5ms")
    assert "\n" not in str(e.value)
    CompileOptions(precision="mixed", budget="size=8KB")  # a budget for the ILP: accepted


def test_precision_option_is_validated():
    with pytest.raises(QPluginError, match=r"--precision 'int2' is not available.*int8, int4, mixed"):
        CompileOptions(precision="int2")


def test_layer_bits_file_is_read_and_checked(tmp_path):
    good = tmp_path / "bits.json"
    good.write_text(json.dumps({"mid1": [4, 8], "fc": [8, 4]}))
    assert load_layer_bits(str(good)) == {"mid1": (4, 8), "fc": (8, 4)}
    assert CompileOptions(layer_bits=str(good)).layer_bits == {"mid1": (4, 8), "fc": (8, 4)}
    cases = {"missing.json": r"missing.json: no such file", "bad.json": r"bad.json: not a JSON file",
             "list.json": r"list.json: expected a mapping", "triple.json": r"node 'a': expected \[w_bits, a_bits\]"}
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "list.json").write_text("[4, 8]")
    (tmp_path / "triple.json").write_text('{"a": [4, 8, 8]}')
    for name, match in cases.items():
        with pytest.raises(QPluginError, match=match):
            load_layer_bits(str(tmp_path / name))


def test_report_says_how_int4_weights_are_widened():
    """layers[].kernel.why of an int4 layer: at build (tensorized) or per call (the fallback)."""
    from tvm_qplugin.schedules.x86_int4 import int4_kernel_note

    base = {"source": "tensorir-default", "why": "x"}
    assert int4_kernel_note(base, "conv2d_requant_u8s8_u8", {}) is base
    at_build = int4_kernel_note(base, "conv2d_requant_w4_u8s8_u8", {"conv2d_requant_w4_u8s8_u8": {"int4": "w"}})
    assert at_build["why"].startswith("int4 weights widened at build into the int8 kernel; ")
    per_call = int4_kernel_note(base, "dense_requant_w4_s8s8_s8", {})
    assert per_call["why"].startswith("int4 weights widened per call by the plain TE kernel")
