"""Shared fixtures. Tests never skip for a missing tool: `make test` installs everything."""
from __future__ import annotations

import numpy as np
import pytest
import tvm


@pytest.fixture(scope="session")
def host_target() -> tvm.target.Target:
    return tvm.target.Target.from_device(tvm.cpu())


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


# Seconds each heavy module took in `make test` (CI clone, 2 cores; docs/architecture.md "Known
# issues"), the longest first. Under `--dist loadscope --no-loadscope-reorder` (Makefile) xdist hands
# out whole modules in collection order, so the order below is the schedule: the long modules start
# first and the many short ones fill in behind them, and both workers finish together. xdist's own
# reorder (most tests first) would start the hundreds of one-second op tests and leave a two-test
# whole-model module for the end, on one worker while the other idles. Modules not listed keep
# their collection order after these. Re-measure with `make test` (it prints the slowest tests).
MODULE_SECONDS = {
    "test_tuning.py": 120, "test_mobilenet_v2.py": 160, "test_sentence_embedding.py": 165, "test_mcu_cli.py": 110,
    "test_compile_cuda.py": 95, "test_face_detection.py": 110, "test_coverage_graphs.py": 115,
    "test_transformers.py": 100, "test_graphs.py": 80, "test_cli_errors.py": 65, "test_int4_models.py": 55,
    "test_silero_vad.py": 52, "test_export_mobilenet.py": 50, "test_cli.py": 50, "test_fuzz.py": 45,
    "test_tutorials_mcu.py": 45, "test_tutorials_compile.py": 40,
}


def pytest_collection_modifyitems(session, config, items):
    """Longest modules first (stable: a module's own tests keep their order), see MODULE_SECONDS."""
    items.sort(key=lambda item: -MODULE_SECONDS.get(item.path.name, 0))
