"""The RPC tracker check, done before anything slow: an unreachable tracker, or a key no server is
registered under, is a one-line error within seconds -- never a tune that waits for a board that
is not there. (No TVM import at module level: the CLI calls this before loading TVM.)"""
from __future__ import annotations

import socket
import threading

from ..errors import QPluginError

CONNECT_TIMEOUT_S = 5.0


class TrackerError(QPluginError, ConnectionError):
    """The RPC tracker cannot be reached, or no server is registered under the key."""


def parse_tracker(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise TrackerError(f"--rpc-tracker {text!r}: expected HOST:PORT, e.g. 127.0.0.1:9190")
    return host, int(port)


def check_tracker(host: str, port: int, key: str, timeout: float = CONNECT_TIMEOUT_S) -> int:
    """Number of servers registered under ``key`` at the tracker; raises :class:`TrackerError`."""
    where = f"{host}:{port}"
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError as e:
        raise TrackerError(f"cannot reach the RPC tracker at {where} ({e.strerror or e}); start one with "
                           f"`python -m tvm.exec.rpc_tracker --host {host} --port {port}`") from None
    summary: dict = {}
    from tvm import rpc  # before the clock starts: importing TVM takes seconds on a loaded machine

    def ask():
        summary.update(rpc.connect_tracker(host, port).summary())

    t = threading.Thread(target=ask, daemon=True)
    t.start()
    t.join(timeout)
    if t.is_alive() or not summary:
        raise TrackerError(f"{where} accepts connections but does not answer as a TVM RPC tracker within {timeout:g} s")
    queue = summary.get("queue_info", {}).get(key, {})
    servers = int(queue.get("free", 0)) + int(queue.get("pending", 0))
    servers = max(servers, sum(1 for s in summary.get("server_info", []) if s.get("key") == f"server:{key}"))
    if servers == 0:
        keys = sorted(summary.get("queue_info", {}))
        raise TrackerError(f"no RPC server is registered under key {key!r} at the tracker {where} (keys there: "
                           f"{', '.join(keys) or 'none'}); start one with `python -m tvm.exec.rpc_server --tracker "
                           f"{where} --key {key}`")
    return servers
