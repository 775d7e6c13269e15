"""Train a small ViT on sklearn's load_digits and export it to examples/digits_vit.onnx.

Patch embedding (2x2 patches of the 8x8 image, conv stride 2) + learned position embedding, four
pre-norm encoder blocks (LayerNorm, 2-head attention with an explicit QK^T * 1/sqrt(d) -> Softmax
-> AV, GELU MLP), mean over tokens, LayerNorm, linear head. It exercises exactly the patterns
the integer transformer path handles. CPU, seeded, well under a minute.

Usage::

    .venv/bin/python examples/train_digits_vit.py [--out examples/digits_vit.onnx]
"""
from __future__ import annotations

import argparse
import math
import pathlib
import sys

import numpy as np
import torch
from torch import nn

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from qplugin_zoo.cache import atomic_path  # noqa: E402
from qplugin_zoo.digits import digits_split  # noqa: E402

SEED, EPOCHS, BATCH, DIM, HEADS, DEPTH, MLP = 0, 60, 32, 32, 2, 4, 64


class Attention(nn.Module):
    def __init__(self):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(DIM, DIM) for _ in range(4))

    def forward(self, x):
        b, n, d = x.shape
        hd = d // HEADS

        def heads(t):
            return t.reshape(b, n, HEADS, hd).transpose(1, 2)

        q, k, v = heads(self.q(x)), heads(self.k(x)), heads(self.v(x))
        att = torch.softmax(q @ k.transpose(-1, -2) * (1.0 / math.sqrt(hd)), dim=-1)
        return self.o((att @ v).transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.n1, self.att, self.n2 = nn.LayerNorm(DIM), Attention(), nn.LayerNorm(DIM)
        self.mlp = nn.Sequential(nn.Linear(DIM, MLP), nn.GELU(), nn.Linear(MLP, DIM))

    def forward(self, x):
        x = x + self.att(self.n1(x))
        return x + self.mlp(self.n2(x))


class DigitsViT(nn.Module):
    def __init__(self):
        super().__init__()
        self.patch = nn.Conv2d(1, DIM, 2, 2)
        self.pos = nn.Parameter(torch.zeros(1, 16, DIM))
        self.blocks = nn.Sequential(*[Block() for _ in range(DEPTH)])
        self.norm, self.head = nn.LayerNorm(DIM), nn.Linear(DIM, 10)

    def forward(self, x):
        t = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        return self.head(self.norm(self.blocks(t).mean(dim=1)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=pathlib.Path, default=REPO / "examples" / "digits_vit.onnx")
    args = ap.parse_args()
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    torch.set_num_threads(2)
    x_train, y_train, x_test, y_test = digits_split()
    model = DigitsViT()
    xt, yt = torch.from_numpy(x_train), torch.from_numpy(y_train)
    steps = EPOCHS * ((len(xt) + BATCH - 1) // BATCH)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=1e-2)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps)
    model.train()
    for epoch in range(EPOCHS):
        perm = torch.randperm(len(xt), generator=gen)
        for i in range(0, len(xt), BATCH):
            idx = perm[i : i + BATCH]
            loss = nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(torch.from_numpy(x_test)).argmax(1).numpy() == y_test).mean())
    print(f"float test accuracy {acc:.4f} on {len(y_test)} held-out digits")
    with atomic_path(args.out) as tmp, torch.no_grad():
        torch.onnx.export(model, (torch.from_numpy(x_test[:1]),), str(tmp), input_names=["input"],
                          output_names=["logits"], opset_version=18, dynamo=True, external_data=False)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
