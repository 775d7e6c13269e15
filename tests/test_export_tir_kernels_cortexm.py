"""Cortex-M TensorIR kernels (export/tir_kernels_cortexm.py): ``smlad`` (M4) and ``mve`` (M55)
objects from TVM's LLVM backend, bit-exact under qemu-system-arm against the dense_requant NumPy
twin (dtype extremes included), with ``SMLAD`` / ``VMLADAVA`` in their disassembly; and the
Cortex-M kernel choice (export/tir_kernels_cortexm_choice.py) that measures them beside the
hand-written kernels in the whole package (report.json -> layers[].kernel)."""
from __future__ import annotations

import subprocess
from dataclasses import replace

import numpy as np
import pytest
from tvm.s_tir import meta_schedule as ms

from tvm_qplugin.errors import UnsupportedOpError
from tvm_qplugin.export import export_mcu
from tvm_qplugin.export.tir_kernels import DenseSpec, build_object
from tvm_qplugin.ops import OPS
from tvm_qplugin.targets import get_board
from tvm_qplugin.tuning.runner_qemu import QemuRunner

M4, M55 = "qemu-mps2-an386", "qemu-mps3-an547"
QRANGE = {"int8": (-128, 127), "uint8": (0, 255), "int16": (-32768, 32767)}
# (m, k, n, x dtype, out dtype, pointwise conv (channel-major), shift range): a tiled dense with 32-bit
# requantization, a uint8 conv with pixels past the 2-row tile and k not a multiple of 4 or 16, a single
# row (matrix-vector) with int16 outputs and int64 requantization, shifts 31..33 (mve: vqrdmulh and
# vqdmulh + vrshl lanes selected per channel)
CASES = [(4, 64, 16, "int8", "int8", False, (33, 41)), (9, 30, 6, "uint8", "uint8", True, (20, 41)),
         (1, 37, 10, "int8", "int16", False, (25, 32)), (3, 48, 8, "int8", "int8", False, (31, 34))]
MNEMONIC = {"smlad": ("smlad", "armv7e-m"), "mve": ("vmlava.s8", "armv8.1-m.main")}   # objdump's name of VMLADAVA.S8


def _workload(m, k, n, xd, od, nchw, shifts, seed):
    """(spec, inputs, expected) of one kernel: x over its whole range (extremes first), a row of -128
    weights, multipliers in [2^30, 2^31), the twin's output in the kernel's layout."""
    rng = np.random.default_rng(seed)
    info = np.iinfo(xd)
    x = rng.integers(info.min, int(info.max) + 1, (m, k)).astype(xd)
    x.reshape(-1)[:2] = [info.min, info.max]
    w = rng.integers(-128, 128, (n, k)).astype(np.int8)
    w[0] = -128
    kp = (k + 3) // 4 * 4
    wp = np.zeros((n, kp), np.int8)
    wp[:, :k] = w
    b = rng.integers(-5000, 5000, n).astype(np.int32)
    mu = rng.integers(2**30, 2**31 - 1, n).astype(np.int32)
    sh = rng.integers(*shifts, n).astype(np.int8)
    lo, hi = QRANGE[od]
    want = OPS["dense_requant"].reference(x, w, b, mu.astype(np.int64), sh.astype(np.int64), qmin=lo, qmax=hi,
                                          out_dtype=od)
    bias = (b.astype(np.int64) + (128 * w.astype(np.int64).sum(axis=1) if xd == "uint8" else 0)).astype(np.int32)
    sp = DenseSpec("qk_tir_case", m, k, kp, n, xd, od, lo, hi, "default", nchw, bool(sh.min() >= 33),
                   (int(sh.min()), int(sh.max())))
    xs, ys = (np.ascontiguousarray(x.T), np.ascontiguousarray(want.T)) if nchw else (x, want)
    return sp, [xs, wp, bias, mu, sh], ys


