"""The build-system glue of a C package: CMake library, Makefile fragment, Zephyr module.

The files are templates under ``export/mcu/package/`` (no placeholders today: they only name
model.c and qkernels.c), written as they are so a firmware project can use any of the three.
"""
from __future__ import annotations

from .templates import fill, read_template

BUILD_FILES = ("CMakeLists.txt", "model.mk", "zephyr/module.yml", "zephyr/CMakeLists.txt", "zephyr/Kconfig")


def build_system_files() -> dict[str, str]:
    """{package-relative name: text} of the CMake, Make and Zephyr files."""
    return {name: fill(read_template(f"package/{name}.in")) for name in BUILD_FILES}
