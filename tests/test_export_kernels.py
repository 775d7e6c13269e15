"""The C package's kernels, op by op, against the NumPy twins (the golden model), bit for bit.

One integer module holds every kernel shape that has its own code path (pointwise / im2col /
depthwise / grouped convolutions, K not a multiple of 4 or 16, pixel tails, int16 inputs, the
c < 33 requantization, broadcasting adds, pools, reductions, concat aliasing, transpose, pad),
so a single firmware build per board exercises them all: the portable C path on the host (ASan
+ UBSan, gcc and clang), the SMLAD path on Cortex-M4, the MVE path on Cortex-M55.
Under CI (CI=true) a missing toolchain fails; elsewhere too: the Makefile installs them.
"""
from __future__ import annotations


import numpy as np
import pytest
from tvm import relax

from tvm_qplugin.export import harness
from tvm_qplugin.export.c_package import build_graph, plan_memory, write_c_package
from tvm_qplugin.ops import const, emit
from tvm_qplugin.quant import dyadic
from tvm_qplugin.reference import ReferenceInterpreter
from tvm_qplugin.targets import get_board

from conftest import assert_bit_exact
from package_probe import companion_buffer_sizes

RNG_SEED = 7


def _rq(rng, n, lo, hi):
    ds = [dyadic(float(m)) for m in rng.uniform(lo, hi, size=n)]
    return np.array([d.multiplier for d in ds], np.int64), np.array([d.shift for d in ds], np.int64)


def _range(dtype):
    i = np.iinfo(dtype)
    return int(i.min) + (1 if i.min < 0 and dtype != "int8" else 0), int(i.max)


