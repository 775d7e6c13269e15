"""Which CPU features a tuning database was tuned for, and where the shipped databases live.

A tuned schedule is only as good as the instructions it was measured with: a record tuned with
AVX-512 VNNI may pick tile sizes (or, with tensorizing rules, instructions) that an AVX2-only CPU
runs slowly or not at all. Every database therefore carries an *ISA key* -- the widest int8 dot
product level of the target it was tuned for -- and is only applied to a compile whose target has
the same key (apply.py refuses any other, never silently).

The key is derived from the TVM target itself (its ``mcpu`` / ``mattr``, through LLVM), so an
AVX2 database can be tuned on an AVX-512 machine by turning the wider features off
(:func:`restrict_target`): the compiled kernels then only use AVX2 instructions.
"""
from __future__ import annotations

from pathlib import Path

import tvm

from ..errors import QPluginError

# (key, LLVM features that must all be present), widest first. x86 first, then AArch64, then Cortex-M.
ISA_LEVELS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("avx512vnni", ("avx512vnni", "avx512bw")),
    ("avxvnni", ("avxvnni", "avx2")),
    ("avx2", ("avx2",)),
    ("sse4.2", ("sse4.2",)),
    ("dotprod", ("dotprod", "neon")),
    ("neon", ("neon",)),
    ("mve", ("mve",)),    # Cortex-M: Helium (M55), then the DSP extension's SMLAD (M4 / M7 / M33)
    ("dsp", ("dsp",)),
)
ISA_KEYS = tuple(key for key, _ in ISA_LEVELS)

# What turning an x86 target down to a level means: the LLVM features switched off (disabling
# avx512f disables every AVX-512 extension with it).
_X86_OFF = {
    "avxvnni": ("-avx512f",),
    "avx2": ("-avx512f", "-avxvnni", "-amx-tile"),
    "sse4.2": ("-avx512f", "-avxvnni", "-amx-tile", "-avx", "-avx2", "-fma"),
}


def _has(target: tvm.target.Target, features: tuple[str, ...]) -> bool:
    from tvm.target import codegen

    try:
        return all(bool(codegen.target_has_features(f, target)) for f in features)
    except tvm.TVMError:  # a feature this LLVM does not know for the target's architecture
        return False


def isa_key(target: tvm.target.Target) -> str:
    """The widest int8 level of :data:`ISA_LEVELS` that ``target`` has (``"generic"`` if none)."""
    if target.kind.name != "llvm":
        return target.kind.name
    for key, features in ISA_LEVELS:
        if _has(target, features):
            return key
    return "generic"


def restrict_target(target: tvm.target.Target, isa: str | None) -> tvm.target.Target:
    """``target`` with the features above ``isa`` turned off (same ``mcpu``); None: unchanged.

    Refuses a level the target does not reach (tuning "avx512vnni" on an AVX2 CPU would measure
    nothing real) and levels that cannot be reached by switching features off."""
    if isa is None or isa == isa_key(target):
        return target
    if isa not in ISA_KEYS:
        raise QPluginError(f"--isa {isa!r}: choose one of {', '.join(ISA_KEYS)}")
    order = list(ISA_KEYS)
    have = isa_key(target)
    if have not in order or order.index(isa) < order.index(have) or isa not in _X86_OFF:
        raise QPluginError(f"--isa {isa!r} cannot be reached from this target ({have}): a database can only be tuned "
                           f"for the target's own level or, on x86, a narrower one ({', '.join(_X86_OFF)})")
    config = dict(target.export())
    config = {k: v for k, v in config.items() if k in ("kind", "mtriple", "mcpu", "mattr", "num-cores", "keys")}
    config["mattr"] = [*list(config.get("mattr", [])), *_X86_OFF[isa]]
    restricted = tvm.target.Target(config)
    if isa_key(restricted) != isa:
        raise QPluginError(f"--isa {isa!r}: turning features off gave {isa_key(restricted)!r} for {target}")
    return restricted


def with_num_cores(target: tvm.target.Target) -> tvm.target.Target:
    """``target`` with ``num-cores`` set (MetaSchedule's CPU rules need it; the host's physical cores)."""
    config = dict(target.export())
    if config.get("num-cores") or target.kind.name != "llvm":
        return target
    from tvm.s_tir.meta_schedule.utils import cpu_count

    keep = {k: v for k, v in config.items() if k in ("kind", "mtriple", "mcpu", "mattr", "keys")}
    return tvm.target.Target({**keep, "num-cores": max(1, cpu_count(logical=False))})


def _schedule_roots() -> list[Path]:
    """``$TVM_QPLUGIN_SCHEDULES`` first, then the shipped ``schedules/`` (targets.py: one home)."""
    from ..targets import schedule_dirs

    return schedule_dirs()


def shipped_db_dir(board: str, isa: str) -> Path | None:
    """The shipped database for ``board`` tuned at ``isa`` (``schedules/<board>/<isa>/``), or None."""
    for root in _schedule_roots():
        d = root / board / isa
        if (d / "database_workload.json").is_file():
            return d
    return None


def default_db_dir(board: str, isa: str) -> Path:
    """Where ``tune`` writes when no ``--db`` is given: ``./schedules/<board>/<isa>/`` of the
    working directory (never inside the installed package)."""
    return Path("schedules") / board / isa
