"""MetaSchedule on a board that is emulated here: build each candidate for the board, count its
instructions under qemu, keep only candidates that are bit-exact (issue 11, deliverable 2).

* :class:`QemuObjectBuilder` compiles a candidate with TVM's LLVM backend for the board's target
  (``-mcpu`` / ``-mattr``; one core: no parallel launch, which would need a TVM runtime) into an
  ELF object (``tvm.tirx.build`` + ``write_to_file``), like the C package's TIR kernels
  (export/tir_kernels.py).
* :class:`QemuRunner` links that object into a small harness -- the workload's inputs as constant
  arrays, the package's TIR shim (export/tir_kernels.py: the candidate's packed entry called with
  DLTensors, TVM's workspace calls served from a static pool) -- cross-built for the board (a
  Cortex-M board: a firmware with export/mcu/'s startup code, linker script and semihosting, the
  output written through a semihosting file), runs it under ``qemu-aarch64 -cpu <board core>`` or
  ``qemu-system-arm -M <machine>`` with the instruction-count plugin (instructions between
  two marks around the call: exact and repeatable, so tuning is noise-free) and compares the output
  with the op's NumPy twin. A candidate that is not bit-exact, faults or hangs (timeout) gets an
  error result -- MetaSchedule then never stores it -- and is counted in ``failures``.
  ``run_secs`` is instructions x 1e-9 (one instruction per nanosecond): MetaSchedule ranks by it.

On a real board the same runner interface applies with the harness run over ssh / serial instead
of qemu (docs/mcu-export.md, "Tuning under qemu"); only the emulated route is built here.
"""
from __future__ import annotations

import tempfile
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder
from tvm.s_tir.meta_schedule.runner import PyRunner, RunnerFuture, RunnerResult

from ..errors import QPluginError
from ..export.c_graph import dt_info
from ..export.harness_mcu import EXT_WEIGHT_SECTION
from .intrin_import import family_tensor_intrin

POOL_BYTES = 1 << 20     # the harness's workspace pool: tuned tiles may hold larger accumulators


def board_target(board) -> tvm.target.Target:
    """The board's TVM target on one core (export/tir_kernels.py's); one line if neither an aarch64
    Linux board nor a Cortex-M board."""
    from ..export.tir_kernels import object_target

    try:
        return object_target(board)
    except QPluginError as e:
        raise QPluginError(f"qemu tuning runner: {e}") from None


@derived_object
class QemuObjectBuilder(PyBuilder):
    """Each candidate as an object file for the board (one folder per artifact)."""

    def __init__(self, board) -> None:
        super().__init__()
        self.target = board_target(board)

    def build(self, build_inputs):
        results = []
        for inp in build_inputs:
            try:
                with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
                    lib = tvm.tirx.build(inp.mod, target=self.target)
                path = Path(tempfile.mkdtemp(prefix="tvm_qplugin_qcand_")) / "kernel.o"
                lib.write_to_file(str(path))
                results.append(BuilderResult(str(path), None))
            except Exception as e:  # noqa: BLE001 - a candidate that does not build is a failed trial
                results.append(BuilderResult(None, f"QemuObjectBuilder: {type(e).__name__}: {e}"))
        return results


def _c_array(name: str, a: np.ndarray, section: str = "") -> str:
    flat = ",".join(str(int(v)) for v in np.asarray(a).reshape(-1).tolist())
    where = f' __attribute__((section("{section}")))' if section else ""
    return (f"static const {dt_info(str(a.dtype))[1]} {name}[{max(a.size, 1)}] __attribute__((aligned(64))){where} "
            f"= {{{flat}}};\n")


def harness_source(inputs: list[np.ndarray], out: np.ndarray, section: str = "") -> str:
    """main(): mark, the candidate's packed ``main`` on the inputs and the output buffer, mark, write
    the output bytes to qout.bin (a semihosting file on Cortex-M). ``section``: where the constant
    inputs go (a Cortex-M board's external flash when its code memory is small)."""
    n = len(inputs) + 1
    decl = "".join(_c_array(f"in{i}", a, section) for i, a in enumerate(inputs))
    decl += f"static {dt_info(str(out.dtype))[1]} out0[{out.size}] __attribute__((aligned(64)));\n"
    ptrs = ", ".join([f"(void *)in{i}" for i in range(len(inputs))] + ["(void *)out0"])
    return ("#include <stdio.h>\n#include \"tir_kernels.h\"\n"
            "int32_t __tvm_ffi_main(void *self, void *args, int32_t n, void *result);\n" + decl
            + "void __attribute__((noinline)) qmodel_profile_mark(int32_t step) { __asm__ volatile(\"\" : : \"r\"(step) : \"memory\"); }\n"
            f"int main(void) {{\n  void *const p[{n}] = {{{ptrs}}};\n  qmodel_profile_mark(0);\n"
            f"  qk_tir_call(__tvm_ffi_main, {n}, p);\n  qmodel_profile_mark(1);\n"
            "  FILE *f = fopen(\"qout.bin\", \"wb\");\n  if (!f || fwrite(out0, 1, sizeof out0, f) != sizeof out0) return 3;\n"
            "  fclose(f);\n  return 0;\n}\n")


