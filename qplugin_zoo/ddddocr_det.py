"""The ddddocr text/character detector (YOLOX-like, 416x416) and its own pre/post-processing.

The ONNX file ships inside the ``ddddocr==1.6.1`` wheel (installed with ``--no-deps``: only the
file is used, not the package's code, which needs OpenCV). Pre-processing and the box decoding
follow ``ddddocr/core/detection_engine.py`` (letterbox onto a 114-grey 416x416 canvas, BGR,
0..255 floats; grid + stride decoding, score = objectness x class, NMS 0.45, score 0.1),
re-written here with PIL and NumPy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .images import _to_rgb_uint8, real_photos
from .packaged import packaged_file

SIZE = 416
PACKAGE = "ddddocr==1.6.1"


def ddddocr_det_onnx() -> Path:
    """Path of ``common_det.onnx`` inside the installed ddddocr wheel."""
    return packaged_file("ddddocr", "ddddocr/common_det.onnx", PACKAGE)


def letterbox(rgb: np.ndarray, size: int = SIZE) -> np.ndarray:
    """ddddocr's ``preproc``: scale to fit, paste top-left on 114 grey, BGR, CHW float32 0..255."""
    img = _to_rgb_uint8(rgb)
    h, w = img.shape[:2]
    r = min(size / h, size / w)
    nw, nh = int(w * r), int(h * r)
    canvas = np.full((size, size, 3), 114, np.uint8)
    canvas[:nh, :nw] = np.asarray(Image.fromarray(img).resize((nw, nh), Image.Resampling.BILINEAR))
    return np.ascontiguousarray(canvas[:, :, ::-1].transpose(2, 0, 1), dtype=np.float32)


def detector_inputs(n: int, seed: int) -> np.ndarray:
    """``n`` letterboxed inputs (1, 3, 416, 416) from random crops of the offline photos (text and
    page first: the detector is for characters)."""
    rng = np.random.default_rng(seed)
    photos = [img for _, img in real_photos()]
    out = np.empty((n, 3, SIZE, SIZE), np.float32)
    for i in range(n):
        img = photos[i % len(photos)]
        h, w = img.shape[:2]
        ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
        y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
        out[i] = letterbox(img[y:y + ch, x:x + cw])
    return out


def evaluation_inputs() -> tuple[list[str], np.ndarray]:
    """Named evaluation inputs with characters in them (the page scan whole and in halves, the text
    photo) and three photos the detector also fires on (rocket, motorcycle, astronaut)."""
    photos = dict(real_photos())
    page = photos["page"]
    views = {"page": page, "page_left": page[:, : page.shape[1] // 2], "page_right": page[:, page.shape[1] // 2:],
             "text": photos["text"], "rocket": photos["rocket"], "motorcycle_left": photos["motorcycle_left"]}
    return list(views), np.stack([letterbox(v) for v in views.values()])


def decode(output: np.ndarray, size: int = SIZE) -> np.ndarray:
    """ddddocr's ``demo_postprocess`` + class-agnostic NMS: ``(k, 5)`` boxes ``x1, y1, x2, y2, score``."""
    pred = np.array(output[0], dtype=np.float64)
    grids, strides = [], []
    for s in (8, 16, 32):
        xv, yv = np.meshgrid(np.arange(size // s), np.arange(size // s))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    pred[:, :2] = (pred[:, :2] + grid) * stride
    pred[:, 2:4] = np.exp(pred[:, 2:4]) * stride
    scores = (pred[:, 4:5] * pred[:, 5:]).max(axis=1)
    xyxy = np.concatenate([pred[:, :2] - pred[:, 2:4] / 2, pred[:, :2] + pred[:, 2:4] / 2], axis=1)
    keep = scores > 0.1
    boxes, scores = xyxy[keep], scores[keep]
    order, kept = scores.argsort()[::-1], []
    while order.size:
        i = order[0]
        kept.append(i)
        ovr = iou(boxes[i], boxes[order[1:]])
        order = order[1:][ovr <= 0.45]
    return np.concatenate([boxes[kept], scores[kept, None]], axis=1) if kept else np.zeros((0, 5))


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``x1, y1, x2, y2`` box with each row of ``boxes`` (ddddocr's +1 pixel convention)."""
    xx1, yy1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    xx2, yy2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.maximum(0.0, xx2 - xx1 + 1) * np.maximum(0.0, yy2 - yy1 + 1)
    area = lambda b: (b[..., 2] - b[..., 0] + 1) * (b[..., 3] - b[..., 1] + 1)
    return inter / (area(box) + area(boxes) - inter)


def box_agreement(ref: np.ndarray, got: np.ndarray) -> tuple[float, int, int]:
    """Mean best-match IoU of the reference boxes against ``got`` (0 for a reference box with no
    match), and both box counts."""
    if len(ref) == 0:
        return (1.0 if len(got) == 0 else 0.0), 0, len(got)
    if len(got) == 0:
        return 0.0, len(ref), 0
    best = [float(iou(r, got[:, :4]).max()) for r in ref[:, :4]]
    return float(np.mean(best)), len(ref), len(got)
