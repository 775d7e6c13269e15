"""The board catalogue (targets/*.toml): every file parses, names are unique, every real
microcontroller names an emulated board with the same core, and TVM accepts every target."""
from __future__ import annotations

import tomllib
from dataclasses import replace
from pathlib import Path

import pytest

from tvm_qplugin.errors import TargetError
from tvm_qplugin.targets import RUNNERS, _parse, boards, get_board, parse_size

TARGETS = Path(__file__).resolve().parent.parent / "targets"
FILES = sorted(TARGETS.glob("*.toml"))

# the boards issue 4 lists
REQUIRED = ["x86-host", "rpi4", "rpi5", "jetson-orin", "nvidia-t4", "nvidia-a100", "nvidia-h100",
            "stm32f746-disco", "imxrt1060-evk", "nrf52840", "qemu-aarch64", "qemu-mps2-an386",
            "qemu-mps2-an500", "qemu-mps3-an547"]


@pytest.mark.parametrize("path", FILES, ids=[p.stem for p in FILES])
def test_every_board_file_parses(path):
    b = _parse(path)
    assert b.name == path.stem, "a board file is named after its board"
    assert b.runner in RUNNERS
    assert b.description
    t = b.target()  # TVM accepts the target
    assert t.kind.name in ("llvm", "c", "cuda")


def test_names_unique_and_catalogue_complete():
    names = [tomllib.loads(p.read_text())["name"] for p in FILES]
    assert len(names) == len(set(names)), names
    missing = sorted(set(REQUIRED) - set(boards()))
    assert not missing, f"boards missing from targets/: {missing}"


def test_real_mcu_boards_are_verified_by_an_emulated_board_with_the_same_core():
    cat = boards()
    mcus = [b for b in cat.values() if b.is_mcu]
    assert {b.name for b in mcus} >= {"stm32f746-disco", "imxrt1060-evk", "nrf52840", "qemu-mps2-an386",
                                      "qemu-mps2-an500", "qemu-mps3-an547"}
    for b in mcus:
        assert b.cpu.startswith("cortex-m"), b.name
        assert b.cc == "arm-none-eabi-gcc" and f"-mcpu={b.cpu}" in b.cflags, b.name
        assert b.sram_bytes and (b.flash_bytes is not None), b.name
        if b.emulated:
            assert b.qemu_machine, f"{b.name}: emulated Cortex-M board without a qemu machine"
            assert not b.verified_by
            continue
        assert b.verified_by in cat, f"{b.name} names unknown emulated board {b.verified_by!r}"
        emu = cat[b.verified_by]
        assert emu.emulated and emu.runner == "qemu-system-arm" and emu.qemu_machine
        assert emu.cpu == b.cpu, f"{b.name} ({b.cpu}) verified on {emu.name} ({emu.cpu})"
        assert b.emulator() is not None and b.emulator().name == emu.name
        # the emulated machine must be able to hold what the real board enforces
        assert emu.sram_bytes >= b.sram_bytes, b.name
        assert emu.ext_flash_bytes >= b.ext_flash_bytes, b.name


def test_issue_memory_figures():
    assert get_board("stm32f746-disco").sram_bytes == 320 * 1024
    assert get_board("stm32f746-disco").flash_bytes == 1024 * 1024
    imx = get_board("imxrt1060-evk")
    assert imx.sram_bytes == 1024 * 1024 and imx.ext_flash_bytes == 8 * 1024 * 1024
    nrf = get_board("nrf52840")
    assert (nrf.sram_bytes, nrf.flash_bytes) == (256 * 1024, 1024 * 1024)
    assert get_board("qemu-mps3-an547").mve and not get_board("qemu-mps2-an386").mve


def test_linux_and_gpu_boards():
    for name in ("rpi4", "rpi5"):
        b = get_board(name)
        assert b.family == "aarch64" and b.os == "linux" and b.runner == "qemu-aarch64"
        assert b.qemu_cpu == b.cpu and b.verified_by == "qemu-aarch64"
        assert b.target().attrs["mtriple"] == "aarch64-linux-gnu"
    assert "dotprod" in get_board("rpi5").features and "dotprod" not in get_board("rpi4").features
    for name, sm in (("jetson-orin", "sm_87"), ("nvidia-t4", "sm_75"), ("nvidia-a100", "sm_80"),
                     ("nvidia-h100", "sm_90")):
        b = get_board(name)
        assert b.runner == "cuda" and not b.runs_here
        assert str(b.target().attrs["arch"]) == sm
    assert get_board("jetson-orin").target().host.attrs["mtriple"] == "aarch64-linux-gnu"


def test_host_board_unchanged():
    b = get_board("x86-host")
    assert b.detect_host and b.runner == "native" and b.family == "x86"
    flags = next(set(ln.split(":", 1)[1].split()) for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("flags"))
    features = b.isa_features()   # detected: a subset of what this CPU reports, each once
    assert features and set(features) <= flags and len(set(features)) == len(features), (features, flags)
    # a board that does not detect its host reports its declared features as they are
    assert replace(b, detect_host=False, features=("neon", "dotprod")).isa_features() == ["neon", "dotprod"]


def test_parse_size():
    assert parse_size(4096) == 4096
    assert parse_size("320K") == 320 * 1024
    assert parse_size("1M") == parse_size("1 MB") == 1 << 20
    with pytest.raises(TargetError):
        parse_size("lots")


def test_bad_board_files(tmp_path):
    p = tmp_path / "x.toml"
    p.write_text('name = "x"\nfamily = "cortex-m"\nrunner = "teleport"\n')
    with pytest.raises(TargetError, match="runner"):
        _parse(p)
    p.write_text('name = "x"\nfamily = "cortex-m"\nrunner = "qemu-system-arm"\n[memory]\nsram_bytes = "much"\n')
    with pytest.raises(TargetError, match="sram_bytes"):
        _parse(p)
    p.write_text('name = "x"\n')
    with pytest.raises(TargetError, match="lacks"):
        _parse(p)


def test_user_board_directory(tmp_path, monkeypatch):
    (tmp_path / "myboard.toml").write_text(
        'name = "myboard"\nfamily = "cortex-m"\nrunner = "qemu-system-arm"\ncpu = "cortex-m4"\n'
        'verified_by = "qemu-mps2-an386"\n[memory]\nsram_bytes = "64K"\nflash_bytes = "256K"\n')
    monkeypatch.setenv("TVM_QPLUGIN_TARGETS", str(tmp_path))
    b = get_board("myboard")
    assert b.sram_bytes == 64 * 1024 and b.emulator().name == "qemu-mps2-an386"
