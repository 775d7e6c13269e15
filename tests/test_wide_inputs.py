"""``--wide-inputs 16 | 8 | auto``: the width a conv reads of the int16 residual stream.

A tiny residual CNN: two signed (int16) tensors each feed a 1x1 expansion conv. ``a`` carries one
channel 300x larger than the others (its conv barely weighs it): at 8 bits over ``a``'s range the
other channels drown, so narrowing ``a`` is harmful. ``c`` is an ordinary signed tensor whose branch
reaches the logits through a small weight: narrowing it is harmless. Each policy is compiled once
(module scope) and checked bit-exact against the NumPy reference by the compile itself."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from cli_run import assert_user_error, run_cli
from onnx import TensorProto, helper, numpy_helper

import tvm_qplugin as tq
from tvm_qplugin.errors import QPluginError

CONSUMER_OF_OUTLIER = "expand_a"   # reads ``a`` (one outlier channel): narrowing is harmful
CONSUMER_OF_PLAIN = "expand_c"     # reads ``c``: its branch weighs little, narrowing is harmless


def residual_cnn(path) -> str:
    rng = np.random.default_rng(0)
    inits = []

    def w(name, *shape, scale=0.3):
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) * scale).astype(np.float32), name))
        return name

    w_a = rng.standard_normal((8, 4, 3, 3)).astype(np.float32) * 0.3
    w_a[0] *= 300.0                                              # the outlier channel of ``a``
    inits.append(numpy_helper.from_array(w_a, "w_a"))
    w_ea = rng.standard_normal((16, 8, 1, 1)).astype(np.float32) * 0.3
    w_ea[:, 0] /= 300.0                                          # ... which expand_a barely reads
    inits.append(numpy_helper.from_array(w_ea, "w_ea"))
    w_fc = rng.standard_normal((10, 32)).astype(np.float32) * 0.3
    w_fc[:, 16:] *= 0.01                                         # expand_c's branch weighs little
    inits.append(numpy_helper.from_array(w_fc, "w_fc"))
    nodes = [
        helper.make_node("Conv", ["x", "w_a"], ["a"], name="conv_a", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "w_ea"], ["ea"], name=CONSUMER_OF_OUTLIER),
        helper.make_node("Relu", ["ea"], ["ra"]),
        helper.make_node("Conv", ["x", w("w_b", 8, 4, 3, 3)], ["b"], name="conv_b", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["b", w("w_p", 8, 8, 1, 1)], ["p"], name="project_b"),
        helper.make_node("Add", ["b", "p"], ["c"], name="residual_add"),
        helper.make_node("Conv", ["c", w("w_ec", 16, 8, 1, 1)], ["ec"], name=CONSUMER_OF_PLAIN),
        helper.make_node("Relu", ["ec"], ["rc"]),
        helper.make_node("Concat", ["ra", "rc"], ["cat"], axis=1),
        helper.make_node("GlobalAveragePool", ["cat"], ["pool"]),
        helper.make_node("Flatten", ["pool"], ["flat"]),
        helper.make_node("Gemm", ["flat", "w_fc"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 9
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return str(path)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    return residual_cnn(tmp_path_factory.mktemp("wide") / "residual.onnx")


@pytest.fixture(scope="module")
def calib():
    return {"x": np.random.default_rng(1).standard_normal((48, 4, 8, 8)).astype(np.float32)}


@pytest.fixture(scope="module")
def compiled(model, calib):
    """``policy -> artifact``, each policy compiled once for the module, when first asked for."""
    arts: dict = {}

    def get(policy: str):
        if policy not in arts:
            arts[policy] = tq.compile(model, calib=calib, wide_inputs=policy, timing_runs=2)
        return arts[policy]
    return get


def layer(art, name) -> dict:
    return next(entry for entry in art.report["layers"] if entry["onnx_node"] == name)


def reads_bytes(why: str) -> bool:
    """Whether a conv kernel's ``why`` is the 8-bit-operand route: the byte dot product
    (``vpdpbusd``; AVX2's ``vpmaddubsw``), or -- on AVX2, when the layer's weight pairs could
    saturate ``vpmaddubsw`` -- the ``vpmaddwd`` fallback that says so. Only an 8-bit input is ever
    offered the byte instruction, so an int16 consumer's ``why`` names neither."""
    return "vpdpbusd" in why or "vpmaddubsw" in why


def kernel_calls(art) -> dict:
    """``{kernel var: (kernel name, out dtype, first operand dtype)}`` of the integer core's calls."""
    calls = {}
    for block in art.integer_mod[art.integer_function].body.blocks:
        for b in block.bindings:
            call = b.value
            if getattr(getattr(call, "op", None), "name", "") == "relax.call_tir":
                calls[b.var.name] = (call.args[0].name_hint, str(b.var.ty.dtype),
                                               str(call.args[1].fields[0].ty.dtype))
    return calls


WANT = {"16": {CONSUMER_OF_OUTLIER: 16, CONSUMER_OF_PLAIN: 16},
        "8": {CONSUMER_OF_OUTLIER: 8, CONSUMER_OF_PLAIN: 8},
        "auto": {CONSUMER_OF_OUTLIER: 16, CONSUMER_OF_PLAIN: 8}}


@pytest.mark.parametrize("policy", list(WANT))
def test_policy_is_bit_exact_and_keeps_the_stream_int16(policy, compiled):
    art = compiled(policy)
    r = art.report
    assert r["bit_exact"] is True and not r["bit_exact_kernels"]["mismatched"], r["bit_exact_kernels"]
    assert r["wide_inputs"]["policy"] == policy
    assert {t["onnx_node"] for t in r["wide_inputs"]["tensors"]} >= {CONSUMER_OF_OUTLIER, CONSUMER_OF_PLAIN}
    # the residual add -- the stream itself -- stays int16 whatever its consumers read
    adds = [out for name, out, _ in kernel_calls(art).values() if name.startswith("add_requant")]
    assert adds == ["int16"], kernel_calls(art)


@pytest.mark.parametrize("policy", list(WANT))
def test_each_consumer_reads_the_width_its_report_says(policy, compiled):
    art = compiled(policy)
    assert reads_bytes(layer(art, "conv_a")["kernel"]["why"])  # an 8-bit input's kernel
    for node, bits in WANT[policy].items():
        entry = layer(art, node)
        assert entry["input_bits"] == bits, (policy, node, entry)
        tensor = next(t for t in art.report["wide_inputs"]["tensors"] if t["onnx_node"] == node)
        assert tensor["bits"] == bits and entry["width"] == tensor["reason"]
        assert tensor["latency_us"] == entry["latency_us"] and entry["latency_us"] > 0
        # the narrowed consumer's kernel takes the byte route, the wide one the word dot product
        assert reads_bytes(entry["kernel"]["why"]) == (bits == 8), (bits, entry["kernel"]["why"])
    # each narrowed consumer reads its own requantize of the int16 stream (int16 -> int8)
    narrowing = [name for name, out, first in kernel_calls(art).values() if (first, out) == ("int16", "int8")]
    assert len(narrowing) == art.report["wide_inputs"]["narrowed"], kernel_calls(art)


def fused_narrowings(art) -> list[str]:
    """The calls of the built module (schedules/x86_narrowing.py) that narrow the int16 stream in a
    conv's gather; asserts no separate int16 -> 8-bit requantize kernel is left."""
    from tvm_qplugin.schedules.x86_narrowing import built_module

    calls = [(b.value.args[0].name_hint, str(b.value.args[1].fields[0].ty.dtype), str(b.var.ty.dtype))
             for block in built_module(art)[art.integer_function].body.blocks for b in block.bindings
             if getattr(getattr(b.value, "op", None), "name", "") == "relax.call_tir"]
    assert not [c for c in calls if c[0].startswith("requantize") and c[1:] in (("int16", "int8"), ("int16", "uint8"))]
    return [name for name, _, _ in calls if name.startswith("conv2d_requant_narrowed")]


@pytest.mark.parametrize("policy", ["8", "auto"])
def test_narrowed_consumers_read_the_stream_in_their_gather(policy, compiled):
    """Each narrowed consumer is one fused kernel in the library (no narrowing kernel, no 8-bit
    copy of the stream), checked on its own against the two ops' twins, and timed as its layer."""
    art = compiled(policy)
    assert len(fused_narrowings(art)) == art.report["wide_inputs"]["narrowed"] >= 1
    assert "conv2d_requant_narrowed" in {row["op"] for row in art.report["kernels"]}, art.report["kernels"]
    assert art.report["bit_exact_kernels"]["checked"] >= 1 and not art.report["bit_exact_kernels"]["mismatched"]
    # the integer module (the reference, integer_module.json) keeps the requantize of each narrowed input
    narrowing = [n for n, out, first in kernel_calls(art).values() if (first, out) == ("int16", "int8")]
    assert len(narrowing) == art.report["wide_inputs"]["narrowed"]


def test_auto_narrows_the_harmless_input_only_and_keeps_the_plan_within_budget(compiled):
    w = compiled("auto").report["wide_inputs"]
    assert w["measured"] and w["samples"] == 48 and w["metric"] == "kl"
    outlier, plain = (next(t for t in w["tensors"] if t["onnx_node"] == n) for n in (CONSUMER_OF_OUTLIER,
                                                                                   CONSUMER_OF_PLAIN))
    assert outlier["reason"].startswith("kept") and plain["reason"].startswith("narrowed")
    assert outlier["divergence"]["8"] > 100 * max(plain["divergence"]["8"], 1e-12)
    plan = w["plan"]
    assert plan["divergence"] - plan["divergence_all_16"] <= w["total_share"] * plan["divergence_all_16"] * 1.001
    assert w["narrowed"] == sum(t["bits"] == 8 for t in w["tensors"]) >= 1


def test_fixed_policies_measure_nothing(compiled):
    w = compiled("8").report["wide_inputs"]
    assert not w["measured"] and all(t["divergence"]["8"] is None for t in w["tensors"])
    assert w["narrowed"] == len(w["tensors"])


@pytest.mark.parametrize("bad", ["4", "wide", ""])
def test_bad_policy_is_one_line_error(bad, model):
    with pytest.raises(QPluginError, match="--wide-inputs") as e:
        tq.compile(model, calib={"x": np.zeros((2, 4, 8, 8), np.float32)}, wide_inputs=bad)
    assert "\n" not in str(e.value)


def test_bad_policy_through_cli_exits_2(model, tmp_path, calib):
    np.savez(tmp_path / "calib.npz", **calib)
    r = run_cli("compile", model, "--calib", tmp_path / "calib.npz", "--wide-inputs", "12", "-o", tmp_path / "out")
    assert_user_error(r, "--wide-inputs", "'12'", "auto")
    assert not (tmp_path / "out").exists()


def test_narrowed_consumers_on_the_avx2_target(model, calib):
    """The same policy built for an AVX2 fleet (``--isa avx2``): bit-exact, and the narrowed
    consumers take the 8-bit route like any 8-bit input: the byte dot product (``vpmaddubsw``)
    where their weights prove it exact, its compile-time check named in the kernel's why either
    way (x86_byte_pairs.py; an int16 input never gets that check)."""
    art = tq.compile(model, calib=calib, wide_inputs="8", isa="avx2", timing_runs=2)
    assert art.report["bit_exact"] is True and not art.report["bit_exact_kernels"]["mismatched"]
    stem_why = layer(art, "conv_a")["kernel"]["why"]
    assert "vpdpbusd" not in stem_why and "vpmaddubsw" in stem_why, stem_why
    for node in (CONSUMER_OF_OUTLIER, CONSUMER_OF_PLAIN):
        why = layer(art, node)["kernel"]["why"]
        assert layer(art, node)["input_bits"] == 8 and "vpmaddubsw" in why, why
    assert len(fused_narrowings(art)) == art.report["wide_inputs"]["narrowed"]  # read in the gather on AVX2 too


@pytest.mark.extended
def test_mobilenet_v2_auto_keeps_every_confident_crop():
    """MobileNetV2 under ``auto`` (docs/precision.md, "Width of the residual stream's consumers"):
    bit-exact, some expansion convs narrowed -- on the byte dot product -- and the 256 real crops
    still agree with fp32 as under 16 within one crop (88.7 % -> 88.3 %), every confident crop kept."""
    from qplugin_zoo import imagenet_calib_eval, mobilenet_v2_onnx

    calib, evaluation = imagenet_calib_eval()
    art = tq.compile(mobilenet_v2_onnx(), calib={"input": calib}, eval={"input": evaluation}, wide_inputs="auto")
    r = art.report
    assert r["bit_exact"] is True and not r["bit_exact_kernels"]["mismatched"]
    w = r["wide_inputs"]
    assert w["measured"] and 1 <= w["narrowed"] < len(w["tensors"]) == 17
    routes = {8: set(), 16: set()}  # whether each rule-scheduled consumer takes the byte route
    for t in w["tensors"]:
        why = layer(art, t["onnx_node"])["kernel"]["why"]
        if " rule on " in why:  # (a tuned record's why names its database instead)
            routes[t["bits"]].add(reads_bytes(why))
    assert routes == {8: {True}, 16: {False}}, routes
    acc = r["accuracy"]
    assert acc["value"] >= 0.88 and acc["top1_agreement_confident"] == 1.0, acc


def test_auto_builds_each_kernel_once_and_reusing_them_changes_nothing(model, calib, monkeypatch):
    """``auto`` integerizes a second time once its plan is known; that pass takes the first one's
    PrimFuncs (ops/registry.reuse_kernels) instead of building each kernel again -- and the module
    and report are those of a compile that builds them all anew."""
    import contextlib
    import json

    import tvm

    import tvm_qplugin.compiler as compiler
    from tvm_qplugin.ops.registry import IntegerOp

    built: list = []
    prim_func = IntegerOp.prim_func

    def counted(self, arg_types, **params):
        if self.name != "conv2d_requant_narrowed":  # the build's fusion (x86_narrowing.py), not integerization
            built.append((self.name, repr(arg_types), json.dumps(params, sort_keys=True)))
        return prim_func(self, arg_types, **params)

    monkeypatch.setattr(IntegerOp, "prim_func", counted)
    reused = tq.compile(model, calib=calib, wide_inputs="auto", timing_runs=2)
    assert reused.report["wide_inputs"]["narrowed"] >= 1
    assert len(built) == len(set(built)), "a kernel was built twice"
    monkeypatch.setattr(compiler, "reuse_kernels", lambda kernels: contextlib.nullcontext())
    anew = tq.compile(model, calib=calib, wide_inputs="auto", timing_runs=2)
    assert len(built) > len(set(built))  # the counter sees the second pass without reuse
    tvm.ir.assert_structural_equal(reused.integer_mod, anew.integer_mod)
    def timeless(entries):  # the kernel times of two builds differ; everything else must not
        return [{k: v for k, v in e.items() if k not in ("latency_us", "gmacs", "fraction_of_peak")} for e in entries]

    wide, wide_anew = reused.report["wide_inputs"], anew.report["wide_inputs"]
    assert {**wide, "tensors": None} == {**wide_anew, "tensors": None}
    assert timeless(wide["tensors"]) == timeless(wide_anew["tensors"])
    assert timeless(reused.report["layers"]) == timeless(anew.report["layers"])
