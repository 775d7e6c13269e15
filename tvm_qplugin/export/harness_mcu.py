"""Cortex-M boards: cross-build a C package into firmware, run it under qemu-system-arm, count.

``arm-none-eabi-gcc`` with the board's ``-mcpu/-mfpu/-mfloat-abi``, the startup file and linker
script of export/mcu/, the *real* board's SRAM/flash sizes enforced at link time (``--defsym``;
an overflow raises :class:`~tvm_qplugin.errors.MemoryBudgetError` naming the bytes over), run
under ``qemu-system-arm -M <emulated board>``; inputs and outputs travel through semihosting files.

Cost under emulation: a profiling build (``-DQMODEL_PROFILE``) calls ``qmodel_profile_mark(step)``
before every step; the qemu plugin of export/mcu/qemu_insncount.c records the executed-instruction
total at each mark (instructions per step and per inference) and counts instructions inside every
``qk_*`` kernel function (lo/hi from ``nm -S``). QEMU is not a cycle model: these are instruction
counts, exact and repeatable.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import MemoryBudgetError, QPluginError
from ..targets import Board, format_bytes
from .runner import package_info, read_outputs, runner_source, write_inputs
from .templates import MCU_DIR
from .toolchain import QEMU_TIMEOUT, WARN_FLAGS, GeneratedCodeError, run_tool, which

STACK_RESERVE = 16 * 1024     # linker script defaults (cortexm_link.ld)
HEAP_RESERVE = 16 * 1024      # newlib stdio buffers of the runner (semihosting files)
EXT_WEIGHT_SECTION = ".extflash.weights"


@dataclass
class McuBuild:
    board: Board
    emulator: Board
    elf: Path
    pkg: Path
    build_dir: Path
    profile: bool
    sections: dict = field(default_factory=dict)
    memory: dict = field(default_factory=dict)


def _mcu_board(b: Board) -> tuple[Board, Board]:
    if not b.is_mcu:
        raise QPluginError(f"board {b.name} is not a Cortex-M board (family {b.family})")
    emu = b.emulator()
    if not emu.qemu_machine:
        raise QPluginError(f"board {b.name}: no emulated board with a qemu machine verifies it")
    if emu.cpu != b.cpu:
        raise QPluginError(f"board {b.name} ({b.cpu}) cannot be verified on {emu.name} ({emu.cpu})")
    return b, emu


def link_layout(board: Board, emu: Board) -> tuple[list[str], dict]:
    """``--defsym`` flags enforcing the real board's memory, and what they mean."""
    layout = {"ram": board.sram_bytes or emu.sram_bytes}
    if board.flash_bytes:
        layout["flash"] = board.flash_bytes
    else:  # no internal flash (i.MX RT): code executes from external flash; emulate it at 0
        layout["flash"] = emu.flash_bytes
        layout["code_in_ext_flash"] = True
    syms = [f"RAM_SIZE={layout['ram']}", f"FLASH_SIZE={layout['flash']}", f"STACK_SIZE={STACK_RESERVE}",
            f"HEAP_SIZE={HEAP_RESERVE}"]
    if board.ext_flash_bytes:
        if emu.ext_flash_bytes < board.ext_flash_bytes or emu.ext_flash_origin != board.ext_flash_origin:
            raise QPluginError(f"{emu.name} cannot hold {board.name}'s external flash")
        layout["ext_flash"] = board.ext_flash_bytes
        syms += [f"EXTFLASH_ORIGIN={board.ext_flash_origin:#x}", f"EXTFLASH_SIZE={board.ext_flash_bytes}"]
    return [f"-Wl,--defsym={s}" for s in syms], layout


_OVERFLOW = re.compile(r"region [`']?(\w+)'? overflowed by (\d+) bytes")


