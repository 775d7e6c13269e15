"""Real photos and deterministic augmented crops for ImageNet classifiers.

No ImageNet data can be downloaded here, but scikit-image and scikit-learn ship
a few dozen real photos in their wheels.  Random-resized crops, flips and
rescales of them give hundreds of realistic, distinct inputs: enough to
calibrate a quantizer and to measure float-vs-integer top-1 agreement on
natural-image statistics rather than on noise.

Everything is deterministic: the only randomness is ``np.random.RandomState``
seeded by the caller, and resizing is PIL bilinear.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Callable

import numpy as np
from PIL import Image

from .cache import atomic_path, cache_dir

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "real_photos",
    "preprocess_imagenet",
    "normalize_imagenet",
    "imagenet_crops",
    "imagenet_calib_eval",
]

log = logging.getLogger(__name__)

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

_MIN_PHOTOS = 12
_CACHE_VERSION = 2  # bump when the crop recipe changes, to invalidate cached npz files


def _to_rgb_uint8(img: np.ndarray) -> np.ndarray:
    """Convert grey or float [0, 1] images to contiguous RGB uint8 HxWx3."""
    img = np.asarray(img)
    if img.dtype != np.uint8:
        img = np.clip(np.round(img.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    if img.ndim != 3 or img.shape[2] not in (3, 4):
        raise ValueError(f"expected an HxW or HxWx3 image, got shape {img.shape}")
    return np.ascontiguousarray(img[:, :, :3])


def _photo_loaders() -> list[tuple[str, Callable[[], np.ndarray | list[tuple[str, np.ndarray]]]]]:
    import skimage.data as sd
    import sklearn.datasets as skd

    def sample_images():
        imgs = skd.load_sample_images()
        return [(fn.rsplit("/", 1)[-1].rsplit(".", 1)[0], im) for fn, im in zip(imgs.filenames, imgs.images)]

    names = ["astronaut", "chelsea", "coffee", "rocket"]
    loaders: list = [(n, functools.partial(lambda n: getattr(sd, n)(), n)) for n in names]
    # skimage has no motorcycle_left; it is the first view of stereo_motorcycle.
    loaders.append(("motorcycle_left", lambda: sd.stereo_motorcycle()[0]))
    for n in ["hubble_deep_field", "immunohistochemistry", "retina", "camera", "coins", "moon", "page", "text"]:
        loaders.append((n, functools.partial(lambda n: getattr(sd, n)(), n)))
    # lfw_subset's 25x25 faces are left out: upscaled 5x they are blur, not photos, and would
    # make most "ImageNet" inputs ones no classifier is confident on.
    loaders.append(("sklearn_sample_images", sample_images))
    return loaders


@functools.lru_cache(maxsize=1)
def _real_photos_cached() -> tuple[tuple[str, np.ndarray], ...]:
    photos: list[tuple[str, np.ndarray]] = []
    for name, load in _photo_loaders():
        try:
            result = load()
        except Exception as exc:  # noqa: BLE001 - any offline failure just skips the photo
            log.warning("skipping photo %s: %s: %s", name, type(exc).__name__, exc)
            continue
        items = result if isinstance(result, list) else [(name, result)]
        for item_name, img in items:
            img = _to_rgb_uint8(img)
            img.setflags(write=False)  # shared via the cache; callers must not mutate
            photos.append((item_name, img))
    if len(photos) < _MIN_PHOTOS:
        raise RuntimeError(f"only {len(photos)} offline photos loaded (need {_MIN_PHOTOS}); see warnings")
    log.debug("loaded %d offline photos", len(photos))
    return tuple(photos)


def real_photos() -> list[tuple[str, np.ndarray]]:
    """Return the real photos that ship offline, as ``(name, rgb_uint8)`` pairs.

    Sources: skimage.data colour photos (astronaut, chelsea, coffee, rocket,
    the left stereo_motorcycle view, hubble_deep_field, immunohistochemistry,
    retina), grey ones converted to RGB (camera, coins, moon, page, text),
    sklearn's sample images (china, flower).
    A photo that fails to load is logged and skipped, so the list (and the
    crops derived from it) depends only on what the installed wheels ship.

    Returns
    -------
    list of (str, np.ndarray)
        Read-only HxWx3 uint8 arrays, in a fixed order.

    Raises
    ------
    RuntimeError
        If fewer than 12 photos could be loaded.
    """
    return list(_real_photos_cached())


def normalize_imagenet(rgb_uint8: np.ndarray) -> np.ndarray:
    """Map ``(..., H, W, 3)`` uint8 to ImageNet-normalised ``(..., 3, H, W)`` float32."""
    x = np.asarray(rgb_uint8, dtype=np.float32) / np.float32(255.0)
    x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(np.moveaxis(x, -1, -3), dtype=np.float32)


def _resize(img: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))


def _center_crop_uint8(rgb_uint8: np.ndarray, size: int) -> np.ndarray:
    img = _to_rgb_uint8(rgb_uint8)
    h, w = img.shape[:2]
    short = int(round(size * 256 / 224))
    scale = short / min(h, w)
    nw, nh = max(size, int(round(w * scale))), max(size, int(round(h * scale)))
    img = _resize(img, nw, nh)
    top, left = (nh - size) // 2, (nw - size) // 2
    return img[top : top + size, left : left + size]


def preprocess_imagenet(rgb_uint8: np.ndarray, size: int = 224) -> np.ndarray:
    """Standard ImageNet eval preprocessing of one photo.

    Resize the short side to ``size * 256 / 224`` (256 for 224), centre-crop
    ``size``, scale to [0, 1] and normalise with the ImageNet mean/std: the
    transform torchvision's weights were evaluated with.

    Parameters
    ----------
    rgb_uint8 : np.ndarray
        HxWx3 (or HxW grey) uint8 image.
    size : int
        Output side length.

    Returns
    -------
    np.ndarray
        ``(3, size, size)`` float32.
    """
    return normalize_imagenet(_center_crop_uint8(rgb_uint8, size))


def _random_crop_uint8(img: np.ndarray, rng: np.random.RandomState, size: int) -> np.ndarray:
    """One augmented ``size`` x ``size`` crop: random scale, resized crop, flip."""
    h, w = img.shape[:2]
    # Random scale: bring the photo to an ImageNet-like resolution (short side
    # 256..512 for size 224) so crops vary in sharpness, and huge photos like
    # retina do not dominate the cost.
    short = rng.uniform(size * 256 / 224, size * 512 / 224)
    scale = short / min(h, w)
    w, h = max(size, int(round(w * scale))), max(size, int(round(h * scale)))
    img = _resize(img, w, h)
    # Random-resized crop as in torchvision: area 25-100 %, log-uniform aspect 3/4-4/3.
    area = h * w
    for _ in range(10):
        target = area * rng.uniform(0.25, 1.0)
        aspect = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw, ch = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < cw <= w and 0 < ch <= h:
            top, left = rng.randint(0, h - ch + 1), rng.randint(0, w - cw + 1)
            break
    else:  # fall back to the largest centred square
        cw = ch = min(h, w)
        top, left = (h - ch) // 2, (w - cw) // 2
    crop = _resize(np.ascontiguousarray(img[top : top + ch, left : left + cw]), size, size)
    if rng.uniform() < 0.5:
        crop = crop[:, ::-1]
    return np.ascontiguousarray(crop)


def _crops_uint8(n: int, seed: int, size: int) -> np.ndarray:
    photos = _real_photos_cached()
    rng = np.random.RandomState(seed)
    out = np.empty((n, size, size, 3), dtype=np.uint8)
    for i in range(n):
        out[i] = _random_crop_uint8(photos[i % len(photos)][1], rng, size)
    return out


def imagenet_crops(n: int, seed: int, size: int = 224) -> np.ndarray:
    """Deterministic augmented crops of the offline photos, ImageNet-normalised.

    Crop ``i`` comes from photo ``i % len(real_photos())``: random rescale,
    random-resized crop (area 0.25-1.0, aspect 3/4-4/3), bilinear resize to
    ``size`` and a random horizontal flip, all drawn from
    ``np.random.RandomState(seed)``.  Same seed, same crops; different seeds
    give different crops, so calibration and evaluation sets can be disjoint.

    Parameters
    ----------
    n : int
        Number of crops.
    seed : int
        RandomState seed.
    size : int
        Output side length.

    Returns
    -------
    np.ndarray
        ``(n, 3, size, size)`` float32.
    """
    if n < 0 or size < 1:
        raise ValueError(f"need n >= 0 and size >= 1, got n={n}, size={size}")
    return normalize_imagenet(_crops_uint8(n, seed, size))


def imagenet_calib_eval(size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """Calibration and evaluation sets for ImageNet classifiers, cached.

    Returns
    -------
    calib, evaluation : np.ndarray
        ``imagenet_crops(64, seed=0, size)`` and ``imagenet_crops(256, seed=1, size)``,
        float32 ``(N, 3, size, size)``.  The npz cache holds the uint8 crops
        (4x smaller than float32) and normalisation is redone on load, which
        gives bit-identical arrays.
    """
    path = cache_dir() / f"imagenet_calib_eval_{size}_v{_CACHE_VERSION}.npz"
    if path.is_file():
        try:
            with np.load(path) as data:
                return normalize_imagenet(data["calib"]), normalize_imagenet(data["eval"])
        except Exception as exc:  # noqa: BLE001 - a corrupt cache is rebuilt
            log.warning("rebuilding unreadable cache %s: %s", path, exc)
    calib, evaluation = _crops_uint8(64, 0, size), _crops_uint8(256, 1, size)
    with atomic_path(path) as tmp:
        np.savez(tmp, calib=calib, eval=evaluation)
    log.info("cached ImageNet calib/eval crops in %s", path)
    return normalize_imagenet(calib), normalize_imagenet(evaluation)
