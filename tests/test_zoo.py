"""Tests for the offline model/data fixtures in qplugin_zoo.

Fast once the cache is warm: torch is only needed when the MobileNetV2 ONNX
file is not cached yet.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
import onnx
import onnxruntime as ort
import pytest

import qplugin_zoo as zoo
from qplugin_zoo import cache as zoo_cache
from qplugin_zoo import images


def _session(path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


# --- cache -----------------------------------------------------------------


def test_cache_dir_env(tmp_path, monkeypatch):
    target = tmp_path / "a" / "b"
    monkeypatch.setenv("TVM_QPLUGIN_CACHE", str(target))
    assert zoo.cache_dir() == target
    assert target.is_dir()


def test_atomic_path_leaves_nothing_on_error(tmp_path):
    final = tmp_path / "x.bin"
    with pytest.raises(RuntimeError):
        with zoo_cache.atomic_path(final) as tmp:
            tmp.write_bytes(b"partial")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []
    zoo_cache.atomic_write_bytes(final, b"done")
    assert final.read_bytes() == b"done"
    assert list(tmp_path.iterdir()) == [final]


# --- photos and crops ------------------------------------------------------


def test_real_photos():
    photos = zoo.real_photos()
    assert len(photos) >= 12
    names = [n for n, _ in photos]
    assert len(set(names)) == len(names)
    assert {"chelsea", "coffee"} <= set(names)
    for name, img in photos:
        assert img.dtype == np.uint8 and img.ndim == 3 and img.shape[2] == 3, name
        assert min(img.shape[:2]) >= 64, name


def test_preprocess_imagenet():
    chelsea = dict(zoo.real_photos())["chelsea"]
    x = zoo.preprocess_imagenet(chelsea)
    assert x.shape == (3, 224, 224) and x.dtype == np.float32
    assert zoo.preprocess_imagenet(chelsea, size=160).shape == (3, 160, 160)
    grey = dict(zoo.real_photos())["camera"][:, :, 0]
    assert zoo.preprocess_imagenet(grey).shape == (3, 224, 224)


def test_crops_deterministic_and_seeded():
    a = zoo.imagenet_crops(6, seed=3, size=64)
    b = zoo.imagenet_crops(6, seed=3, size=64)
    c = zoo.imagenet_crops(6, seed=4, size=64)
    assert a.shape == (6, 3, 64, 64) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    # every crop differs across seeds, even though they come from the same photos
    assert all(not np.array_equal(a[i], c[i]) for i in range(6))
    # ImageNet-normalised: roughly zero-mean, unit-scale, within the normalised range
    lo = (0 - images.IMAGENET_MEAN) / images.IMAGENET_STD
    hi = (1 - images.IMAGENET_MEAN) / images.IMAGENET_STD
    assert np.all(a >= lo.min() - 1e-5) and np.all(a <= hi.max() + 1e-5)
    assert abs(float(a.mean())) < 1.0 and 0.3 < float(a.std()) < 2.0


def test_crops_vary_within_a_set():
    n = len(zoo.real_photos())
    x = zoo.imagenet_crops(n + 2, seed=0, size=32)
    # crops 0 and n come from the same photo but are different crops
    assert not np.array_equal(x[0], x[n])
    assert len({x[i].tobytes() for i in range(n + 2)}) == n + 2


def test_calib_eval_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("TVM_QPLUGIN_CACHE", str(tmp_path))
    calib, evaluation = zoo.imagenet_calib_eval(size=32)
    assert calib.shape == (64, 3, 32, 32) and evaluation.shape == (256, 3, 32, 32)
    assert calib.dtype == evaluation.dtype == np.float32
    from qplugin_zoo.images import _CACHE_VERSION

    assert [p.name for p in tmp_path.iterdir()] == [f"imagenet_calib_eval_32_v{_CACHE_VERSION}.npz"]
    calib2, eval2 = zoo.imagenet_calib_eval(size=32)  # from the cache
    np.testing.assert_array_equal(calib, calib2)
    np.testing.assert_array_equal(evaluation, eval2)
    np.testing.assert_array_equal(calib, zoo.imagenet_crops(64, seed=0, size=32))
    np.testing.assert_array_equal(evaluation[:8], zoo.imagenet_crops(8, seed=1, size=32))


# --- digits ----------------------------------------------------------------


def test_digits_split():
    x_train, y_train, x_test, y_test = zoo.digits_split()
    assert x_train.shape == (1257, 1, 8, 8) and x_test.shape == (540, 1, 8, 8)
    assert x_train.dtype == x_test.dtype == np.float32
    assert y_train.dtype == y_test.dtype == np.int64
    assert 0.0 <= x_train.min() and x_train.max() <= 1.0
    assert set(np.unique(y_test)) == set(range(10))


def test_digits_cnn_onnx():
    path = zoo.digits_cnn_onnx()
    assert path.stat().st_size < 1 << 20
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    ops = Counter(n.op_type for n in model.graph.node)
    for op in ["Conv", "Relu", "Clip", "Add", "MaxPool", "Concat", "Gemm"]:
        assert ops[op] >= 1, (op, ops)
    assert ops["ReduceMean"] + ops["GlobalAveragePool"] >= 1, ops
    convs = [{a.name: onnx.helper.get_attribute_value(a) for a in n.attribute} for n in model.graph.node if n.op_type == "Conv"]
    assert any(c.get("group", 1) > 1 for c in convs), "no depthwise conv"
    assert any(max(c.get("strides", [1])) > 1 for c in convs), "no strided conv"

    _, _, x_test, y_test = zoo.digits_split()
    sess = _session(path)
    pred = np.array([sess.run(["logits"], {"input": x[None]})[0].argmax() for x in x_test])
    assert float((pred == y_test).mean()) >= 0.97


# --- MobileNetV2 -------------------------------------------------------------


@pytest.fixture(scope="module")
def mobilenet_path():
    # no skip: `make test` installs torch and the weights package, so a missing one is a failure
    return zoo.mobilenet_v2_onnx()


def test_mobilenet_classifies_real_photos(mobilenet_path):
    model = onnx.load(mobilenet_path)
    assert model.opset_import[0].version == 18
    (inp,) = model.graph.input
    assert inp.name == "input"
    assert [d.dim_value for d in inp.type.tensor_type.shape.dim] == [1, 3, 224, 224]
    assert [o.name for o in model.graph.output] == ["logits"]

    photos = dict(zoo.real_photos())
    sess = _session(mobilenet_path)

    def top1(name: str) -> int:
        return int(sess.run(["logits"], {"input": zoo.preprocess_imagenet(photos[name])[None]})[0].argmax())

    assert top1("chelsea") in range(281, 286)  # tabby / tiger / Persian / Siamese / Egyptian cat
    assert top1("coffee") == 967  # espresso


def test_mobilenet_imports_in_tvm(mobilenet_path):
    from tvm.relax.frontend.onnx import from_onnx

    mod = from_onnx(onnx.load(mobilenet_path), keep_params_in_input=False)
    main = mod["main"]    # static shapes: one image in, 1000 logits out
    assert [(tuple(int(d) for d in p.ty.shape), str(p.ty.dtype)) for p in main.params] == [((1, 3, 224, 224), "float32")]
    assert tuple(int(d) for d in main.ret_ty.shape) == (1, 1000)


# --- MiniLM ------------------------------------------------------------------


def test_minilm_encoder_module_exports_in_eval_mode():
    """The ONNX export of MiniLM traces encoder_module(bert): every module in it must be in eval
    mode (the wrapper used to be left in training mode: torch.onnx.export warned, and dropout
    would have been traced had BERT not been eval itself). A tiny random BERT stands in."""
    import torch
    from transformers import BertConfig, BertModel

    from qplugin_zoo.minilm import encoder_module

    torch.manual_seed(0)
    bert = BertModel(BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                intermediate_size=16, max_position_embeddings=16, attn_implementation="eager"))
    assert bert.training, "a fresh module starts in training mode: the test would not see the fix"
    enc = encoder_module(bert)
    training = [name or "<wrapper>" for name, m in enc.named_modules() if m.training]
    assert not training, f"modules left in training mode: {training[:5]}"
    ids = torch.randint(0, 32, (2, 5), generator=torch.Generator().manual_seed(0))
    mask = torch.ones(2, 5, dtype=torch.int64)
    with torch.no_grad():
        out = enc(ids, mask)
    assert tuple(out.shape) == (2, 5, 8)
    with torch.no_grad():   # eval mode: deterministic (dropout off), same as BERT's own output
        torch.testing.assert_close(enc(ids, mask), bert(input_ids=ids, attention_mask=mask).last_hidden_state,
                                   rtol=0, atol=0)
