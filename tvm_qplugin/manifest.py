"""``OUTDIR/manifest.json``: the SHA-256 of every file of a compiled artifact.

Loading an artifact dlopens its ``model.so`` -- that runs the library's code, like loading any
shared library -- so :func:`check_manifest` proves, before anything is loaded, that every file is
the one :meth:`Artifact.save` wrote together: a truncated ``model.so`` (which would crash the
process with SIGBUS), a foreign library, an edited ``io.json`` or another model's
``integer_module.json`` are refused with the file named. It reads no TVM and no file twice.

The artifact's own names are :data:`OWN_ENTRIES`; anything else a user keeps in OUTDIR is not part
of the artifact, is not checked and is never touched by a recompile.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .errors import ModelLoadError, one_line

MANIFEST = "manifest.json"
MANIFEST_FORMAT = 1
# What an artifact consists of (artifact.py's layout): files, plus the MCU C package folder.
OWN_FILES = ("model.so", "integer_module.json", "io.json", "report.json")
OWN_DIRS = ("c",)
OWN_ENTRIES = (*OWN_FILES, *OWN_DIRS, MANIFEST)
_RECOMPILE = "re-create it with `tvm-qplugin compile MODEL -o DIR`"


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def artifact_files(root: Path) -> list[str]:
    """The artifact's own files under ``root``, relative POSIX paths, sorted (C package included)."""
    names = [n for n in OWN_FILES if (root / n).is_file()]
    for d in OWN_DIRS:
        if (root / d).is_dir():
            names += [p.relative_to(root).as_posix() for p in sorted((root / d).rglob("*")) if p.is_file()]
    return sorted(names)


def write_manifest(root: Path) -> None:
    """Hash every artifact file under ``root`` into ``root/manifest.json``."""
    files = {n: sha256_of(root / n) for n in artifact_files(root)}
    (root / MANIFEST).write_text(json.dumps({"format": MANIFEST_FORMAT, "sha256": files}, indent=1))


def check_manifest(outdir: Path) -> None:
    """Every file the manifest lists is present with its hash, and no own entry is there that the
    artifact was saved without (e.g. an added ``c/``). Raises :class:`ModelLoadError` naming the file."""
    path = outdir / MANIFEST
    if not path.is_file():
        raise ModelLoadError(f"{str(outdir)!r} has no {MANIFEST} (an artifact from an older version, or a "
                             f"recompile was interrupted), so its files cannot be checked before loading; {_RECOMPILE}")
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ModelLoadError(f"{str(path)!r} is unreadable or not JSON ({one_line(e)}); "
                             f"{_RECOMPILE}") from None
    files = doc.get("sha256") if isinstance(doc, dict) and doc.get("format") == MANIFEST_FORMAT else None
    if not isinstance(files, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in files.items()):
        raise ModelLoadError(f"{str(path)!r} is not a tvm-qplugin manifest (format {MANIFEST_FORMAT}, "
                             f"'sha256': {{file: hash}}); {_RECOMPILE}")
    for name in sorted(files):
        f = outdir / name
        if not _inside(outdir, f) or not f.is_file():
            raise ModelLoadError(f"{str(f)!r} is missing from the artifact (listed in {MANIFEST}); {_RECOMPILE}")
        try:
            digest = sha256_of(f)
        except OSError as e:
            raise ModelLoadError(f"cannot read {str(f)!r}: {e.strerror or e}; {_RECOMPILE}") from None
        if digest != files[name]:
            raise ModelLoadError(f"{str(f)!r} is not the file this artifact was saved with (SHA-256 differs from "
                                 f"{MANIFEST}: edited, truncated, or from another artifact); {_RECOMPILE}")
    # An own folder the artifact was saved without (an empty c/ makes `verify` run a C package that
    # is not there). Files added inside a saved c/ (the user's CMake build) are the user's.
    extra = [d for d in OWN_DIRS if (outdir / d).exists() and not any(n.startswith(d + "/") for n in files)]
    extra += [n for n in OWN_FILES if (outdir / n).exists() and n not in files]
    if extra:
        raise ModelLoadError(f"{str(outdir / extra[0])!r} is not part of this artifact (not in {MANIFEST}); remove "
                             f"it or {_RECOMPILE}")


def _inside(root: Path, p: Path) -> bool:
    try:
        p.resolve().relative_to(root.resolve())
    except ValueError:
        return False
    return True
