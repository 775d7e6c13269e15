"""Short shift/add fine-tuning of the digits ViT (PyTorch, the ``models`` extra), then compile it.

Post-training, ``--attention shiftadd`` swaps each softmax attention for Hamming add attention and
the linears for power-of-two ones: the shift linears cost the digits ViT well under a point, the
add attention costs it most of its accuracy (docs/transformers.md, "Shift/add"). This helper
loads the shipped float ViT (examples/digits_vit.onnx) into the model of
examples/train_digits_vit.py, then fine-tunes it for a few epochs with the *same* arithmetic the compiled kernels run -- power-of-two weights
(quant/pow2.py's rounding) and add attention (ops/shiftadd.py: codes of ``x > mean(x)``, scores
``popcount(XNOR)``, ``out = sum s v / sum s``) -- through straight-through estimators. The
fine-tuned weights go back into the ordinary softmax architecture for export (the compiler
recognises softmax attention and replaces it), and the ONNX file is compiled with
``attention="shiftadd", shift_linears="all"`` before and after fine-tuning.

Usage::

    .venv/bin/python tutorials/shiftadd/finetune.py [--epochs 8] [--out /tmp/digits_vit_shiftadd.onnx]
"""
from __future__ import annotations

import argparse
import importlib.util
import math
import pathlib
import sys
import tempfile

import numpy as np
import torch
from torch import nn

REPO = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from qplugin_zoo.digits import digits_split  # noqa: E402


