"""The board catalogue: one TOML file per board in ``targets/`` (DESIGN.md), parsed into a frozen
:class:`Board`. Users add a board by dropping a file into that directory or into
``$TVM_QPLUGIN_TARGETS``."""
from __future__ import annotations

import os
import platform
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tvm

from .errors import TargetError


def target_dirs() -> list[Path]:
    dirs = []
    if os.environ.get("TVM_QPLUGIN_TARGETS"):
        dirs.append(Path(os.environ["TVM_QPLUGIN_TARGETS"]))
    dirs.append(Path(__file__).resolve().parent.parent / "targets")
    return [d for d in dirs if d.is_dir()]


@dataclass(frozen=True)
class Board:
    name: str
    description: str
    family: str
    os: str
    runner: str
    tvm_target: dict = field(default_factory=dict)
    detect_host: bool = False
    features: tuple[str, ...] = ()
    path: str = ""

    def target(self) -> tvm.target.Target:
        if self.detect_host:
            return tvm.target.Target.from_device(tvm.cpu())
        return tvm.target.Target(dict(self.tvm_target))

    @property
    def runs_here(self) -> bool:
        return self.runner == "native" and platform.machine() in ("x86_64", "AMD64")

    def isa_features(self) -> list[str]:
        """ISA features relevant to int8 kernels (detected for the host board)."""
        if not self.detect_host:
            return list(self.features)
        flags: set[str] = set()
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
        except OSError:
            pass
        wanted = ["sse4_2", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "amx_int8"]
        return [f for f in wanted if f in flags]


def _parse(path: Path) -> Board:
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, OSError) as e:
        raise TargetError(f"board file {str(path)!r} is not valid TOML: {e}") from None
    missing = [k for k in ("name", "family", "runner") if k not in data]
    if missing:
        raise TargetError(f"board file {str(path)!r} lacks field(s) {missing}")
    return Board(name=data["name"], description=data.get("description", ""), family=data["family"],
                 os=data.get("os", "none"), runner=data["runner"], tvm_target=data.get("tvm_target", {}),
                 detect_host=bool(data.get("detect_host", False)), features=tuple(data.get("features", ())),
                 path=str(path))


def boards() -> dict[str, Board]:
    found: dict[str, Board] = {}
    for d in target_dirs():
        for p in sorted(d.glob("*.toml")):
            b = _parse(p)
            found.setdefault(b.name, b)
    return found


def get_board(name: str) -> Board:
    catalogue = boards()
    if name not in catalogue:
        raise TargetError(f"unknown target board {name!r}; known boards: {', '.join(sorted(catalogue)) or 'none'} "
                          "(see `tvm-qplugin targets`)")
    return catalogue[name]
