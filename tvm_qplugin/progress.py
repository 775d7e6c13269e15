"""Progress bars (tqdm on stderr) that the CLI turns on and the library leaves off by default."""
from __future__ import annotations

from typing import Iterable, TypeVar

T = TypeVar("T")


def progress(it: Iterable[T], total: int | None = None, desc: str = "", enabled: bool = False) -> Iterable[T]:
    if not enabled:
        return it
    from tqdm import tqdm

    return tqdm(it, total=total, desc=desc, leave=False, dynamic_ncols=True)
