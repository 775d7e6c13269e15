"""Acceptance: all-MiniLM-L6-v2 (batch 8, seq 128) integer-only on 200 real sentences (Debian
fortunes-min), for each non-linear variant: bit-exact with the reference, sentence embeddings
within cosine 0.99 of fp32 and the same nearest neighbour for >= 95 % of the sentences."""
from __future__ import annotations

import numpy as np
import pytest

import tvm_qplugin as tq
from qplugin_zoo.minilm import fortune_sentences, minilm_onnx, sentence_embeddings, tokenize

pytestmark = pytest.mark.slow

N_EVAL = 200


@pytest.fixture(scope="module")
def sentences():
    sents = fortune_sentences(64 + N_EVAL)
    return tokenize(sents[:64]), tokenize(sents[64:])


@pytest.fixture(scope="module")
def fp32_embeddings(sentences):
    import onnxruntime as ort

    _, ev = sentences
    sess = ort.InferenceSession(str(minilm_onnx()), providers=["CPUExecutionProvider"])
    out = np.concatenate([sess.run(None, {k: v[i : i + 8] for k, v in ev.items()})[0] for i in range(0, N_EVAL, 8)])
    return sentence_embeddings(out, ev["attention_mask"][:N_EVAL])


def nearest_neighbour_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    """Share of sentences whose most similar other sentence is the same under both embeddings."""
    sf, sq = ref @ ref.T, got @ got.T
    np.fill_diagonal(sf, -np.inf)
    np.fill_diagonal(sq, -np.inf)
    return float((sf.argmax(1) == sq.argmax(1)).mean())


@pytest.mark.extended  # make test checks the whole graph (test_sentence_embedding.py); here each variant
@pytest.mark.parametrize("variant", ["ivit", "ibert", "division-free"])
def test_minilm_integer_only_bit_exact_and_close_to_fp32(sentences, fp32_embeddings, variant):
    calib, ev = sentences
    art = tq.compile(minilm_onnx(), calib=calib, eval={k: v[:16] for k, v in ev.items()}, nonlinear=variant)
    r = art.report
    assert r["integer_only"] and r["float_ops"] == 0 and r["bit_exact"] and r["bit_exact_inputs"] >= 16
    if variant == "division-free":
        assert r["division_ops"] == 0
    out = np.concatenate([art.run({k: v[i : i + 8] for k, v in ev.items()})[0] for i in range(0, N_EVAL, 8)])
    emb = sentence_embeddings(out, ev["attention_mask"][:N_EVAL])
    cos = (fp32_embeddings * emb).sum(1)
    nn = nearest_neighbour_agreement(fp32_embeddings, emb)
    print(f"\nMiniLM {variant}: cosine mean {cos.mean():.4f} min {cos.min():.4f}, nearest-neighbour agreement {nn:.3f}")
    assert cos.mean() >= 0.99, f"mean cosine {cos.mean():.4f} < 0.99"
    assert nn >= 0.95, f"nearest-neighbour agreement {nn:.3f} < 0.95"
