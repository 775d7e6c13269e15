"""Questions asked of a written C package by compiling a small probe program against it."""
from __future__ import annotations

import subprocess
from pathlib import Path

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
