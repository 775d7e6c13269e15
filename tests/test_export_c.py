"""The MCU C package of the digits CNN (issue 4): written from the integer module that
``tvm_qplugin.compile`` builds, it compiles warning-free with gcc, clang and arm-none-eabi-gcc,
and on the host (ASan + UBSan) and under qemu-system-arm (Cortex-M4, M7, M55, each real board's
memory enforced at link time) it equals the NumPy reference bit for bit on real digits.

No test skips for a missing tool: `make test` installs the cross compilers and qemu, and under
CI (CI=true) a missing toolchain is a failure.
"""
from __future__ import annotations

import dataclasses
import json
import re
import shutil
import subprocess

import pytest

import tvm_qplugin as tq
from tvm_qplugin.errors import MemoryBudgetError
from tvm_qplugin.export import check_budget, export_mcu, harness, verify_c_package, write_c_package
from tvm_qplugin.reference import ReferenceInterpreter
from tvm_qplugin.targets import get_board
from qplugin_zoo import digits_split

from conftest import assert_bit_exact

N_INPUTS = 12
TOOLS = ["gcc", "clang", "arm-none-eabi-gcc", "arm-none-eabi-nm", "arm-none-eabi-size", "qemu-system-arm", "cmake",
         "make"]
WARN = ["-std=c99", "-Wall", "-Wextra", "-Werror"]


