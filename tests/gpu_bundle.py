"""The GPU tests' single-kernel cases, carried to a GPU machine that has only TVM's runtime.

The ``*_bit_exact_on_gpu`` tests build each scheduled kernel with TVM's compiler and run it on
the GPU of the machine they run on. A GPU box often has no TVM compiler (a deployment image, a
lent accelerator without the build toolchain), so this script splits the same check in two:

* ``export DIR [--arch sm_90]`` here: for every ``test_cuda_*.py`` that defines it, its
  ``gpu_cases(arch)`` -- {name: (scheduled kernel, inputs with the dtype extremes, the NumPy twin's
  output)}, the very cases its GPU tests use -- built for ``arch`` into ``DIR/<name>.so`` with the
  inputs and expected output in ``DIR/<name>.npz``;
* ``run DIR`` on the GPU machine (numpy + TVM's runtime): each kernel run on ``cuda(0)``, its
  output compared bit for bit with the saved one (``tvm_qplugin.bitexact``); one line per kernel,
  exit 1 on any difference.
"""
from __future__ import annotations

import importlib
import re
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
def case_modules() -> list[str]:
    """The GPU test modules with single-kernel cases (today: build, rows, mma, int16)."""
    return sorted(p.stem for p in HERE.glob("test_cuda_*.py") if "def gpu_cases(" in p.read_text())


def export(root: Path, arch: str) -> int:
    sys.path[:0] = [str(HERE), str(HERE.parent)]  # the test modules; this checkout's packages (qplugin_zoo)
    import tvm
    from tvm.support import nvcc

    from tvm_qplugin.build_cuda import cuda_target

    root.mkdir(parents=True, exist_ok=True)
    n = 0
    for module in case_modules():
        for name, (func, inputs, expected) in importlib.import_module(module).gpu_cases(arch).items():
            symbol = re.sub(r"\W", "_", f"{module.removeprefix('test_')}__{name}")  # a C identifier
            built = tvm.tirx.build(func.with_attr("global_symbol", symbol), target=cuda_target(arch))
            built.export_library(str(root / f"{symbol}.so"))
            source = built.imports[0].inspect_source()
            with cuda_target(arch):
                ptx = nvcc.compile_cuda(source, target_format="ptx", arch=arch, compiler="nvcc").decode()
            (root / f"{symbol}.cu").write_text(source)
            (root / f"{symbol}.ptx").write_text(ptx)
            np.savez_compressed(root / f"{symbol}.npz", expected=expected, **{f"in{i}": a for i, a in enumerate(inputs)})
            n += 1
    print(f"{n} kernels exported to {root} for {arch}")
    return 0


def run(root: Path) -> int:
    from tvm_qplugin.bitexact import first_difference
    from tvm_qplugin.cuda_device_check import provide_ptx, runtime_with_cuda

    tvm = runtime_with_cuda()
    dev, bad = tvm.cuda(0), 0
    for lib in sorted(root.glob("*.so")):
        symbol = lib.stem
        with np.load(lib.with_suffix(".npz")) as z:
            inputs = [z[f"in{i}"] for i in range(len(z.files) - 1)]
            expected = z["expected"]
        if lib.with_suffix(".ptx").is_file():
            provide_ptx(lib.with_suffix(".cu").read_text(), lib.with_suffix(".ptx").read_text())
        out = tvm.runtime.tensor(np.zeros(expected.shape, expected.dtype), dev)
        tvm.runtime.load_module(str(lib))[symbol](*[tvm.runtime.tensor(a, dev) for a in inputs], out)
        diff = first_difference(out.numpy(), expected)
        bad += diff is not None
        print(f"{symbol}: {'bit-exact' if diff is None else 'DIFFERS: ' + diff}", flush=True)
    print(f"{len(list(root.glob('*.so'))) - bad} of {len(list(root.glob('*.so')))} kernels bit-exact on {dev.device_name}")
    return 1 if bad else 0


if __name__ == "__main__":
    cmd, root = sys.argv[1], Path(sys.argv[2])
    arch = sys.argv[sys.argv.index("--arch") + 1] if "--arch" in sys.argv else "sm_90"
    sys.exit(export(root, arch) if cmd == "export" else run(root))
