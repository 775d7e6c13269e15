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

from .errors import CalibrationError, one_line

LABELS_KEY = "labels"
IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int, ...]
    dtype: str

    @property
    def batch(self) -> int:
        """Samples per model call: the first axis of an N-D input, 1 for a 1-D or scalar input."""
        return self.shape[0] if len(self.shape) > 1 else 1

    @property
    def sample_shape(self) -> tuple[int, ...]:
        return self.shape[1:] if len(self.shape) > 1 else self.shape


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

    def value_range(self) -> tuple[np.ndarray, np.ndarray]:
        """Per channel, the lowest and highest value this preprocessing can produce from 8-bit
        pixels (0 and 255): the box every real input lies in (data-free calibration keeps its
        synthetic inputs inside it)."""
        channels = 1 if self.grayscale else len(self.mean)
        mean = np.asarray(self.mean[:channels], np.float64)
        std = np.asarray(self.std[:channels], np.float64)
        lo, hi = (0.0 - mean) / std, (255.0 * self.scale - mean) / std
        return np.minimum(lo, hi).astype(np.float32), np.maximum(lo, hi).astype(np.float32)


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
        if n < b:
            raise CalibrationError(f"a limit of {limit} sample(s) (--calib-limit / --count) leaves no full model "
                                   f"batch of {b} from {self.source!r}; use a limit of at least {b}")
        for i in range(0, n - b + 1, b):
            yield {s.name: self.arrays[s.name][i : i + b].reshape(s.shape) for s in self.specs}

    def num_batches(self, limit: int | None = None) -> int:
        n = len(self) if limit is None else min(limit, len(self))
        return n // self.specs[0].batch


def load_dataset(path: str | Path, specs: list[InputSpec], preprocess: Preprocess | None = None,
                 what: str = "calibration") -> Dataset:
    """Load and validate ``path`` (``.npz`` or a directory of images) against the model inputs."""
    if str(path) == "distill":  # synthesised from the model, which this loader does not see (mixed/distill.py)
        raise CalibrationError("calib='distill' is synthesised from the model's batch-norm statistics by `tvm-qplugin "
                               "compile --calib distill`; from Python pass calib=tvm_qplugin.mixed.distill.distill("
                               "MODEL).arrays")
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
    if not isinstance(arrays, dict) or not arrays:
        raise CalibrationError(f"{what} data must be a non-empty dict {{input_name: array}}, got "
                               f"{type(arrays).__name__}")
    if labels is None and LABELS_KEY in arrays and LABELS_KEY not in {s.name for s in specs}:
        labels = arrays[LABELS_KEY]  # as in an .npz: the labels travel with the inputs
        arrays = {k: v for k, v in arrays.items() if k != LABELS_KEY}
    try:
        ds = Dataset({str(k): np.asarray(v) for k, v in arrays.items()},
                     None if labels is None else np.asarray(labels), "<arrays>")
    except (ValueError, TypeError) as e:
        raise CalibrationError(f"{what} data: cannot convert to arrays ({one_line(e)})") from None
    _validate(ds, specs, what)
    ds.specs = specs
    return ds


_NPZ_HOWTO = "write it with numpy.savez(path, **{input_name: array})"


def _check_npz_magic(path: Path, what: str) -> None:
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as e:
        raise CalibrationError(f"cannot read {what} data {str(path)!r}: {e.strerror or e}") from None
    if magic == b"\x93NUMPY":
        raise CalibrationError(f"{what} data {str(path)!r} is a .npy file (one unnamed array); save an .npz "
                               f"instead: {_NPZ_HOWTO}")
    if not magic.startswith(b"PK"):
        raise CalibrationError(f"{what} data {str(path)!r} is not an .npz file (nor a directory of images); "
                               f"{_NPZ_HOWTO}")


def _not_readable(path: Path, what: str, e: Exception) -> CalibrationError:
    reason = "it holds object arrays (pickles)" if "allow_pickle" in str(e) else f"{type(e).__name__}: {e}"
    return CalibrationError(f"{what} data {str(path)!r} is not a readable .npz file ({one_line(reason)}); "
                            f"{_NPZ_HOWTO}")