@derived_object
class QemuRunner(PyRunner):
    """Count each candidate's instructions under qemu; error result unless bit-exact (module doc).

    ``inputs``: arrays for the workload's parameters but the last; ``expected``: the op's NumPy
    twin on them (the last parameter's value)."""

    def __init__(self, board, inputs: list[np.ndarray], expected: np.ndarray, timeout_s: int = 60) -> None:
        super().__init__()
        board_target(board)
        self.board, self.inputs, self.expected, self.timeout_s = board, inputs, expected, timeout_s
        self.failures: Counter = Counter()
        self.instructions: list[int] = []

    def run(self, runner_inputs):
        futures = []
        for inp in runner_inputs:
            res = self._run_one(Path(str(inp.artifact_path)))
            futures.append(RunnerFuture(lambda: True, lambda res=res: res))
        return futures

    def _fail(self, kind: str, msg: str) -> RunnerResult:
        self.failures[kind] += 1
        return RunnerResult(None, f"QemuRunner: {kind}: {msg}")

    def _run_one(self, obj: Path) -> RunnerResult:
        from ..export.harness_mcu import plugin_path
        from ..export.tir_shim import shim_sources, symbol_address
        from ..export.toolchain import ToolchainError, run_tool, which

        work = obj.parent
        mcu = self.board.family == "cortex-m"
        big = mcu and self.board.ext_flash_bytes and sum(a.nbytes for a in self.inputs) > (self.board.flash_bytes or 0) // 2
        (work / "harness.c").write_text(harness_source(self.inputs, self.expected, EXT_WEIGHT_SECTION if big else ""))
        header, shim = shim_sources([])
        (work / "tir_kernels.h").write_text(header)
        (work / "tir_kernels.c").write_text(shim)
        exe = work / "harness"
        srcs = [f"-I{work}", work / "harness.c", work / "tir_kernels.c", obj]
        pool = POOL_BYTES // 16 if mcu else POOL_BYTES   # Cortex-M: the board's SRAM holds it (64 KB)
        cmd = ([which(self.board.cc), *self.board.cflags, "-O2", f"-DQK_TIR_POOL_BYTES={pool}", *srcs,
                *mcu_link_flags(self.board), "-o", exe] if mcu else
               [which(self.board.cc), *self.board.cflags, "-O2", "-static", f"-DQK_TIR_POOL_BYTES={pool}", *srcs,
                "-o", exe])
        r = run_tool(cmd, what="candidate harness build")
        if r.returncode != 0:
            return self._fail("link", r.stderr[-500:])
        mark = symbol_address(self.board, exe, "qmodel_profile_mark") & ~1   # Thumb: the low bit is the mode
        count = work / "count.txt"
        pargs = f"file={plugin_path()},mark={mark:#x},out={count}"
        cmd = (mcu_qemu_cmd(self.board, exe, pargs) if mcu else
               [which("qemu-aarch64"), "-cpu", self.board.qemu_cpu or "max", "-plugin", pargs, exe])
        try:
            r = run_tool(cmd, cwd=work, timeout=self.timeout_s, what=f"candidate under {Path(cmd[0]).name}")
        except ToolchainError as e:
            return self._fail("timeout", str(e))
        if r.returncode != 0:
            return self._fail("fault", f"exit {r.returncode}")
        got = np.fromfile(work / "qout.bin", dtype=self.expected.dtype)
        if got.size != self.expected.size or not np.array_equal(got.reshape(self.expected.shape), self.expected):
            return self._fail("wrong", "output differs from the NumPy twin")
        marks = [int(ln.split()[1]) for ln in count.read_text().splitlines() if ln.startswith("mark")]
        n = marks[1] - marks[0]
        self.instructions.append(n)
        return RunnerResult([n * 1e-9], None)


