"""Kernel cost of the C package under emulation (issue 4 "Kernel cost"), counted with the qemu
instruction-count plugin (export/mcu/qemu_insncount.c): a 1x1 convolution 12x12x64 -> 64 on int8.

CMSIS-NN (gcc -O3) executes 2.08 instructions per MAC on Cortex-M4 and 0.40 on Cortex-M55 (MVE);
the bounds are <= 2.1 and <= 0.45. The figures are printed (pytest -s) and bit-exactness of the
measured layer against the NumPy reference is asserted too.
"""
from __future__ import annotations

import pytest

from qplugin_zoo.kernel_bench import CMSIS_NN_INSNS_PER_MAC, TARGET_INSNS_PER_MAC, measure_conv1x1


@pytest.mark.parametrize("board,core", [("qemu-mps2-an386", "cortex-m4"), ("qemu-mps3-an547", "cortex-m55")])
def test_conv1x1_12x12x64_instructions_per_mac(tmp_path, board, core):
    r = measure_conv1x1(board, workdir=tmp_path)
    assert r["bit_exact"], "the measured kernel differs from the NumPy reference"
    assert r["macs"] == 12 * 12 * 64 * 64
    ipm = r["instructions_per_mac"]
    print(f"\n1x1 conv 12x12x64->64 int8 on {core} ({board}): {r['instructions']} instructions, "
          f"{ipm:.3f} instructions/MAC (CMSIS-NN {CMSIS_NN_INSNS_PER_MAC[core]}, bound {TARGET_INSNS_PER_MAC[core]}, "
          f"{ipm / CMSIS_NN_INSNS_PER_MAC[core]:.2f}x CMSIS-NN)")
    assert ipm <= TARGET_INSNS_PER_MAC[core], f"{core}: {ipm:.3f} instructions/MAC"


@pytest.mark.parametrize("x_dtype", ["uint8", "int16"])
def test_conv1x1_other_input_types_stay_cheap(tmp_path, x_dtype):
    """The activations of real models are uint8 (after ReLU) or int16 (residual stream)."""
    for board, bound in (("qemu-mps2-an386", 2.1), ("qemu-mps3-an547", 0.6)):
        r = measure_conv1x1(board, workdir=tmp_path / board, x_dtype=x_dtype)
        assert r["bit_exact"]
        print(f"\n1x1 conv {x_dtype} on {board}: {r['instructions_per_mac']:.3f} instructions/MAC")
        assert r["instructions_per_mac"] <= bound
