"""``compile --target nvidia-*`` end to end through the CLI: the integer graph verified on the host,
its CUDA build (dp4a kernels, integer-only and GPU-verifier checks, nvcc PTX) saved in OUT/cuda,
and a report that says what ran where. Without a GPU the device run is reported as not run (never
as passed); with one, the CUDA build must be bit-exact with the NumPy reference."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import tvm

from cli_run import ROOT, assert_user_error, ok, run_cli
from tutorial_blocks import REPO, run_python_blocks, run_readme
from qplugin_zoo import digits_split
from tvm_qplugin.build_cuda import split_ptx

DIGITS = ROOT / "examples" / "digits_cnn.onnx"
GPU = tvm.cuda().exist


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    x_train, _, x_test, y_test = digits_split()
    d = tmp_path_factory.mktemp("cuda_cli")
    np.savez(d / "calib.npz", input=x_train[:64])
    np.savez(d / "eval.npz", input=x_test[:32], labels=y_test[:32])
    return d


CUDA_TUTORIAL = REPO / "tutorials" / "cuda_compile" / "README.md"


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """The module's one CUDA compile: tutorials/cuda_compile's own commands, run as written
    (tests/tutorial_blocks.py), so the walk-through and the checks below share it."""
    workdir = tmp_path_factory.mktemp("cuda_tutorial")
    stdout = ok(run_readme(CUDA_TUTORIAL, workdir))
    out = workdir / "out-cuda"
    return stdout, out, json.loads((out / "report.json").read_text()), workdir


def test_cuda_tutorial_prints_what_it_promises(compiled):
    stdout, out, rep, workdir = compiled
    assert "dp4a" in (out / "cuda" / "kernels.ptx").read_text(), "the tutorial promises dp4a in the PTX"
    printed = run_python_blocks(CUDA_TUTORIAL, workdir).splitlines()
    assert printed[0] == f"sm_75 {rep['cuda']['kernels']} {rep['cuda']['dp4a_kernels']}", printed
    assert printed[1] == str([layer["kernel"]["source"] for layer in rep["layers"]]), printed


def test_cuda_compile_saves_the_gpu_library_and_its_dp4a_ptx(compiled):
    _, out, rep, _ = compiled
    assert {p.name for p in (out / "cuda").iterdir()} == {"model.so", "kernels.cu", "kernels.ptx", "check.npz"}
    cuda = rep["cuda"]
    assert cuda["board"] == "nvidia-t4" and cuda["arch"] == "sm_75"
    entries = split_ptx((out / "cuda" / "kernels.ptx").read_text())
    assert cuda["kernels"] == len({name.split("_kernel")[0] for name in entries}) > 0
    assert cuda["dp4a_kernels"], "no digits kernel got the dp4a schedule"
    for kernel in cuda["dp4a_kernels"]:
        body = "\n".join(b for name, b in entries.items() if name.startswith(f"{kernel}_kernel"))
        assert "dp4a" in body, f"{kernel}: the saved PTX has no dp4a"
    assert "__dp4a" in (out / "cuda" / "kernels.cu").read_text()


def test_cuda_report_names_each_layers_kernel_and_says_what_ran(compiled):
    stdout, _, rep, _ = compiled
    assert rep["integer_only"] and rep["bit_exact"], "the host build of the integer graph is not bit-exact"
    kernels = [layer["kernel"]["source"] for layer in rep["layers"]]
    assert set(kernels) <= {"cuda-dp4a", "cuda-default"} and "cuda-dp4a" in kernels, kernels
    assert "CUDA         sm_75" in stdout
    if GPU:
        assert rep["cuda"]["bit_exact"] is True and rep["cuda"]["bit_exact_inputs"] >= 1
        assert rep["latency_ms"]["median"] > 0
    else:  # nothing ran on a GPU: the report must not claim it did
        assert rep["cuda"]["bit_exact"] is None and rep["cuda"]["device"] is None
        assert "no CUDA GPU" in rep["cuda"]["why"] and rep["latency_ms"] is None
        assert "not run (no CUDA GPU" in stdout


def test_cuda_check_bundle_holds_real_samples_and_the_reference_outputs(compiled):
    """OUT/cuda/check.npz is what the GPU machine compares against: its outputs must be the NumPy
    reference's for its inputs, which the host build reproduces bit for bit."""
    import tvm_qplugin as tq
    from tvm_qplugin.bitexact import first_difference
    from tvm_qplugin.cuda_device_check import load_check_bundle

    _, out, rep, _ = compiled
    function, samples = load_check_bundle(out / "cuda" / "check.npz")
    art = tq.load(out)
    assert function == art.integer_function and samples
    assert sum(len(inputs[0]) for inputs, _ in samples) >= rep["bit_exact_inputs"] > 0
    for inputs, want in samples:
        assert [a.dtype for a in inputs] == [np.dtype(s.qtype.dtype) for s in art.inputs]
        for got, expected in zip(art.run_integer(inputs), want):
            assert first_difference(got, expected) is None


