"""Measured per-layer latency for the ILP: read from the report.json of compiles at each width.

The compile's VM instrument times every kernel (profile.py -> report ``layers[].latency_us``); a
compile of the whole model at uniform ``(w_bits, a_bits)`` therefore measures every layer at that
width on the target, in context (caches warm as in the real run). Report layers are named by
Relax variable; the conv2d / dense layers come in graph order, as the ONNX Conv / Gemm / MatMul
layers do, so the i-th of one is the i-th of the other (their counts and MACs are checked).

A width no compile measured stays ``nan``: under a latency budget the ILP cannot choose it
(ilp._milp), and the caller is told which widths lacked a measurement.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np

from ..errors import QPluginError

log = logging.getLogger(__name__)


def latency_table(reports: dict, layer_names: list[str], layer_macs: list[int]) -> tuple[np.ndarray, dict, float]:
    """``(table, fixed_ms, ...)`` from ``{(w_bits, a_bits): report.json path or dict}``.

    Returns
    -------
    per_layer : dict (w_bits, a_bits) -> ms per layer (np.ndarray, nan where unmeasured)
    overhead_ms : the median model latency minus its layers' sum (the non-layer ops), from the
        first report: what no width choice changes
    """
    per_layer, overhead = {}, None
    for option, rep in reports.items():
        r = json.loads(Path(rep).read_text()) if not isinstance(rep, dict) else rep
        layers = [layer for layer in r.get("layers", []) if layer["op"] in ("conv2d", "dense")]
        if len(layers) != len(layer_names):
            raise QPluginError(f"report of the {option} compile has {len(layers)} conv2d/dense layers, the model "
                               f"{len(layer_names)}: it is the report of another model; compile this one")
        bad = [n for n, layer, m in zip(layer_names, layers, layer_macs) if m and layer.get("macs") not in (None, m)]
        if bad:
            raise QPluginError(f"report of the {option} compile: the MACs of layer(s) {', '.join(bad[:3])} differ "
                               "from the model's; it is the report of another model or input shape")
        ms = np.array([np.nan if layer.get("latency_us") is None else layer["latency_us"] / 1000 for layer in layers])
        per_layer[tuple(option)] = ms
        median = (r.get("latency_ms") or {}).get("median")
        if overhead is None and median is not None:
            overhead = max(float(median) - float(np.nansum(ms)), 0.0)
    return per_layer, overhead or 0.0


def as_matrix(per_layer: dict, options: list[tuple[int, int]], n_layers: int) -> np.ndarray:
    """``layers x options`` in ms; an option no compile measured is nan (and logged once)."""
    missing = [o for o in options if o not in per_layer]
    if missing:
        log.warning("no latency measured at %s: under a latency budget those widths are not chosen",
                    ", ".join(f"w{w}a{a}" for w, a in missing))
    return np.stack([per_layer.get(o, np.full(n_layers, np.nan)) for o in options], axis=1)
