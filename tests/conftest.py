"""Shared fixtures. Tests never skip for a missing tool: `make test` installs everything."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import tvm

#: Test modules that take a minute or more of ``make test`` (2 cores), longest first: seconds per
#: module summed from ``--durations=0`` of one ``make test`` run (stop 22, comments below). ``--dist loadscope``
#: hands each worker one module at a time in collection order, so a long module started last is
#: the whole run's tail: these start first (longest first), the rest follow in xdist's own order
#: (most tests first; the Makefile turns xdist's reordering off for this). Only the order depends
#: on this list, never what runs: a stale entry costs balance, nothing else.
LONG_MODULES = ("test_passes.py", "test_mobilenet_v2.py", "test_x86_kernels.py", "test_cli_errors.py",  # 376-305 s
                "test_coverage_graphs.py", "test_ops_nonlinear.py", "test_face_detection.py", "test_tuning.py",  # 279-163
                "test_export_mobilenet.py", "test_sentence_embedding.py", "test_paper_nonlinears.py",  # 154-123
                "test_graphs.py", "test_transformers.py", "test_silero_vad.py", "test_export_c.py",  # 118-93
                "test_mcu_cli.py", "test_int4_models.py", "test_ops_pad_log_softmax.py", "test_compile_cuda.py",  # 88-81
                "test_tutorials_mcu.py", "test_cli.py", "test_export_tir_kernels.py", "test_tutorials_tune.py",  # 71-57
                "test_kernel_ties.py")  # 52 s (those seconds: a run at load 4-8, about twice CI's)


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


def assert_bit_exact(actual: np.ndarray, expected: np.ndarray, what: str = "") -> None:
    """Exact comparison that names the first mismatching positions (CMSIS-NN test style)."""
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
    bad = np.argwhere(actual != expected)
    if bad.size:
        first = [tuple(int(i) for i in p) for p in bad[:5]]
        detail = ", ".join(f"{p}: got {actual[p]} want {expected[p]}" for p in first)
        raise AssertionError(f"{what}: {len(bad)} of {actual.size} elements differ; first {detail}")