def build_mcu(pkg, board, build_dir=None, profile: bool = False, opt: str = "-O2", weights_in_ext_flash=None,
              extra_cflags=()) -> McuBuild:
    """Cross-compile package + runner + startup for ``board``; the link enforces its memory."""
    pkg = Path(pkg)
    board, emu = _mcu_board(board)
    info = package_info(pkg)
    build_dir = Path(build_dir or tempfile.mkdtemp(prefix=f"qmodel-{board.name}-"))
    build_dir.mkdir(parents=True, exist_ok=True)
    (build_dir / "runner.c").write_text(runner_source(info))
    cc = which(board.cc or "arm-none-eabi-gcc")
    defsyms, layout = link_layout(board, emu)
    if weights_in_ext_flash is None:
        # real boards with external (XIP) flash keep their weights there; emulated boards only
        # when the weights would crowd their code memory
        weights_in_ext_flash = bool(board.ext_flash_bytes) and (
            not board.emulated or info["weights_bytes"] > (layout["flash"] or 0) // 2)
    defs = []
    if weights_in_ext_flash:
        defs.append(f'-DQMODEL_WEIGHT_SECTION="{EXT_WEIGHT_SECTION}"')
    if profile:
        defs.append("-DQMODEL_PROFILE")
    elf = build_dir / ("qmodel_prof.elf" if profile else "qmodel.elf")
    cmd = [cc, *board.cflags, *WARN_FLAGS, opt, "-g", "-ffunction-sections", "-fdata-sections", *defs,
           *extra_cflags, f"-I{pkg}", pkg / "model.c", pkg / "qkernels.c", build_dir / "runner.c",
           *([pkg / "tir_kernels.c", *(pkg / o for o in info["tir_objects"])] if info.get("tir_objects") else []),
           MCU_DIR / "cortexm_startup.c", "-T", MCU_DIR / "cortexm_link.ld", "--specs=rdimon.specs",
           "-Wl,--gc-sections", *defsyms, *board.ldflags, "-o", elf]
    r = run_tool(cmd, what=f"{board.name} build")
    if r.returncode != 0:
        over = _OVERFLOW.findall(r.stderr)
        if over:
            raise MemoryBudgetError(_budget_message(board, layout, info, over))
        raise GeneratedCodeError(f"{cc} failed to build the C package for {board.name}:\n{r.stderr[-4000:]}")
    b = McuBuild(board, emu, elf, pkg, build_dir, profile)
    b.sections = section_sizes(elf)
    b.memory = _footprint(b.sections, layout)
    if layout.get("code_in_ext_flash") and board.ext_flash_bytes:
        need = b.memory["flash_bytes"] + b.memory["ext_flash_bytes"]
        if need > board.ext_flash_bytes:
            raise MemoryBudgetError(_budget_message(board, layout, info, [("EXTFLASH", need - board.ext_flash_bytes)]))
    return b


def _budget_message(board: Board, layout: dict, info: dict, over) -> str:
    parts = []
    for region, n in over:
        region = region.upper()
        cap = {"RAM": layout.get("ram"), "FLASH": layout.get("flash"), "EXTFLASH": layout.get("ext_flash")}.get(region)
        what = {"RAM": "SRAM", "FLASH": "flash", "EXTFLASH": "external flash"}.get(region, region)
        parts.append(f"{what} overflowed by {int(n)} bytes" + (f" (board has {format_bytes(cap)})" if cap else ""))
    peak = ", ".join(f"{name} {size} B" for size, name in info.get("peak_tensors", [])[:6])
    return (f"model does not fit board {board.name}: {'; '.join(parts)}. Activation arena {info['arena_bytes']} "
            f"bytes (liveness lower bound {info['liveness_lower_bound_bytes']}), live at the peak (step "
            f"{info.get('peak_step')}): {peak or 'none'}; weights {info['weights_bytes']} bytes; runtime reserves "
            f"{STACK_RESERVE + HEAP_RESERVE} bytes of stack+heap. Use a board with more memory or a smaller model.")


def section_sizes(elf) -> dict[str, int]:
    r = run_tool([which("arm-none-eabi-size"), "-A", elf], what="arm-none-eabi-size")
    sizes = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and parts[0].startswith(".") and parts[1].isdigit():
            sizes[parts[0]] = int(parts[1])
    return sizes


def _footprint(sec: dict, layout: dict) -> dict:
    flash = sec.get(".text", 0) + sec.get(".ARM.exidx", 0) + sec.get(".data", 0)
    return {"flash_bytes": flash, "ext_flash_bytes": sec.get(".extflash", 0),
            "ram_bytes": sec.get(".data", 0) + sec.get(".bss", 0) + sec.get(".heap", 0) + sec.get(".stack", 0),
            "static_ram_bytes": sec.get(".data", 0) + sec.get(".bss", 0),
            "ram_limit": layout.get("ram"), "flash_limit": layout.get("flash"),
            "ext_flash_limit": layout.get("ext_flash")}


def symbols(elf, nm: str = "arm-none-eabi-nm") -> list[tuple[str, int, int, str]]:
    """(name, address, size, type) of sized symbols (``nm -S``; aarch64 builds pass their binutils' nm)."""
    r = run_tool([which(nm), "-S", "--defined-only", elf], what=nm)
    out = []
    for line in r.stdout.splitlines():
        p = line.split()
        if len(p) == 4:
            out.append((p[3], int(p[0], 16), int(p[1], 16), p[2]))
    return out


@dataclass
class McuRun:
    outputs: list[list[np.ndarray]]
    stack_bytes: int
    stdout: str = ""


def _qemu_cmd(build: McuBuild, plugin_args: str | None = None) -> list[str]:
    cmd = [which("qemu-system-arm"), "-M", build.emulator.qemu_machine, "-display", "none", "-monitor", "none",
           "-serial", "none", "-semihosting-config", "enable=on,target=native"]
    if plugin_args:
        cmd += ["-plugin", plugin_args]
    return cmd + ["-kernel", str(build.elf)]


def run_qemu(build: McuBuild, samples, workdir=None, timeout: int = QEMU_TIMEOUT) -> McuRun:
    info = package_info(build.pkg)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="qmodel-qemu-"))
    workdir.mkdir(parents=True, exist_ok=True)
    write_inputs(workdir / "qin.bin", info, samples)
    r = run_tool(_qemu_cmd(build), cwd=workdir, timeout=timeout, what=f"qemu {build.emulator.qemu_machine}")
    if r.returncode != 0:
        raise GeneratedCodeError(f"firmware for {build.board.name} failed under qemu -M {build.emulator.qemu_machine} "
                             f"(exit {r.returncode}; 250 = CPU fault):\n{(r.stdout + r.stderr)[-3000:]}")
    outs = read_outputs(workdir / "qout.bin", info, len(samples))
    stats = dict(line.split() for line in (workdir / "qstats.txt").read_text().splitlines() if line.strip())
    return McuRun(outs, int(stats.get("stack", 0)), r.stdout)


