"""Calibration / evaluation inputs: ``.npz`` files and image directories, validated and batched.

A ``.npz`` holds one array per model input name, the first axis counting samples (DESIGN.md); it
may also hold ``labels`` (int, one per sample) for a top-1 accuracy against ground truth.
"""
from __future__ import annotations

import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import CalibrationError

LABELS_KEY = "labels"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def batch(self) -> int:
        return self.shape[0] if self.shape else 1


@dataclass(frozen=True)
class Preprocess:
    """Explicit image preprocessing: resize short side, center crop, scale, mean/std, layout."""

    resize: int | None = None
    crop: int | None = None
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0, 0.0, 0.0)
    std: tuple[float, ...] = (1.0, 1.0, 1.0)
    layout: str = "NCHW"
    grayscale: bool = False


@dataclass
class Dataset:
    """Samples per input name (first axis = samples), optional labels."""

    arrays: dict[str, np.ndarray]
    labels: np.ndarray | None = None
    source: str = ""
    specs: list[InputSpec] = field(default_factory=list)

    def __len__(self) -> int:
        return next(iter(self.arrays.values())).shape[0]

    def batches(self, limit: int | None = None) -> Iterator[dict[str, np.ndarray]]:
        """Model-shaped batches; a trailing partial batch is dropped (static shapes)."""
        b = self.specs[0].batch
        n = len(self) if limit is None else min(limit, len(self))
        for i in range(0, n - b + 1, b):
            yield {s.name: self.arrays[s.name][i : i + b].reshape(s.shape) for s in self.specs}

    def num_batches(self, limit: int | None = None) -> int:
        n = len(self) if limit is None else min(limit, len(self))
        return n // self.specs[0].batch


def load_dataset(path: str | Path, specs: list[InputSpec], preprocess: Preprocess | None = None,
                 what: str = "calibration") -> Dataset:
    """Load and validate ``path`` (``.npz`` or a directory of images) against the model inputs."""
    path = Path(path)
    if path.is_dir():
        ds = _load_image_dir(path, specs, preprocess or Preprocess(), what)
    elif path.is_file():
        ds = _load_npz(path, specs, what)
    else:
        raise CalibrationError(f"{what} data {str(path)!r} does not exist; pass an .npz file or a directory of images")
    _validate(ds, specs, what)
    ds.specs = specs
    return ds


def from_arrays(arrays: dict[str, np.ndarray], specs: list[InputSpec], what: str = "calibration",
                labels: np.ndarray | None = None) -> Dataset:
    ds = Dataset({k: np.asarray(v) for k, v in arrays.items()}, labels, "<arrays>")
    _validate(ds, specs, what)
    ds.specs = specs
    return ds


def _load_npz(path: Path, specs: list[InputSpec], what: str) -> Dataset:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except (zipfile.BadZipFile, ValueError, OSError, EOFError) as e:
        raise CalibrationError(f"{what} data {str(path)!r} is not a readable .npz file ({e}); "
                               "write it with numpy.savez(path, **{{input_name: array}})") from None
    labels = arrays.pop(LABELS_KEY, None) if LABELS_KEY not in {s.name for s in specs} else None
    return Dataset(arrays, labels, str(path))


def _validate(ds: Dataset, specs: list[InputSpec], what: str) -> None:
    src = ds.source
    names = {s.name for s in specs}
    if len(specs) == 1 and specs[0].name not in ds.arrays and len(ds.arrays) == 1:
        # one input, one array: accept any key (e.g. numpy.savez default 'arr_0')
        ds.arrays = {specs[0].name: next(iter(ds.arrays.values()))}
    missing = sorted(names - set(ds.arrays))
    if missing:
        raise CalibrationError(f"{what} data {src!r} has no array for model input(s) {missing}; "
                               f"it holds {sorted(ds.arrays)}. Save one array per input name")
    counts = set()
    for s in specs:
        a = ds.arrays[s.name]
        sample = s.shape[1:] if len(s.shape) > 1 else s.shape
        if a.ndim == len(s.shape) - 1 and tuple(a.shape) == tuple(sample):
            a = a[None]
        if tuple(a.shape[1:]) != tuple(sample):
            raise CalibrationError(f"{what} data {src!r}: input {s.name!r} has shape {tuple(a.shape)}, expected "
                                   f"(N, {', '.join(map(str, sample))}) for model input shape {s.shape}")
        if a.shape[0] == 0:
            raise CalibrationError(f"{what} data {src!r}: input {s.name!r} is empty (0 samples); give at least "
                                   f"{s.batch} sample(s)")
        expected = np.dtype(s.dtype)
        if a.dtype != expected:
            if np.issubdtype(expected, np.floating) and np.issubdtype(a.dtype, np.floating):
                a = a.astype(expected)
            else:
                raise CalibrationError(f"{what} data {src!r}: input {s.name!r} has dtype {a.dtype}, the model expects "
                                       f"{expected}; convert with .astype({str(expected)!r})")
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            raise CalibrationError(f"{what} data {src!r}: input {s.name!r} contains NaN or Inf")
        ds.arrays[s.name] = a
        counts.add(a.shape[0])
    if len(counts) > 1:
        raise CalibrationError(f"{what} data {src!r}: inputs have different sample counts {sorted(counts)}")
    n = counts.pop()
    if n < specs[0].batch:
        raise CalibrationError(f"{what} data {src!r} has {n} sample(s), fewer than the model batch {specs[0].batch}")
    if ds.labels is not None and len(ds.labels) != n:
        raise CalibrationError(f"{what} data {src!r}: {len(ds.labels)} labels for {n} samples")


def _load_image_dir(path: Path, specs: list[InputSpec], pre: Preprocess, what: str) -> Dataset:
    from PIL import Image, UnidentifiedImageError

    if len(specs) != 1:
        raise CalibrationError(f"an image directory feeds one-input models; this model has {len(specs)} inputs: "
                               "use an .npz file")
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise CalibrationError(f"{what} directory {str(path)!r} holds no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
    spec = specs[0]
    nchw = pre.layout.upper() == "NCHW"
    h, w = (spec.shape[2], spec.shape[3]) if nchw else (spec.shape[1], spec.shape[2])
    out = []
    for f in files:
        try:
            img = Image.open(f).convert("L" if pre.grayscale else "RGB")
        except (UnidentifiedImageError, OSError) as e:
            raise CalibrationError(f"cannot read image {str(f)!r}: {e}") from None
        if pre.resize:
            s = pre.resize / min(img.size)
            img = img.resize((max(1, round(img.size[0] * s)), max(1, round(img.size[1] * s))), Image.BILINEAR)
        if pre.crop or (img.size != (w, h)):
            cw, ch = (pre.crop, pre.crop) if pre.crop else (w, h)
            left, top = (img.size[0] - cw) // 2, (img.size[1] - ch) // 2
            img = img.crop((left, top, left + cw, top + ch))
        a = np.asarray(img, dtype=np.float32) * pre.scale
        if a.ndim == 2:
            a = a[..., None]
        a = (a - np.asarray(pre.mean[: a.shape[-1]], np.float32)) / np.asarray(pre.std[: a.shape[-1]], np.float32)
        out.append(a.transpose(2, 0, 1) if nchw else a)
    return Dataset({spec.name: np.stack(out).astype(spec.dtype)}, None, str(path))
