"""Shared fixtures. Tests never skip for a missing tool: `make test` installs everything."""
from __future__ import annotations

import numpy as np
import pytest
import tvm


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
