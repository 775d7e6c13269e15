"""Accuracy of the integer model against fp32 on real inputs (and labels, when given)."""
from __future__ import annotations

import numpy as np


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def is_classifier(shape: tuple[int, ...]) -> bool:
    return len(shape) == 2 and shape[1] > 1


def classification_agreement(fp32: np.ndarray, quant: np.ndarray, labels: np.ndarray | None = None,
                             confident: float = 0.5) -> dict:
    """Top-1 agreement (all / where fp32 max softmax >= ``confident``), int top-1 in fp32 top-5."""
    f_top1 = fp32.argmax(axis=1)
    q_top1 = quant.argmax(axis=1)
    agree = f_top1 == q_top1
    conf = _softmax(fp32.astype(np.float64)).max(axis=1) >= confident
    k = min(5, fp32.shape[1])
    top5 = np.argsort(-fp32, axis=1)[:, :k]
    contains = (top5 == q_top1[:, None]).any(axis=1)
    out = {"metric": "top1_agreement", "value": float(agree.mean()), "reference": "fp32", "inputs": int(len(agree)),
           "top1_agreement_confident": float(agree[conf].mean()) if conf.any() else None,
           "confident_inputs": int(conf.sum()), "top5_contains": float(contains.mean())}
    if labels is not None:
        out["top1_fp32"] = float((f_top1 == labels).mean())
        out["top1_int"] = float((q_top1 == labels).mean())
    return out


SMALL_OUTPUT = 8  # per-sample outputs this small (a probability, a score) are compared across the set


def cosine_agreement(fp32: np.ndarray, quant: np.ndarray) -> dict:
    """Mean and minimum per-sample cosine; for a per-sample output of fewer than
    :data:`SMALL_OUTPUT` values (whose cosine would be its sign) one cosine over the whole set,
    with the largest absolute error beside it."""
    a = fp32.reshape(len(fp32), -1).astype(np.float64)
    b = quant.reshape(len(quant), -1).astype(np.float64)
    if a.shape[1] < SMALL_OUTPUT:
        cos = float((a * b).sum() / max(np.linalg.norm(a) * np.linalg.norm(b), 1e-30))
        return {"metric": "cosine", "value": cos, "min": cos, "reference": "fp32", "inputs": int(len(a)),
                "over": "set", "max_abs_error": float(np.abs(a - b).max())}
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    return {"metric": "cosine", "value": float(cos.mean()), "min": float(cos.min()), "reference": "fp32",
            "inputs": int(len(cos))}
