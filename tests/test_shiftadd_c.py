"""The C package's shift/add kernels (export/kernels_c_shiftadd.py) against the NumPy twins, bit
for bit, at the dtype extremes: portable C on the host (ASan + UBSan), Cortex-M4 and Cortex-M55
under qemu; and the machine-code proof that their inner loops hold no multiply instruction, which
fails on a function that multiplies. One package, one firmware per board."""
from __future__ import annotations

import subprocess

import numpy as np
import pytest
from conftest import assert_bit_exact
from test_shiftadd import _attention_cases, _module, _shift_cases

from tvm_qplugin.export.c_package import write_c_package
from tvm_qplugin.export.harness import build_host, build_mcu, run_host, run_qemu
from tvm_qplugin.export.kernels_c_shiftadd import multiply_instructions
from tvm_qplugin.reference import ReferenceInterpreter
from tvm_qplugin.targets import get_board

BOARDS = {"cortex-m4": "qemu-mps2-an386", "cortex-m55": "qemu-mps3-an547"}


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    rng = np.random.default_rng(11)
    cases = _shift_cases(rng) + _attention_cases(rng)
    mod = _module(cases)
    inputs = [x for _, xs, _, _ in cases for x in xs]
    want = ReferenceInterpreter(mod).run("main", *inputs)
    work = tmp_path_factory.mktemp("shiftadd_c")
    write_c_package(mod, work / "pkg")
    inputs = [x.view(np.uint8) if x.dtype == bool else x for x in inputs]  # the runner takes bool as uint8
    return work, inputs, want, [f"{op} {[x.dtype for x in xs]}" for op, xs, _, _ in cases]


def _compare(got, want, names):
    assert len(got) == len(want)
    for g, w, name in zip(got, want, names):
        assert_bit_exact(g, w, name)


def test_portable_c_bit_exact_with_sanitizers(package):
    work, inputs, want, names = package
    exe = build_host(work / "pkg", work / "host")
    _compare(run_host(exe, work / "pkg", [inputs], work / "host-run")[0], want, names)


@pytest.mark.parametrize("cpu", sorted(BOARDS))
def test_cortex_m_bit_exact_and_multiply_free(package, cpu):
    work, inputs, want, names = package
    build = build_mcu(work / "pkg", get_board(BOARDS[cpu]), work / f"build-{cpu}")
    _compare(run_qemu(build, [inputs], work / f"run-{cpu}").outputs[0], want, names)
    found = multiply_instructions(build.elf)
    assert {f.rsplit("_", 1)[0] for f in found} >= {"qk_shiftdot_s8", "qk_shiftdot_u8", "qk_shiftdot_s16",
                                                    "qk_addatt_kv", "qk_addatt_row32", "qk_addatt_row64"}, found
    assert not any(found.values()), f"{cpu}: multiplies in the shift/add inner loops: {found}"


def test_multiply_check_finds_a_multiplying_function(tmp_path):
    """A function under a shift/add name that multiplies (an int8 dot product) is caught."""
    src = tmp_path / "bad.c"
    src.write_text("#include <stdint.h>\n"
                   "int32_t qk_shiftdot_s8_s8(const int8_t *x, const int8_t *w, int32_t k) {\n"
                   "  int32_t acc = 0, i;\n  for (i = 0; i < k; i++) acc += x[i] * w[i];\n  return acc;\n}\n")
    obj = tmp_path / "bad.o"
    subprocess.run(["arm-none-eabi-gcc", "-mcpu=cortex-m4", "-mthumb", "-O2", "-c", str(src), "-o", str(obj)],
                   check=True)
    found = multiply_instructions(obj)
    assert found["qk_shiftdot_s8_s8"], found
    assert any(i.startswith(("mla", "smla", "mul")) for i in found["qk_shiftdot_s8_s8"]), found
