"""passes/fold_exact.py: constants folded in NumPy give the very graph TVM's FoldConstant gives.

The NumPy folding exists for speed (no LLVM build per constant call); what must hold is that the
canonical graph is unchanged: same ops, same constants bit for bit (compared as TVMScript, which
prints every constant's bytes through the metadata section, or structurally: constants by bytes)."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import tvm
from tvm import relax

from onnx_builders import OnnxGraph
from tvm_qplugin.frontend import import_onnx
from tvm_qplugin.ops import const
from tvm_qplugin.passes import fold_exact
from tvm_qplugin.passes.canonicalize import canonicalize
from tvm_qplugin.passes.fold_exact import EXACT_FOLDS, FoldExactConstants
from tvm_qplugin.passes.graph import Graph


def constant_calls(mod: tvm.IRModule) -> Counter:
    """Bindings of ``main`` that are a foldable op on constants only (what FoldExactConstants takes)."""
    found = Counter()
    for b in Graph(mod["main"]).bindings:
        if b.op_name in EXACT_FOLDS:
            operands = list(b.args[0].fields) if b.op_name == "relax.concat" else b.args[:1]
            if all(isinstance(a, tvm.ir.GenericConst) for a in operands):
                found[b.op_name] += 1
    return found


def tvm_only(mod: tvm.IRModule, monkeypatch) -> tvm.IRModule:
    """``canonicalize`` as it was before the NumPy folding: every constant call left to FoldConstant."""
    with monkeypatch.context() as m:
        m.setattr(fold_exact, "EXACT_FOLDS", {})
        return canonicalize(mod)


def constants_module() -> tvm.IRModule:
    """``x + f(constants)`` where f is every foldable op: transpose, concat, broadcast, reshape forms,
    isnan on a NaN and a number, where on the result."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((3, 2)).astype(np.float32)
    bounds = np.array([np.nan, 1.5, -np.inf, 0.0, 2.0, np.nan], np.float32).reshape(2, 3)
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((4, 2, 3), "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            t = bb.emit(relax.op.permute_dims(const(a)))                         # (2, 3)
            c = bb.emit(relax.op.concat([t, const(bounds)], axis=0))             # (4, 3)
            r = bb.emit(relax.op.reshape(c, (4, 1, 3)))
            e = bb.emit(relax.op.squeeze(relax.op.expand_dims(r, 0), [0]))      # (4, 1, 3)
            nan = bb.emit(relax.op.isnan(e))
            w = bb.emit(relax.op.where(nan, const(np.float32(-1.0)), e))
            full = bb.emit(relax.op.broadcast_to(w, (4, 2, 3)))
            flat = bb.emit(relax.op.flatten(full))
            out = bb.emit_output(relax.op.add(x, relax.op.reshape(flat, (4, 2, 3))))
        bb.emit_func_output(out)
    return bb.get()


def test_every_foldable_op_folds_to_what_fold_constant_computes(monkeypatch):
    mod = constants_module()
    folded = FoldExactConstants(mod)
    assert constant_calls(mod), "the module must hold constant calls to fold"
    assert sum(Counter(b.op_name for b in Graph(folded["main"]).bindings)[op] for op in EXACT_FOLDS) == 0, \
        folded["main"].script()
    then = tvm.ir.transform.Sequential([relax.transform.FoldConstant(), relax.transform.CanonicalizeBindings()])
    ours, theirs = then(folded), then(mod)  # CanonicalizeBindings: the rewriter's re-emitted output binding
    tvm.ir.assert_structural_equal(ours, theirs)  # constants compared by their bytes; names aside
    x = np.random.default_rng(1).standard_normal((4, 2, 3)).astype(np.float32)
    runs = [relax.VirtualMachine(tvm.compile(m, target="llvm"), tvm.cpu())["main"](tvm.runtime.tensor(x)).numpy()
            for m in (ours, theirs)]
    assert np.array_equal(runs[0], runs[1])


@pytest.mark.parametrize("clips", [[(0.0, 6.0)], [(0.0, 6.0), (None, 4.0)], [(-1.0, None)]])
def test_canonical_onnx_graph_unchanged(tmp_path, monkeypatch, clips):
    """The importer's Clip (isnan / where on its bounds) and bias reshapes fold here; the canonical
    graph is the one FoldConstant alone made (constants included)."""
    g = OnnxGraph((1, 3, 8, 8), np.random.default_rng(2))
    y = g.conv("x", 4)
    for lo, hi in clips:
        y = g.clip(y, lo, hi)
    path = g.save(g.gemm(g.flatten(g.conv(y, 2, stride=2)), 5), tmp_path / "clips.onnx")
    imported = import_onnx(path).mod
    assert constant_calls(relax.transform.DecomposeOpsForInference()(imported))["relax.isnan"] >= 1
    assert canonicalize(imported).script(show_meta=True) == tvm_only(imported, monkeypatch).script(show_meta=True)
