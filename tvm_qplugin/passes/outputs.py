"""FlattenOutputTuple: a multi-output ``main`` returns its tuple directly, not through a binding.

The ONNX importer ends a multi-output graph with ``gv = (a, b, ...)`` inside the dataflow block;
the integerizer sees only tensors, so that ``Tuple`` binding would be refused as an op. Rebuilt
here as the integer module's own ``main`` is: each field an output of the dataflow block and the
function body the tuple of them (:class:`..graph.Graph` reads a body tuple as the outputs).
"""
from __future__ import annotations

import tvm
from tvm import relax

from .graph import Graph
from .rewriter import substitute


def _flatten(mod: tvm.IRModule, _ctx) -> tvm.IRModule:
    func = mod["main"]
    graph = Graph(func)
    tuples = {b.var for b in graph.bindings if isinstance(b.value, relax.Tuple)}
    if not tuples or not isinstance(graph.body, relax.Var) or not _resolves_to_tuple(graph, graph.body):
        return mod
    bb = relax.BlockBuilder()
    remap: dict = {}
    attrs = dict(func.attrs) if func.attrs is not None else None
    with bb.function("main", func.params, attrs=attrs):
        with bb.dataflow():
            outputs = set(graph.outputs)
            for b in graph.bindings:
                if b.var in tuples or isinstance(b.value, relax.Var) and b.value in tuples:
                    continue   # the output tuple (and its aliases) is rebuilt below
                emit = bb.emit_output if b.var in outputs else bb.emit   # no `gv = lv` alias bindings
                remap[b.var] = emit(substitute(b.value, remap), name_hint=b.var.name)
        bb.emit_func_output(relax.Tuple([remap.get(v, v) for v in graph.outputs]))  # a param may be an output
    mod = mod.clone() if hasattr(mod, "clone") else mod
    mod.update_func(mod.get_global_var("main"), bb.get()["main"])
    return mod


def _resolves_to_tuple(graph: Graph, var) -> bool:
    b = graph.by_var.get(var)
    while b is not None and isinstance(b.value, relax.Var):
        b = graph.by_var.get(b.value)
    return b is not None and isinstance(b.value, relax.Tuple)


FlattenOutputTuple = tvm.ir.transform.module_pass(_flatten, opt_level=0, name="FlattenOutputTuple")
