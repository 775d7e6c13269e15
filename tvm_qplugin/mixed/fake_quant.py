"""Float simulations of the integer grids the compiler uses, for sensitivity only.

Weights: symmetric per output channel, ``q in [-(2^(b-1) - 1), 2^(b-1) - 1]``, round half to
even (torch.round) -- the compiler's weight grid (quant/). Activations: asymmetric per tensor over
the calibrated ``[lo, hi]`` (``lo <= 0 <= hi``), ``2^b`` levels. The sensitivity only needs the
size of ``Q(x) - x``, so these are not the bit-exact integer kernels (ops/ has those).
"""
from __future__ import annotations

W_BITS = (4, 8)
A_BITS = (8, 16)


def quantize_weight(w, bits: int, op: str = "Conv"):
    """``w`` on the symmetric per-channel grid of ``bits`` (channel axis 0, axis 1 for MatMul)."""
    import torch

    axis = 1 if op == "MatMul" else 0
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
