"""What audio / streaming models need (Silero VAD): ``--input-value`` freezing an input and
inlining the ``If`` it selects (passes/specialize.py), 1-D convs, ``Pow``, activation ``Gather``
(passes/coverage_forms.py), and the integer square root ``sqrt_requant`` -- each bit-exact with
its NumPy twin (TVM and the C package) and close to ONNX Runtime's float result."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from conftest import assert_bit_exact
from onnx import TensorProto, helper, numpy_helper
from test_ops import run_both
import tvm
from tvm import relax

import tvm_qplugin as tq
from tvm_qplugin.errors import ShapeError, UnsupportedOpError
from tvm_qplugin.export import harness
from tvm_qplugin.export.c_package import write_c_package
from tvm_qplugin.frontend import load_specialized
from tvm_qplugin.ops import emit
from tvm_qplugin.reference import ReferenceInterpreter

REPO = Path(__file__).resolve().parent.parent


# --- sqrt_requant -------------------------------------------------------------------------------

def _sqrt_cases():
    rng = np.random.default_rng(5)
    x16 = np.concatenate([[-32768, -1, 0, 1, 2, 3, 4, 32767], rng.integers(-32768, 32768, 248)]).astype(np.int16)
    x32 = np.concatenate([[-(2**31), 0, 1, 2**31 - 1, 2**24], rng.integers(0, 2**31, 251)]).astype(np.int32)
    return [(x16.reshape(1, 4, 8, 8), 3 << 20, 20, 255, "uint8"), (x16.reshape(1, 4, 8, 8), (1 << 22) - 1, 21, 32767, "int16"),
            (x32.reshape(1, 4, 8, 8), 1 << 21, 45, 255, "uint8"), (x32.reshape(1, 4, 8, 8), 5 << 19, 31, 127, "int8")]


@pytest.mark.parametrize("x,multiplier,shift,qmax,out_dtype", _sqrt_cases())
def test_sqrt_requant_matches_its_twin_and_the_rounded_square_root(x, multiplier, shift, qmax, out_dtype):
    got, want = run_both("sqrt_requant", [x], multiplier=multiplier, shift=shift, qmax=qmax, out_dtype=out_dtype)
    assert_bit_exact(got, want, "sqrt_requant")
    real = np.sqrt(np.maximum(x.astype(np.float64), 0) * multiplier / 2.0**shift)
    # the twin is the correctly rounded square root of the floored 4X (half up), saturated
    assert (np.abs(want.astype(np.float64) - np.minimum(real, qmax)) <= 0.5 + 1e-9).all()


def test_sqrt_requant_c_kernel_host_and_cortex_m4(tmp_path):
    from tvm_qplugin.targets import get_board

    bb = relax.BlockBuilder()
    cases = _sqrt_cases()
    xs = [relax.Var(f"x{i}", relax.TensorType(list(c[0].shape), str(c[0].dtype))) for i, c in enumerate(cases[1:3])]
    with bb.function("main", xs):
        with bb.dataflow():
            outs = [bb.emit_output(emit(bb, "sqrt_requant", [x], multiplier=m, shift=s, qmax=q, out_dtype=d))
                    for x, (_, m, s, q, d) in zip(xs, cases[1:3])]
        bb.emit_func_output(relax.Tuple(outs))
    mod = bb.finalize()
    samples = [[c[0] for c in cases[1:3]]]
    want = [ReferenceInterpreter(mod).run("main", *samples[0])]
    write_c_package(mod, tmp_path / "pkg")
    exe = harness.build_host(tmp_path / "pkg", tmp_path, cc="gcc", sanitize=True)
    for got in (harness.run_host(exe, tmp_path / "pkg", samples, tmp_path / "run")[0],
                harness.run_qemu(harness.build_mcu(tmp_path / "pkg", get_board("qemu-mps2-an386"), tmp_path / "m4"),
                                 samples, tmp_path / "run4").outputs[0]):
        for g, w in zip(got, want[0]):
            assert_bit_exact(g, w, "sqrt_requant C")


# --- ONNX graphs: If on a frozen input, conv1d, Pow, Gather, Sqrt --------------------------------

def _branch(name: str, scale: float, n: int) -> onnx.GraphProto:
    """conv1d -> split into two halves -> sqrt(a**2 + b**2) -> take row 0 -> * scale."""
    rng = np.random.default_rng(len(name))
    w = numpy_helper.from_array(rng.normal(0, 0.3, (8, 1, 5)).astype(np.float32), f"{name}_w")
    nodes = [
        helper.make_node("Conv", ["x", w.name], [f"{name}_c"], pads=[2, 2], strides=[2]),
        helper.make_node("Slice", [f"{name}_c", "lo", "mid", "ax1"], [f"{name}_re"]),
        helper.make_node("Slice", [f"{name}_c", "mid", "hi", "ax1"], [f"{name}_im"]),
        helper.make_node("Pow", [f"{name}_re", "two"], [f"{name}_re2"]),
        helper.make_node("Pow", [f"{name}_im", "two"], [f"{name}_im2"]),
        helper.make_node("Add", [f"{name}_re2", f"{name}_im2"], [f"{name}_p"]),
        helper.make_node("Sqrt", [f"{name}_p"], [f"{name}_mag"]),
        helper.make_node("Gather", [f"{name}_mag", "zero"], [f"{name}_row"], axis=1),
        helper.make_node("Mul", [f"{name}_row", f"{name}_k"], [f"{name}_out"]),
    ]
    k = numpy_helper.from_array(np.array(scale, np.float32), f"{name}_k")
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"{name}_out", TensorProto.FLOAT, [1, n])],
                             [w, k])


@pytest.fixture(scope="module")
def branching_model(tmp_path_factory):
    """``If(mode == 1)`` between two 1-D conv + magnitude branches, as Silero VAD branches on ``sr``."""
    n = 32
    consts = [numpy_helper.from_array(np.array(v, np.int64), name) for name, v in
              (("lo", [0]), ("mid", [4]), ("hi", [8]), ("ax1", [1]), ("zero", 0), ("one", 1))]
    consts.append(numpy_helper.from_array(np.array(2.0, np.float32), "two"))
    graph = helper.make_graph(
        [helper.make_node("Equal", ["mode", "one"], ["cond"]),
         helper.make_node("If", ["cond"], ["y"], name="pick", then_branch=_branch("a", 1.0, n),
                          else_branch=_branch("b", 3.0, n))],
        "branching", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 64]),
                      helper.make_tensor_value_info("mode", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])], consts)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("branching") / "branching.onnx"
    onnx.save(model, path)
    x = np.random.default_rng(0).normal(size=(40, 1, 64)).astype(np.float32)
    return path, x


@pytest.mark.parametrize("mode", [1, 0])
def test_if_on_a_frozen_input_compiles_the_taken_branch_bit_exact(branching_model, mode):
    import onnxruntime as ort

    path, x = branching_model
    art = tq.compile(path, calib={"x": x[:32]}, eval={"x": x[32:]}, input_values={"mode": mode})
    assert art.report["bit_exact"] and art.report["integer_only"]
    assert [s.name for s in art.inputs] == ["x"]
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    want = np.stack([sess.run(None, {"x": xi[None], "mode": np.array(mode, np.int64)})[0] for xi in x[32:]])
    got = np.stack([art.run({"x": xi[None]})[0] for xi in x[32:]])
    cos = float((got * want).sum() / np.linalg.norm(got) / np.linalg.norm(want))
    assert cos > 0.995, cos
    ops = {n.op_type for n in load_specialized(path, [f"mode={mode}"]).graph.node}
    assert "If" not in ops and "Equal" not in ops


def test_if_on_a_live_input_names_the_input_and_the_flag(branching_model, tmp_path):
    path, x = branching_model
    np.savez(tmp_path / "c.npz", x=x, mode=np.ones(len(x), np.int64))
    r = subprocess.run([sys.executable, "-m", "tvm_qplugin", "compile", str(path), "--calib", str(tmp_path / "c.npz"),
                        "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO, timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "If node 'pick'" in lines[0] and "['mode']" in lines[0] and "--input-value mode=V" in lines[0]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("values,message", [({"nosuch": 1}, "has inputs"), ({"mode": 1.5}, "non-integer"),
                                            ({"mode": [1, 2]}, r"2 value\(s\) given")])
def test_bad_input_values_are_one_line_errors(branching_model, values, message):
    from tvm_qplugin.passes.specialize import specialize

    with pytest.raises(ShapeError, match=message):
        specialize(onnx.load(branching_model[0]), {k: np.array(v) for k, v in values.items()}, "m.onnx")
    with pytest.raises(ShapeError, match="expected NAME=V"):
        load_specialized(branching_model[0], ["mode=one"])


def test_if_needing_a_value_is_refused_before_tvm_loads(branching_model):
    with pytest.raises(UnsupportedOpError, match="--input-value mode=V"):
        load_specialized(branching_model[0])


def test_a_scalar_output_is_compared_across_the_set_not_by_its_sign():
    from tvm_qplugin.metrics import cosine_agreement

    fp32, quant = np.array([[0.9], [0.1]]), np.array([[0.1], [0.9]])  # per sample: cosine 1.0 twice
    r = cosine_agreement(fp32, quant)
    assert r["over"] == "set" and abs(r["value"] - 0.18 / 0.82) < 1e-12 and abs(r["max_abs_error"] - 0.8) < 1e-12
    wide = cosine_agreement(np.ones((2, 16)), np.ones((2, 16)))
    assert "over" not in wide and wide["value"] == 1.0


def test_magnitude_is_one_exact_chain_and_inputs_can_be_16_bit(branching_model):
    path, x = branching_model
    art = tq.compile(path, calib={"x": x[:32]}, eval={"x": x[32:]}, input_values={"mode": 1}, input_bits=16)
    assert art.report["bit_exact"] and art.report["input_bits"] == 16 and art.inputs[0].qtype.dtype == "int16"
    kernels = {str(f.attrs["qplugin.op"]) + ":" + ",".join(str(p.ty.dtype) for p in f.params)
               for f in art.integer_mod.functions.values() if isinstance(f, tvm.tirx.PrimFunc) and f.attrs
               and "qplugin.op" in f.attrs}
    # the squares and their sum exact in int32, one rounding: sqrt_requant on the int32 power
    assert "sqrt_requant:int32,int16" in kernels and not any(k.startswith("lut") for k in kernels), kernels
    with pytest.raises(Exception, match="--input-bits 12"):
        tq.compile(path, calib={"x": x[:32]}, input_values={"mode": 1}, input_bits=12)
