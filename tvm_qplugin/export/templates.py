"""The C and build-system text of the export lives in files under export/mcu/, not in Python.

* ``mcu/package/`` mirrors a C package: ``model.c.in``, ``model.h.in``, ``CMakeLists.txt.in``,
  ``model.mk.in``, ``zephyr/*.in`` (the ``.in`` is dropped when written);
* ``mcu/qkernels.c.in`` / ``qkernels.h.in`` / ``qk_internal.h``: the integer kernels (:mod:`.qkernels`);
* ``mcu/runner.c.in``: the harness's runner (:mod:`.runner`);
* startup, linker script and the qemu plugin source, used as they are (:func:`copy_mcu_file`).

Placeholders are ``@NAME@`` (upper case): CMake and Make use ``$``, so ``string.Template`` would
need every ``$`` doubled. :func:`fill` substitutes in one pass (a value is never rescanned) and
refuses a placeholder without a value or a value without a placeholder, so a template and its
caller cannot drift apart silently.
"""
from __future__ import annotations

import re
import shutil
from pathlib import Path

MCU_DIR = Path(__file__).resolve().parent / "mcu"
PACKAGE_TEMPLATES = MCU_DIR / "package"
_PLACEHOLDER = re.compile(r"@([A-Z][A-Z0-9_]*)@")


def read_template(name: str) -> str:
    """The text of ``export/mcu/<name>``."""
    return (MCU_DIR / name).read_text()


def fill(text: str, **values) -> str:
    """``text`` with every ``@NAME@`` replaced by ``str(values[NAME])``; both sides must match."""
    wanted = set(_PLACEHOLDER.findall(text))
    missing, unused = wanted - set(values), set(values) - wanted
    if missing or unused:
        raise KeyError(f"template placeholders without a value: {sorted(missing)}; values without a placeholder: "
                       f"{sorted(unused)}")
    return _PLACEHOLDER.sub(lambda m: str(values[m.group(1)]), text)


def copy_mcu_file(name: str, dest: Path) -> Path:
    """Copy a data file of export/mcu (startup, linker script, plugin source) to ``dest``."""
    dest = Path(dest)
    shutil.copyfile(MCU_DIR / name, dest)
    return dest