@pytest.mark.parametrize("board,schedule", [(M4, "smlad"), (M55, "mve"), (M55, "smlad")])
def test_kernels_are_bit_exact_under_qemu_with_their_instruction(board, schedule, tmp_path):
    b = get_board(board)
    for i, case in enumerate(CASES):
        sp, inputs, want = _workload(*case, seed=i)
        sp = DenseSpec(**{**sp.__dict__, "schedule": schedule})
        (tmp_path / f"c{i}").mkdir()
        (obj,) = build_object([sp], b, tmp_path / f"c{i}" / "k.o")
        mnemonic, arch = MNEMONIC[schedule]
        dis = subprocess.run(["arm-none-eabi-objdump", "-d", "-m", arch, str(obj)], capture_output=True, text=True,
                             check=True).stdout
        assert f"\t{mnemonic}\t" in dis, f"{schedule} on {board}, case {case}: no {mnemonic} in the object"
        runner = QemuRunner(b, inputs, want)
        (fut,) = runner.run([ms.runner.RunnerInput(str(obj), "cpu", [])])   # __tvm_ffi_main: the module's entry
        res = fut.result()
        assert res.error_msg is None, f"{schedule} on {board}, case {case}: {res.error_msg}"
        assert float(res.run_secs[0]) > 0


def test_mve_kernel_is_refused_on_a_core_without_helium(tmp_path):
    sp, _, _ = _workload(*CASES[0], seed=0)
    with pytest.raises(UnsupportedOpError, match="needs a Cortex-M core with MVE"):
        build_object([DenseSpec(**{**sp.__dict__, "schedule": "mve"})], get_board(M4), tmp_path / "k.o")


def one_dense():
    """(module, input) of one int8 dense layer (tests/test_tuning_qemu.py's: one home)."""
    from test_tuning_qemu import one_dense as layer

    return layer()


@pytest.mark.parametrize("board,kinds", [(M4, {"smlad"}), (M55, {"smlad", "mve"})])
def test_export_measures_the_cortexm_candidates_and_keeps_the_fastest(board, kinds, tmp_path, monkeypatch):
    """Every candidate kind measured bit-exact in the whole package (none dropped), the fewest
    instructions chosen and said why; the package with that choice is bit-exact under qemu."""
    monkeypatch.setenv("TVM_QPLUGIN_SCHEDULES", str(tmp_path / "no-db"))   # no tuned record: the built-in kinds
    mod, x = one_dense()
    res = export_mcu(mod, tmp_path / "pkg", get_board(board), samples=[[x]], workdir=tmp_path / "work")
    assert res["bit_exact"], res.get("mismatches")
    choice = res["layers"][0]["kernel_choice"]
    counts = choice["instructions"]
    assert set(counts) == {"handwritten-c", *(f"tensorir-{k}" for k in kinds)}, choice["why"]
    assert choice["dropped"] == 0 and all(counts.values()), choice["why"]
    assert counts[choice["source"]] == min(counts.values()), choice["why"]
    assert "qemu-system-arm" in choice["why"]


def test_a_kind_that_fails_to_build_is_dropped_for_every_layer(tmp_path, monkeypatch):
    """A planted ``smlad`` build failure (as test_export_tir_kernels.py plants one on aarch64): the
    layer keeps the hand-written kernel, the failure named in ``why`` and counted in ``dropped``."""
    from tvm_qplugin.export import tir_kernels

    def planted(sp):
        raise RuntimeError("planted build failure")

    monkeypatch.setattr(tir_kernels, "KINDS", tuple(  # the SMLAD / MVE family's builder fails
        replace(kind, module=planted) if kind is tir_kernels.CORTEXM else kind for kind in tir_kernels.KINDS))
    monkeypatch.setenv("TVM_QPLUGIN_SCHEDULES", str(tmp_path / "no-db"))
    mod, x = one_dense()
    res = export_mcu(mod, tmp_path / "pkg", get_board(M4), samples=[[x]], workdir=tmp_path / "work")
    assert res["bit_exact"], res.get("mismatches")
    choice = res["layers"][0]["kernel_choice"]
    assert choice["source"] == "handwritten-c" and choice["dropped"] == 1, choice
    assert choice["instructions"]["tensorir-smlad"] is None and "planted build failure" in choice["why"], choice