def test_device_check_runs_the_bundle_on_the_gpu_or_says_why_not(compiled, capsys):
    from tvm_qplugin.cuda_device_check import RESULT, main

    _, out, _, _ = compiled
    code = main([str(out / "cuda"), "--runs", "3"])
    err = capsys.readouterr().err.strip()
    if GPU:
        assert code == 0, err
        res = json.loads((out / "cuda" / RESULT).read_text())
        assert res["bit_exact"] and res["latency_ms"]["median"] > 0
    else:
        assert code == 2 and err.count("\n") == 0 and "no CUDA device" in err, err  # no driver or no GPU
    assert main([str(out)]) == 2  # the artifact root, not its cuda/ directory: no bundle there
    assert "check.npz not found" in capsys.readouterr().err


def test_cuda_target_refuses_x86_only_options_before_any_work(data, tmp_path):
    for option in (["--isa", "avx2"], ["--tuning-db", tmp_path]):
        r = run_cli("compile", DIGITS, "--target", "nvidia-a100", "--calib", data / "calib.npz", *option,
                    "-o", tmp_path / "out")
        assert_user_error(r, "nvidia-a100", option[0])
        assert not (tmp_path / "out").exists()


def test_cuda_target_without_nvcc_is_a_one_line_error(data, tmp_path):
    nvcc = shutil.which("nvcc")
    assert nvcc, "nvcc is part of the build image (CUDA toolkit): CUDA targets need it"
    path = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                           if not (p and os.path.exists(os.path.join(p, "nvcc"))))
    r = run_cli("compile", DIGITS, "--target", "nvidia-h100", "--calib", data / "calib.npz", "-o", tmp_path / "out",
                env={"PATH": path})
    assert_user_error(r, "nvcc", "CUDA toolkit")
    assert not (tmp_path / "out").exists()


def test_runtime_only_load_gets_the_build_machines_ptx_for_its_kernels(compiled):
    """A runtime-only TVM compiles a CUDA library's kernels through ``tvm_callback_cuda_compile``
    when it loads it; provide_ptx answers with the PTX compile saved beside the library (what let
    the H200 run load OUT/cuda with no TVM compiler there), and refuses a source it has no PTX for."""
    import tvm_ffi

    from tvm_qplugin import cuda_device_check as cdc

    _, out, _, _ = compiled
    source, ptx = (out / "cuda" / "kernels.cu").read_text(), (out / "cuda" / "kernels.ptx").read_text()
    before = tvm.get_global_func("tvm_callback_cuda_compile", allow_missing=True)
    try:
        cdc.provide_ptx(source, ptx)
        callback = tvm.get_global_func("tvm_callback_cuda_compile")
        assert bytes(callback(source)) == ptx.encode() and cdc.KERNELS_FROM["build-machine PTX"] >= 1
        assert ".target sm_75" in ptx
    finally:
        cdc._PTX_FOR_SOURCE.clear()
        if before is not None:
            tvm_ffi.register_global_func("tvm_callback_cuda_compile", before, override=True)
