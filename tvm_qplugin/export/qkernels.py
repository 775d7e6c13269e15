"""qkernels.c / qkernels.h of a package: exactly the kernel instances the model uses.

``export/mcu/qkernels.c.in`` holds a ``//@@ static`` block (always written) and one
``//@@ template <kind> <type params>`` block per kernel kind, with ``@X@`` / ``@XT@`` (type code /
C type of type parameter X), ``@X8@``, ``@XU8@``, ``@FLIP@``, ``@OVST@`` and, for kernels that take
scratch, ``@BUFFER_SIZE@`` (the body of the ``*_buffer_size`` companion, from :mod:`.scratch`).
The header's prototypes are the instantiated definitions' first lines, so a kernel's signature
has one home: its definition.
"""
from __future__ import annotations

import re

from .. import __version__
from . import scratch
from .c_graph import DTYPES
from .kernels_c_shiftadd import sources as shiftadd_sources
from .templates import fill, read_template

_CTYPE = {code: ctype for code, ctype, _, _ in DTYPES.values()}
#: order of the kinds in qkernels.c (a GEMM block precedes the conv2d / dense kernels that call it)
KIND_ORDER = ["gemm", "conv2d", "dense", "requantize", "add", "maxpool", "avgpool", "sum", "maskfill",
              "lut", "mul", "prelu", "sqrt", "resize", "bilinear",
              "mmean", "l2norm", "padm", "logsm"]
_BLOCK = re.compile(r"^//@@ (static|template ([a-z0-9]+)((?: [A-Z])*))\n(.*?)^//@@ end\n", re.M | re.S)
_DEFINITION = re.compile(r"^((?:void|int32_t) qk_\w+\(.*\)) \{$", re.M)


def _templates() -> tuple[str, dict[str, tuple[list[str], str]]]:
    """(static block, {kind: (type parameter names, body)}) of qkernels.c.in."""
    static, blocks = "", {}
    for m in _BLOCK.finditer(read_template("qkernels.c.in")):
        if m.group(1) == "static":
            static = m.group(4)
        else:
            blocks[m.group(2)] = (m.group(3).split(), m.group(4))
    return static, blocks


def _instantiate(kind: str, types: tuple, blocks) -> str:
    names, body = blocks[kind]
    subst = {"VERSION": __version__}
    for n, code in zip(names, types):
        subst[n] = code
        subst[n + "T"] = _CTYPE[code]
    if "X" in subst:
        subst["X8"] = "1" if subst["X"] in ("u8", "s8") else "0"
        subst["XU8"] = "1" if subst["X"] == "u8" else "0"
        subst["FLIP"] = "0x80" if subst["X"] == "u8" else "0"
    if "O" in subst:
        subst["OVST"] = f"QK_VST_{subst['O']}"
    if kind in scratch.SCRATCH_FORMULAS:
        subst["BUFFER_SIZE"] = scratch.c_expression(kind, x8=subst["X8"] == "1")
    used = set(re.findall(r"@([A-Z0-9_]+)@", body))
    return fill(body, **{k: v for k, v in subst.items() if k in used})


def kernel_sources(instances: set[tuple]) -> tuple[str, str]:
    """(qkernels.h, qkernels.c) text holding exactly ``instances`` ((kind, type codes...))."""
    static, blocks = _templates()
    insts = set(instances)
    for inst in list(insts):
        if inst[0] in ("conv2d", "dense"):
            insts.add(("gemm", *inst[1:]))
    c_parts = [fill(static, VERSION=__version__)]
    protos = []
    for kind in KIND_ORDER:
        for inst in sorted(i for i in insts if i[0] == kind):
            code = _instantiate(kind, inst[1:], blocks)
            c_parts.append(code)
            protos += [d + ";" for d in _DEFINITION.findall(code)]
    shiftadd_types, shiftadd_code = shiftadd_sources(insts)  # shift/add kernels: export/kernels_c_shiftadd.py
    if shiftadd_code:
        c_parts.append(shiftadd_code)
        protos = [shiftadd_types] + protos + [d + ";" for d in _DEFINITION.findall(shiftadd_code)]
    header = fill(read_template("qkernels.h.in"), VERSION=__version__,
                  PROTOTYPES="\n".join(protos) if protos else "/* (none) */")
    return header, "\n".join(c_parts)
