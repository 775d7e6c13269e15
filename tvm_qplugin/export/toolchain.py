"""The compilers and emulators the harness runs: one way to find and run them, and the two ways
they can fail.

A missing or hung tool is the user's environment: :class:`ToolchainError`, a one-line error with
the package to install (exit 2). Generated C that does not compile, trips a sanitizer, crashes or
misbehaves under the emulator is *our* bug: :class:`GeneratedCodeError`, which the CLI reports as
an internal error (exit 70) with the tool's output under ``-v``.
"""
from __future__ import annotations

import shutil
import subprocess

from ..errors import QPluginError

WARN_FLAGS = ["-std=c99", "-Wall", "-Wextra", "-Werror"]
SANITIZE_FLAGS = ["-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
QEMU_TIMEOUT = 300


class ToolchainError(QPluginError, RuntimeError):
    """A compiler / emulator needed to verify a board is missing or timed out."""


class GeneratedCodeError(RuntimeError):
    """The generated C package (or our harness / plugin C) failed to build or run: a bug in
    tvm-qplugin, not a user mistake (deliberately not a QPluginError)."""


def which(tool: str) -> str:
    """The path of ``tool``; one line naming the Debian package when it is missing."""
    path = shutil.which(tool)
    if path is None:
        hint = {"arm-none-eabi-gcc": "gcc-arm-none-eabi libnewlib-arm-none-eabi",
                "arm-none-eabi-nm": "binutils-arm-none-eabi", "arm-none-eabi-size": "binutils-arm-none-eabi",
                "qemu-system-arm": "qemu-system-arm", "qemu-aarch64": "qemu-user",
                "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu libc6-dev-arm64-cross",
                "aarch64-linux-gnu-nm": "binutils-aarch64-linux-gnu",
                "aarch64-linux-gnu-objdump": "binutils-aarch64-linux-gnu", "clang": "clang"}.get(tool, tool)
        raise ToolchainError(f"{tool} not found on PATH (Debian: apt-get install {hint})")
    return path


def run_tool(cmd, cwd=None, timeout=600, what="command") -> subprocess.CompletedProcess:
    """Run ``cmd`` (no stdin, output captured); a timeout is a :class:`ToolchainError` naming it."""
    try:
        return subprocess.run([str(c) for c in cmd], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as e:
        raise ToolchainError(f"{what} timed out after {timeout} s: {' '.join(map(str, cmd))[:300]}") from e
