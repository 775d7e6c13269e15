"""Whole sentence-embedding graphs: encoder + masked mean pooling + L2 normalisation in one ONNX
file, as sentence-transformers / optimum export them.

* a hand-built head (MatMul -> pooling -> ReduceL2 normalisation, onnx.helper): the fragments
  become ``masked_mean_requant`` and ``l2_normalize_int``, integer-only, bit-exact, close to ONNX
  Runtime; a head whose inner value is read elsewhere is refused, not half-matched;
* our ONNX-level folding of the scaffolding TVM's importer cannot fold (dynamo's ``Shape(start,
  end)`` reshape targets) keeps the graph's values;
* all-MiniLM-L6-v2 exported whole (qplugin_zoo/sentence_embedding.py): a 1-layer export at static
  and dynamic export shapes (dynamic axes made static by ``input_shapes``), and -- marked slow --
  the whole 6-layer model, batch 8 x seq 128, on 200 real sentences: cosine with fp32 >= 0.99.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from onnx import numpy_helper as nh
from test_coverage_graphs import _kernel_ops

import tvm_qplugin as tq
from tvm_qplugin.errors import UnsupportedOpError

B, T, K, D = 4, 6, 8, 12
HEAD_OPS = {"masked_mean_requant", "l2_normalize_int"}


def head_model(path: Path, rng, count_as_output: bool = False, l2_form: str = "ReduceL2") -> Path:
    """``x (B, T, K) -> MatMul -> sentence-transformers pooling -> F.normalize``, opset 18, the mask an
    int64 input. ``count_as_output``: the token count is a second graph output (an inner value of the
    pooling fragment read outside it). ``l2_form``: the norm as ``ReduceL2`` (torch's export) or as
    ``Sqrt(ReduceSum(Pow(x, 2)))`` (a hand-written ``x / sqrt(sum x**2)``)."""
    i64 = lambda v, n: nh.from_array(np.array(v, np.int64), n)
    inits = [nh.from_array((rng.standard_normal((K, D)) * 0.5).astype(np.float32), "W"), i64([-1], "last"),
             i64([B, T, D], "btd"), i64([1], "tok"), i64([B, D], "bd"),
             nh.from_array(np.array(1e-9, np.float32), "eps_count"), nh.from_array(np.array(1e-12, np.float32), "eps"),
             nh.from_array(np.array(2.0, np.float32), "two")]
    nodes = [
        helper.make_node("MatMul", ["x", "W"], ["h"]),
        helper.make_node("Unsqueeze", ["attention_mask", "last"], ["m1"]),
        helper.make_node("Expand", ["m1", "btd"], ["m3"]),
        helper.make_node("Cast", ["m3"], ["mf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["h", "mf"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "tok"], ["total"], keepdims=0),
        helper.make_node("ReduceSum", ["mf", "tok"], ["count"], keepdims=0),
        helper.make_node("Clip", ["count", "eps_count"], ["count_c"]),
        helper.make_node("Div", ["total", "count_c"], ["pooled"]),
        *([helper.make_node("ReduceL2", ["pooled", "last"], ["norm"], keepdims=1)] if l2_form == "ReduceL2" else
          [helper.make_node("Pow", ["pooled", "two"], ["sq"]),
           helper.make_node("ReduceSum", ["sq", "last"], ["ssq"], keepdims=1),
           helper.make_node("Sqrt", ["ssq"], ["norm"])]),
        helper.make_node("Clip", ["norm", "eps"], ["norm_c"]),
        helper.make_node("Expand", ["norm_c", "bd"], ["norm_b"]),
        helper.make_node("Div", ["pooled", "norm_b"], ["sentence_embedding"]),
    ]
    outputs = [helper.make_tensor_value_info("sentence_embedding", TensorProto.FLOAT, [B, D])]
    if count_as_output:
        outputs.append(helper.make_tensor_value_info("count", TensorProto.FLOAT, [B, D]))
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [B, T, K]),
                                              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [B, T])],
                              outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def head_data(rng, n: int) -> dict[str, np.ndarray]:
    """``n`` batches' worth of inputs; token counts cover 0 (an all-padding row) to T."""
    counts = rng.integers(1, T + 1, n * B)
    counts[::7] = 0
    counts[1::7] = T
    mask = (np.arange(T)[None, :] < counts[:, None]).astype(np.int64)
    return {"x": rng.standard_normal((n * B, T, K)).astype(np.float32), "attention_mask": mask}


def onnxruntime_outputs(path: Path, data: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    n = len(next(iter(data.values())))
    return np.concatenate([sess.run(None, {k: v[i:i + B] for k, v in data.items()})[0] for i in range(0, n, B)])


@pytest.mark.parametrize("l2_form", ["ReduceL2", "Pow-ReduceSum-Sqrt"])
def test_hand_built_head_is_integer_only_bit_exact_and_close(tmp_path, rng, l2_form):
    path = head_model(tmp_path / "head.onnx", rng, l2_form=l2_form)
    calib, evals = head_data(rng, 8), head_data(rng, 4)
    art = tq.compile(path, calib=calib, eval=evals, timing_runs=1)
    r = art.report
    assert r["integer_only"] is True and r["float_ops"] == 0 and r["division_ops"] == 0
    assert r["bit_exact"] is True and r["bit_exact_inputs"] == 16 and not r["bit_exact_kernels"]["mismatched"]
    assert HEAD_OPS <= _kernel_ops(art)
    got = np.concatenate([art.run({k: v[i:i + B] for k, v in evals.items()})[0] for i in range(0, 16, B)])
    want = onnxruntime_outputs(path, evals)
    empty = evals["attention_mask"].sum(1) == 0
    assert (got[empty] == 0).all() and (want[empty] == 0).all()      # all padding: 0, as torch's eps gives
    cos = (got[~empty] * want[~empty]).sum(1) / np.linalg.norm(got[~empty], axis=1)
    assert cos.min() >= 0.999, f"min cosine {cos.min():.5f} vs onnxruntime fp32 (want >= 0.999)"
    assert np.abs(np.linalg.norm(got[~empty], axis=1) - 1).max() < 2e-3      # unit vectors


def test_head_whose_inner_value_is_read_elsewhere_is_refused(tmp_path, rng):
    """The token count is also a graph output: the pooling fragment is not fused (its count would be
    lost), so its division by a tensor stays unsupported and is named."""
    path = head_model(tmp_path / "head2.onnx", rng, count_as_output=True)
    with pytest.raises(UnsupportedOpError, match="divide"):
        tq.compile(path, calib=head_data(rng, 4), timing_runs=1)


def test_our_folding_keeps_the_values(tmp_path):
    """fold_static_subgraph on a dynamo-style graph (``Shape(start, end)`` pieces concatenated into a
    reshape target): no Shape node left, same output under ONNX Runtime."""
    import onnxruntime as ort

    from tvm_qplugin.passes.static_fold import fold_static_subgraph

    i64 = lambda v, n: nh.from_array(np.array(v, np.int64), n)
    nodes = [helper.make_node("Shape", ["x"], ["b"], start=0, end=1),
             helper.make_node("Shape", ["x"], ["s"], start=1, end=2),
             helper.make_node("Concat", ["b", "s", "heads", "minus1"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    graph = helper.make_graph(nodes, "dyn", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq", 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", "seq", 2, 4])],
                              [i64([2], "heads"), i64([-1], "minus1")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    folded = fold_static_subgraph(model, {"x": (3, 5, 8)})
    assert [n.op_type for n in folded.graph.node] == ["Reshape"]
    assert nh.to_array(next(t for t in folded.graph.initializer if t.name == "target")).tolist() == [3, 5, 2, -1]
    x = np.arange(120, dtype=np.float32).reshape(3, 5, 8)
    run = lambda m: ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_array_equal(run(folded), run(model))


# ----------------------------------------------------------------------------- all-MiniLM-L6-v2


def _minilm_embeddings(art_or_path, data, batch: int) -> np.ndarray:
    n = len(data["input_ids"])
    if isinstance(art_or_path, Path):
        import onnxruntime as ort

        sess = ort.InferenceSession(str(art_or_path), providers=["CPUExecutionProvider"])
        run = lambda feed: sess.run(None, feed)[0]
    else:
        run = lambda feed: art_or_path.run(feed)[0]
    return np.concatenate([run({k: v[i:i + batch] for k, v in data.items()}) for i in range(0, n, batch)])


def _check_minilm(path: Path, calib, evals, batch: int, seq: int, dynamic: bool, min_cosine: float,
                  nonlinear: str = "ivit", neighbours: float | None = None):
    shapes = {"input_ids": (batch, seq), "attention_mask": (batch, seq)} if dynamic else None
    art = tq.compile(path, calib=calib, eval={k: v[:2 * batch] for k, v in evals.items()}, input_shapes=shapes,
                     nonlinear=nonlinear)
    r = art.report
    assert r["integer_only"] is True and r["float_ops"] == 0
    if nonlinear == "division-free":
        assert r["division_ops"] == 0      # the heads divide by nothing at run time either
    assert r["bit_exact"] is True and r["bit_exact_inputs"] >= 2 * batch
    assert HEAD_OPS <= _kernel_ops(art)
    ref = _minilm_embeddings(path, evals, batch)
    got = _minilm_embeddings(art, evals, batch)
    cos = (ref * got).sum(1)      # both unit vectors
    if neighbours is not None:    # the same nearest other sentence under both embeddings
        from test_minilm import nearest_neighbour_agreement

        nn = nearest_neighbour_agreement(ref, got)
        assert nn >= neighbours, f"nearest-neighbour agreement {nn:.3f} < {neighbours}"
    print(f"\n{path.name} ({'dynamic' if dynamic else 'static'} export): cosine with fp32 mean {cos.mean():.4f} "
          f"min {cos.min():.4f} on {len(cos)} sentences")
    assert cos.mean() >= min_cosine, f"mean cosine {cos.mean():.4f} < {min_cosine}"
    return cos


# make test keeps [dynamic]; [static] is the whole graph's path (test_minilm_whole_graph_on_real_sentences),
# division-free is the digits ViT's (test_transformers.py, test_export_vit_mcu.py): both `extended`
@pytest.mark.parametrize("dynamic,nonlinear", [pytest.param(False, "ivit", marks=pytest.mark.extended), (True, "ivit"),
                                               pytest.param(False, "division-free", marks=pytest.mark.extended)],
                         ids=["static", "dynamic", "division-free"])
def test_minilm_one_layer_whole_graph(dynamic, nonlinear):
    """One encoder layer + pooling + normalisation, batch 2 x seq 16: the head's rules and our
    folding on a real export, in seconds instead of minutes."""
    from qplugin_zoo.minilm import fortune_sentences, tokenize
    from qplugin_zoo.sentence_embedding import sentence_embedding_onnx

    sents = fortune_sentences(48)
    path = sentence_embedding_onnx(batch=2, seq=16, layers=1, dynamic=dynamic)
    _check_minilm(path, tokenize(sents[:32], 16), tokenize(sents[32:48], 16), 2, 16, dynamic, 0.995, nonlinear)


@pytest.mark.slow
@pytest.mark.parametrize("dynamic", [False, pytest.param(True, marks=pytest.mark.extended)], ids=["static", "dynamic"])
def test_minilm_whole_graph_on_real_sentences(dynamic):
    """all-MiniLM-L6-v2 with pooling and normalisation inside, batch 8 x seq 128, calibrated on 64
    fortunes, evaluated on 200 others: integer-only, bit-exact, cosine with fp32 >= 0.99."""
    from qplugin_zoo.minilm import fortune_sentences, tokenize
    from qplugin_zoo.sentence_embedding import sentence_embedding_onnx

    sents = fortune_sentences(264)
    path = sentence_embedding_onnx(batch=8, seq=128, dynamic=dynamic)
    cos = _check_minilm(path, tokenize(sents[:64]), tokenize(sents[64:]), 8, 128, dynamic, 0.99,
                        neighbours=0.95)
    assert cos.min() >= 0.95, f"min cosine {cos.min():.4f}"
