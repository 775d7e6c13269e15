"""Data-free calibration (ZeroQ): synthesise inputs whose batch-norm statistics match the model's.

Every BatchNormalization node stores the mean and variance its input had over the training set.
Gradient descent on the *input* (through the float model, PyTorch twin: torch_graph.py) drives
the batch mean and standard deviation of each BN input towards those stored values (ZeroQ's
"distilled data"); the calibrator then observes ranges on these inputs as on real ones.

Note: a model exported with its batch-norms folded into the convolutions (torch.onnx in eval mode
folds them) has no statistic left to match. Optimising the input against nothing would calibrate
on shaped noise, so such a model is refused with a one-line error instead.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import CalibrationError
from .torch_graph import load_torch_graph

log = logging.getLogger(__name__)

DISTILL = "distill"   # the --calib value that asks for this


@dataclass
class Distilled:
    """The synthetic calibration set and how it was made."""

    arrays: dict          # input name -> (samples, ...) float32
    bn_loss_start: float  # BN-statistics loss on the Gaussian start
    bn_loss_end: float
    iterations: int
    seconds: float


def check_distillable(model: str | Path) -> None:
    """Refuse, in well under a second, a model without batch-norms or with several inputs."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False)
    if not any(n.op_type == "BatchNormalization" for n in proto.graph.node):
        raise CalibrationError(f"--calib distill: {model} has no BatchNormalization node (its batch-norms were "
                               "folded into the convolutions at export), so there are no statistics to synthesise "
                               "inputs from; export it with the batch-norms kept (e.g. torch.onnx.export(..., "
                               "optimize=False) then constant folding only) or calibrate on real data with --calib "
                               "FILE.npz|DIR")
    inits = {t.name for t in proto.graph.initializer}
    inputs = [i.name for i in proto.graph.input if i.name not in inits]
    if len(inputs) != 1:
        raise CalibrationError(f"--calib distill: {model} has {len(inputs)} inputs ({', '.join(inputs)}); "
                               "distillation synthesises one image-like input; calibrate on real data instead")


def distill(model: str | Path, samples: int = 32, iterations: int = 200, lr: float = 0.2, seed: int = 0,
            input_shape: tuple[int, ...] | None = None) -> Distilled:
    """``samples`` synthetic inputs for ``model`` (ZeroQ).

    Parameters
    ----------
    model : float ONNX model with BatchNormalization nodes
    samples : how many inputs to synthesise (one batch)
    iterations, lr : Adam steps on the inputs and their step size (ZeroQ: 500 at 0.5)
    input_shape : the model input's shape if the file leaves it dynamic (first axis: batch)
    """
    import torch

    check_distillable(model)
    t0 = time.perf_counter()
    g = load_torch_graph(model)
    name = g.input_names[0]
    shape = input_shape or tuple(d.dim_value for d in next(
        i for i in g.model.graph.input if i.name == name).type.tensor_type.shape.dim)
    if not shape or any(d <= 0 for d in shape):
        raise CalibrationError(f"--calib distill: input {name!r} of {model} has a dynamic shape {shape}; pass "
                               "--input-shape NAME=D1,D2,...")
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((samples, *shape[1:]), generator=gen).requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    start = end = None
    weights = {k: w.detach() for k, w in g.weights.items()}
    for _ in range(iterations):
        opt.zero_grad()
        loss = bn_loss(g, {name: x}, weights)
        loss.backward()
        opt.step()
        start = loss.item() if start is None else start
    with torch.no_grad():
        end = float(bn_loss(g, {name: x}, weights))
    seconds = time.perf_counter() - t0
    log.info("distilled %d inputs in %.1f s (%d steps): BN-statistics loss %.4g -> %.4g", samples, seconds,
             iterations, start, end)
    return Distilled({name: x.detach().numpy().astype(np.float32)}, start, end, iterations, seconds)


def bn_loss(g, inputs: dict, weights: dict | None = None):
    """ZeroQ's objective: mean over BN nodes of ``||mu - mu_bn||^2 + ||sigma - sigma_bn||^2`` (per
    channel, over the batch and the spatial axes)."""
    stats: list = []
    g.run(inputs, weights=weights, bn_stats=stats)
    terms = [((m - rm) ** 2).mean() + ((s - rs) ** 2).mean() for m, s, rm, rs in stats]
    return sum(terms) / len(terms)
