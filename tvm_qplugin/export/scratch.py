"""Scratch bytes of the C kernels: one formula per kernel, read by the planner and by C.

Like CMSIS-NN's ``arm_*_get_buffer_size``, every qkernels.c kernel that needs scratch has a
companion ``int32_t qk_<kind>_<X>_<O>_buffer_size(const <params> *p)``, and the caller owns the
memory. Here the caller is the arena planner, which must know the size when the package is
*written*, before any C is compiled -- so the formula cannot live only in C. It lives in
:data:`SCRATCH_FORMULAS`, once, as an expression over the fields of the kernel's parameter block:

* :func:`buffer_size` evaluates it in Python (the planner's scratch value for a step);
* :func:`c_expression` translates the same syntax tree to C, the body of the companion
  (``@BUFFER_SIZE@`` in the kernel's template in qkernels.c.in).

A test compiles the companions on the host and checks them against :func:`buffer_size` for
several shapes. The expressions use integer ``+ - * //``, comparisons, ``and``/``or``,
``a if c else b`` and ``round_up(v, m)``; names are parameter-block fields (``p->name`` in C),
``QK_NPIX`` (read from qk_internal.h, its one home), ``ALIGN`` (the arena alignment) and ``X8``
(1 when the kernel's input is 8-bit, the template parameter of qkernels.c.in).
"""
from __future__ import annotations

import ast
import re

from .c_graph import ALIGN
from .templates import read_template

#: GEMM block width (output pixels per im2col block): the C #define is the one home.
QK_NPIX = int(re.search(r"^#define QK_NPIX (\d+)$", read_template("qk_internal.h"), re.M).group(1))

# im2col / dense: QK_NPIX columns of K (rounded up to 16) int16 elements (the widest column type;
# MVE builds use half of it), then one int32 per output channel of a group (the weight-sum
# correction buffer); the whole rounded up to the arena alignment.
_GEMM = "round_up(QK_NPIX * round_up({k}, 16) * 2 + 4 * ({nout}), ALIGN)"

SCRATCH_FORMULAS: dict[str, tuple[str, str]] = {
    # kind -> (parameter block, bytes). conv2d: depthwise (c // groups == 1, groups > 1) takes
    # scratch only on the 8-bit 3x3 fast path (stride 1/2, no dilation): one padded input plane
    # plus 16 bytes of vector over-read; any other conv is an im2col GEMM.
    "conv2d": ("qk_conv_t",
               "(round_up(((oh - 1) * sh + 3) * ((ow - 1) * sw + 3) + 16, ALIGN)"
               " if X8 and kh == 3 and kw == 3 and dh == 1 and dw == 1 and sh == sw and (sh == 1 or sh == 2) else 0)"
               " if c // groups == 1 and groups > 1 else "
               + _GEMM.format(k="c // groups * kh * kw", nout="o // groups")),
    # dense: an im2col-free GEMM, rows of x are the columns
    "dense": ("qk_dense_t", _GEMM.format(k="k", nout="n")),
}


def _round_up(v: int, m: int) -> int:
    return (v + m - 1) // m * m


def _tree(kind: str) -> ast.Expression:
    return ast.parse(SCRATCH_FORMULAS[kind][1], mode="eval")


def buffer_size(kind: str, fields: dict, x8: bool) -> int:
    """Scratch bytes of a ``kind`` kernel with parameter-block ``fields`` (0: none, or no scratch kind)."""
    if kind not in SCRATCH_FORMULAS:
        return 0
    names = {**{k: int(v) for k, v in fields.items()}, "QK_NPIX": QK_NPIX, "ALIGN": ALIGN, "X8": int(x8),
             "round_up": _round_up}
    return int(eval(compile(_tree(kind), f"<scratch {kind}>", "eval"), {"__builtins__": {}}, names))


_C_BINOP = {ast.Add: ("+", 5), ast.Sub: ("-", 5), ast.Mult: ("*", 6), ast.FloorDiv: ("/", 6)}  # operands >= 0
_C_CMP = {ast.Eq: "==", ast.NotEq: "!=", ast.Lt: "<", ast.LtE: "<=", ast.Gt: ">", ast.GtE: ">="}
_ATOM = 7


def c_expression(kind: str, x8: bool) -> str:
    """The formula of ``kind`` as a C expression over ``const <params> *p``.

    Parentheses follow C precedence (levels: ?: 1, || 2, && 3, comparison 4, + - 5, * / 6);
    a right operand of the same level is always parenthesised (integer ``a * (b / c)`` is not
    ``a * b / c``), and so is ``&&`` inside ``||`` (gcc's -Wparentheses).
    """
    consts = {"ALIGN": str(ALIGN), "X8": str(int(x8)), "QK_NPIX": "QK_NPIX"}

    def wrap(n: ast.AST, least: int) -> str:
        text, level = c(n)
        return text if level >= least else f"({text})"

    def c(n: ast.AST) -> tuple[str, int]:
        if isinstance(n, ast.Constant) and isinstance(n.value, int):
            return str(n.value), _ATOM
        if isinstance(n, ast.Name):
            return consts.get(n.id, f"p->{n.id}"), _ATOM
        if isinstance(n, ast.BinOp) and type(n.op) in _C_BINOP:
            op, level = _C_BINOP[type(n.op)]
            return f"{wrap(n.left, level)} {op} {wrap(n.right, level + 1)}", level
        if isinstance(n, ast.Compare) and len(n.ops) == 1 and type(n.ops[0]) in _C_CMP:
            return f"{wrap(n.left, 5)} {_C_CMP[type(n.ops[0])]} {wrap(n.comparators[0], 5)}", 4
        if isinstance(n, ast.BoolOp):
            op, level, least = (" && ", 3, 3) if isinstance(n.op, ast.And) else (" || ", 2, 4)
            return op.join(wrap(v, least) for v in n.values), level
        if isinstance(n, ast.IfExp):
            return f"{wrap(n.test, 2)} ? {wrap(n.body, 2)} : {wrap(n.orelse, 1)}", 1
        if isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "round_up" and len(n.args) == 2:
            v, m = wrap(n.args[0], 5), wrap(n.args[1], _ATOM)
            return f"(({v} + {m} - 1) / {m} * {m})", _ATOM
        raise ValueError(f"scratch formula of {kind}: {ast.dump(n)} has no C form")

    return c(_tree(kind).body)[0]