def mcu_link_flags(board) -> list:
    """A Cortex-M harness's startup, linker script and semihosting, linked with the emulated
    board's memory (export/harness_mcu.py's layout)."""
    from ..export.harness_mcu import _mcu_board, link_layout
    from ..export.templates import MCU_DIR

    defsyms, _ = link_layout(*_mcu_board(board))
    return [MCU_DIR / "cortexm_startup.c", "-T", MCU_DIR / "cortexm_link.ld", "--specs=rdimon.specs",
            "-ffunction-sections", "-fdata-sections", "-Wl,--gc-sections", *defsyms, *board.ldflags]


def mcu_qemu_cmd(board, elf, plugin_args: str) -> list:
    """qemu-system-arm on the board's emulated twin, with the instruction-count plugin."""
    from ..export.harness_mcu import McuBuild, _mcu_board, _qemu_cmd

    b, emu = _mcu_board(board)
    return _qemu_cmd(McuBuild(b, emu, Path(elf), Path(elf).parent, Path(elf).parent, True), plugin_args)


@contextmanager
def unnamed_log_handlers_set_aside():
    """``ms.tune_tir`` puts the names of its global logger's handlers into a logging config, which
    fails on an unnamed one (seen under pytest, at its second call in a process): such handlers are
    set aside for the call and put back after it."""
    import logging

    log = logging.getLogger("tvm.s_tir.meta_schedule")
    aside = [h for h in log.handlers if h.get_name() is None]
    for h in aside:
        log.removeHandler(h)
    try:
        yield
    finally:
        for h in aside:
            log.addHandler(h)


def tune_dense_qemu(spec, board, work_dir, trials: int = 16, per_iter: int = 8, seed: int = 0) -> dict:
    """Tune one TIR dense kernel (export/tir_kernels.py's :class:`DenseSpec`) for ``board`` under qemu.

    The inputs are random over each dtype's range (requantization parameters in their legal
    range); the expected output is the ``dense_requant`` NumPy twin's. Returns ``{"database",
    "best_instructions", "default_instructions", "measured", "failures", "best_mod"}``.
    """
    from ..export.tir_kernels import _dense_module, _schedule
    from ..ops import OPS

    rng = np.random.default_rng(seed)
    info = np.iinfo(spec.x_dtype)
    x = rng.integers(info.min, int(info.max) + 1, (spec.m, spec.k)).astype(spec.x_dtype)
    x.reshape(-1)[:2] = [info.min, info.max]
    w = rng.integers(-128, 128, (spec.n, spec.k)).astype(np.int8)
    wp = np.zeros((spec.n, spec.kp), np.int8)
    wp[:, :spec.k] = w
    b = rng.integers(-5000, 5000, spec.n).astype(np.int32)
    mu = rng.integers(2**29, 2**31 - 1, spec.n).astype(np.int32)
    sh = rng.integers(36, 42, spec.n).astype(np.int8)
    want = OPS["dense_requant"].reference(x, w, b, mu.astype(np.int64), sh.astype(np.int64), qmin=spec.qmin,
                                          qmax=spec.qmax, out_dtype=spec.out_dtype)
    bias = b.astype(np.int64) + (128 * w.astype(np.int64).sum(axis=1) if spec.flip else 0)
    inputs = [x, wp, bias.astype(np.int32), mu, sh]
    runner = QemuRunner(board, inputs, want)
    builder = QemuObjectBuilder(board)
    target = board_target(board)
    # the default schedule, measured by the same runner: the baseline the tuned kernel must beat
    base = Path(tempfile.mkdtemp(prefix="tvm_qplugin_qbase_"))
    with tvm.transform.PassContext(opt_level=3, config={"tirx.disable_assert": True}):
        tvm.tirx.build(_schedule(_dense_module(spec), spec), target=target).write_to_file(str(base / "kernel.o"))
    (res,) = runner.run([ms.runner.RunnerInput(str(base / "kernel.o"), "cpu", [])])
    default = int(round(float(res.result().run_secs[0]) * 1e9)) if res.result().error_msg is None else None
    with unnamed_log_handlers_set_aside(), family_tensor_intrin(target):   # ARM intrinsics only (intrin_import.py)
        db = ms.tune_tir(_dense_module(spec), target, str(work_dir), max_trials_global=trials,
                         num_trials_per_iter=per_iter, builder=builder, runner=runner, seed=seed)
    sch = ms.tir_integration.compile_tir(db, _dense_module(spec), target)
    best = min(runner.instructions[1:], default=None)
    return {"database": db, "best_instructions": best, "default_instructions": default,
            "measured": len(runner.instructions) - (default is not None), "failures": dict(runner.failures),
            "best_mod": None if sch is None else sch.mod}
