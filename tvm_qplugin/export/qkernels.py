"""qkernels.c / qkernels.h of a package: exactly the kernel instances the model uses.

``export/mcu/qkernels.c.in`` holds a ``//@@ static`` block (always written) and one
``//@@ template <kind> <type params>`` block per kernel kind; further kernel families live in
``export/mcu/qkernels_<family>.c.in`` (read after it, in name order), whose ``//@@ types`` block (their
parameter structs) goes into qkernels.h. Template blocks use ``@X@`` / ``@XT@`` (type code /
C type of type parameter X), ``@X8@``, ``@XU8@``, ``@FLIP@``, ``@OVST@`` and, for kernels that take
scratch, ``@BUFFER_SIZE@`` (the body of the ``*_buffer_size`` companion, from :mod:`.scratch`); the
shared ``nlcore`` block the nonlinear constants of quant/nonlinear_consts.py.
The header's prototypes are the instantiated definitions' first lines, so a kernel's signature
has one home: its definition.
"""
from __future__ import annotations

import re

from .. import __version__
from ..quant import nonlinear_consts as nc
from . import scratch
from .c_graph import DTYPES
from .kernels_c_shiftadd import sources as shiftadd_sources
from .templates import MCU_DIR, fill, read_template

_CTYPE = {code: ctype for code, ctype, _, _ in DTYPES.values()}
#: order of the kinds in qkernels.c (a GEMM block precedes the conv2d / dense kernels that call it)
KIND_ORDER = ["gemm", "conv2d", "dense", "unpack4", "conv2dw4", "densew4", "requantize", "add", "maxpool", "avgpool", "sum", "maskfill",
              "lut", "mul", "prelu", "sqrt", "resize", "bilinear",
              "mmean", "l2norm", "padm", "logsm", "nlcore", "softmax", "gelu", "layernorm", "matmul"]
#: kinds whose kernels call a shared block: the block is emitted once (with the first type codes it takes)
DEPENDS = {"conv2d": "gemm", "dense": "gemm", "softmax": "nlcore", "gelu": "nlcore", "layernorm": "nlcore"}
#: constants of the nonlinear core, from their one home (quant/nonlinear_consts.py)
_NLCORE = dict(RECIP_C1=nc.RECIP_C1, RECIP_C2=nc.RECIP_C2, RECIP_ITERS=nc.RECIP_ITERS,
               NEWTON_CORRECTION=nc.NEWTON_CORRECTION)
_BLOCK = re.compile(r"^//@@ (static|types|template ([a-z0-9]+)((?: [A-Z])*))\n(.*?)^//@@ end\n", re.M | re.S)
_DEFINITION = re.compile(r"^((?:void|int32_t) qk_\w+\(.*\)) \{$", re.M)


def _template_files() -> list[str]:
    """qkernels.c.in, then every ``qkernels_<family>.c.in`` of export/mcu in name order."""
    return ["qkernels.c.in"] + sorted(p.name for p in MCU_DIR.glob("qkernels_*.c.in"))


def _templates() -> tuple[str, str, dict[str, tuple[list[str], str]]]:
    """(static block, types blocks, {kind: (type parameter names, body)}) of the kernel templates."""
    static, types, blocks = "", [], {}
    for name in _template_files():
        for m in _BLOCK.finditer(read_template(name)):
            if m.group(1) == "static":
                static += m.group(4)
            elif m.group(1) == "types":
                types.append(m.group(4))
            else:
                blocks[m.group(2)] = (m.group(3).split(), m.group(4))
    return static, "\n".join(types), blocks


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
    if kind == "nlcore":
        subst.update(_NLCORE)
    if kind == "matmul":  # int16 x int16: the SMLAD / MVE path
        subst["S16PAIR"] = "1" if types[:2] == ("s16", "s16") else "0"
    if kind in scratch.SCRATCH_FORMULAS:
        subst["BUFFER_SIZE"] = scratch.c_expression(kind, x8=subst["X8"] == "1")
    used = set(re.findall(r"@([A-Z0-9_]+)@", body))
    return fill(body, **{k: v for k, v in subst.items() if k in used})


def kernel_sources(instances: set[tuple]) -> tuple[str, str]:
    """(qkernels.h, qkernels.c) text holding exactly ``instances`` ((kind, type codes...))."""
    static, types, blocks = _templates()
    insts = set(instances)
    for inst in sorted(insts):
        dep = DEPENDS.get(inst[0])
        if dep is not None:
            insts.add((dep, *inst[1:1 + len(blocks[dep][0])]))
    order = KIND_ORDER + sorted(set(blocks) - set(KIND_ORDER))
    c_parts = [fill(static, VERSION=__version__)]
    protos = []
    for kind in order:
        for inst in sorted(i for i in insts if i[0] == kind):
            code = _instantiate(kind, inst[1:], blocks)
            c_parts.append(code)
            protos += [d + ";" for d in _DEFINITION.findall(code)]
    shiftadd_types, shiftadd_code = shiftadd_sources(insts)  # shift/add kernels: export/kernels_c_shiftadd.py
    if shiftadd_code:
        c_parts.append(shiftadd_code)
        protos = [shiftadd_types] + protos + [d + ";" for d in _DEFINITION.findall(shiftadd_code)]
    header = fill(read_template("qkernels.h.in"), VERSION=__version__,
                  PROTOTYPES="\n".join([types, *protos]) if protos else types + "/* (none) */")
    return header, "\n".join(c_parts)
