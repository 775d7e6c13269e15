"""The board catalogue: one TOML file per board in ``targets/`` (DESIGN.md), parsed into a frozen
:class:`Board`. Users add a board by dropping a file into that directory or into
``$TVM_QPLUGIN_TARGETS``; its tuned database goes into ``schedules/<board>/`` or
``$TVM_QPLUGIN_SCHEDULES/<board>/``. Both folders ship inside the wheel (tvm_qplugin/_catalog).

A board file holds (only ``name``, ``family`` and ``runner`` are required)::

    name = "stm32f746-disco"
    description = "..."
    family = "cortex-m"            # x86 | aarch64 | cortex-m | cuda
    os = "none"                    # none (bare metal) | linux
    runner = "qemu-system-arm"     # how it runs on this machine: native | qemu-aarch64 | qemu-system-arm | cuda
    cpu = "cortex-m7"
    arch = "armv7e-m"
    features = ["dsp", "fpv5-sp-d16"]
    emulated = false               # true: the board *is* an emulator machine (qemu-*)
    verified_by = "qemu-mps2-an500"   # real boards: the emulated board (same cpu) that verifies them
    rpc_key = ""                   # RPC tracker key for real Linux/GPU boards
    [tvm_target]                   # tvm.target.Target(dict)
    kind = "llvm"
    [toolchain]
    cc = "arm-none-eabi-gcc"
    cflags = ["-mcpu=cortex-m7", "-mthumb", "-mfpu=fpv5-sp-d16", "-mfloat-abi=hard"]
    ldflags = []
    [memory]                       # sizes: integers (bytes) or strings "320K", "1M", "8MB"
    sram_bytes = "320K"
    flash_bytes = "1M"
    ext_flash_bytes = 0            # external (QSPI/FlexSPI) flash for weights
    ext_flash_origin = 0x60000000
    dram_bytes = "4GB"             # Linux boards / GPUs: main (device) memory
    [qemu]
    machine = "mps2-an500"         # qemu-system-arm -M (emulated Cortex-M boards)
    cpu = "cortex-a72"             # qemu-aarch64 -cpu (emulated Linux boards)
"""
from __future__ import annotations

import functools
import os
import platform
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

import tvm

from ._catalog import shipped_dir
from .errors import TargetError

RUNNERS = ("native", "qemu-aarch64", "qemu-system-arm", "cuda")
FAMILIES = ("x86", "aarch64", "cortex-m", "cuda")


def _search_path(env_var: str, kind: str) -> list[Path]:
    """The user's folder named by ``$env_var`` (searched first: it adds and overrides), then the
    folder shipped with the package; only those that exist."""
    dirs = [Path(os.environ[env_var])] if os.environ.get(env_var) else []
    dirs.append(shipped_dir(kind))
    return [d for d in dirs if d.is_dir()]


def target_dirs() -> list[Path]:
    """Where board files are looked for: ``$TVM_QPLUGIN_TARGETS``, then the shipped ``targets/``."""
    return _search_path("TVM_QPLUGIN_TARGETS", "targets")


def schedule_dirs() -> list[Path]:
    """Where tuned databases are looked for: ``$TVM_QPLUGIN_SCHEDULES``, then the shipped
    ``schedules/`` (one ``<board>/`` folder each, see schedules/README.md)."""
    return _search_path("TVM_QPLUGIN_SCHEDULES", "schedules")


def tuning_db_dir(board: str) -> Path | None:
    """The MetaSchedule JSON database folder for ``board`` (the first ``<dir>/<board>/`` of
    :func:`schedule_dirs`), or None when no database is shipped for it."""
    for d in schedule_dirs():
        if (d / board).is_dir():
            return d / board
    return None


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
    # --- hardware ---
    cpu: str = ""
    arch: str = ""
    # --- toolchain (cross compiler for MCU / Linux boards) ---
    cc: str = ""
    cflags: tuple[str, ...] = ()
    ldflags: tuple[str, ...] = ()
    # --- memory (bytes; None = not limited / not applicable) ---
    sram_bytes: int | None = None
    flash_bytes: int | None = None
    ext_flash_bytes: int = 0
    ext_flash_origin: int = 0x60000000
    dram_bytes: int | None = None
    # --- emulation ---
    emulated: bool = False
    verified_by: str = ""
    qemu_machine: str = ""
    qemu_cpu: str = ""
    rpc_key: str = ""

    def target(self) -> tvm.target.Target:
        if self.detect_host:
            return tvm.target.Target.from_device(tvm.cpu())
        return tvm.target.Target(dict(self.tvm_target))

    @property
    def runs_here(self) -> bool:
        return self.runner == "native" and platform.machine() in ("x86_64", "AMD64")

    @property
    def is_mcu(self) -> bool:
        """Bare-metal microcontroller: the C package is its deployable artifact."""
        return self.family == "cortex-m"

    @property
    def mve(self) -> bool:
        return "mve" in self.features

    def emulator(self) -> "Board":
        """The emulated board that verifies this one (itself when it is emulated)."""
        if self.emulated or not self.verified_by:
            return self
        return get_board(self.verified_by)

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

    def memory_summary(self) -> str:
        parts = []
        if self.sram_bytes is not None:
            parts.append(f"SRAM {format_bytes(self.sram_bytes)}")
        if self.flash_bytes is not None:
            parts.append(f"flash {format_bytes(self.flash_bytes)}")
        if self.ext_flash_bytes:
            parts.append(f"ext flash {format_bytes(self.ext_flash_bytes)}")
        if self.dram_bytes is not None:
            parts.append(f"DRAM {format_bytes(self.dram_bytes)}")
        return ", ".join(parts)