# ----------------------------------------------------------------------------------------------
# instruction counting (qemu TCG plugin)
# ----------------------------------------------------------------------------------------------

def plugin_path() -> Path:
    """Build (once, cached by source hash) the instruction-count plugin; return the .so path."""
    src = MCU_DIR / "qemu_insncount.c"
    digest = hashlib.sha256(src.read_bytes()).hexdigest()[:16]
    cache = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "tvm_qplugin" / "qemu-plugin"
    so = cache / f"libinsncount-{digest}.so"
    if so.exists():
        return so
    cache.mkdir(parents=True, exist_ok=True)
    tmp = cache / f".{so.name}.{os.getpid()}"
    r = run_tool([which("gcc"), "-shared", "-fPIC", "-O2", "-fvisibility=hidden", src, "-o", tmp], what="plugin build")
    if r.returncode != 0:
        raise GeneratedCodeError(f"cannot build the qemu plugin:\n{r.stderr[-2000:]}")
    os.replace(tmp, so)
    return so


def count_instructions(build: McuBuild, sample, workdir=None, timeout: int = QEMU_TIMEOUT) -> dict:
    """Instructions per inference, per step (layer) and per ``qk_*`` kernel function, one sample."""
    if not build.profile:
        raise ValueError("count_instructions needs a profiling build (build_mcu(..., profile=True))")
    info = package_info(build.pkg)
    workdir = Path(workdir or tempfile.mkdtemp(prefix="qmodel-count-"))
    workdir.mkdir(parents=True, exist_ok=True)
    write_inputs(workdir / "qin.bin", info, [sample])
    funcs, pargs = profile_plugin_args(symbols(build.elf), workdir)
    r = run_tool(_qemu_cmd(build, pargs), cwd=workdir, timeout=timeout, what="qemu (instruction count)")
    if r.returncode != 0:
        raise GeneratedCodeError(f"profiling run failed under qemu (exit {r.returncode}):\n{(r.stdout + r.stderr)[-3000:]}")
    return dict(board=build.board.name, emulator=build.emulator.qemu_machine,
                **profile_counts(workdir / "counts.txt", info, funcs))


