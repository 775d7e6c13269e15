"""Shared fixtures. Tests never skip for a missing tool: `make test` installs everything."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import tvm

#: The 30 longest test modules of ``make test`` (2 cores), longest first: seconds per
#: module summed from ``--durations=0`` of one ``make test`` run (stop 23, after the shipped tuning
#: database was read once per process; comments below). ``--dist loadscope``
#: hands each worker one module at a time in collection order, so a long module started last is
#: the whole run's tail: these start first (longest first), the rest follow in xdist's own order
#: (most tests first; the Makefile turns xdist's reordering off for this). Only the order depends
#: on this list, never what runs: a stale entry costs balance, nothing else.
LONG_MODULES = ("test_x86_kernels.py", "test_mobilenet_v2.py", "test_sentence_embedding.py", "test_cli_errors.py",  # 375-266 s
                "test_mcu_cli.py", "test_face_detection.py", "test_tuning.py", "test_export_mobilenet.py",  # 250-209
                "test_tutorials_tune.py", "test_transformers.py", "test_silero_vad.py", "test_coverage_graphs.py",  # 187-157
                "test_export_c.py", "test_passes.py", "test_cli.py", "test_ops_nonlinear.py",  # 156-131
                "test_export_tir_kernels.py", "test_export_kernels.py", "test_cuda_int16.py", "test_graphs.py",  # 123-100
                "test_compile_cuda.py", "test_int4_models.py", "test_export_patch.py", "test_tutorials_shiftadd.py",  # 89-69
                "test_cuda_mma.py", "test_paper_nonlinears.py", "test_tutorials_mcu.py", "test_x86_matmul.py",  # 67-58
                "test_int4_c.py", "test_cuda_rows.py")  # 52 s (those seconds: a run at load 5-7 at nice 10, ~2.4x CI's)


def pytest_collection_modifyitems(config, items):
    """Longest modules first (:data:`LONG_MODULES`), then by test count; tests keep their order
    within a module (its module-scoped fixtures are built once)."""
    per_module = Counter(item.nodeid.split("::", 1)[0] for item in items)

    def order(item):
        path = item.nodeid.split("::", 1)[0]
        name = path.rsplit("/", 1)[-1]
        rank = LONG_MODULES.index(name) if name in LONG_MODULES else len(LONG_MODULES)
        return rank, -per_module[path], path

    items.sort(key=order)   # stable: the order inside a module is kept


@pytest.fixture(scope="session")
def host_target() -> tvm.target.Target:
    return tvm.target.Target.from_device(tvm.cpu())


@pytest.fixture
def single_torch_thread():
    """mixed/torch_graph.py's :func:`one_torch_thread` around a test (``pytest.mark.usefixtures("single_torch_thread")``)."""
    from tvm_qplugin.mixed.torch_graph import one_torch_thread

    with one_torch_thread():
        yield


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


#: x86 vector features that code built for a target may use, widest first (LLVM's names).
# sse4a: AMD only (a Zen target's code may hold its insertq / extrq, which an Intel CPU cannot run)
_X86_FEATURES = ("avx512f", "avx512bw", "avx512vnni", "avxvnni", "avx2", "sse4a")


def host_runs(target: tvm.target.Target) -> bool:
    """Whether this CPU can execute code built for ``target``: every x86 vector feature the target
    enables is one the host has too.

    The build machines differ from day to day (AVX-512 VNNI on some, AVX2 only on others). The
    kernel tests build for every x86 level on every machine and check the assembly; they *run* a
    level's code (and compare it bit for bit with the NumPy twin) only where the CPU has it --
    running AVX-512 code on an AVX2 CPU dies of SIGILL. The AVX2 code runs everywhere."""
    from tvm_qplugin.tuning.isa import _has

    if target.kind.name != "llvm":
        return False
    host = _host_target()
    return all(_has(host, (f,)) for f in _X86_FEATURES if _has(target, (f,)))


def _host_target() -> tvm.target.Target:
    return tvm.target.Target.from_device(tvm.cpu())


def run_if_host_can(executable, target: tvm.target.Target, *inputs: np.ndarray):
    """``executable``'s ``main`` on ``inputs`` (a numpy array, or a list for a tuple output) when this
    CPU runs ``target``'s code (:func:`host_runs`); None when it cannot."""
    from tvm import relax

    if not host_runs(target):
        return None
    out = relax.VirtualMachine(executable, tvm.cpu())["main"](*[tvm.runtime.tensor(x) for x in inputs])
    return out.numpy() if hasattr(out, "numpy") else [o.numpy() for o in out]


def assert_bit_exact(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """Exact comparison that names the first mismatching positions (CMSIS-NN test style)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    bad = np.argwhere(actual != expected)
    if bad.size:
        first = [tuple(int(i) for i in p) for p in bad[:5]]
        detail = ", ".join(f"{p}: got {actual[p]} want {expected[p]}" for p in first)
        raise AssertionError(f"{what}: {len(bad)} of {actual.size} elements differ; first {detail}")
