"""The installable wheel, as a user gets it: `pip install` of the built wheel into a fresh venv, then
`tvm-qplugin targets` and `tvm-qplugin compile --target x86-host` from a folder outside the repository.

The wheel must carry its data (the board catalogue `targets/*.toml`, `schedules/`, the MCU C sources)
and only the product (no `qplugin_zoo` fixtures, no benchmark helpers). Nothing is downloaded: the
wheel is built without build isolation and installed without its dependencies, which the new venv
sees through a `.pth` line naming this interpreter's site-packages (placed after the venv's own, so
the wheel's `tvm_qplugin` wins over this checkout's editable one; a `.pth` file inside a folder added
by a `.pth` line is not executed, so the editable finder stays out too).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import numpy as np
import pytest

from qplugin_zoo import digits_split
from tvm_qplugin._version import __version__

ROOT = Path(__file__).resolve().parents[1]
BUILD_LITTER = ("build", "dist", "out", ".git", ".venv", "*.egg-info", "__pycache__", ".pytest_cache", ".hypothesis")


def _run(cmd: list, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run ``cmd`` with none of the variables that would point it back at this checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "TVM_QPLUGIN_TARGETS", "TVM_QPLUGIN_SCHEDULES",
                        "TVM_QPLUGIN_NATIVE_LOG")}
    r = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))}: exit {r.returncode}\nstdout: {r.stdout}\nstderr: {r.stderr}"
    return r


def _copy_checkout(dest: Path) -> Path:
    """A copy of the checkout to build from (an in-tree build would leave build/ and *.egg-info
    here, and a stale build/lib would leak deleted modules into the wheel)."""
    shutil.copytree(ROOT, dest, symlinks=True, ignore=shutil.ignore_patterns(*BUILD_LITTER))
    return dest


def _venv_with_our_dependencies(venv: Path) -> Path:
    """A fresh venv without pip whose dependencies are this interpreter's (a ``.pth`` line);
    returns its python."""
    _run([sys.executable, "-m", "venv", "--without-pip", venv], cwd=venv.parent)
    python = venv / "bin" / "python"
    site = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=venv).stdout.strip()
    ours = sysconfig.get_paths()
    (Path(site) / "tvm_qplugin_test_deps.pth").write_text(
        "".join(f"{p}\n" for p in dict.fromkeys([ours["purelib"], ours["platlib"]])))
    return python


def _pip_install(python: Path, *args) -> None:
    _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", "-q", *args],
         cwd=python.parent)


def _board_names() -> list[str]:
    return [tomllib.loads(p.read_text())["name"] for p in sorted((ROOT / "targets").glob("*.toml"))]


def _assert_lists_every_board(venv: Path, cwd: Path) -> None:
    listed = _run([venv / "bin" / "tvm-qplugin", "targets"], cwd=cwd).stdout
    absent = [n for n in _board_names() if not any(line.split()[:1] == [n] for line in listed.splitlines())]
    assert not absent, f"boards missing from `tvm-qplugin targets` of {venv}: {absent}\n{listed}"


def _imported_from(venv: Path, cwd: Path) -> tuple[Path, str]:
    out = _run([venv / "bin" / "python", "-c", "import tvm_qplugin as t; print(t.__file__, t.__version__)"], cwd=cwd)
    file, version = out.stdout.split()
    return Path(file).resolve(), version


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("wheel")
    src = _copy_checkout(base / "src")
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q",
          "-w", base / "dist", src], cwd=base)
    (whl,) = (base / "dist").glob("tvm_qplugin-*.whl")
    return whl


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    """A fresh venv holding the wheel."""
    venv = tmp_path_factory.mktemp("venv") / "v"
    _pip_install(_venv_with_our_dependencies(venv), wheel)
    return venv


def test_wheel_holds_the_product_and_its_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    assert wheel.name.startswith(f"tvm_qplugin-{__version__}-"), wheel.name   # version from tvm_qplugin/_version.py
    boards = sorted(p.name for p in (ROOT / "targets").glob("*.toml"))
    assert boards, "no board files in targets/"
    missing = [b for b in boards if f"tvm_qplugin/_catalog/targets/{b}" not in names]
    assert not missing, f"board files not in the wheel: {missing}"
    assert "tvm_qplugin/_catalog/schedules/README.md" in names
    mcu = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "tvm_qplugin" / "export" / "mcu").rglob("*")
                 if p.is_file() and "__pycache__" not in p.parts)
    assert mcu and not [f for f in mcu if f not in names], f"MCU sources missing: {[f for f in mcu if f not in names]}"
    top = {n.split("/")[0] for n in names}
    assert top == {"tvm_qplugin", f"tvm_qplugin-{__version__}.dist-info"}, f"the wheel holds more than the product: {top}"
    fixtures = [n for n in names if "zoo" in n or "bench" in n]
    assert not fixtures, f"test/benchmark support in the wheel: {fixtures}"


def test_installed_wheel_lists_boards_and_compiles_outside_the_repo(venv, tmp_path):
    work = tmp_path / "user"
    work.mkdir()
    module, version = _imported_from(venv, work)
    assert module.is_relative_to(venv.resolve()), f"tvm_qplugin imported from {module}, not from the wheel"
    assert version == __version__
    assert "x86-host" in _board_names()
    _assert_lists_every_board(venv, work)

    model = shutil.copy(ROOT / "examples" / "digits_cnn.onnx", work / "model.onnx")   # the demo model
    np.savez(work / "calib.npz", input=digits_split()[0][:64])
    _run([venv / "bin" / "tvm-qplugin", "compile", model, "--target", "x86-host", "--calib", "calib.npz", "-o", "out"],
         cwd=work, timeout=600)
    report = json.loads((work / "out" / "report.json").read_text())
    assert report["target"] == "x86-host"
    assert report["toolchain"]["tvm_qplugin"] == __version__
    assert report["bit_exact"] is True


def test_editable_install_finds_the_catalogue_of_its_checkout(tmp_path):
    """`make setup` installs with ``pip install -e``: the catalogue comes from the checkout itself."""
    src = _copy_checkout(tmp_path / "src")
    venv = tmp_path / "v"
    _pip_install(_venv_with_our_dependencies(venv), "--no-build-isolation", "-e", src)
    work = tmp_path / "user"
    work.mkdir()
    probe = ("import json, tvm_qplugin, tvm_qplugin.targets as t; print(json.dumps([tvm_qplugin.__file__, "
             "[str(d) for d in t.target_dirs() + t.schedule_dirs()], sorted(t.boards())]))")
    module, dirs, boards = json.loads(_run([venv / "bin" / "python", "-c", probe], cwd=work).stdout)
    assert Path(module).resolve().is_relative_to(src.resolve()), f"tvm_qplugin imported from {module}, not {src}"
    assert dirs == [str((src / "targets").resolve()), str((src / "schedules").resolve())]
    assert boards == sorted(_board_names())
