"""Accuracy of each integer non-linear against float on the same inputs: the papers' published
integer arithmetic (``--nonlinear ivit-paper`` / ``ibert-paper``), the papers' forms in the
project's arithmetic (``--gelu paper --softmax-bits 8``) and the default.

Kernel level (default): one set of float rows per non-linear -- attention-like logits (128
tokens), FFN pre-activations (1536 wide), residual-stream rows with outlier channels (384
channels) -- quantized to the integer input each mode's compile would feed its kernel (int8 for
the I-ViT paper kernels, int16 where the rule keeps the residual width), run through the op's
NumPy twin (bit-exact with the compiled kernel: tests/test_paper_nonlinears.py), compared in
real units: SQNR and max |error|.

``--models``: the digits ViT (labelled accuracy on the 540 held-out digits) and MiniLM (mean /
min cosine to fp32 and nearest-neighbour agreement on 200 sentences, as tests/test_minilm.py
measures them) per mode. MiniLM compiles take minutes each.

    python benchmarks/nonlinear_accuracy.py [--models] [--minilm]
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
from scipy.special import erf

from tvm_qplugin.ops import OPS
from tvm_qplugin.ops.nonlinear import layernorm_int_args
from tvm_qplugin.quant import nonlinear_consts as nc
from tvm_qplugin.quant import paper_consts as pc
from tvm_qplugin.quant.scheme import NonlinearScheme

# (label, --nonlinear, --gelu, --softmax-bits)
MODES = [("I-ViT paper (ivit-paper)", "ivit-paper", "paper", 8),
         ("I-BERT paper (ibert-paper)", "ibert-paper", "paper", 8),
         ("papers' forms, ours (ivit --gelu paper --softmax-bits 8)", "ivit", "paper", 8),
         ("default (ivit, tanh GELU, int16 softmax)", "ivit", "tanh", 16)]


def sqnr_db(got, ref) -> float:
    return 10 * math.log10(float((ref**2).sum()) / max(float(((got - ref) ** 2).sum()), 1e-300))


def quantize(x, dtype):
    """``x`` on a symmetric ``dtype`` grid over its full range: (integers, scale)."""
    top = int(np.iinfo(dtype).max)
    scale = float(np.abs(x).max()) / top
    return np.clip(np.round(x / scale), -top - 1, top).astype(dtype), scale


def softmax_rows(rng):
    """64 attention-like rows of 128 logits: a few strong keys over a Gaussian background."""
    z = rng.normal(0, 2.0, (64, 128))
    z[np.arange(64), rng.integers(0, 128, 64)] += rng.uniform(2, 8, 64)
    return z


def softmax_case(z, variant, bits, in_dtype):
    kind = NonlinearScheme(variant, "paper", bits)
    xq, s = quantize(z, in_dtype)
    z = xq * s
    if kind.kind.paper:
        n = pc.IVIT_SHIFTMAX_N if kind.kind.paper == "ivit" else pc.IBERT_EXP_N
    else:
        n = nc.choose_softmax_n(s, float(z.max() - z.min()), z.shape[-1], variant)
    fmt = kind.softmax
    y = OPS["softmax_int"].reference(xq, in_scale=s, n=n, variant=variant, exp_poly=kind.shiftexp_poly,
                                     out_dtype=fmt.dtype)
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return y.astype(np.float64) * fmt.scale, e / e.sum(axis=-1, keepdims=True)


def gelu_case(x, variant, gelu, in_dtype):
    kind = NonlinearScheme(variant, gelu).kind
    xq, s = quantize(x, in_dtype)
    x = xq * s
    ref = 0.5 * x * (1 + erf(x / math.sqrt(2)))
    out_s = float(np.abs(ref).max()) / 32767
    params = {"in_scale": s, "out_scale": out_s, "qmin": -32768, "qmax": 32767, "out_dtype": "int16", "variant": variant}
    if not kind.paper:
        params["approx"] = gelu
        if kind.exp == "shift":
            params.update(n=nc.choose_gelu_n(s, variant, gelu), exp_poly=NonlinearScheme(variant, gelu).exp_poly)
    y = OPS["gelu_int"].reference(xq, **params)
    return y.astype(np.float64) * out_s, ref


def layernorm_case(x, variant, in_dtype):
    xq, s = quantize(x, in_dtype)
    x = xq * s
    c = x.shape[-1]
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    ref = (x - mu) / np.sqrt(var + 1e-5)
    out_s = float(np.abs(ref).max()) / 32767
    mult, bias, params = layernorm_int_args(np.ones(c), np.zeros(c), in_scale=s, out_scale=out_s, eps=1e-5,
                                            in_dtype=in_dtype, c=c, qmin=-32768, qmax=32767, out_dtype="int16",
                                            variant=variant)
    y = OPS["layernorm_int"].reference(xq, mult, bias, **params)
    return y.astype(np.float64) * out_s, ref


def kernel_table(seed: int = 0) -> list[tuple]:
    """``(op, input set, mode, input dtype, SQNR, max error)``: each kernel against the float
    function of its own (dequantized) integer input, so the figures are the arithmetic's error
    alone; int8 inputs for every mode, int16 as well where the mode takes it (the paper I-ViT
    kernels take int8 only)."""
    rng = np.random.default_rng(seed)
    z = softmax_rows(rng)
    g = rng.normal(0, 1.5, (64, 1536))
    g_out = g.copy()
    g_out[:, :8] *= 4                                        # a few large pre-activations per row (FFN outliers)
    ln = rng.normal(0, 1.0, (64, 384)) + rng.normal(0, 0.5, (64, 1))
    ln_out = ln.copy()
    ln_out[:, 5] *= 20                                       # a BERT-like outlier channel
    cases = [("softmax", "attention logits", lambda v, gl, b, dt: softmax_case(z, v, b, dt), 0),
             ("GELU", "N(0, 1.5)", lambda v, gl, b, dt: gelu_case(g, v, gl, dt), 1),
             ("GELU", "N(0, 1.5) + outliers", lambda v, gl, b, dt: gelu_case(g_out, v, gl, dt), 1),
             ("LayerNorm", "N(0, 1)", lambda v, gl, b, dt: layernorm_case(ln, v, dt), 2),
             ("LayerNorm", "N(0, 1) + outlier channel", lambda v, gl, b, dt: layernorm_case(ln_out, v, dt), 2)]
    rows = []
    for op, data, fn, slot in cases:
        for label, variant, gelu, bits in MODES:
            width = NonlinearScheme(variant).kind.in_bits[slot]
            for dt in ("int8", "int16") if width != 8 else ("int8",):
                got, ref = fn(variant, gelu, bits, dt)
                rows.append((op, data, label, dt, sqnr_db(got, ref), float(np.abs(got - ref).max())))
    return rows


def vit_figures(modes) -> list[tuple]:
    from pathlib import Path

    import tvm_qplugin as tq
    from qplugin_zoo import digits_split

    vit = Path(__file__).resolve().parents[1] / "examples" / "digits_vit.onnx"
    x_train, _, x_test, y_test = digits_split()
    out = []
    for label, variant, gelu, bits in modes:
        art = tq.compile(vit, calib={"input": x_train[:256]}, eval={"input": x_test[:64]}, nonlinear=variant,
                         gelu=gelu, softmax_bits=bits, timing_runs=1)
        q = np.concatenate([art.run({"input": x[None]})[0] for x in x_test])
        out.append(("digits ViT", label, f"accuracy {float((q.argmax(1) == y_test).mean()):.4f}",
                    f"bit_exact {art.report['bit_exact']}"))
    return out


def minilm_figures(modes, n_eval: int = 200) -> list[tuple]:
    import onnxruntime as ort

    import tvm_qplugin as tq
    from qplugin_zoo.minilm import (
        fortune_sentences,
        minilm_onnx,
        sentence_embeddings,
        tokenize,
    )

    sents = fortune_sentences(64 + n_eval)
    calib, ev = tokenize(sents[:64]), tokenize(sents[64:])
    sess = ort.InferenceSession(str(minilm_onnx()), providers=["CPUExecutionProvider"])
    batches = range(0, n_eval, 8)
    fp = sentence_embeddings(np.concatenate([sess.run(None, {k: v[i:i + 8] for k, v in ev.items()})[0] for i in batches]),
                             ev["attention_mask"][:n_eval])
    out = []
    for label, variant, gelu, bits in modes:
        t = time.time()
        art = tq.compile(minilm_onnx(), calib=calib, eval={k: v[:16] for k, v in ev.items()}, nonlinear=variant,
                         gelu=gelu, softmax_bits=bits, timing_runs=1)
        emb = sentence_embeddings(np.concatenate([art.run({k: v[i:i + 8] for k, v in ev.items()})[0] for i in batches]),
                                  ev["attention_mask"][:n_eval])
        cos = (fp * emb).sum(1)
        sf, sq = fp @ fp.T, emb @ emb.T
        np.fill_diagonal(sf, -np.inf)
        np.fill_diagonal(sq, -np.inf)
        nn = float((sf.argmax(1) == sq.argmax(1)).mean())
        out.append(("MiniLM", label, f"cosine mean {cos.mean():.4f} min {cos.min():.4f}", f"neighbour agreement {nn:.3f}",
                    f"bit_exact {art.report['bit_exact']}", f"{time.time() - t:.0f} s"))
        print(" | ".join(out[-1]), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", action="store_true", help="also the digits ViT accuracy per mode")
    ap.add_argument("--minilm", action="store_true", help="also MiniLM (minutes per mode)")
    a = ap.parse_args()
    print("| non-linear | rows | mode | input | SQNR dB | max abs error |\n|---|---|---|---|---|---|")
    for op, data, label, dt, sq, err in kernel_table():
        print(f"| {op} | {data} | {label} | {dt} | {sq:.1f} | {err:.4f} |")
    if a.models:
        for row in vit_figures(MODES):
            print(" | ".join(row), flush=True)
    if a.minilm:
        minilm_figures(MODES)


if __name__ == "__main__":
    main()