def test_toolchain_present():
    """The toolchains these tests need (fails, never skips: under CI a missing tool is an error)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    assert not missing, f"missing tools {missing} (make test installs them; CI={__import__('os').environ.get('CI')})"


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    xtr, _, xte, _ = digits_split()
    art = tq.compile("examples/digits_cnn.onnx", calib={"input": xtr[:128]}, int_io=True, bit_exact_inputs=1,
                     timing_runs=1)
    samples = [art.quantize_inputs({"input": xte[i:i + 1]}) for i in range(N_INPUTS)]
    ref = ReferenceInterpreter(art.integer_mod)
    want = [ref.run("main", *s) for s in samples]
    pkg = tmp_path_factory.mktemp("digits") / "c"
    info = write_c_package(art, pkg, board="stm32f746-disco")
    return art, pkg, info, samples, want


def _check(got, want, where):
    assert len(got) == len(want) >= 8
    for i, (g, w) in enumerate(zip(got, want)):
        for a, b in zip(g, w):
            assert_bit_exact(a, b, f"{where}, input {i}")


def _strip_comments(c: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", c, flags=re.S)


def test_package_layout(digits):
    art, pkg, info, samples, want = digits
    for f in ["model.h", "model.c", "qkernels.c", "qkernels.h", "qk_internal.h", "CMakeLists.txt", "model.mk",
              "zephyr/module.yml", "zephyr/CMakeLists.txt", "zephyr/Kconfig", "qmodel.json"]:
        assert (pkg / f).is_file(), f
    h = (pkg / "model.h").read_text()
    # the real integer C types of the core's input / output
    assert "int model_run(const uint8_t *input, int32_t *output);" in h
    assert re.search(r"#define MODEL_INPUT0_SHAPE \{1, 1, 8, 8\}", h)
    assert re.search(r"#define MODEL_INPUT_SCALE MODEL_INPUT0_SCALE", h)
    assert float(re.search(r"#define MODEL_INPUT0_SCALE (\S+)", h).group(1)) == pytest.approx(art.inputs[0].qtype.scale)
    assert f"#define MODEL_ARENA_BYTES {info['arena_bytes']}" in h
    c = (pkg / "model.c").read_text()
    assert len(re.findall(r"static uint8_t qm_arena\[", c)) == 1, "one static arena"
    assert "static const int8_t qm_w" in c
    for f in ["model.c", "qkernels.c", "qk_internal.h", "qkernels.h"]:
        code = _strip_comments((pkg / f).read_text())
        for banned in (r"\bmalloc\b", r"\bcalloc\b", r"\bfree\s*\(", r"\bfloat\b", r"\bdouble\b", r"printf"):
            assert not re.search(banned, code), f"{f} uses {banned}"
    assert "add_library(qmodel STATIC" in (pkg / "CMakeLists.txt").read_text()
    mk = (pkg / "model.mk").read_text()
    assert "QMODEL_SRCS" in mk and "QMODEL_INC" in mk
    assert "cmake: zephyr" in (pkg / "zephyr/module.yml").read_text()
    assert json.loads((pkg / "qmodel.json").read_text())["arena_bytes"] == info["arena_bytes"]


@pytest.mark.parametrize("cc,flags", [
    ("gcc", ["-O2"]), ("clang", ["-O2"]), ("gcc", ["-O0", "-Wpedantic"]),
    ("arm-none-eabi-gcc", ["-O2", "-mthumb", "-mcpu=cortex-m4", "-mfpu=fpv4-sp-d16", "-mfloat-abi=hard"]),
    ("arm-none-eabi-gcc", ["-O2", "-mthumb", "-mcpu=cortex-m7", "-mfpu=fpv5-d16", "-mfloat-abi=hard"]),
    ("arm-none-eabi-gcc", ["-O2", "-mthumb", "-mcpu=cortex-m55", "-mfloat-abi=hard"]),
    ("arm-none-eabi-gcc", ["-Os", "-mthumb", "-mcpu=cortex-m0plus", "-mfloat-abi=soft"]),
], ids=["gcc", "clang", "gcc-O0-pedantic", "arm-m4", "arm-m7", "arm-m55", "arm-m0plus"])
def test_warning_free(digits, tmp_path, cc, flags):
    _, pkg, _, _, _ = digits
    for src in ("model.c", "qkernels.c"):
        r = subprocess.run([cc, *WARN, *flags, "-c", str(pkg / src), "-o", str(tmp_path / (src + ".o"))],
                           capture_output=True, text=True)
        assert r.returncode == 0 and not r.stderr.strip(), f"{cc} {flags} {src}:\n{r.stderr}"


def test_cmake_and_make_fragment(digits, tmp_path):
    _, pkg, _, _, _ = digits
    r = subprocess.run(["cmake", "-S", str(pkg), "-B", str(tmp_path / "b"), "-DCMAKE_C_FLAGS=-Wall -Wextra -Werror"],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    r = subprocess.run(["cmake", "--build", str(tmp_path / "b")], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr
    assert list((tmp_path / "b").glob("libqmodel.a"))
    (tmp_path / "Makefile").write_text(
        f"include {pkg}/model.mk\nOBJS := $(notdir $(QMODEL_SRCS:.c=.o))\n"
        "all: $(OBJS)\n%.o: $(QMODEL_DIR)/%.c\n\t$(CC) -Wall -Wextra -Werror $(QMODEL_CFLAGS) "
        "$(addprefix -I,$(QMODEL_INC)) -c $< -o $@\n")
    r = subprocess.run(["make", "-C", str(tmp_path)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_host_asan_ubsan_bit_exact(digits, tmp_path):
    _, pkg, _, samples, want = digits
    exe = harness.build_host(pkg, tmp_path, cc="gcc", sanitize=True)
    _check(harness.run_host(exe, pkg, samples, tmp_path / "run"), want, "host gcc ASan/UBSan")


@pytest.mark.parametrize("board,core", [("nrf52840", "cortex-m4"), ("stm32f746-disco", "cortex-m7"),
                                        ("qemu-mps3-an547", "cortex-m55"), ("imxrt1060-evk", "cortex-m7")])
def test_qemu_bit_exact(digits, tmp_path, board, core):
    _, pkg, info, samples, want = digits
    b = get_board(board)
    assert b.cpu == core
    build = harness.build_mcu(pkg, b, tmp_path / "build")
    run = harness.run_qemu(build, samples, tmp_path / "run")
    _check(run.outputs, want, f"{board} under qemu -M {b.emulator().qemu_machine}")
    mem = build.memory
    assert mem["ram_limit"] == b.sram_bytes          # the real board's SRAM was the link's RAM region
    assert 0 < run.stack_bytes < 4096
    assert mem["static_ram_bytes"] >= info["arena_bytes"]
    if b.ext_flash_bytes and not b.emulated:          # weights went to the external-flash section
        assert mem["ext_flash_bytes"] >= info["weights_bytes"]
    print(f"\n{board}: flash {mem['flash_bytes']} B, ext flash {mem['ext_flash_bytes']} B, RAM {mem['ram_bytes']} B "
          f"(static {mem['static_ram_bytes']}), arena {info['arena_bytes']} B, stack {run.stack_bytes} B")


def test_arena_within_10_percent_of_liveness_bound(digits):
    _, _, info, _, _ = digits
    assert info["arena_bytes"] <= 1.1 * info["liveness_lower_bound_bytes"], info
    assert info["liveness_lower_bound_bytes"] <= info["tensor_liveness_bytes"]
    print(f"\ndigits: arena {info['arena_bytes']} B, liveness lower bound {info['liveness_lower_bound_bytes']} B")


def test_budget_overflow_fails_the_link_naming_the_bytes(digits, tmp_path):
    _, pkg, info, _, _ = digits
    tiny = dataclasses.replace(get_board("nrf52840"), name="nrf52840-tiny", sram_bytes=24 * 1024)
    with pytest.raises(MemoryBudgetError, match=r"SRAM overflowed by \d+ bytes") as e:
        harness.build_mcu(pkg, tiny, tmp_path / "b1")
    assert "nrf52840-tiny" in str(e.value) and "arena" in str(e.value)
    small_flash = dataclasses.replace(get_board("nrf52840"), name="nrf52840-small", flash_bytes=16 * 1024)
    with pytest.raises(MemoryBudgetError, match=r"flash overflowed by \d+ bytes"):
        harness.build_mcu(pkg, small_flash, tmp_path / "b2")


def test_budget_precheck_names_tensors(digits):
    _, _, info, _, _ = digits
    check_budget(info, get_board("nrf52840"))
    tiny = dataclasses.replace(get_board("nrf52840"), name="tiny", sram_bytes=1024)
    with pytest.raises(MemoryBudgetError, match=r"over by \d+ bytes.*tensors are live: lv"):
        check_budget(info, tiny)
    with pytest.raises(MemoryBudgetError, match="size budget"):
        check_budget(info, None, size_budget=1000)


def test_instruction_counts_per_layer(digits, tmp_path):
    art, pkg, info, samples, want = digits
    res = export_mcu(art, tmp_path / "c", "qemu-mps2-an386", samples=samples[:8], workdir=tmp_path / "w")
    assert res["bit_exact"] and res["bit_exact_inputs"] == 8
    mem = res["memory"]
    for k in ("peak_arena_bytes", "liveness_lower_bound_bytes", "flash_bytes", "ram_bytes", "stack_bytes"):
        assert mem[k] > 0, k
    convs = [layer for layer in res["layers"] if layer["op"] in ("conv2d_requant", "dense_requant")]
    assert convs and all(layer["instructions"] > 0 and layer["instructions_per_mac"] > 0 for layer in convs)
    assert res["instructions_per_inference"] >= sum(layer["instructions"] for layer in convs)
    print(f"\ndigits on Cortex-M4: {res['instructions_per_inference']} instructions/inference, "
          f"{res['instructions_per_mac']:.2f}/MAC; " +
          ", ".join(f"{layer['name']} {layer['instructions_per_mac']:.2f}" for layer in convs))


def test_verify_reports_mismatch(digits, tmp_path):
    """A wrong expectation is reported, not hidden."""
    _, pkg, _, samples, want = digits
    bad = [[w.copy() for w in ws] for ws in want[:8]]
    bad[3][0].reshape(-1)[0] += 1
    v = verify_c_package(pkg, "host", samples[:8], expected=bad, count=False, workdir=tmp_path)
    assert not v["bit_exact"] and "sample 3" in v["mismatches"][0]
    assert verify_c_package(pkg, "host", samples[:8], expected=want[:8], count=False, workdir=tmp_path / "2")["bit_exact"]
