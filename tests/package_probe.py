"""Questions asked of a written C package by compiling a small probe program against it."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from tvm_qplugin.export import harness


def companion_buffer_sizes(pkg: Path, steps: list[dict], workdir: Path) -> dict[int, int]:
    """``{step index: qk_*_buffer_size(&params)}`` for ``steps``, from model.c's own parameter
    blocks (they are static: the probe includes model.c, so the companions see exactly those)."""
    calls = "".join(f'  printf("%d %ld\\n", {s["index"]}, (long){s["c_func"]}_buffer_size(&qm_p{s["index"]}));\n'
                    for s in steps)
    (workdir / "sizes.c").write_text(f'#include <stdio.h>\n#include "model.c"\n\nint main(void) {{\n{calls}'
                                     "  return 0;\n}\n")
    exe = workdir / "sizes"
    r = subprocess.run(["gcc", *harness.WARN_FLAGS, f"-I{pkg}", workdir / "sizes.c", pkg / "qkernels.c", "-o", exe],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    out = subprocess.run([exe], capture_output=True, text=True, check=True).stdout.split("\n")
    return {int(a): int(b) for a, b in (line.split() for line in out if line)}


def packaged(mod, inputs: list, directory: Path) -> tuple[Path, list, list]:
    """``mod`` written as a C package in ``directory``/pkg with one sample: (package, samples,
    the NumPy reference's outputs per sample) -- what the kernel-zoo tests check against."""
    from tvm_qplugin.export.c_package import write_c_package
    from tvm_qplugin.reference import ReferenceInterpreter

    pkg = directory / "pkg"
    write_c_package(mod, pkg)
    return pkg, [inputs], [ReferenceInterpreter(mod).run("main", *inputs)]


def assert_runs_bit_exact(got, want, n_outputs: int, where: str) -> None:
    """Every output of every sample run by the package equals the reference's, bit for bit."""
    from conftest import assert_bit_exact

    for i, (gs, ws) in enumerate(zip(got, want)):
        assert len(gs) == len(ws) == n_outputs
        for j, (g, w) in enumerate(zip(gs, ws)):
            assert_bit_exact(g, w, f"{where}: sample {i} output {j}")


def check_host(zoo, n_outputs: int, workdir: Path) -> None:
    """The package under ASan/UBSan on the host == the reference."""
    pkg, samples, want = zoo
    exe = harness.build_host(pkg, workdir, cc="gcc", sanitize=True)
    assert_runs_bit_exact(harness.run_host(exe, pkg, samples, workdir / "run"), want, n_outputs, "host gcc")


def check_board(zoo, n_outputs: int, board: str, workdir: Path) -> None:
    """The package under qemu on ``board`` == the reference."""
    from tvm_qplugin.targets import get_board

    pkg, samples, want = zoo
    build = harness.build_mcu(pkg, get_board(board), workdir / "build")
    assert_runs_bit_exact(harness.run_qemu(build, samples, workdir / "run").outputs, want, n_outputs, board)


def full_range(rng, dtype: str, shape) -> np.ndarray:
    """Random integers over ``dtype``'s whole range, its minimum, maximum and 0 among them (the
    kernel zoos' inputs: saturation and sign paths on every run)."""
    info = np.iinfo(dtype)
    a = rng.integers(info.min, info.max + 1, size=shape, dtype=np.int64)
    a.reshape(-1)[:3] = [info.min, info.max, 0]
    return a.astype(dtype)