def profile_plugin_args(syms, workdir: Path) -> tuple[list, str]:
    """``([(qk_* name, lo, size)], -plugin argument)`` for a profiling build's symbols
    (:func:`symbols`): the plugin records the total at every ``qmodel_profile_mark`` and counts the
    instructions inside each ``qk_*`` function; it writes ``workdir/counts.txt``."""
    mark = next((a for n, a, s, t in syms if n == "qmodel_profile_mark"), None)
    if mark is None:
        raise GeneratedCodeError("qmodel_profile_mark not found in the profiling build")
    funcs = sorted({(n, a & ~1, s) for n, a, s, t in syms if t in "tT" and n.startswith("qk_") and s > 0})
    (workdir / "ranges.txt").write_text("".join(f"{a:#x} {a + s:#x}\n" for _, a, s in funcs))
    return funcs, (f"file={plugin_path()},mark={mark & ~1:#x},ranges={workdir / 'ranges.txt'},"
                   f"out={workdir / 'counts.txt'}")


def profile_counts(out: Path, info: dict, funcs: list) -> dict:
    """The plugin's counts file of one profiled inference -> instructions per inference, per step
    (between consecutive marks), per layer (steps with MACs) and per ``qk_*`` function."""
    marks, ranges, total = [], {}, 0
    for line in out.read_text().splitlines():
        p = line.split()
        if p[0] == "mark":
            marks.append(int(p[1]))
        elif p[0] == "range":
            ranges[int(p[1])] = int(p[2])
        elif p[0] == "insns_total":
            total = int(p[1])
    nsteps = len(info["steps"])
    if len(marks) != nsteps + 1:
        raise GeneratedCodeError(f"expected {nsteps + 1} profile marks, got {len(marks)}")
    steps = []
    for st, a, b in zip(info["steps"], marks[:-1], marks[1:]):
        d = {"index": st["index"], "name": st["name"], "op": st["op"], "c_func": st["c_func"], "macs": st["macs"],
             "instructions": b - a}
        if st["macs"]:
            d["instructions_per_mac"] = round((b - a) / st["macs"], 4)
        steps.append(d)
    macs = sum(s["macs"] for s in steps)
    per_inf = marks[-1] - marks[0]
    return {"instructions_per_inference": per_inf,
            "macs": macs, "instructions_per_mac": round(per_inf / macs, 4) if macs else None,
            "program_instructions": total, "steps": steps,
            "layers": [s for s in steps if s["macs"]],
            "functions": {n: ranges.get(i, 0) for i, (n, _, _) in enumerate(funcs) if ranges.get(i, 0)}}