def kernel_zoo():
    """(module, input arrays) covering every C kernel path."""
    rng = np.random.default_rng(RNG_SEED)
    bb = relax.BlockBuilder()
    xu = relax.Var("xu", relax.TensorType([1, 8, 9, 7], "uint8"))
    xs = relax.Var("xs", relax.TensorType([1, 8, 9, 7], "int8"))
    xw = relax.Var("xw", relax.TensorType([1, 8, 9, 7], "int16"))
    x3 = relax.Var("x3", relax.TensorType([1, 3, 11, 10], "uint8"))
    xd = relax.Var("xd", relax.TensorType([5, 37], "int8"))
    outs = []

    def conv(x, c, o, k, stride=1, pad=(0, 0, 0, 0), dil=1, groups=1, out="uint8", m=(1 / 900, 1 / 300),
             wmax=127):
        w = rng.integers(-wmax, wmax + 1, size=(o, c // groups, k, k)).astype(np.int8)
        b = rng.integers(-3000, 3000, size=o).astype(np.int32)
        mult, shift = _rq(rng, o, *m)
        lo, hi = _range(out)
        if out == "uint8":
            lo = 0
        return emit(bb, "conv2d_requant", [x, const(w), const(b), const(mult), const(shift)], strides=[stride, stride],
                    padding=list(pad), dilation=[dil, dil], groups=groups, qmin=lo, qmax=hi, out_dtype=out)

    def dense(x, k, n, out, m=(1 / 800, 1 / 200)):
        w = rng.integers(-127, 128, size=(n, k)).astype(np.int8)
        b = rng.integers(-3000, 3000, size=n).astype(np.int32)
        mult, shift = _rq(rng, n, *m)
        lo, hi = _range(out)
        return emit(bb, "dense_requant", [x, const(w), const(b), const(mult), const(shift)], qmin=lo, qmax=hi,
                    out_dtype=out)

    with bb.function("main", [xu, xs, xw, x3, xd]):
        with bb.dataflow():
            outs.append(conv(xu, 8, 12, 3, pad=(1, 1, 1, 1)))                                   # im2col, K=72
            outs.append(conv(xs, 8, 12, 3, stride=2, pad=(1, 1, 0, 0), out="int16"))           # asymmetric pad
            outs.append(conv(xw, 8, 6, 1, out="uint8", m=(1 / 20000, 1 / 5000)))              # int16 pointwise, P=63
            outs.append(conv(xu, 8, 5, 1, stride=2, out="int8"))                                # 1x1 strided: im2col
            dw = conv(xu, 8, 8, 3, pad=(1, 1, 1, 1), groups=8, m=(1 / 100, 1 / 30))           # depthwise
            outs.append(dw)
            dw32 = conv(xs, 8, 16, 3, stride=2, pad=(1, 1, 1, 1), groups=8, out="int32", m=(1 / 4, 1 / 2))
            outs.append(dw32)
            outs.append(conv(xu, 8, 8, 5, pad=(4, 4, 4, 4), dil=2, groups=8, m=(1 / 200, 1 / 50)))  # dilated dw
            outs.append(conv(xu, 8, 8, 3, groups=8, m=(1 / 100, 1 / 30)))                       # dw, no padding
            outs.append(conv(xs, 8, 8, 3, stride=2, pad=(0, 0, 1, 1), groups=8, out="int8",
                             m=(1 / 100, 1 / 30)))                                              # dw, bottom/right pad
            outs.append(conv(xw, 8, 8, 3, pad=(1, 1, 1, 1), groups=8, out="int16",
                             m=(1 / 300, 1 / 100)))                                             # int16 dw (generic)
            grouped = conv(xs, 8, 6, 3, pad=(1, 1, 1, 1), groups=2, out="int8")               # grouped
            outs.append(grouped)
            outs.append(conv(x3, 3, 16, 3, stride=2, pad=(0, 0, 1, 1), m=(1 / 300, 1 / 100)))  # K=27
            # tabulated im2col (K <= 32): dilated int8, strided int16, uint8 (MVE gathers, partial chunk)
            outs.append(conv(xs, 8, 4, 3, pad=(2, 2, 2, 2), dil=2, groups=4, out="int8"))       # K=18
            outs.append(conv(xw, 8, 4, 3, stride=2, pad=(1, 0, 1, 0), groups=4, out="int16", m=(1 / 3000, 1 / 1000)))
            outs.append(conv(xu, 8, 4, 3, stride=2, pad=(1, 1, 1, 1), groups=4))              # K=18, flipped
            outs.append(conv(xu, 8, 7, 1, out="int16", m=(0.6, 1.9), wmax=2))                  # c < 33 shifts
            outs.append(dense(xd, 37, 11, "int8"))                                              # M=5, K=37
            flat = bb.emit(relax.op.reshape(xu, [1, 504]))
            outs.append(dense(flat, 504, 10, "int32", m=(1 / 5000, 1 / 1000)))                 # M=1
            wflat = bb.emit(relax.op.reshape(xw, [9, 56]))
            outs.append(dense(wflat, 56, 4, "int16", m=(1 / 9000, 1 / 3000)))                  # int16 dense
            # elementwise / pools / reductions / layout
            ma, mb, sh = 1234567890, -987654321, 33
            outs.append(emit(bb, "add_requant", [xu, xw], ma=ma, mb=mb, shift=sh, qmin=-32767, qmax=32767,
                             out_dtype="int16"))
            bvec = const(rng.integers(-100, 100, size=(1, 8, 1, 1)).astype(np.int16))
            outs.append(emit(bb, "add_requant", [xs, bvec], ma=2**30, mb=2**29, shift=30, qmin=-128, qmax=127,
                             out_dtype="int8"))
            rq = emit(bb, "requantize", [dw], multiplier=1518500250, shift=31, qmin=0, qmax=200, out_dtype="uint8")
            outs.append(rq)
            outs.append(emit(bb, "requantize", [dw32], multiplier=1073741824, shift=36, qmin=-128, qmax=127,
                             out_dtype="int8"))
            outs.append(emit(bb, "max_pool2d", [xs], pool_size=[3, 3], strides=[2, 2], dilation=[1, 1],
                             padding=[1, 1, 1, 1], ceil_mode=True, pad_value=-128))
            am = np.array([[dyadic(1 / 9).multiplier] * 4] * 5, np.int64)
            outs.append(emit(bb, "avg_pool2d_requant", [xu, const(am)], pool_size=[3, 3], strides=[2, 2],
                             padding=[1, 1, 1, 1], shift=dyadic(1 / 9).shift, qmin=0, qmax=255, out_dtype="uint8"))
            d63 = dyadic(1 / 63)
            outs.append(emit(bb, "sum_requant", [xw], axes=[2, 3], keepdims=True, multiplier=d63.multiplier,
                             shift=d63.shift, qmin=-32767, qmax=32767, out_dtype="int16"))
            d8 = dyadic(1 / 8)
            outs.append(emit(bb, "sum_requant", [xs], axes=[1], keepdims=False, multiplier=d8.multiplier,
                             shift=d8.shift, qmin=-128, qmax=127, out_dtype="int8"))
            a1 = conv(xu, 8, 4, 1, m=(1 / 300, 1 / 100))
            a2 = emit(bb, "requantize", [a1], multiplier=1518500250, shift=31, qmin=0, qmax=255, out_dtype="uint8")
            cat = bb.emit(relax.op.concat([a2, rq], axis=1))                                    # aliased slices
            outs.append(emit(bb, "sum_requant", [cat], axes=[2, 3], keepdims=False, multiplier=d63.multiplier,
                             shift=d63.shift, qmin=0, qmax=255, out_dtype="uint8"))
            outs.append(bb.emit(relax.op.concat([xs, grouped], axis=1)))                       # output concat
            outs.append(bb.emit(relax.op.concat([xu, rq], axis=2)))                            # strided copies
            outs.append(bb.emit(relax.op.permute_dims(xw, [0, 2, 3, 1])))
            outs.append(bb.emit(relax.op.nn.pad(xs, [0, 0, 1, 0, 2, 1, 0, 3])))
            gv = [bb.emit_output(o) for o in outs]
        bb.emit_func_output(relax.Tuple(gv))
    mod = bb.finalize()
    inputs = [rng.integers(0, 256, size=(1, 8, 9, 7)).astype(np.uint8),
              rng.integers(-128, 128, size=(1, 8, 9, 7)).astype(np.int8),
              rng.integers(-20000, 20000, size=(1, 8, 9, 7)).astype(np.int16),
              rng.integers(0, 256, size=(1, 3, 11, 10)).astype(np.uint8),
              rng.integers(-128, 128, size=(5, 37)).astype(np.int8)]
    return mod, inputs


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    mod, x = kernel_zoo()
    pkg = tmp_path_factory.mktemp("zoo") / "pkg"
    info = write_c_package(mod, pkg)
    rng = np.random.default_rng(1)
    samples = [x] + [[rng.integers(np.iinfo(a.dtype).min, np.iinfo(a.dtype).max + 1, size=a.shape).astype(a.dtype)
                      for a in x] for _ in range(2)]
    ref = ReferenceInterpreter(mod)
    want = [ref.run("main", *s) for s in samples]
    return pkg, info, samples, want


def _check(got, want, where):
    assert len(got) == len(want)
    for i, (gs, ws) in enumerate(zip(got, want)):
        assert len(gs) == len(ws)
        for j, (g, w) in enumerate(zip(gs, ws)):
            assert_bit_exact(g, w, f"{where}: sample {i} output {j}")


@pytest.mark.parametrize("cc", ["gcc", "clang"])
def test_zoo_host_sanitized(zoo, tmp_path, cc):
    pkg, info, samples, want = zoo
    exe = harness.build_host(pkg, tmp_path, cc=cc, sanitize=True)
    _check(harness.run_host(exe, pkg, samples, tmp_path / "run"), want, f"host {cc}")


@pytest.mark.parametrize("board", ["qemu-mps2-an386", "qemu-mps3-an547"])
def test_zoo_cortex_m(zoo, tmp_path, board):
    pkg, info, samples, want = zoo
    build = harness.build_mcu(pkg, get_board(board), tmp_path / "build")
    _check(harness.run_qemu(build, samples, tmp_path / "run").outputs, want, board)


@pytest.mark.parametrize("board", ["rpi4", "rpi5"])
def test_zoo_aarch64_linux_under_qemu(zoo, tmp_path, board):
    """The package cross-compiled for an aarch64 Linux board (-static, its -mcpu), run under
    qemu-aarch64 -cpu <its core>."""
    pkg, info, samples, want = zoo
    b = get_board(board)
    exe = harness.build_linux(pkg, b, tmp_path / "build")
    _check(harness.run_linux(exe, pkg, b, samples, tmp_path / "run"), want, board)


def test_zoo_portable_path_on_cortex_m(zoo, tmp_path):
    """-DQK_NO_SIMD: the portable C kernels, cross-compiled, give the same bits."""
    pkg, info, samples, want = zoo
    build = harness.build_mcu(pkg, get_board("qemu-mps2-an386"), tmp_path / "build", extra_cflags=["-DQK_NO_SIMD"])
    _check(harness.run_qemu(build, samples[:1], tmp_path / "run").outputs, want[:1], "an386 portable")


def test_zoo_plan_aliases(zoo):
    pkg, info, samples, want = zoo
    steps = {s["name"]: s for s in info["steps"]}
    assert any(s["inplace"] for s in info["steps"]), "no in-place elementwise step"
    # the aliased concat copies nothing: its inputs were written into their slices
    cats = [s for s in info["steps"] if s["op"] == "relax.concat"]
    assert cats and steps
    assert info["arena_bytes"] <= 1.1 * info["liveness_lower_bound_bytes"] + 64


def test_graph_walk_names_unsupported_ops():
    from tvm_qplugin.errors import UnsupportedOpError

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType([1, 4], "int8"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.negative(x))
            o = bb.emit_output(y)
        bb.emit_func_output(o)
    with pytest.raises(UnsupportedOpError, match="negative"):
        build_graph(bb.finalize())


def test_memory_plan_lower_bound_and_no_overlap():
    from tvm_qplugin.export.memory_plan import Buffer, liveness_lower_bound, plan

    rng = np.random.default_rng(0)
    bufs = []
    for i in range(60):
        s = int(rng.integers(0, 40))
        bufs.append(Buffer(f"b{i}", int(rng.integers(1, 5000)), s, s + int(rng.integers(0, 6))))
    p = plan(bufs)
    assert p.lower_bound == liveness_lower_bound(bufs)
    assert p.arena_bytes >= p.lower_bound
    for i, a in enumerate(bufs):  # plan() checks this too; keep the invariant visible
        for b in bufs[i + 1:]:
            if a.overlaps_in_time(b):
                assert a.offset + a.size <= b.offset or b.offset + b.size <= a.offset
    g = build_graph(kernel_zoo()[0])
    mp, _ = plan_memory(g)
    assert mp.arena_bytes >= mp.lower_bound


def test_buffer_size_companions_equal_the_planner(zoo, tmp_path):
    """Every conv2d/dense kernel's C companion ``*_buffer_size``, called on the parameter block
    model.c really passes, returns the scratch bytes the planner reserved for that step (the
    zoo covers im2col, pointwise, depthwise with and without the 3x3 fast path, int16, dense)."""
    pkg, info = zoo[0], zoo[1]
    steps = [s for s in info["steps"] if s["op"] in ("conv2d_requant", "dense_requant")]
    sizes = {s["scratch_bytes"] for s in steps}
    assert 0 in sizes and len(sizes) >= 5, sizes   # zero (depthwise, no fast path) and several formulas
    assert companion_buffer_sizes(pkg, steps, tmp_path) == {s["index"]: s["scratch_bytes"] for s in steps}


def test_buffer_size_formula_evaluated_and_translated_alike():
    """The Python value and the C text come from one syntax tree: spot-check both on one shape,
    and the C precedence of the translation (a right operand of ``*`` keeps its parentheses)."""
    from tvm_qplugin.export import scratch

    dense = dict(m=5, k=37, n=11)
    # 4 columns of 48 int16 + 11 int32, rounded up to 16
    assert scratch.buffer_size("dense", dense, x8=True) == (4 * 48 * 2 + 4 * 11 + 15) // 16 * 16 == 432
    assert scratch.c_expression("dense", x8=True) == \
        "((QK_NPIX * ((p->k + 16 - 1) / 16 * 16) * 2 + 4 * p->n + 16 - 1) / 16 * 16)"
    assert "4 * (p->o / p->groups)" in scratch.c_expression("conv2d", x8=False)
    assert scratch.buffer_size("requantize", {}, x8=True) == 0


def test_template_fill_refuses_missing_and_unused_values():
    from tvm_qplugin.export.templates import fill

    assert fill("${CMAKE_DIR} $(MAKE_DIR) @X@", X="v") == "${CMAKE_DIR} $(MAKE_DIR) v"   # $ passes through
    assert fill("@A@", A="@B@") == "@B@"                                                 # one pass
    with pytest.raises(KeyError, match=r"without a value: \['Y'\]"):
        fill("@X@ @Y@", X=1)
    with pytest.raises(KeyError, match=r"without a placeholder: \['Z'\]"):
        fill("@X@", X=1, Z=2)
