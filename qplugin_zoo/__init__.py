"""Offline fixtures: real pretrained models and real data, no network needed.

Test and benchmark support, kept out of the installed package (the wheel holds the product only):
tests import it from the repository root (pytest's ``pythonpath``), scripts put the repository root
on ``sys.path`` first.

Models and data come from files that ship inside PyPI wheels (see
``shared/MODELS.md``); exported/preprocessed results are cached under
``cache_dir()``.  torch is needed only to export a model that is not cached yet.
"""

from .cache import cache_dir
from .digits import digits_cnn_onnx, digits_split
from .images import (
    imagenet_calib_eval,
    imagenet_crops,
    preprocess_imagenet,
    real_photos,
)
from .mobilenet_v2 import mobilenet_v2_onnx

__all__ = [
    "cache_dir",
    "digits_cnn_onnx",
    "digits_split",
    "imagenet_calib_eval",
    "imagenet_crops",
    "mobilenet_v2_onnx",
    "preprocess_imagenet",
    "real_photos",
]
