"""``compile --isa``: kernels built for a narrower x86 level than the build machine's (an AVX2 fleet
built on an AVX-512 machine), still bit-exact, with the ISA in report.json; and the per-layer
``gmacs`` / ``fraction_of_peak`` against this CPU's measured int8 peak (peak.py)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tvm
from onnx_builders import OnnxGraph

import tvm_qplugin as tq
from tvm_qplugin.errors import QPluginError
from tvm_qplugin.peak import layer_peak_gmacs
from tvm_qplugin.schedules.intrin_x86 import select_isa
from tvm_qplugin.targets import get_board
from tvm_qplugin.tuning.isa import isa_key, restrict_target

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """One groups-1 3x3 conv (prepacked and tensorized on x86) and a ReLU."""
    d = tmp_path_factory.mktemp("isa")
    g = OnnxGraph((1, 16, 20, 20))
    path = g.save(g.relu(g.conv("x", 32, k=3)), d / "conv.onnx")
    calib = np.random.default_rng(0).normal(size=(4, 16, 20, 20)).astype(np.float32)
    return path, calib


def _host() -> tvm.target.Target:
    return get_board("x86-host").target()


@pytest.mark.parametrize("isa", [None, "avx2"])
def test_compile_for_an_isa_level_is_bit_exact_and_reported(model, isa):
    path, calib = model
    art = tq.compile(path, calib={"x": calib}, isa=isa)
    target = restrict_target(_host(), isa)
    r = art.report
    assert r["bit_exact"] and r["integer_only"]
    assert r["isa"] == isa_key(target) == (isa or isa_key(_host()))
    (conv,) = [layer for layer in r["layers"] if layer["op"] == "conv2d"]
    instruction = select_isa(target, "int8").mnemonic
    if isa_key(target) == "avx2":  # --isa avx2, or an AVX2-only build machine: its weights pass the byte-pair
        # check, so vpmaddubsw instead (schedules/x86_byte_pairs.py)
        assert instruction == "vpmaddwd"
        instruction = "vpmaddubsw (avx2ub)"
        assert "vpmaddubsw: no pair can saturate (checked at compile time" in conv["kernel"]["why"], conv["kernel"]
    assert instruction in conv["kernel"]["why"] and "Conv2DTensorized" in conv["kernel"]["why"], conv["kernel"]


def test_layers_carry_gmacs_and_fraction_of_the_measured_peak(model):
    path, calib = model
    art = tq.compile(path, calib={"x": calib})
    (conv,) = [layer for layer in art.report["layers"] if layer["op"] == "conv2d"]
    assert conv["latency_us"] > 0 and conv["macs"] == 32 * 16 * 9 * 20 * 20
    assert conv["gmacs"] == round(conv["macs"] / conv["latency_us"] / 1e3, 2)
    peak = layer_peak_gmacs(art.build_target, conv["a_bits"])  # memoized: the figure the report used
    assert peak > 10 and conv["fraction_of_peak"] == round(conv["macs"] / conv["latency_us"] / 1e3 / peak, 4)
    assert conv["primitive"] == "int8"


def test_peak_is_none_where_there_is_no_dot_instruction():
    assert layer_peak_gmacs(tvm.target.Target("c"), 8) is None
    assert layer_peak_gmacs(_host(), 4) is None


def test_isa_beyond_the_target_or_on_a_c_package_target_is_one_line_exit_2(model, tmp_path):
    path, calib = model
    with pytest.raises(QPluginError, match="C package"):
        tq.compile(path, target="qemu-mps2-an386", calib={"x": calib}, isa="avx2")
    np.savez(tmp_path / "calib.npz", x=calib)
    r = subprocess.run([sys.executable, "-m", "tvm_qplugin", "compile", str(path), "--calib", str(tmp_path / "calib.npz"),
                        "--isa", "avx9000", "-o", str(tmp_path / "out")], capture_output=True, text=True, cwd=REPO,
                       timeout=300)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and len(lines) == 1 and "--isa 'avx9000': choose one of" in lines[0], r.stderr
    assert not (tmp_path / "out").exists()