def _load_npz(path: Path, specs: list[InputSpec], what: str) -> Dataset:
    _check_npz_magic(path, what)
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: np.asarray(z[k]) for k in z.files}
    except Exception as e:  # BadZipFile, pickled object arrays, truncated members, ...
        raise _not_readable(path, what, e) from None
    if not arrays:
        raise CalibrationError(f"{what} data {str(path)!r} holds no arrays; {_NPZ_HOWTO}")
    labels = arrays.pop(LABELS_KEY, None) if LABELS_KEY not in {s.name for s in specs} else None
    return Dataset(arrays, labels, str(path))


def check_data_file(path: str | Path, specs: list[InputSpec], what: str = "calibration") -> None:
    """Cheap early check of an ``.npz`` against the model inputs: names, shapes, dtypes and sample
    counts from the array headers alone (no array data is read, whatever the file's size).

    Directories of images are left to :func:`load_dataset`, as are the checks that need the values
    (NaN / Inf, integral labels); an ``.npz`` this cannot parse is also left to it.
    """
    path = Path(path)
    if path.is_dir():
        return
    if not path.is_file():
        raise CalibrationError(f"{what} data {str(path)!r} does not exist; pass an .npz file or a directory of "
                               "images")
    _check_npz_magic(path, what)
    meta: dict[str, tuple[tuple[int, ...], np.dtype]] = {}
    try:
        with zipfile.ZipFile(path) as zf:
            for info in zf.infolist():
                if not info.filename.endswith(".npy"):
                    return  # np.load exposes such members as raw bytes: leave it to the full load
                with zf.open(info) as f:
                    version = np.lib.format.read_magic(f)
                    if version == (1, 0):
                        shape, _, dtype = np.lib.format.read_array_header_1_0(f)
                    elif version == (2, 0):
                        shape, _, dtype = np.lib.format.read_array_header_2_0(f)
                    else:
                        return
                meta[info.filename[: -len(".npy")]] = (tuple(shape), np.dtype(dtype))
    except (zipfile.BadZipFile, EOFError) as e:
        raise _not_readable(path, what, e) from None
    except Exception:  # noqa: BLE001 - an unusual but maybe valid file: the full load decides
        return
    if any(d.hasobject for _, d in meta.values()):
        raise _not_readable(path, what, ValueError("allow_pickle"))
    labels = meta.pop(LABELS_KEY, None) if LABELS_KEY not in {s.name for s in specs} else None
    if not meta:
        raise CalibrationError(f"{what} data {str(path)!r} holds no arrays; {_NPZ_HOWTO}")
    _check_layout(meta, labels, specs, what, str(path))


