"""Data-free calibration (ZeroQ): synthesise inputs whose batch-norm statistics match the model's.

Every BatchNormalization node stores the mean and variance its input had over the training set.
Gradient descent on the *input* (through the float model, PyTorch twin: torch_graph.py) drives
the batch mean and standard deviation of each BN input towards those stored values (ZeroQ's
"distilled data"); the calibrator then observes ranges on these inputs as on real ones.

Two additions to ZeroQ, each for a range it gets wrong on MobileNetV2 (docs/mixed-precision.md):
the inputs stay inside the preprocessing's value range when the user gives it (unbounded
synthetic pixels made the input scale 2.5x coarser than real crops need), and a classifier's
inputs are also pushed towards a random class each (DeepInversion's term), or the logits
calibrate to half their real range and saturate.

Cost: most steps run on inputs of half the height and width (coarse to fine, as DeepInversion's
multi-resolution synthesis), a few at the model's own size; on MobileNetV2 that is 3x less
compute than all steps at 224x224 for the same agreement, which is what brings it under a minute
on two shared cores.

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
from .torch_graph import load_torch_graph, one_torch_thread

log = logging.getLogger(__name__)

DISTILL = "distill"   # the --calib value that asks for this
DEFAULT_SAMPLES = 16
# Two stages (coarse to fine, as DeepInversion's multi-resolution synthesis): DEFAULT_ITERATIONS Adam
# steps at 1/COARSE of the input's height and width, where a step costs COARSE^2 times less (the
# statistics of a convolutional network's BN inputs hardly depend on the image size: MobileNetV2's
# loss falls alike), then the inputs upsampled to the model's size and FINE_ITERATIONS steps there,
# which restore the fine detail the first layers' statistics (and the logits' range) ask for.
# MobileNetV2, 16 inputs: 40 steps at 112x112 + 8 at 224x224 take 33 CPU-s (60 steps at 224x224:
# ~100) and calibrate as well (85.9 vs 85.5 % agreement; docs/mixed-precision.md "Mixed precision").
DEFAULT_ITERATIONS = 40
FINE_ITERATIONS = 8
COARSE = 2
# The calibration observer for distilled inputs (`compile --calib distill` without --observer): the
# synthetic ranges scatter around the real ones (0.6-1.8x per tensor on MobileNetV2), and MSE-optimal
# clipping discounts the tails that synthesis exaggerates; percentile 99.999 (real data's default)
# keeps them. MobileNetV2, the default synthesis: mse 87.5 %, percentile 85.9 % (real data 89.5 %).
DISTILL_OBSERVER = "mse"
MIN_COARSE_SIDE = 32   # smaller inputs (the tests' 8x8 models) are synthesised at their own size only
CLASS_WEIGHT = 0.01


@dataclass
class Distilled:
    """The synthetic calibration set and how it was made."""

    arrays: dict          # input name -> (samples, ...) float32
    bn_loss_start: float  # BN-statistics loss on the Gaussian start
    bn_loss_end: float
    iterations: int       # steps at the coarse size (at the model's size when there was no coarse stage)
    seconds: float
    class_weight: float = 0.0          # 0: the model has no classifier output, no class term
    input_range: list | None = None    # [lo, hi] per channel when bounded by the preprocessing
    fine_iterations: int = 0           # steps at the model's own size after the coarse stage
    coarse_shape: list | None = None   # the input shape of the coarse stage; None: none was run
    cpu_seconds: float = 0.0           # this process's CPU time: the figure a loaded machine does not inflate


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
            class_weight: float = CLASS_WEIGHT, input_box: tuple | None = None, coarse: int = COARSE,
            fine_iterations: int = FINE_ITERATIONS) -> Distilled:
    """``samples`` synthetic inputs for ``model`` (ZeroQ, plus a class term for classifiers).

    Parameters
    ----------
    model : float ONNX model with BatchNormalization nodes
    samples : how many inputs to synthesise (one batch)
    iterations, lr : Adam steps on the inputs at the coarse size and their step size (ZeroQ: 500
        full-size steps at 0.5); the fine stage steps at ``lr / 2``
    input_shape : the model input's shape if the file leaves it dynamic (first axis: batch)
    class_weight : weight of the cross-entropy towards a random class per input, when the first
        output is (batch, classes); 0 turns it off
    input_box : ``(lo, hi, layout)`` per-channel bounds (the preprocessing's value range, NCHW or
        NHWC): the inputs start and stay inside it (projected steps), as real images do
    coarse, fine_iterations : the first stage runs at 1/``coarse`` of the height and width (images
        of at least MIN_COARSE_SIDE per side after it, on a model that accepts the size; else at
        full size), then ``fine_iterations`` steps at the model's size; ``coarse=1``: one stage
    """
    import torch

    check_distillable(model)
    t0, c0 = time.perf_counter(), time.process_time()
    g = load_torch_graph(model)
    name = g.input_names[0]
    shape = input_shape or tuple(d.dim_value for d in next(
        i for i in g.model.graph.input if i.name == name).type.tensor_type.shape.dim)
    if not shape or any(d <= 0 for d in shape):
        raise CalibrationError(f"--calib distill: input {name!r} of {model} has a dynamic shape {shape}; pass "
                               "--input-shape NAME=D1,D2,...")
    layout = input_box[2] if input_box is not None else "NCHW"
    with one_torch_thread():
        gen = torch.Generator().manual_seed(seed)
        weights = {k: w.detach() for k, w in g.weights.items()}
        lo = hi = None
        if input_box is not None:
            lo, hi = _box_tensors(input_box, shape, model)
        small = _coarse_shape(g, name, weights, shape, layout, coarse, samples)
        x = torch.randn((samples, *(small or shape)[1:]), generator=gen)
        if lo is not None:
            x = torch.minimum(torch.maximum((lo + hi) / 2 + x * (hi - lo) / 4, lo), hi)
        stage = _Stage(g, name, weights, lo, hi, class_weight, gen)
        x = stage.run(x, iterations, lr)
        if small is not None:
            x = stage.run(_resize(x, shape, layout), fine_iterations, lr / 2)
        with torch.no_grad():
            end = float(bn_loss(g, {name: x}, weights))
    seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
    log.info("distilled %d inputs in %.1f s (%.1f CPU-s; %d steps at %s%s): BN-statistics loss %.4g -> %.4g",
             samples, seconds, cpu, iterations, small or shape,
             f" + {fine_iterations} at {shape}" if small else "", stage.start, end)
    box = None if lo is None else [lo.flatten().tolist(), hi.flatten().tolist()]
    return Distilled({name: x.detach().numpy().astype(np.float32)}, stage.start, end, iterations, seconds,
                     class_weight if stage.targets is not None else 0.0, box,
                     fine_iterations if small else 0, list(small) if small else None, cpu)


class _Stage:
    """Projected Adam steps on the inputs towards the BN statistics (+ the class term); the
    random classes are drawn once and kept across stages."""

    def __init__(self, g, name, weights, lo, hi, class_weight, gen):
        self.g, self.name, self.weights, self.lo, self.hi = g, name, weights, lo, hi
        self.class_weight, self.gen = class_weight, gen
        self.start, self.targets = None, None

    def run(self, x, steps: int, lr: float):
        import torch

        x = x.detach().clone().requires_grad_(True)
        opt = torch.optim.Adam([x], lr=lr)
        for _ in range(steps):
            opt.zero_grad()
            loss, out = bn_loss(self.g, {self.name: x}, self.weights, with_output=True)
            if self.start is None:
                self.start = loss.item()
            if self.class_weight and out.dim() == 2 and out.shape[1] > 1:
                if self.targets is None:
                    self.targets = torch.randint(out.shape[1], (x.shape[0],), generator=self.gen)
                loss = loss + self.class_weight * torch.nn.functional.cross_entropy(out, self.targets)
            loss.backward()
            opt.step()
            if self.lo is not None:  # projected step: back into the box
                with torch.no_grad():
                    x.copy_(torch.minimum(torch.maximum(x, self.lo), self.hi))
        if self.start is None:  # no step at all: the loss of the start still says where it began
            with torch.no_grad():
                self.start = float(bn_loss(self.g, {self.name: x}, self.weights))
        return x.detach()


def _spatial_axes(shape: tuple, layout: str) -> tuple[int, int] | None:
    if len(shape) != 4:
        return None
    return (1, 2) if layout == "NHWC" else (2, 3)


def _coarse_shape(g, name, weights, shape, layout, coarse, samples) -> tuple | None:
    """The input shape of the coarse stage, or None when there is none: not an image, too small,
    ``coarse`` 1, or a model that refuses the smaller size (a Reshape to a fixed spatial size)."""
    import torch

    axes = _spatial_axes(shape, layout)
    if coarse <= 1 or axes is None or min(shape[a] for a in axes) // coarse < MIN_COARSE_SIDE:
        return None
    small = list(shape)
    for a in axes:
        small[a] = shape[a] // coarse
    try:
        with torch.no_grad():
            bn_loss(g, {name: torch.zeros((min(samples, 2), *small[1:]))}, weights)
    except Exception as e:  # noqa: BLE001 - any failure of the float graph at that size: stay at full size
        log.info("distillation at full size only: the model does not run at %s (%s)", small, e)
        return None
    return tuple(small)


def _resize(x, shape: tuple, layout: str):
    """Bilinear upsampling of the coarse inputs to the model's height and width."""
    import torch.nn.functional as F

    axes = _spatial_axes(shape, layout)
    size = (shape[axes[0]], shape[axes[1]])
    if layout == "NHWC":
        return F.interpolate(x.permute(0, 3, 1, 2), size=size, mode="bilinear", align_corners=False).permute(0, 2, 3, 1)
    return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


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