def _example():
    """examples/train_digits_vit.py as a module (its model classes and constants)."""
    spec = importlib.util.spec_from_file_location("train_digits_vit", REPO / "examples" / "train_digits_vit.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def pow2_weight(w: torch.Tensor) -> torch.Tensor:
    """Per-row power-of-two weights as quant/pow2.shift_quantize rounds them (0, +-2^0..2^6 times
    max|w_row| / 64, nearest level), with a straight-through gradient."""
    scale = w.detach().abs().amax(dim=1, keepdim=True).clamp_min(1e-12) / 64.0
    mag = w.detach().abs() / scale
    levels = torch.tensor([0.0] + [2.0**i for i in range(7)], dtype=w.dtype)
    mids = (levels[1:] + levels[:-1]) / 2
    q = levels[torch.searchsorted(mids, mag.contiguous(), right=False)] * torch.sign(w.detach()) * scale
    return w + (q - w).detach()


def hamming_codes(x: torch.Tensor, temperature: float = 4.0) -> torch.Tensor:
    """Bits ``x > mean(x)`` over the feature axis; gradient of a sigmoid (straight through)."""
    c = x - x.mean(dim=-1, keepdim=True)
    soft = torch.sigmoid(c * temperature / (c.detach().abs().mean(dim=-1, keepdim=True) + 1e-6))
    return soft + ((c > 0).to(x.dtype) - soft).detach()


def add_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``sum_m s(n, m) v_m / sum_m s(n, m)``, ``s`` = matching code bits (ops/shiftadd.py)."""
    bq, bk = hamming_codes(q), hamming_codes(k)
    s = bq @ bk.transpose(-1, -2) + (1 - bq) @ (1 - bk).transpose(-1, -2)
    return (s @ v) / s.sum(dim=-1, keepdim=True).clamp_min(1.0)


class ShiftAddMode:
    """Within ``with ShiftAddMode(model):`` the encoder blocks' linears use power-of-two weights and
    their attention is add attention; the patch embedding and the head stay as they are (the
    compiler keeps them int8)."""

    def __init__(self, model: nn.Module, example):
        self.model, self.example, self.saved = model, example, []

    def __enter__(self):
        ex = self.example
        for block in self.model.blocks:
            for lin in [block.att.q, block.att.k, block.att.v, block.att.o, block.mlp[0], block.mlp[2]]:
                self.saved.append((lin, lin.forward))
                lin.forward = (lambda x, lin=lin: nn.functional.linear(x, pow2_weight(lin.weight), lin.bias))
            att = block.att
            self.saved.append((att, att.forward))

            def forward(x, att=att):
                b, n, d = x.shape

                def heads(t):
                    return t.reshape(b, n, ex.HEADS, d // ex.HEADS).transpose(1, 2)

                out = add_attention(heads(att.q(x)), heads(att.k(x)), heads(att.v(x)))
                return att.o(out.transpose(1, 2).reshape(b, n, d))

            att.forward = forward
        return self.model

    def __exit__(self, *exc):
        for obj, fwd in reversed(self.saved):
            obj.forward = fwd
        self.saved.clear()


def load_from_onnx(model: nn.Module, path) -> None:
    """The shipped ViT's weights (examples/digits_vit.onnx) into ``model``: named initializers by
    name, the encoder linears' weights (unnamed, stored transposed as MatMul constants) in graph
    order q, k, v, o, fc1, fc2 per block. Checked against ONNX Runtime by the caller."""
    import onnx
    from onnx import numpy_helper

    m = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i) for i in m.graph.initializer}
    state = model.state_dict()
    for name in state:
        if name in inits:
            state[name] = torch.from_numpy(np.array(inits[name])).reshape(state[name].shape)
    mats = [inits[n.input[1]] for n in m.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    linears = [f"blocks.{b}.{part}.weight" for b in range(len(model.blocks))
               for part in ("att.q", "att.k", "att.v", "att.o", "mlp.0", "mlp.2")]
    if len(mats) != len(linears):
        raise ValueError(f"{path}: {len(mats)} MatMul weights, the ViT has {len(linears)} encoder linears")
    for name, w in zip(linears, mats):
        state[name] = torch.from_numpy(np.ascontiguousarray(w.T))
    model.load_state_dict(state)


def train(model, x, y, epochs: int, lr: float, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-2)
    steps = epochs * math.ceil(len(x) / 32)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), 32):
            idx = perm[i : i + 32]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
    model.eval()


def accuracy(model, x, y) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def compiled_accuracy(onnx_path, x_train, x_test, y_test) -> float:
    """Labelled accuracy of the ``--attention shiftadd --shift-linears all`` compile."""
    import tvm_qplugin as tq

    art = tq.compile(onnx_path, calib={"input": x_train[:256]}, eval={"input": x_test[:16]}, attention="shiftadd",
                     shift_linears="all", timing_runs=1)
    q = np.concatenate([art.run({"input": x[None]})[0] for x in x_test])
    return float((q.argmax(1) == y_test).mean())


def export(model, path, sample) -> None:
    with torch.no_grad():
        torch.onnx.export(model, (sample,), str(path), input_names=["input"], output_names=["logits"],
                          opset_version=18, dynamo=True, external_data=False)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--epochs", type=int, default=8, help="shift/add fine-tuning epochs")
    ap.add_argument("--no-baseline", action="store_true", help="skip compiling the shipped model first")
    ap.add_argument("--out", type=pathlib.Path, default=pathlib.Path(tempfile.gettempdir()) / "digits_vit_shiftadd.onnx")
    args = ap.parse_args()
    ex = _example()
    torch.manual_seed(ex.SEED)
    torch.set_num_threads(1)  # (a shared machine: OpenMP spinning costs more than it gives)
    x_train, y_train, x_test, y_test = digits_split()
    xt, yt, xe, ye = (torch.from_numpy(np.array(a)) for a in (x_train, y_train, x_test, y_test))
    model = ex.DigitsViT()
    float_path = REPO / "examples" / "digits_vit.onnx"
    load_from_onnx(model, float_path)
    model.eval()
    import onnxruntime as ort

    sess = ort.InferenceSession(str(float_path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        ref = np.concatenate([sess.run(None, {"input": x_test[i : i + 1]})[0] for i in range(8)])  # batch-1 model
        diff = float(np.abs(model(xe[:8]).numpy() - ref).max())
    if diff > 1e-4:
        raise RuntimeError(f"weights loaded from {float_path} do not reproduce it (max logit difference {diff})")
    with ShiftAddMode(model, ex):
        before = accuracy(model, xe, ye)
    print(f"float {accuracy(model, xe, ye):.4f}; shift/add arithmetic before fine-tuning {before:.4f}", flush=True)
    if not args.no_baseline:
        print(f"compiled shiftadd, post-training: {compiled_accuracy(float_path, x_train, x_test, y_test):.4f}",
              flush=True)
    with ShiftAddMode(model, ex):
        train(model, xt, yt, args.epochs, 1e-3, seed=1)
        after = accuracy(model, xe, ye)
    export(model, args.out, xe[:1])
    print(f"shift/add arithmetic after {args.epochs} epochs {after:.4f}", flush=True)
    print(f"compiled shiftadd, fine-tuned: {compiled_accuracy(args.out, x_train, x_test, y_test):.4f} ({args.out})")


if __name__ == "__main__":
    main()
