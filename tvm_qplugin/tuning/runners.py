"""Where candidates are built and timed: built here, run here or on the boards of an RPC tracker.

* :class:`InProcessBuilder` compiles each candidate in this process. MetaSchedule's
  ``LocalBuilder`` starts a fresh worker pool per batch whose default build function imports
  ``tvm.s_tir.tensor_intrin`` (over a minute on a busy 2-core machine, TVM_NOTES.md: every
  candidate then times out); our kernels build in about a second, and a build that raises is
  reported as that candidate's failure, like LocalBuilder does.
* Running stays in MetaSchedule's runners, which isolate a crashing candidate in a worker:
  ``LocalRunner`` on this machine, ``RPCRunner`` for ``--rpc-tracker HOST:PORT --rpc-key KEY``
  (TVM's own tracker and servers: ``python -m tvm.exec.rpc_tracker`` / ``rpc_server``).
* tracker.py asks the tracker, within seconds, whether anything serves KEY.
* Boards emulated here (aarch64 Linux under qemu-aarch64): runner_qemu.py's ``QemuObjectBuilder`` /
  ``QemuRunner`` (instruction counts under the qemu plugin, every candidate checked bit-exact).
"""
from __future__ import annotations

import os
import tempfile
from typing import Callable

import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.builder import BuilderResult, PyBuilder


@derived_object
class InProcessBuilder(PyBuilder):
    """Build candidates here; keep each runtime module for the verifier (``modules[path]``)."""

    def __init__(self, transform: Callable[[tvm.IRModule], tvm.IRModule] | None = None) -> None:
        """``transform``: applied to each candidate before it is built (the planted-wrong-candidate
        test makes every candidate compute something else through it)."""
        super().__init__()
        self.modules: dict[str, tvm.runtime.Module] = {}
        self.transform = transform or (lambda mod: mod)

    def build(self, build_inputs):
        results = []
        for inp in build_inputs:
            try:
                rt_mod = tvm.compile(self.transform(inp.mod), target=inp.target)
                # one folder per artifact: RemoveBuildArtifact deletes the artifact's folder
                path = os.path.join(tempfile.mkdtemp(prefix="tvm_qplugin_cand_"), "kernel.so")
                rt_mod.export_library(path)
                self.modules[path] = rt_mod
                results.append(BuilderResult(path, None))
            except Exception as e:  # noqa: BLE001 - a candidate that does not build is a failed trial
                results.append(BuilderResult(None, f"InProcessBuilder: {type(e).__name__}: {e}"))
        return results

    def forget(self, path: str) -> None:
        self.modules.pop(path, None)


def evaluator() -> ms.runner.EvaluatorConfig:
    """3 runs per repeat, at least 50 ms per repeat: enough for kernels of tens of microseconds."""
    return ms.runner.EvaluatorConfig(number=3, repeat=1, min_repeat_ms=50, enable_cpu_cache_flush=False)


def _fill_for_timing(arg: tvm.runtime.Tensor, random_fill: Callable) -> None:
    """MetaSchedule's random fill of one argument, except int32 arrays: zeros.

    The AVX2 byte-pair conv gathers its activations through an index table (``k_order``, an int32
    argument, schedules/x86_int8.py): random int32 entries point far outside the input, and the
    timing worker died of SIGSEGV -- on an AVX2 CPU neither that conv's default nor any of its
    candidates could be timed. Zero is a valid index, multiplier and shift; the kernels have no
    data-dependent control flow, so their time does not depend on these values, and a record only
    replaces the default after an interleaved comparison on real inputs (compare.py)."""
    if arg.dtype == "int32":
        import numpy as np

        arg.copyfrom(np.zeros(tuple(arg.shape), "int32"))
    else:
        random_fill(arg)


def alloc_for_timing(device, args_info, alloc_repeat: int):
    """LocalRunner's ``f_alloc_argument``: :func:`_fill_for_timing` on every argument."""
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    random_fill = tvm.get_global_func("tvm.contrib.random.random_fill_for_measure")
    return alloc_argument_common(lambda arg: _fill_for_timing(arg, random_fill), device, args_info, alloc_repeat)


def rpc_alloc_for_timing(session, device, args_info, alloc_repeat: int):
    """RPCRunner's ``f_alloc_argument``: :func:`_fill_for_timing` on the board."""
    from tvm.s_tir.meta_schedule.runner.utils import alloc_argument_common

    random_fill = session.get_function("tvm.contrib.random.random_fill_for_measure")
    return alloc_argument_common(lambda arg: _fill_for_timing(arg, random_fill), device, args_info, alloc_repeat)


def local_runner() -> ms.runner.LocalRunner:
    return ms.runner.LocalRunner(timeout_sec=60, evaluator_config=evaluator(), f_alloc_argument=alloc_for_timing)


def rpc_runner(host: str, port: int, key: str, servers: int) -> ms.runner.RPCRunner:
    """MetaSchedule's RPC runner: one session per candidate, on any server free under ``key``."""
    config = ms.runner.RPCConfig(tracker_host=host, tracker_port=port, tracker_key=key, session_priority=1,
                                 session_timeout_sec=120)
    return ms.runner.RPCRunner(rpc_config=config, evaluator_config=evaluator(), max_workers=max(1, servers),
                               f_alloc_argument=rpc_alloc_for_timing)


class RemoteDevice:
    """Runs the verifier's cases on a board of the tracker (what was timed there is checked there)."""

    def __init__(self, host: str, port: int, key: str):
        self.host, self.port, self.key = host, port, key

    def load(self, path: str):
        """``(runtime module, device)`` of the artifact at ``path`` uploaded to a fresh session."""
        from tvm import rpc

        sess = rpc.connect_tracker(self.host, self.port).request(self.key, priority=0, session_timeout=120)
        sess.upload(path)
        return sess.load_module(os.path.basename(path)), sess.cpu(0), sess
