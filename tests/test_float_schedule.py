"""schedules/float_cpu.py: the float model's convolutions and matmuls are scheduled for speed, and
every observed tensor (the calibration's taps, the fp32 outputs) stays bit for bit what the
unscheduled build computes -- the calibrated ranges must not depend on the schedule."""
from __future__ import annotations

import numpy as np
import tvm

from onnx_builders import OnnxGraph
from tvm_qplugin.calibrate import FloatRunner
from tvm_qplugin.frontend import import_onnx
from tvm_qplugin.passes.canonicalize import canonicalize
from tvm_qplugin.schedules import float_cpu

TARGET = tvm.target.Target.from_device(tvm.cpu())


def conv_zoo(tmp_path, rng):
    """3x3 / strided / pointwise / depthwise / unpadded convs, then a dense head."""
    g = OnnxGraph((2, 3, 13, 11), rng)
    y = g.clip(g.conv("x", 8, k=3, stride=2))
    y = g.relu(g.conv(y, 8, k=3, groups=8))
    y = g.conv(y, 16, k=1)
    y = g.conv(y, 6, k=3, pads=(0, 0, 0, 0))
    return g.save(g.gemm(g.flatten(y), 5), tmp_path / "convs.onnx")


def _conv_loop_count(func) -> int:
    from tvm.s_tir import schedule as s_tir_schedule

    sch = s_tir_schedule.Schedule(func)
    update = next(b for b in sch.get_child_blocks(sch.get_sblock("root"))
                  if "conv" in sch.get(b).name_hint and "init" not in sch.get(b).name_hint)
    return len(sch.get_loops(update))


def test_scheduled_float_build_is_bit_identical(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    mod = canonicalize(import_onnx(conv_zoo(tmp_path, rng)).mod)
    legal = float_cpu.legalize_and_schedule(mod, TARGET)
    convs = [f for f in legal.functions.values()
             if isinstance(f, tvm.tirx.PrimFunc) and "conv" in f.script() and "T.parallel" in f.script()]
    assert len(convs) == 4, "every float conv gets the parallel plane schedule"
    # the 1x1 conv's plane is one loop: (n, c) fused, rc, ry, rx, then y*x -- the others keep y and x
    assert sorted(_conv_loop_count(f) for f in convs) == [5, 6, 6, 6]
    x = {"x": rng.standard_normal((2, 3, 13, 11)).astype(np.float32)}
    scheduled = FloatRunner(mod, TARGET).run(x)
    with monkeypatch.context() as m:
        m.setattr(float_cpu, "schedule_conv", lambda func: None)
        m.setattr(float_cpu, "schedule_matmul", lambda func: None)
        plain = FloatRunner(mod, TARGET).run(x)
    taps = scheduled[0] + scheduled[1]
    assert len(taps) > 8
    for i, (a, b) in enumerate(zip(taps, plain[0] + plain[1])):
        assert a.dtype == b.dtype and np.array_equal(a, b), f"tap {i} differs"


def test_non_conv_kernels_are_left_alone():
    """Elementwise float kernels are not the conv rule's: it answers None."""
    from tvm import te

    a = te.placeholder((4, 8), "float32", name="a")
    out = te.compute((4, 8), lambda i, j: a[i, j] * 2.0, name="scale")
    func = te.create_prim_func([a, out])
    assert float_cpu.schedule_conv(func) is None


def test_taps_outlive_the_next_run(tmp_path):
    """FloatRunner.run hands out zero-copy views of the VM's result tensors: a later run must not
    write into the arrays of an earlier one (calibration keeps none, but an evaluation may)."""
    rng = np.random.default_rng(1)
    runner = FloatRunner(canonicalize(import_onnx(conv_zoo(tmp_path, rng)).mod), TARGET)
    first = runner.run({"x": rng.standard_normal((2, 3, 13, 11)).astype(np.float32)})
    kept = [a.copy() for a in first[0] + first[1]]
    for _ in range(3):
        runner.run({"x": rng.standard_normal((2, 3, 13, 11)).astype(np.float32)})
    assert all(np.array_equal(a, b) for a, b in zip(first[0] + first[1], kept))


def _update_loop_extents(func, name: str) -> list[int]:
    from tvm.s_tir import schedule as s_tir_schedule

    sch = s_tir_schedule.Schedule(func)
    update = next(b for b in sch.get_child_blocks(sch.get_sblock("root"))
                  if name in sch.get(b).name_hint and "init" not in sch.get(b).name_hint)
    return [int(sch.get(loop).extent) for loop in sch.get_loops(update)]


def test_matmul_register_tiles_are_bit_identical(tmp_path, monkeypatch):
    """Rows divisible by 4 and columns by 64: 4 x 64 tiles; columns not: 4-row blocks over whole
    rows; 2 rows: the plain ``i, k, j`` order -- all three bit for bit the unscheduled build."""
    rng = np.random.default_rng(2)
    g = OnnxGraph((2, 12, 40), rng)
    y = g.relu(g.matmul("x", 128))         # (2, 12) x 128: tiles
    y = g.matmul(y, 24)                    # 24 columns: row blocks
    path = g.save(g.gemm(g.reshape(y, (2, 12 * 24)), 7), tmp_path / "matmuls.onnx")   # 2 rows: plain
    mod = canonicalize(import_onnx(path).mod)
    legal = float_cpu.legalize_and_schedule(mod, TARGET)
    matmuls = [f for f in legal.functions.values() if isinstance(f, tvm.tirx.PrimFunc) and "T.parallel" in f.script()
               and 'sblock("matmul' in f.script()]
    inner = sorted(_update_loop_extents(f, "matmul")[-2:] for f in matmuls)
    assert inner == [[4, 24], [4, 64], [288, 7]], inner   # (ii, j) / (ii, ji) / (k, j)
    x = {"x": rng.standard_normal((2, 12, 40)).astype(np.float32)}
    scheduled = FloatRunner(mod, TARGET).run(x)
    with monkeypatch.context() as m:
        m.setattr(float_cpu, "schedule_conv", lambda func: None)
        m.setattr(float_cpu, "schedule_matmul", lambda func: None)
        plain = FloatRunner(mod, TARGET).run(x)
    for i, (a, b) in enumerate(zip(scheduled[0] + scheduled[1], plain[0] + plain[1])):
        assert a.dtype == b.dtype and np.array_equal(a, b), f"tap {i} differs"
