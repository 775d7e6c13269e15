"""Train the small digits CNN and export it to examples/digits_cnn.onnx.

The model is tiny (8x8 inputs, ~20 k parameters) but its graph exercises the
operators the integer compiler must handle: conv, strided conv, depthwise
conv, BatchNorm, ReLU, ReLU6 (Clip), a residual Add, MaxPool, Concat, global
average pool, Flatten and Gemm.  Training is CPU-only, seeded, and takes well
under a minute on two cores.

Usage::

    .venv/bin/python examples/train_digits_cnn.py [--out examples/digits_cnn.onnx]
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import time

import numpy as np
import torch
from torch import nn

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qplugin_zoo.cache import atomic_path  # noqa: E402
from qplugin_zoo.digits import digits_split  # noqa: E402

SEED = 0
EPOCHS = 40
BATCH = 32


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


class Residual(nn.Module):
    """relu(x + bn(conv1x1(x)))."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.body = nn.Sequential(*conv_bn(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.body(x))


class ConcatBranch(nn.Module):
    """concat([relu(bn(conv1x1(x))), x], channels)."""

    def __init__(self, ch: int, extra: int) -> None:
        super().__init__()
        self.branch = nn.Sequential(*conv_bn(ch, extra, 1), nn.ReLU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch(x), x], dim=1)


class DigitsCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            *conv_bn(1, 16, 3), nn.ReLU(),  # 16x8x8
            *conv_bn(16, 32, 3, stride=2), nn.ReLU(),  # 32x4x4
            *conv_bn(32, 32, 3, groups=32), nn.ReLU6(),  # depthwise, 32x4x4
            Residual(32),  # 32x4x4
            nn.MaxPool2d(2),  # 32x2x2
            ConcatBranch(32, 16),  # 48x2x2
            nn.AdaptiveAvgPool2d(1),  # 48x1x1
            nn.Flatten(),
        )
        self.fc = nn.Linear(48, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def shift_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Randomly translate each image by up to one pixel (zero fill)."""
    padded = nn.functional.pad(x, (1, 1, 1, 1))
    dy = torch.randint(0, 3, (x.shape[0],), generator=gen)
    dx = torch.randint(0, 3, (x.shape[0],), generator=gen)
    return torch.stack([padded[i, :, dy[i] : dy[i] + 8, dx[i] : dx[i] + 8] for i in range(x.shape[0])])


def train(x_train: np.ndarray, y_train: np.ndarray) -> DigitsCNN:
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    model = DigitsCNN()
    xt, yt = torch.from_numpy(np.array(x_train)), torch.from_numpy(np.array(y_train))
    steps = EPOCHS * ((len(xt) + BATCH - 1) // BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=1e-2, total_steps=steps)
    model.train()
    for epoch in range(EPOCHS):
        perm = torch.randperm(len(xt), generator=gen)
        total = 0.0
        for i in range(0, len(xt), BATCH):
            idx = perm[i : i + BATCH]
            loss = nn.functional.cross_entropy(model(shift_augment(xt[idx], gen)), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(idx)
        if epoch % 10 == 9 or epoch == EPOCHS - 1:
            print(f"epoch {epoch + 1:3d}  train loss {total / len(xt):.4f}")
    return model.eval()


def accuracy(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(axis=1) == y).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "examples" / "digits_cnn.onnx")
    args = parser.parse_args()
    torch.set_num_threads(2)
    start = time.perf_counter()

    x_train, y_train, x_test, y_test = digits_split()
    model = train(x_train, y_train)
    with torch.no_grad():
        acc = accuracy(model(torch.from_numpy(np.array(x_test))).numpy(), y_test)
    print(f"trained in {time.perf_counter() - start:.1f} s; float test accuracy (torch) {acc:.4f}")

    example = torch.from_numpy(np.array(x_test[:1]))
    with atomic_path(args.out) as tmp, torch.no_grad():
        torch.onnx.export(
            model, (example,), str(tmp), input_names=["input"], output_names=["logits"],
            opset_version=18, dynamo=True, external_data=False, verbose=False,
        )

    import onnx
    import onnxruntime as ort
    from collections import Counter

    proto = onnx.load(args.out)
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(str(args.out), providers=["CPUExecutionProvider"])
    logits = np.concatenate([sess.run(["logits"], {"input": x[None]})[0] for x in x_test])
    ort_acc = accuracy(logits, y_test)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")
    print(f"ops: {dict(Counter(n.op_type for n in proto.graph.node))}")
    print(f"float test accuracy (onnxruntime) {ort_acc:.4f}")
    if ort_acc < 0.97:
        sys.exit(f"accuracy {ort_acc:.4f} below the 0.97 target")


if __name__ == "__main__":
    main()
