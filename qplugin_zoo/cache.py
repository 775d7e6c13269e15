"""On-disk cache for exported models and preprocessed data sets.

Exporting MobileNetV2 needs torch and takes seconds; preprocessing hundreds of
crops takes a moment too.  Tests and benchmarks call these fixtures many times,
so the results are cached once per machine.  Writes are atomic (temp file in
the same directory, then ``os.replace``) so a killed or concurrent run never
leaves a truncated file that a later run would trust.
"""

from __future__ import annotations

import contextlib
import os
import pathlib
import tempfile
from collections.abc import Iterator

__all__ = ["cache_dir", "atomic_path", "atomic_write_bytes"]

_ENV_VAR = "TVM_QPLUGIN_CACHE"


def cache_dir() -> pathlib.Path:
    """Return the cache directory, creating it if needed.

    Returns
    -------
    pathlib.Path
        ``$TVM_QPLUGIN_CACHE`` when set (lets CI and tests isolate the cache),
        otherwise ``~/.cache/tvm_qplugin``.
    """
    env = os.environ.get(_ENV_VAR)
    path = pathlib.Path(env).expanduser() if env else pathlib.Path.home() / ".cache" / "tvm_qplugin"
    path.mkdir(parents=True, exist_ok=True)
    return path


@contextlib.contextmanager
def atomic_path(final: pathlib.Path) -> Iterator[pathlib.Path]:
    """Yield a temporary path beside ``final``; move it into place on success.

    Use this when a third-party writer (``torch.onnx``, ``np.savez``) wants a
    file name rather than bytes.  The temporary file lives in the same
    directory so ``os.replace`` is an atomic rename on POSIX.  On error the
    temporary file is removed and ``final`` is left untouched.

    Parameters
    ----------
    final : pathlib.Path
        Destination path.  Its suffix is kept on the temporary name because
        some writers (``np.savez``) append a suffix when it is missing.
    """
    final = pathlib.Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent)
    os.close(fd)
    tmp = pathlib.Path(tmp_name)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual mode
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(final: pathlib.Path, data: bytes) -> pathlib.Path:
    """Write ``data`` to ``final`` atomically and return ``final``."""
    with atomic_path(final) as tmp:
        tmp.write_bytes(data)
    return pathlib.Path(final)
