"""tutorials/: the ONNX -> CMake firmware walk-through works as written (prepare.py, cmake with
the arm-none-eabi toolchain file, the firmware under qemu prints the reference's class)."""
from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _cmd(log: str, prefix: str) -> list[str]:
    line = next(ln for ln in log.splitlines() if ln.strip().startswith(prefix))
    return shlex.split(line)


def test_tutorial_cmake_firmware_runs_under_qemu(tmp_path):
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, str(REPO / "tutorials/mcu_firmware/prepare.py"), "--board", "nrf52840",
                        "--out", str(out)], capture_output=True, text=True, cwd=REPO)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (out / "c" / "model.h").is_file() and (out / "sample_input.h").is_file()
    for prefix in ("cmake -S", "cmake --build"):
        b = subprocess.run(_cmd(r.stdout, prefix), capture_output=True, text=True, cwd=REPO)
        assert b.returncode == 0, b.stdout[-3000:] + b.stderr[-3000:]
    assert "RAM:" in b.stdout and "256 KB" in b.stdout          # the board's SRAM was the link region
    q = subprocess.run(_cmd(r.stdout, "qemu-system-arm"), capture_output=True, text=True, timeout=60,
                       stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert q.returncode == 0, q.stdout + q.stderr
    m = re.search(r"class (\d+) \(expected (\d+)\)", q.stdout)
    assert m and m.group(1) == m.group(2), q.stdout
