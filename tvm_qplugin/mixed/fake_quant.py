"""Float simulations of the integer grids the compiler uses, for sensitivity only.

Weights: symmetric per output channel, ``q in [-(2^(b-1) - 1), 2^(b-1) - 1]``. At 8 bits the
step is ``max|w| / 127``, rounded half to even (torch.round): the compiler's int8 grid up to ties.
At 4 bits it is the compiler's own int4 quantizer (quant/int4.py, one home): the min-MSE clip,
and -- given the layer's input second moments (:func:`layer_input_moments`) -- the rounding
with error feedback; a plan ranked on max-scaled round-to-nearest int4 would rank weights the
compiler never builds. Activations: asymmetric per tensor over the calibrated ``[lo, hi]``
(``lo <= 0 <= hi``), ``2^b`` levels. The sensitivity only needs the size of ``Q(x) - x``, so these
are not the bit-exact integer kernels (ops/ has those).
"""
from __future__ import annotations

import numpy as np

from ..quant.int4 import quantize_weight_int4
from ..quant.int4_inputs import ROWS_PER_BATCH

W_BITS = (4, 8)
A_BITS = (8, 16)


def _channel_axis(op: str) -> int:
    return 1 if op == "MatMul" else 0


def quantize_weight(w, bits: int, op: str = "Conv", moments: np.ndarray | None = None):
    """``w`` on the symmetric per-channel grid of ``bits`` (channel axis 0, axis 1 for MatMul).
    ``moments``: the layer's ``(groups, K, K)`` input second moments, used at 4 bits (error feedback)."""
    import torch

    axis = _channel_axis(op)
    if bits == 4:
        codes, scale = quantize_weight_int4(w.detach().cpu().numpy(), axis, moments)
        shape = [1] * w.dim()
        shape[axis] = -1
        return torch.as_tensor(codes * scale.reshape(shape), dtype=w.dtype)
    red = tuple(i for i in range(w.dim()) if i != axis)
    qmax = 2 ** (bits - 1) - 1
    scale = w.detach().abs().amax(dim=red, keepdim=True).clamp_min(1e-12) / qmax
    return torch.clamp(torch.round(w / scale), -qmax, qmax) * scale


def quantize_activation(x, bits: int, lo: float, hi: float):
    """``x`` on the asymmetric per-tensor grid of ``bits`` over ``[lo, hi]`` (widened to hold 0)."""
    import torch

    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    scale = max(hi - lo, 1e-12) / (2**bits - 1)
    zp = round(-lo / scale)
    return (torch.clamp(torch.round(x / scale) + zp, 0, 2**bits - 1) - zp) * scale


def layer_input_moments(g, inputs: dict, names=None, seed: int = 0) -> dict[str, np.ndarray]:
    """``{layer: (groups, K, K) float64}``: each layer's input second moments ``E[p p^T]`` over the
    rows ``p`` of its im2col matrix (a conv's input patch flattened ``(C/groups, KH, KW)``, the
    order of its ``(O, K)`` weight rows; a MatMul / Gemm's input vector) on ``inputs`` -- what
    quant/int4_inputs.py measures on the compiler's float graph, here on the PyTorch twin
    (torch_graph.py), per sample at most ROWS_PER_BATCH rows drawn with a fixed seed. ``names``:
    the layers wanted (default: all); a Gemm with an untransposed weight is left out (round to
    nearest)."""
    import torch

    from .torch_graph import _attr

    nodes = {n.name: n for n in g.model.graph.node}
    wanted = [layer for layer in g.layers if names is None or layer.name in names]
    wanted = [layer for layer in wanted if layer.op != "Gemm" or _attr(nodes[layer.name], "transB", 0)]
    rng = np.random.default_rng(seed)
    sums = {layer.name: 0.0 for layer in wanted}
    count = len(next(iter(inputs.values())))
    with torch.no_grad():
        for i in range(count):
            taps: dict = {}
            g.run({k: np.asarray(v[i : i + 1], dtype=np.float32) for k, v in inputs.items()}, taps=taps)
            for layer in wanted:
                rows = _im2col_rows(nodes[layer.name], taps[layer.name], g.weights[layer.name].shape)
                if rows.shape[1] > ROWS_PER_BATCH:
                    rows = rows[:, np.sort(rng.choice(rows.shape[1], ROWS_PER_BATCH, replace=False))]
                sums[layer.name] = sums[layer.name] + np.einsum("grk,grl->gkl", rows, rows) / rows.shape[1]
    return {name: s / count for name, s in sums.items()}


def _im2col_rows(node, x, w_shape) -> np.ndarray:
    """``(groups, rows, K)`` float64 im2col rows of ``x`` for the Conv / MatMul / Gemm ``node``."""
    import torch.nn.functional as F

    from .torch_graph import _attr

    if node.op_type != "Conv":
        k = int(w_shape[0] if node.op_type == "MatMul" else w_shape[1])
        return x.reshape(-1, k).double().numpy()[None]
    nd = len(w_shape) - 2
    if nd == 1:  # Conv1d as a one-row Conv2d
        x, w_shape = x.unsqueeze(2), (*w_shape[:2], 1, w_shape[2])
    pads = list(_attr(node, "pads", [0] * 2 * nd))
    strides = list(_attr(node, "strides", [1] * nd))
    dilations = list(_attr(node, "dilations", [1] * nd))
    if nd == 1:
        pads, strides, dilations = [0, pads[0], 0, pads[1]], [1, strides[0]], [1, dilations[0]]
    groups = int(_attr(node, "group", 1))
    top, left, bottom, right = pads
    cols = F.unfold(F.pad(x, [left, right, top, bottom]), tuple(w_shape[2:]), dilation=dilations, stride=strides)
    n, ck, length = cols.shape  # (N, C * KH * KW, L), C-major as the weight rows
    rows = cols.reshape(n, groups, ck // groups, length).permute(1, 0, 3, 2).reshape(groups, n * length, ck // groups)
    return rows.double().numpy()
