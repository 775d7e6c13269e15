"""The data shipped beside the code: the board catalogue and the tuned schedule databases.

Both stay top-level in the repository (``targets/<board>.toml``, ``schedules/<board>/``; DESIGN.md:
a user adds a board by dropping a TOML file and a tuned database beside it). ``targets`` and
``schedules`` in this folder are symbolic links to them, so that the package finds its data at
one place whatever the install: a source checkout and an editable install follow the links, and
a wheel holds the files themselves (setuptools copies what the links point to as package data;
tests/test_wheel.py checks it).

Note: a ``package-dir`` mapping (``tvm_qplugin._catalog.targets = "targets"``) would need the
package list written out by hand (``packages.find`` only walks real folders), and in an editable
install it resolves through the finder of the checkout that was installed, not the one imported.
"""
from __future__ import annotations

from pathlib import Path

KINDS = ("targets", "schedules")


def shipped_dir(kind: str) -> Path:
    """The folder of shipped ``kind`` data (``targets`` or ``schedules``), symbolic links resolved
    (so board paths read ``<checkout>/targets/x.toml`` in a source checkout)."""
    if kind not in KINDS:
        raise ValueError(f"unknown catalogue kind {kind!r}; one of {KINDS}")
    return (Path(__file__).parent / kind).resolve()
