"""Tutorial step 1-2: ONNX -> verified integer model -> C package (+ one sample input for main.c).

    python tutorials/mcu_firmware/prepare.py --board stm32f746-disco --out out
    python tutorials/mcu_firmware/prepare.py --model my.onnx --calib calib.npz --board nrf52840 --out out

writes ``out/c/`` (the C package: model.h, model.c, qkernels.*, CMakeLists.txt, model.mk, zephyr/)
and ``out/sample_input.h``, then prints the cmake / qemu commands of steps 3-4 for the board.
Without --model it uses the digits CNN of examples/ with the scikit-learn digits.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))  # qplugin_zoo: the repository's fixtures, not installed


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(REPO / "examples" / "digits_cnn.onnx"))
    ap.add_argument("--calib", help=".npz with one float32 array per model input (first axis: samples)")
    ap.add_argument("--board", default="stm32f746-disco", help="a Cortex-M board of `tvm-qplugin targets`")
    ap.add_argument("--out", default="out")
    a = ap.parse_args(argv)

    import tvm_qplugin as tq
    from tvm_qplugin.export import check_budget, write_c_package
    from tvm_qplugin.export.c_package import MCU_DIR
    from tvm_qplugin.reference import ReferenceInterpreter
    from tvm_qplugin.targets import get_board

    board = get_board(a.board)
    if not board.is_mcu:
        sys.exit(f"{a.board} is not a Cortex-M board")
    if a.calib:
        calib = dict(np.load(a.calib))
        calib.pop("labels", None)
    else:
        from qplugin_zoo import digits_split
        xtr, _, xte, _ = digits_split()
        calib = {"input": xtr[:256]}
        calib_eval = {"input": xte[:1]}
    # 1. float ONNX -> integer-only model, checked bit-exact against the NumPy reference
    art = tq.compile(a.model, calib=calib, int_io=True, timing_runs=1)
    # 2. the C package for the board (budget pre-check: arena vs SRAM, weights vs flash)
    out = Path(a.out)
    info = write_c_package(art, out / "c", board)
    check_budget(info, board)
    # one sample input for main.c, and the class the integer model gives it
    sample_float = calib_eval if not a.calib else {k: v[:1] for k, v in calib.items()}
    q = art.quantize_inputs(sample_float)
    want = ReferenceInterpreter(art.integer_mod).run("main", *q)[0]
    sp = info["inputs"][0]
    values = ", ".join(str(int(v)) for v in q[0].reshape(-1))
    (out / "sample_input.h").write_text(
        "/* one quantized sample input (written by tutorials/mcu_firmware/prepare.py) */\n"
        "#include <stdint.h>\n"
        f"static const {sp['c_type']} sample_input[{sp['elements']}] = {{{values}}};\n"
        f"#define SAMPLE_LABEL {int(np.argmax(want.reshape(-1)))}  /* class of the NumPy integer reference */\n")

    emu = board.emulator()
    ext = str(board.ext_flash_bytes) if board.ext_flash_bytes else "0"
    flash = board.flash_bytes or emu.flash_bytes
    src = Path(__file__).resolve().parent
    print(f"C package: {out / 'c'}  (arena {info['arena_bytes']} B, liveness lower bound "
          f"{info['liveness_lower_bound_bytes']} B, weights {info['weights_bytes']} B)")
    print("build the firmware:")
    print("  cmake -S", shlex.quote(str(src)), "-B", shlex.quote(str(out / "build")),
          f"-DCMAKE_TOOLCHAIN_FILE={shlex.quote(str(src / 'arm-none-eabi.cmake'))}",
          f"-DQMODEL_DIR={shlex.quote(str((out / 'c').resolve()))}",
          f"-DMCU_SUPPORT_DIR={shlex.quote(str(MCU_DIR))}",
          f"-DBOARD_CPU_FLAGS={shlex.quote(' '.join(board.cflags))}",
          f"-DBOARD_RAM_SIZE={board.sram_bytes} -DBOARD_FLASH_SIZE={flash} -DQMODEL_EXTFLASH_SIZE={ext}")
    print("  cmake --build", shlex.quote(str(out / "build")))
    print(f"run it on the emulated twin of {board.name} ({emu.name}):")
    print(f"  qemu-system-arm -M {emu.qemu_machine} -display none -monitor none -serial none "
          f"-semihosting-config enable=on,target=native -kernel {shlex.quote(str(out / 'build' / 'firmware.elf'))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
