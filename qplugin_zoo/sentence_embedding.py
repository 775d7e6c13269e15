"""all-MiniLM-L6-v2 exported *whole*: BERT encoder + masked mean pooling + L2 normalisation.

This is the graph sentence-transformers (and optimum's ``feature-extraction`` export of a
sentence-transformers model) produce: ``(input_ids, attention_mask) -> sentence_embedding``, the
pooling and normalisation inside the ONNX file, written as sentence-transformers' ``Pooling``
(``mean_tokens``) and ``Normalize`` modules write them in torch:

    mask = attention_mask.unsqueeze(-1).expand(h.size()).float()
    pooled = (h * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
    embedding = F.normalize(pooled, p=2, dim=1)

The export is static ``(batch, seq)`` or, with ``dynamic=True``, with dynamic batch and sequence
axes (the ONNX graph then carries the ``Shape``/``Gather``/... scaffolding that ``--input-shape``
folds). ``layers`` < 6 keeps only the first encoder layers: a cheap graph with the same ops, for
iterating on the pooling / normalisation rules without compiling the whole model.
"""
from __future__ import annotations

import pathlib

from .cache import atomic_path, cache_dir
from .minilm import encoder_module, minilm_dir

OUTPUT_NAME = "sentence_embedding"
FULL_LAYERS = 6


def sentence_module(bert):
    """``(input_ids, attention_mask) -> L2-normalised masked mean of bert's last hidden state``."""
    import torch
    import torch.nn.functional as F

    class SentenceEmbedding(torch.nn.Module):
        def __init__(self, bert):
            super().__init__()
            self.encoder = encoder_module(bert)

        def forward(self, input_ids, attention_mask):
            h = self.encoder(input_ids, attention_mask)
            mask = attention_mask.unsqueeze(-1).expand(h.size()).float()
            pooled = (h * mask).sum(1) / torch.clamp(mask.sum(1), min=1e-9)
            return F.normalize(pooled, p=2, dim=1)

    return SentenceEmbedding(bert).eval()


def _export(dest: pathlib.Path, batch: int, seq: int, layers: int, dynamic: bool) -> None:
    import torch
    from transformers import BertModel

    extra = {} if layers == FULL_LAYERS else {"num_hidden_layers": layers}
    bert = BertModel.from_pretrained(str(minilm_dir()), attn_implementation="eager", local_files_only=True, **extra)
    ids = torch.randint(1000, 2000, (batch, seq), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(batch, seq, dtype=torch.int64)
    mask[:, seq // 2 :] = 0
    shapes = None
    if dynamic:
        axes = {0: torch.export.Dim("batch", max=1024), 1: torch.export.Dim("seq", max=512)}
        shapes = {"input_ids": axes, "attention_mask": axes}
    with torch.no_grad():
        torch.onnx.export(sentence_module(bert), (ids, mask), str(dest), input_names=["input_ids", "attention_mask"],
                          output_names=[OUTPUT_NAME], opset_version=18, dynamo=True, external_data=False,
                          dynamic_shapes=shapes)


def sentence_embedding_onnx(batch: int = 8, seq: int = 128, layers: int = FULL_LAYERS, dynamic: bool = False) -> pathlib.Path:
    """Cached ONNX of the whole sentence-embedding graph (``dynamic``: batch and seq axes dynamic;
    ``batch`` / ``seq`` are then only the export's example shape)."""
    kind = "dyn" if dynamic else f"b{batch}_s{seq}"
    path = cache_dir() / f"minilm_sentence_l{layers}_{kind}.onnx"
    if not path.is_file():
        with atomic_path(path) as tmp:
            _export(tmp, batch, seq, layers, dynamic)
    return path
