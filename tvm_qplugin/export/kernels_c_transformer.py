"""Kernel descriptions of the transformer ops (see :mod:`.kernels_c` for the scheme): integer
softmax, GELU and LayerNorm (ops/nonlinear.py) and the activation x activation matmul of attention
(ops/matmul.py). The C kernels live in ``export/mcu/qkernels_transformer.c.in``; every constant
they read is derived here from the op's params by the same functions the NumPy twins call
(quant/nonlinear_consts.py), so the C and the reference cannot disagree on one.

The papers' own integer arithmetic (``ivit-paper`` / ``ibert-paper``) has no C kernel yet: refused
in one line naming the op and the variants that have one.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from ..ops.matmul import acc_bound
from ..ops.nonlinear import SoftmaxInt
from ..quant import nonlinear_consts as nc
from ..quant.scheme import variant_of
from .c_emit import c_dims, c_i32, c_i64, fits
from .c_graph import MAX_DIMS, Step, prod, row_major_strides
from .kernels_c_coverage import check_requant

_C_VARIANTS = "ivit, ibert, division-free"


def _c_variant(s: Step, variant: str):
    """The variant row of a C-supported nonlinear variant; one line naming the op otherwise."""
    kind = variant_of(variant)
    if kind.paper:
        raise UnsupportedOpError(f"C package: {s.op} {s.name}: nonlinear variant {variant} has no C kernel "
                                 f"(C kernels: {_C_VARIANTS})")
    return kind


def exp_fields(ce) -> str:
    """The ``qk_exp_t`` initializer of one exponential (ShiftExp or I-BERT i-exp constants)."""
    if isinstance(ce, nc.IBertExpConsts):
        f = dict(kind=2, pre_shift=ce.pre_shift, n=ce.n, x0=ce.x0, b=ce.b, c=ce.c, z_shift=ce.z_shift,
                 x_min=ce.q_clamp * ce.x0)
        lo = f["x_min"]
    else:
        f = dict(kind=0, pre_shift=ce.pre_shift, n=ce.n, i0=ce.i0, ip_min=ce.ip_min, poly=ce.poly, quad_s=ce.quad_s,
                 div_s=ce.div.s, quad_m=c_i64(ce.quad_m), div_m=c_i64(ce.div.m))
        lo = ce.ip_min
    # the kernel saturates the argument at -2**24 and runs in 32 bits: the clamp must lie above
    assert -2**24 < lo <= 0 and all(isinstance(v, str) or -2**31 <= v < 2**31 for v in f.values()), f
    return "{" + ", ".join(f".{k} = {v}" for k, v in f.items()) + "}"


class TransformerKernelCalls:
    """``op_<op>`` methods for :class:`.kernels_c.KernelCalls` (which provides ``emit_call`` and
    ``const_array``)."""

    def op_softmax_int(self, s: Step, p: dict) -> None:
        (x,) = s.args
        _c_variant(s, p["variant"])
        length = x.shape[-1]
        ce, (frac, qmax) = SoftmaxInt._consts(length, p["in_scale"], p["n"], p["variant"], p.get("exp_poly", 1),
                                              p.get("out_dtype", "uint8"))
        self.emit_call(s, "softmax", (x, s.out), "qk_softmax_t",
                       dict(rows=prod(x.shape) // length, len=length, frac=frac, qmax=c_i32(qmax), ex=exp_fields(ce)))

    def op_gelu_int(self, s: Step, p: dict) -> None:
        (x,) = s.args
        _c_variant(s, p["variant"])
        g = nc.gelu_consts(p["in_scale"], p["out_scale"], p["variant"], p.get("n"), p.get("exp_poly", 1),
                           p.get("approx", "paper"))
        check_requant(s, g.out.multiplier, g.out.shift)
        fields = dict(count=prod(x.shape), form=int(g.se is None), has_cubic=int(g.cubic is not None),
                      cubic_s=0 if g.cubic is None else g.cubic.shift, sig_shift=31 - nc.SIGMOID_BITS,
                      out_m=c_i32(g.out.multiplier), out_s=g.out.shift, qmin=c_i32(p["qmin"]), qmax=c_i32(p["qmax"]),
                      e_max=c_i32(0 if g.se is None else g.se.e_max), erf_pre_shift=g.erf_pre_shift,
                      erf_shift=g.erf_shift, cubic_m=c_i64(0 if g.cubic is None else g.cubic.multiplier),
                      erf_b=c_i64(g.erf_b), erf_c=c_i64(g.erf_c), erf_one=c_i64(g.erf_one))
        if g.se is not None:
            fields["ex"] = exp_fields(g.se)
        self.emit_call(s, "gelu", (x, s.out), "qk_gelu_t", fields)

    def op_layernorm_int(self, s: Step, p: dict) -> None:
        x, mult, bias = s.args
        kind = _c_variant(s, p["variant"])
        c = x.shape[-1]
        lc = nc.layernorm_consts(c, p["in_scale"], p["eps"], p["pre_shift"], p["variant"])
        m, b = np.asarray(mult.val.const).reshape(-1), np.asarray(bias.val.const).reshape(-1)
        if not fits(m, -2**31, 2**31 - 1):
            raise UnsupportedOpError(f"C package: {s.name}: layernorm multipliers exceed int32")
        check_requant(s, 0, p["shift"])
        self.emit_call(s, "layernorm", (x, s.out), "qk_layernorm_t",
                       dict(rows=prod(x.shape) // c, c=c, pre_shift=p["pre_shift"], clamp_in=int(x.dtype == "int32"),
                            max_abs=nc.LN_MAX_ABS, division_free=int(kind.division_free), iters=lc.iters, keep_min=int(kind.ln_exact_isqrt),
                            shift=p["shift"], qmin=c_i32(p["qmin"]), qmax=c_i32(p["qmax"]), eps=c_i64(lc.eps),
                            numerator=c_i64(kind.ln_numerator), mean_m=c_i64(lc.mean_div.m),
                            mean_s=lc.mean_div.s, mult=self.const_array(m.astype(np.int32), "int32_t", "m"),
                            bias=self.const_array(b.astype(np.int64), "int64_t", "b")))

    def op_matmul_requant(self, s: Step, p: dict) -> None:
        a, b = s.args
        m, k = a.shape[-2:]
        n = b.shape[-1]
        acc64 = int(p.get("acc_bits", 32)) == 64
        if not acc64 and acc_bound(a.dtype, b.dtype, k, p.get("a_row_sum")) >= 2**31:
            raise UnsupportedOpError(f"C package: {s.name}: the int32 accumulator could overflow")
        check_requant(s, p["multiplier"], p["shift"])
        batch = tuple(s.out.shape[:-2])
        if len(batch) > MAX_DIMS:
            raise UnsupportedOpError(f"C package: matmul_requant with {len(batch)} batch dims ({s.name})")

        def matrix_strides(shape):
            """Element offset step of each batch dim between matrices of an operand (0: broadcast)."""
            lead = (1,) * (len(batch) - (len(shape) - 2)) + tuple(shape[:-2])
            st = row_major_strides(lead + tuple(shape[-2:]))[:len(batch)]
            return [0 if lead[i] == 1 and batch[i] != 1 else st[i] for i in range(len(batch))]

        self.emit_call(s, "matmul", (a, b, s.out), "qk_matmul_t",
                       dict(nb=prod(batch), nd=len(batch), m=m, k=k, n=n, acc64=int(acc64), mult=c_i32(p["multiplier"]),
                            shift=p["shift"], qmin=c_i32(p["qmin"]), qmax=c_i32(p["qmax"]), bshape=c_dims(batch),
                            sa=c_dims(matrix_strides(a.shape)), sb=c_dims(matrix_strides(b.shape))), [a, b])
