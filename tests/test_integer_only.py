"""The integer-only checker cannot be fooled: each float construct planted in a kernel of a small
integer Relax module is found in the kernels as scheduled and lowered for the host (the module
``build`` compiles), named with its kernel; ``--allow-float`` refuses unknown names and an
allowed finding makes ``integer_only`` false; ``tvm-qplugin verify`` re-checks the artifact."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tvm
from tvm import relax
from tvm.script import tirx as T

import tvm_qplugin as tq
from tvm_qplugin.build import build
from tvm_qplugin.errors import FloatOpError, QPluginError
from tvm_qplugin.ops.registry import OP_ATTR, PARAMS_ATTR
from tvm_qplugin.passes.verify import (INTEGER_RELAX_OPS, check_integer_only, check_lowered_kernels,
                                       kernel_origins, verify_integer_only)
from tvm_qplugin.passes.verify_tir import INTEGER_LLVM_INTRINSICS, scan_kernel
from tvm_qplugin.reference import _LAYOUT_OPS
from cli_run import run_cli
from qplugin_zoo import digits_split

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "examples" / "digits_cnn.onnx"
TARGET = tvm.target.Target.from_device(tvm.cpu())


# Each planted kernel: int8[8] -> int32[8] with one float construct (schedulable TIR, as our kernels are).
@T.prim_func(s_tir=True)
def float32_buffer(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    tmp = T.alloc_buffer((8,), "float32")
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            tmp[vi] = T.Cast("float32", A[vi])
            B[vi] = T.Cast("int32", tmp[vi])


@T.prim_func(s_tir=True)
def float16_cast(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            B[vi] = T.Cast("int32", T.Cast("float16", A[vi]))


@T.prim_func(s_tir=True)
def bfloat16_cast(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            B[vi] = T.Cast("int32", T.Cast("bfloat16", A[vi]))


@T.prim_func(s_tir=True)
def float8_buffer(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    tmp = T.alloc_buffer((8,), "float8_e4m3fn")
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            tmp[vi] = T.Cast("float8_e4m3fn", A[vi])
            B[vi] = T.Cast("int32", tmp[vi])


@T.prim_func(s_tir=True)
def float6_cast(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            B[vi] = T.Cast("int32", T.Cast("float6_e2m3fn", A[vi]))


@T.prim_func(s_tir=True)
def float4_decl_buffer(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    Q = T.decl_buffer((8,), "float4_e2m1fn", data=A.data)
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            B[vi] = T.Cast("int32", A[vi])


@T.prim_func(s_tir=True)
def float_constant(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            B[vi] = T.Cast("int32", A[vi]) + T.Cast("int32", T.float32(0.5))


@T.prim_func(s_tir=True)
def extern_expf(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            B[vi] = T.Cast("int32", T.call_extern("float32", "expf", T.Cast("float32", A[vi])))


@T.prim_func(s_tir=True)
def pure_extern_on_int(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            B[vi] = T.call_pure_extern("int32", "lrintf", T.Cast("int32", A[vi]))


@T.prim_func(s_tir=True)
def exp_of_int(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            B[vi] = T.exp(T.Cast("int32", A[vi]))


@T.prim_func(s_tir=True)
def llvm_float_intrinsic(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            B[vi] = T.Cast("int32", T.call_llvm_pure_intrin("float32", "llvm.sqrt", T.Cast("float32", A[vi])))


@T.prim_func(s_tir=True)
def llvm_unlisted_int_intrinsic(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            B[vi] = T.call_llvm_pure_intrin("int32", "llvm.ctpop", T.Cast("int32", A[vi]))


PLANTED = [
    (float32_buffer, "buffer tmp", "float32"),
    (float16_cast, "Cast", "float16"),
    (bfloat16_cast, "Cast", "bfloat16"),
    (float8_buffer, "buffer tmp", "float8_e4m3fn"),
    (float6_cast, "Cast", "float6_e2m3fn"),
    (float4_decl_buffer, "buffer Q", "float4_e2m1fn"),
    (float_constant, "constant 0.5", "float32"),
    (extern_expf, "call call_extern('expf'): external call", "float32"),
    (pure_extern_on_int, "call call_pure_extern('lrintf'): external call", "int32"),
    (exp_of_int, "call tirx.exp: float math intrinsic", "int32"),
    (llvm_float_intrinsic, "call_llvm_pure_intrin('llvm.sqrt')", "float32"),
    (llvm_unlisted_int_intrinsic, "call call_llvm_pure_intrin('llvm.ctpop'): LLVM intrinsic", "int32"),
]


@T.prim_func(s_tir=True)
def clean_int(A: T.Buffer((8,), "int8"), B: T.Buffer((8,), "int32")):
    for i in range(8):
        with T.sblock("b"):
            vi = T.axis.spatial(8, i)
            B[vi] = T.max(T.Cast("int32", A[vi]) * 3 + 1, -7) >> 1


@T.prim_func
def listed_llvm_int_intrinsic(A: T.Buffer((16,), "int16"), B: T.Buffer((8,), "int32")):
    B[T.ramp(0, 1, 8)] = T.call_llvm_pure_intrin("int32x8", "llvm.x86.avx2.pmadd.wd", A[T.ramp(0, 1, 16)],
                                                         A[T.ramp(0, 1, 16)])


def integer_module(kernel, name: str, op: str = "add_requant") -> tvm.IRModule:
    """``core(x: int8[8]) -> int32[8]`` calling ``kernel`` labelled as qplugin op ``op`` (so the
    Relax level accepts it and only the TIR level can tell)."""
    func = kernel.with_attr(OP_ATTR, op).with_attr(PARAMS_ATTR, "{}")
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((8,), "int8"))
    with bb.function("core", [x]):
        with bb.dataflow():
            gv = bb.add_func(func, name)
            y = bb.emit(relax.call_tir(gv, [x], relax.TensorType((8,), "int32")))
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


@pytest.mark.parametrize("kernel,construct,dtype", PLANTED, ids=[str(p[0].attrs["global_symbol"]) for p in PLANTED])
def test_planted_float_construct_is_found_in_the_lowered_kernel(kernel, construct, dtype, request):
    name = f"k_{request.node.callspec.id}"
    mod = integer_module(kernel, name)
    rep = check_integer_only(mod, TARGET)
    assert not rep.integer_only and rep.tir_kernels == 1, rep
    assert len(rep.float_ops) == 1 and rep.float_ops[0].startswith(f"kernel {name} [add_requant]: "), rep.float_ops
    assert construct in rep.float_ops[0] and f"({dtype})" in rep.float_ops[0], rep.float_ops
    with pytest.raises(FloatOpError, match=rf"kernel {name} \[add_requant\]: "):
        check_integer_only(mod, TARGET, raise_on_error=True)


def test_clean_integer_kernel_and_listed_llvm_intrinsic_pass():
    for kernel in (clean_int, listed_llvm_int_intrinsic):
        assert scan_kernel(kernel, "k") == [], kernel
    rep = check_integer_only(integer_module(clean_int, "k_clean"), TARGET, raise_on_error=True)
    assert rep.integer_only and rep.tir_kernels == 1 and rep.to_report() == {
        "integer_only": True, "float_ops": 0, "allowed_float_ops": []}
    assert "llvm.x86.avx2.pmadd.wd" in INTEGER_LLVM_INTRINSICS


def test_build_refuses_a_float_kernel_before_compiling():
    """The check runs inside build() on the module handed to tvm.compile."""
    mod = integer_module(extern_expf, "k_expf")
    rep = verify_integer_only(mod)
    with pytest.raises(FloatOpError, match=r"kernel k_expf \[add_requant\]: call call_extern\('expf'\)"):
        build(mod, TARGET, check=lambda lowered: check_lowered_kernels(lowered, rep, kernel_origins(mod)))


def test_allowed_float_op_is_reported_and_makes_integer_only_false():
    mod = integer_module(float32_buffer, "k_f32", op="add_requant")
    rep = verify_integer_only(mod, allow=("add_requant",))
    ex, _ = build(mod, TARGET, check=lambda lowered: check_lowered_kernels(lowered, rep, kernel_origins(mod)))
    assert ex is not None and rep.float_ops == []
    fields = rep.to_report()  # what build_report writes into report.json
    assert fields["integer_only"] is False, fields
    assert fields["float_ops"] == 1, fields
    assert fields["allowed_float_ops"][0].startswith("kernel k_f32 [add_requant]: buffer tmp (float32)"), fields


def test_allowing_another_op_does_not_hide_the_finding():
    mod = integer_module(float32_buffer, "k_f32", op="add_requant")
    with pytest.raises(FloatOpError, match=r"kernel k_f32 \[add_requant\]: buffer tmp \(float32\)"):
        check_integer_only(mod, TARGET, allow=("softmax_int",), raise_on_error=True)


def test_unknown_allow_float_name_is_refused():
    with pytest.raises(QPluginError, match=r"--allow-float nosuchop: unknown op name.*add_requant.*relax\.reshape"):
        verify_integer_only(integer_module(clean_int, "k"), allow=("nosuchop",))


def test_one_home_for_the_integer_relax_ops():
    """The reference interprets exactly the Relax ops the checker lets through."""
    assert set(_LAYOUT_OPS) == set(INTEGER_RELAX_OPS)


@pytest.fixture(scope="module")
def calib_npz(tmp_path_factory) -> Path:
    x_train, *_ = digits_split()
    path = tmp_path_factory.mktemp("io_data") / "calib.npz"
    np.savez(path, input=x_train[:64])
    return path




def test_cli_unknown_allow_float_exits_2_with_one_line(tmp_path, calib_npz):
    r = run_cli("compile", DIGITS, "--calib", calib_npz, "--allow-float", "nosuchop", "-o", tmp_path / "out")
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "nosuchop" in lines[0] and "conv2d_requant" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()


def test_verify_rechecks_the_integer_module_not_the_report(tmp_path, calib_npz):
    from tvm_qplugin.verify import verify_outdir

    x_train, *_ = digits_split()
    out = tmp_path / "digits"
    tq.compile(DIGITS, calib={"input": x_train[:64]}, allow_float=("relax.reshape",)).save(out)
    report = json.loads((out / "report.json").read_text())
    assert report["integer_only"] is True and report["float_ops"] == 0  # a valid name with nothing to allow
    res = verify_outdir(str(out), count=2)
    assert res["integer_only"] is True and res["float_ops"] == 0 and "report_disagrees" not in res, res
    assert "TIR of" in res["integer_only_checked"]
    report.update(integer_only=False, float_ops=3)  # a report that lies, re-sealed (a hand-edited
    (out / "report.json").write_text(json.dumps(report))  # report alone is refused by the manifest)
    from tvm_qplugin.manifest import write_manifest

    write_manifest(out)
    res = verify_outdir(str(out), count=2)
    assert res["integer_only"] is True and res["float_ops"] == 0, res
    assert res["report_disagrees"] == {"integer_only": False, "float_ops": 3}, res
