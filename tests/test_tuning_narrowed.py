"""``tune`` tunes the kernels the build compiles: with ``--wide-inputs 8 | auto`` a narrowed conv is
one fused kernel (schedules/x86_narrowing.py), so its task must be that kernel, not the pair the
integer module keeps (whose records the build would never look up)."""
from __future__ import annotations

import numpy as np
import pytest

import tvm_qplugin as tq
from test_wide_inputs import residual_cnn
from tvm_qplugin.cli import build_parser
from tvm_qplugin.schedules.x86_narrowing import NARROWED, built_module
from tvm_qplugin.targets import get_board
from tvm_qplugin.tuning.tasks import extract_tasks


@pytest.fixture(scope="module")
def narrowed_art(tmp_path_factory):
    model = residual_cnn(tmp_path_factory.mktemp("tune_narrowed") / "residual.onnx")
    calib = {"x": np.random.default_rng(1).standard_normal((48, 4, 8, 8)).astype(np.float32)}
    return tq.compile(model, calib=calib, wide_inputs="8", timing_runs=1)


def test_tasks_are_the_kernels_the_build_compiles(narrowed_art):
    target = get_board("x86-host").target()
    tasks = extract_tasks(narrowed_art.integer_mod, target)
    built = {gv.name_hint for gv in built_module(narrowed_art).functions}
    assert sum(t.op == NARROWED for t in tasks) == 2, [t.name for t in tasks]
    assert not [t.name for t in tasks if t.op == "requantize" and "s16" in t.name]  # fused away
    assert {t.name for t in tasks} <= built


def test_tune_takes_the_width_compile_takes():
    args = build_parser().parse_args(["tune", "m.onnx", "--trials", "4", "--wide-inputs", "8"])
    assert args.wide_inputs == "8"
