"""Memory budgets of the C package: does the model fit a board (and the user's ``--budget``)?

:func:`check_budget` is the fast pre-check from the package description alone (no toolchain):
activation arena + a stack allowance against SRAM, weights + code allowance against flash (or
external flash). The authoritative check is the link of the firmware (harness.build_mcu), where the
linker enforces the board's regions; both raise :class:`~tvm_qplugin.errors.MemoryBudgetError`
naming the bytes over and the tensors live at the arena's peak.
"""
from __future__ import annotations

from ..errors import MemoryBudgetError
from ..targets import format_bytes

MODEL_STACK_ALLOWANCE = 2 * 1024     # model_run's stack (measured: < 600 B on the zoo models)
CODE_ALLOWANCE = 24 * 1024           # kernels + model_run code in flash


def _peak(info: dict) -> str:
    live = ", ".join(f"{name} ({size} B)" for size, name in info.get("peak_tensors", [])[:6])
    step = info.get("peak_step")
    layer = next((s["name"] for s in info.get("steps", []) if s["index"] == step), None)
    return f"at the peak (step {step}{', ' + layer if layer else ''}) these tensors are live: {live or 'none'}"


def ram_limit(board=None, ram_budget: int | None = None) -> tuple[int, str] | None:
    """``(bytes, what)`` of the tighter of the board's SRAM and the RAM budget, or None."""
    limit = None
    if board is not None and board.sram_bytes is not None:
        limit = (board.sram_bytes, f"board {board.name} SRAM")
    if ram_budget is not None and (limit is None or ram_budget < limit[0]):
        limit = (int(ram_budget), "the RAM budget")
    return limit


def _patch_note(info: dict) -> str:
    """What patch-based execution could do (write_c_package tried it when the layer-wise arena was over)."""
    p = info.get("patching") or {}
    if p.get("smallest_arena_bytes") is None:
        return "; patch-based execution does not apply to its first layers" if p.get("tried") else ""
    return (f"; even patch-based execution (first {p['layers']} layers in {p['grid'][0]}x{p['grid'][1]} patches) "
            f"needs {p['smallest_arena_bytes']} bytes of arena + {MODEL_STACK_ALLOWANCE} stack: raise the budget to "
            f"at least {format_bytes(p['smallest_arena_bytes'] + MODEL_STACK_ALLOWANCE)} or pick a board with more SRAM")


def check_budget(info: dict, board=None, ram_budget: int | None = None, size_budget: int | None = None) -> dict:
    """Raise MemoryBudgetError if the package cannot fit ``board`` / the budgets; else return the
    figures. ``ram_budget``: bytes of RAM for the model; ``size_budget``: bytes of weights
    (``--budget size=...``)."""
    arena, weights = int(info["arena_bytes"]), int(info["weights_bytes"])
    need_ram = arena + MODEL_STACK_ALLOWANCE
    problems = []
    limits = {}
    ram = ram_limit(board, ram_budget)
    if ram is not None:
        limits["ram"] = ram
    if "ram" in limits and need_ram > limits["ram"][0]:
        cap, what = limits["ram"]
        problems.append(f"activations need {arena} bytes (arena; liveness lower bound "
                        f"{info['liveness_lower_bound_bytes']}) + {MODEL_STACK_ALLOWANCE} stack = {need_ram} bytes, "
                        f"{what} is {format_bytes(cap)}: over by {need_ram - cap} bytes; {_peak(info)}"
                        + _patch_note(info))
    if board is not None:
        flash = board.ext_flash_bytes or board.flash_bytes
        where = "external flash" if board.ext_flash_bytes else "flash"
        if flash is not None and weights + CODE_ALLOWANCE > flash:
            problems.append(f"weights need {weights} bytes + ~{CODE_ALLOWANCE} code, board {board.name} {where} is "
                            f"{format_bytes(flash)}: over by {weights + CODE_ALLOWANCE - flash} bytes")
    if size_budget is not None and weights > size_budget:
        big = sorted(((s.get("weight_bytes", 0), s["name"]) for s in info.get("steps", [])), reverse=True)[:4]
        names = ", ".join(f"{n} ({b} B)" for b, n in big if b)
        problems.append(f"weights are {weights} bytes, the size budget is {size_budget}: over by "
                        f"{weights - size_budget} bytes" + (f"; largest layers: {names}" if names else ""))
    if problems:
        target = f"board {board.name}" if board is not None else "the budget"
        raise MemoryBudgetError(f"model does not fit {target}: " + "; ".join(problems))
    return {"ram_needed_bytes": need_ram, "weights_bytes": weights,
            "ram_limit_bytes": limits.get("ram", (None,))[0]}
