"""The calibrated input second moments ``E[p p^T]`` of the int4 layers, for the int4 weight
rounding with error feedback (quant/int4.py ``round_with_error_feedback``).

``p`` is one row of the layer's im2col matrix: a conv's input patch flattened ``(C/groups, KH,
KW)`` row-major -- the order of the ``(O, C/groups * KH * KW)`` weight rows -- per group, or a
dense layer's input vector. The moments come from one extra float pass over the calibration data,
made only when a plan has int4 layers and only for those layers (int8 keeps round to nearest: at
255 levels its rounding error is already below what the activations' quantization adds).
"""
from __future__ import annotations

import numpy as np

from ..passes.graph import Graph, const_value

# calibration samples the moments are taken over (GPTQ's own default is 128) and im2col rows kept
# per batch (a fixed-seed subset beyond that: MobileNetV2's first layers have 12 544 per image)
MOMENT_SAMPLES = 256
ROWS_PER_BATCH = 1024


def int4_input_moments(runner, data, func, layer_vars: set[str], limit: int | None = None,
                       known: dict | None = None) -> dict[str, np.ndarray]:
    """``{binding name: (groups, K, K) float64}`` for the conv2d / matmul bindings of the float
    ``func`` named in ``layer_vars``, over the first ``min(limit, MOMENT_SAMPLES)`` calibration
    samples of ``data`` run through ``runner`` (calibrate.FloatRunner). Layers in ``known`` are
    kept from it (a second plan of the same compile does not pay for them again)."""
    known = dict(known or {})
    observed = {v: i for i, v in enumerate(runner.observed)}
    wanted = [b for b in Graph(func).bindings  # (an input the runner does not observe: round to nearest)
              if b.name in layer_vars and b.name not in known and b.args[0] in observed]
    if not wanted:
        return known
    sums = {b.name: 0.0 for b in wanted}
    rng = np.random.default_rng(0)
    batches = 0
    limit = MOMENT_SAMPLES if limit is None else min(limit, MOMENT_SAMPLES)
    for batch in data.batches(limit):
        taps, _ = runner.run(batch)
        batches += 1
        for b in wanted:
            rows = _patches(b, taps[observed[b.args[0]]], rng)  # (groups, rows, K)
            # einsum, not matmul: these GEMMs are small, and OpenBLAS's threads next to TVM's
            # spinning pool made them 20-50x slower (MobileNetV2, 2 loaded cores)
            sums[b.name] = sums[b.name] + np.einsum("grk,grl->gkl", rows, rows) / rows.shape[1]
    known.update({name: s / batches for name, s in sums.items()})
    return known


def _patches(b, x: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """The im2col rows ``(groups, rows, K)`` of input ``x`` for binding ``b`` (conv2d NCHW/OIHW, or
    matmul over the last axis); with ``rng``, at most ROWS_PER_BATCH of them, drawn before any
    patch is copied (a strided view until then)."""
    x = np.asarray(x, dtype=np.float64)
    if b.op_name != "relax.nn.conv2d":
        rows = x.reshape(-1, x.shape[-1])
        return _subset(rows, rng)[None]
    a = b.attrs
    top, left, bottom, right = (int(p) for p in a.padding)
    sh, sw = (int(s) for s in a.strides)
    dh, dw = (int(d) for d in a.dilation)
    groups = int(a.groups)
    kh, kw = const_value(b.args[1]).shape[2:]
    xp = np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)))
    win = np.lib.stride_tricks.sliding_window_view(xp, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
    win = win[:, :, ::sh, ::sw, ::dh, ::dw].transpose(0, 2, 3, 1, 4, 5)  # (N, OH, OW, C, KH, KW), a view
    n, oh, ow, c = win.shape[:4]
    picked = _subset(np.arange(n * oh * ow), rng)
    rows = win[picked // (oh * ow), picked // ow % oh, picked % ow]  # (rows, C, KH, KW)
    return rows.reshape(len(picked), groups, (c // groups) * kh * kw).transpose(1, 0, 2)


def _subset(rows: np.ndarray, rng: np.random.Generator | None) -> np.ndarray:
    """``rows``, or ROWS_PER_BATCH of them drawn by ``rng`` (in their order)."""
    if rng is None or len(rows) <= ROWS_PER_BATCH:
        return rows
    return rows[np.sort(rng.choice(len(rows), ROWS_PER_BATCH, replace=False))]