def _check_layout(meta: dict[str, tuple[tuple[int, ...], np.dtype]],
                  labels: tuple[tuple[int, ...], np.dtype] | None, specs: list[InputSpec], what: str,
                  src: str) -> dict[str, tuple[str, bool, np.dtype | None]]:
    """The checks that need only each array's shape and dtype.

    Returns, per model input: (key of its array in ``meta``, add a leading sample axis?, dtype to
    cast to or None).
    """
    names = [s.name for s in specs]
    keys = {n: n for n in names}
    if len(specs) == 1 and specs[0].name not in meta and len(meta) == 1:
        # one input, one array: accept any key (e.g. numpy.savez default 'arr_0')
        keys = {specs[0].name: next(iter(meta))}
    missing = sorted(n for n in names if keys[n] not in meta)
    if missing:
        raise CalibrationError(f"{what} data {src!r} has no array for model input(s) {missing}; "
                               f"it holds {sorted(meta)}. Save one array per input name")
    plan: dict[str, tuple[str, bool, np.dtype | None]] = {}
    counts = set()
    for s in specs:
        shape, dtype = meta[keys[s.name]]
        sample = tuple(s.sample_shape)
        add_axis = len(shape) == len(sample) and tuple(shape) == sample  # one sample, no sample axis
        if add_axis:
            shape = (1, *shape)
        # a batch-1 model also takes whole model inputs per sample, (N, *shape): an input whose batch
        # is not its first axis (an RNN state (layers, batch, hidden)) has no other way to say it
        whole_calls = specs[0].batch == 1 and tuple(shape[1:]) == tuple(s.shape)
        if len(shape) == 0 or (tuple(shape[1:]) != sample and not whole_calls):
            raise CalibrationError(f"{what} data {src!r}: input {s.name!r} has shape {tuple(shape)}, expected "
                                   f"(N, {', '.join(map(str, sample))}) for model input shape {s.shape}")
        if shape[0] == 0:
            raise CalibrationError(f"{what} data {src!r}: input {s.name!r} is empty (0 samples); give at least "
                                   f"{s.batch} sample(s)")
        expected = np.dtype(s.dtype)
        cast = None
        if dtype != expected:
            if np.issubdtype(expected, np.floating) and np.issubdtype(dtype, np.floating):
                cast = expected
            else:
                raise CalibrationError(f"{what} data {src!r}: input {s.name!r} has dtype {dtype}, the model expects "
                                       f"{expected}; convert with .astype({str(expected)!r})")
        plan[s.name] = (keys[s.name], add_axis, cast)
        counts.add(shape[0])
    if len(counts) > 1:
        raise CalibrationError(f"{what} data {src!r}: inputs have different sample counts {sorted(counts)}")
    n = counts.pop()
    if n < specs[0].batch:
        raise CalibrationError(f"{what} data {src!r} has {n} sample(s), fewer than the model batch {specs[0].batch}")
    if labels is not None:
        lshape, ldtype = labels
        if len(lshape) != 1 or not (np.issubdtype(ldtype, np.integer) or np.issubdtype(ldtype, np.floating)):
            raise CalibrationError(f"{what} data {src!r}: {LABELS_KEY!r} has shape {tuple(lshape)} and dtype "
                                   f"{ldtype}; give one integer class index per sample, shape ({n},)")
        if lshape[0] != n:
            raise CalibrationError(f"{what} data {src!r}: {lshape[0]} labels for {n} samples; give one label per "
                                   "sample")
    return plan


def _validate(ds: Dataset, specs: list[InputSpec], what: str) -> None:
    src = ds.source
    meta = {k: (tuple(np.shape(v)), np.asarray(v).dtype) for k, v in ds.arrays.items()}
    lab = None if ds.labels is None else np.asarray(ds.labels)
    plan = _check_layout(meta, None if lab is None else (tuple(lab.shape), lab.dtype), specs, what, src)
    arrays = {}
    for s in specs:
        key, add_axis, cast = plan[s.name]
        a = np.asarray(ds.arrays[key])
        if add_axis:
            a = a[None]
        if cast is not None:
            a = a.astype(cast)
        if np.issubdtype(a.dtype, np.floating) and not np.all(np.isfinite(a)):
            raise CalibrationError(f"{what} data {src!r}: input {s.name!r} contains NaN or Inf; clean the data")
        arrays[s.name] = a
    ds.arrays = arrays
    if lab is not None:
        if np.issubdtype(lab.dtype, np.floating) and not np.all(lab == np.round(lab)):
            raise CalibrationError(f"{what} data {src!r}: {LABELS_KEY!r} holds non-integer values; give one integer "
                                   "class index per sample")
        ds.labels = lab.astype(np.int64)


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
    if len(spec.shape) != 4:
        raise CalibrationError(f"{what} directory {str(path)!r}: model input {spec.name!r} has shape {spec.shape}, "
                               "not an image batch (N, C, H, W) / (N, H, W, C); use an .npz file")
    h, w = (spec.shape[2], spec.shape[3]) if nchw else (spec.shape[1], spec.shape[2])
    channels = spec.shape[1] if nchw else spec.shape[3]
    if channels not in (1, 3):
        raise CalibrationError(f"{what} directory {str(path)!r}: model input {spec.name!r} has shape {spec.shape}: "
                               f"{channels} channels in {pre.layout} layout; pass --layout "
                               f"{'NHWC' if nchw else 'NCHW'} if that is wrong, or use an .npz file")
    if (channels == 1) != pre.grayscale:
        raise CalibrationError(f"{what} directory {str(path)!r}: model input {spec.name!r} has shape {spec.shape} "
                               f"({channels} channel{'s' if channels > 1 else ''}, {pre.layout}); "
                               + ("add --grayscale" if channels == 1 else "drop --grayscale"))
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
