"""sklearn's 8x8 handwritten digits: a real labelled data set that ships offline.

A small CNN trained on it (``examples/train_digits_cnn.py``) gives a fast
fixture with a real accuracy figure, and its graph exercises the operators the
quantizer must handle (conv, depthwise, strided, BN, ReLU, ReLU6, Add,
MaxPool, Concat, global average pool, Gemm).
"""

from __future__ import annotations

import functools
import pathlib

import numpy as np

__all__ = ["digits_split", "digits_cnn_onnx"]

_REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
_DIGITS_ONNX = _REPO_ROOT / "examples" / "digits_cnn.onnx"
_TRAIN_SCRIPT = _REPO_ROOT / "examples" / "train_digits_cnn.py"


@functools.lru_cache(maxsize=1)
def _split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None, :, :]
    y = digits.target.astype(np.int64)
    parts = train_test_split(x, y, test_size=0.3, random_state=0, stratify=y)
    for a in parts:
        a.setflags(write=False)  # shared via the cache; callers must not mutate
    x_train, x_test, y_train, y_test = parts
    return x_train, y_train, x_test, y_test


def digits_split() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Fixed stratified train/test split of ``sklearn.datasets.load_digits``.

    Returns
    -------
    x_train, y_train, x_test, y_test : np.ndarray
        Images scaled to [0, 1] (the raw pixels are 0..16), float32
        ``(N, 1, 8, 8)``; labels int64 ``(N,)``.  1257 train / 540 test,
        ``train_test_split(test_size=0.3, random_state=0, stratify=y)`` so the
        training script and the tests agree on which images are held out.
        The arrays are read-only (cached); copy before modifying.
    """
    return _split()


def digits_cnn_onnx() -> pathlib.Path:
    """Path of the trained digits CNN shipped in the repo (``examples/digits_cnn.onnx``).

    Input ``"input"`` float32 ``(1, 1, 8, 8)`` laid out as ``digits_split``
    returns it; output ``"logits"`` ``(1, 10)``.

    Raises
    ------
    FileNotFoundError
        If the file is missing; regenerate it with ``examples/train_digits_cnn.py``.
    """
    if not _DIGITS_ONNX.is_file():
        raise FileNotFoundError(
            f"{_DIGITS_ONNX} not found; create it with `python {_TRAIN_SCRIPT}` (needs torch, < 1 min on CPU)"
        )
    return _DIGITS_ONNX