_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "KIB": 1024, "M": 1024**2, "MB": 1024**2, "MIB": 1024**2,
          "G": 1024**3, "GB": 1024**3, "GIB": 1024**3}


def parse_size(value, what: str = "size") -> int:
    """``4096``, ``"320K"``, ``"1M"``, ``"8 MB"`` -> bytes (binary units)."""
    if isinstance(value, bool):
        raise TargetError(f"{what}: expected a byte count, got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise TargetError(f"{what}: negative size {value}")
        return value
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", str(value))
    if not m or m.group(2).upper() not in _UNITS:
        raise TargetError(f"{what}: cannot read size {value!r} (use bytes or 320K / 1M / 8MB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def format_bytes(n: int) -> str:
    if n >= 1024**3 and n % (1024**3) == 0:
        return f"{n // 1024**3} GB"
    if n >= 1024**2 and n % (1024**2) == 0:
        return f"{n // 1024**2} MB"
    if n >= 1024 and n % 1024 == 0:
        return f"{n // 1024} KB"
    return f"{n} B"


def _parse(path: Path) -> Board:
    try:
        data = tomllib.loads(path.read_text())
    except (tomllib.TOMLDecodeError, OSError) as e:
        raise TargetError(f"board file {str(path)!r} is not valid TOML: {e}") from None
    missing = [k for k in ("name", "family", "runner") if k not in data]
    if missing:
        raise TargetError(f"board file {str(path)!r} lacks field(s) {missing}")
    if data["runner"] not in RUNNERS:
        raise TargetError(f"board file {str(path)!r}: runner {data['runner']!r} is not one of {', '.join(RUNNERS)}")
    tc = data.get("toolchain", {})
    mem = data.get("memory", {})
    qemu = data.get("qemu", {})

    def size(key):
        return None if key not in mem else parse_size(mem[key], f"board file {str(path)!r}: memory.{key}")

    try:
        return Board(name=data["name"], description=data.get("description", ""), family=data["family"],
                     os=data.get("os", "none"), runner=data["runner"], tvm_target=data.get("tvm_target", {}),
                     detect_host=bool(data.get("detect_host", False)), features=tuple(data.get("features", ())),
                     path=str(path), cpu=str(data.get("cpu", "")), arch=str(data.get("arch", "")),
                     cc=str(tc.get("cc", "")), cflags=tuple(str(f) for f in tc.get("cflags", ())),
                     ldflags=tuple(str(f) for f in tc.get("ldflags", ())),
                     sram_bytes=size("sram_bytes"), flash_bytes=size("flash_bytes"),
                     ext_flash_bytes=size("ext_flash_bytes") or 0,
                     ext_flash_origin=int(mem.get("ext_flash_origin", 0x60000000)), dram_bytes=size("dram_bytes"),
                     emulated=bool(data.get("emulated", False)), verified_by=str(data.get("verified_by", "")),
                     qemu_machine=str(qemu.get("machine", "")), qemu_cpu=str(qemu.get("cpu", "")),
                     rpc_key=str(data.get("rpc_key", "")))
    except (TypeError, ValueError) as e:
        raise TargetError(f"board file {str(path)!r}: {e}") from None


def boards() -> dict[str, Board]:
    """The catalogue, first directory winning on a name clash. Parsed once per state of the board
    files (their paths and modification times), not once per call."""
    files = tuple((str(p), p.stat().st_mtime_ns) for d in target_dirs() for p in sorted(d.glob("*.toml")))
    return dict(_catalogue(files))


@functools.lru_cache(maxsize=4)
def _catalogue(files: tuple[tuple[str, int], ...]) -> tuple[tuple[str, Board], ...]:
    found: dict[str, Board] = {}
    for path, _ in files:
        b = _parse(Path(path))
        found.setdefault(b.name, b)
    return tuple(found.items())


def get_board(name: str) -> Board:
    catalogue = boards()
    if name not in catalogue:
        raise TargetError(f"unknown target board {name!r}; known boards: {', '.join(sorted(catalogue)) or 'none'} "
                          "(see `tvm-qplugin targets`)")
    return catalogue[name]


def resolve_board(board: "Board | str") -> Board:
    """A :class:`Board` from a board or its name: for the public entry points (``compile``,
    ``export_mcu``, ``verify_c_package`` ...), which resolve once and pass the Board down."""
    return board if isinstance(board, Board) else get_board(board)
