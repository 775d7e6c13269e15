"""Data-free calibration (ZeroQ): synthesise inputs whose batch-norm statistics match the model's.

Every BatchNormalization node stores the mean and variance its input had over the training set.
Gradient descent on the *input* (through the float model, PyTorch twin: torch_graph.py) drives
the batch mean and standard deviation of each BN input towards those stored values (ZeroQ's
"distilled data"); the calibrator then observes ranges on these inputs as on real ones.

Two additions to ZeroQ, each for a range it gets wrong on MobileNetV2 (docs/architecture.md):
the inputs stay inside the preprocessing's value range when the user gives it (unbounded
synthetic pixels made the input scale 2.5x coarser than real crops need), and a classifier's
inputs are also pushed towards a random class each (DeepInversion's term), or the logits
calibrate to half their real range and saturate.

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
DEFAULT_SAMPLES = 16
DEFAULT_ITERATIONS = 60   # MobileNetV2: 60 and 120 steps calibrate alike (85.5 vs 85.2 % agreement)
# weight of the cross-entropy towards a random class per input (classifiers only): BN statistics
# alone leave the logits of synthetic inputs at half the range real images give (MobileNetV2: 9.9
# vs 21.7), and a logits range calibrated that narrow saturates real images' top classes (56 %
# top-1 agreement from that alone); the class term (DeepInversion / GDFQ) makes them confident.
CLASS_WEIGHT = 0.01


@dataclass
class Distilled:
    """The synthetic calibration set and how it was made."""

    arrays: dict          # input name -> (samples, ...) float32
    bn_loss_start: float  # BN-statistics loss on the Gaussian start
    bn_loss_end: float
    iterations: int
    seconds: float
    class_weight: float = 0.0          # 0: the model has no classifier output, no class term
    input_range: list | None = None    # [lo, hi] per channel when bounded by the preprocessing


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


def distill(model: str | Path, samples: int = DEFAULT_SAMPLES, iterations: int = DEFAULT_ITERATIONS,
            lr: float = 0.2, seed: int = 0, input_shape: tuple[int, ...] | None = None,
            class_weight: float = CLASS_WEIGHT, input_box: tuple | None = None) -> Distilled:
    """``samples`` synthetic inputs for ``model`` (ZeroQ, plus a class term for classifiers).

    Parameters
    ----------
    model : float ONNX model with BatchNormalization nodes
    samples : how many inputs to synthesise (one batch)
    iterations, lr : Adam steps on the inputs and their step size (ZeroQ: 500 at 0.5)
    input_shape : the model input's shape if the file leaves it dynamic (first axis: batch)
    class_weight : weight of the cross-entropy towards a random class per input, when the first
        output is (batch, classes); 0 turns it off
    input_box : ``(lo, hi, layout)`` per-channel bounds (the preprocessing's value range, NCHW or
        NHWC): the inputs start and stay inside it (projected steps), as real images do
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
    x = torch.randn((samples, *shape[1:]), generator=gen)
    lo = hi = None
    if input_box is not None:
        lo, hi = _box_tensors(input_box, shape, model)
        x = torch.minimum(torch.maximum((lo + hi) / 2 + x * (hi - lo) / 4, lo), hi)
    x.requires_grad_(True)
    opt = torch.optim.Adam([x], lr=lr)
    weights = {k: w.detach() for k, w in g.weights.items()}
    start, targets = None, None
    for _ in range(iterations):
        opt.zero_grad()
        loss, out = bn_loss(g, {name: x}, weights, with_output=True)
        if start is None:
            start = loss.item()
        if class_weight and out.dim() == 2 and out.shape[1] > 1:
            targets = torch.randint(out.shape[1], (samples,), generator=gen) if targets is None else targets
            loss = loss + class_weight * torch.nn.functional.cross_entropy(out, targets)
        loss.backward()
        opt.step()
        if lo is not None:  # projected step: back into the box
            with torch.no_grad():
                x.copy_(torch.minimum(torch.maximum(x, lo), hi))
    with torch.no_grad():
        end = float(bn_loss(g, {name: x}, weights))
    seconds = time.perf_counter() - t0
    log.info("distilled %d inputs in %.1f s (%d steps): BN-statistics loss %.4g -> %.4g", samples, seconds,
             iterations, start, end)
    box = None if lo is None else [lo.flatten().tolist(), hi.flatten().tolist()]
    return Distilled({name: x.detach().numpy().astype(np.float32)}, start, end, iterations, seconds,
                     class_weight if targets is not None else 0.0, box)


def _box_tensors(input_box: tuple, shape: tuple, model) -> tuple:
    """The per-channel bounds as tensors broadcasting over an input of ``shape``."""
    import torch

    lo, hi, layout = input_box
    axis = len(shape) - 1 if layout == "NHWC" else 1
    lo, hi = np.asarray(lo, np.float32).ravel(), np.asarray(hi, np.float32).ravel()
    if lo.size != shape[axis] and (lo == lo[0]).all() and (hi == hi[0]).all():
        lo, hi = lo[:1], hi[:1]  # the same bounds for every channel (e.g. the default 3-channel mean/std)
    if lo.size not in (1, shape[axis]):
        raise CalibrationError(f"--calib distill: --mean/--std give {lo.size} channel(s) but input of {model} has "
                               f"{shape[axis]} on its channel axis ({layout}); pass one value per channel")
    view = [1] * len(shape)
    view[axis] = -1
    return torch.as_tensor(lo).reshape(view), torch.as_tensor(hi).reshape(view)


def bn_loss(g, inputs: dict, weights: dict | None = None, with_output: bool = False):
    """ZeroQ's objective: mean over BN nodes of ``||mu - mu_bn||^2 + ||sigma - sigma_bn||^2`` (per
    channel, over the batch and the spatial axes); with ``with_output`` also the first output."""
    stats: list = []
    outs = g.run(inputs, weights=weights, bn_stats=stats)
    terms = [((m - rm) ** 2).mean() + ((s - rs) ** 2).mean() for m, s, rm, rs in stats]
    loss = sum(terms) / len(terms)
    return (loss, outs[0]) if with_output else loss


