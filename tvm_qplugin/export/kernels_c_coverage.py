"""Kernel descriptions of the later coverage ops (see :mod:`.kernels_c` for the scheme): the
sentence-embedding heads (ops/pooling_norm.py), Pad reflect / edge (ops/pad_mirror.py) and
LogSoftmax (ops/log_softmax.py). A mixin of :class:`.kernels_c.KernelCalls`, kept apart so that
each file stays one screenful per op family.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from .c_emit import c_dims, c_i32, c_i64, fits
from .c_graph import MAX_DIMS, Step, prod, row_major_strides


def check_requant(s: Step, mult, shift) -> None:
    """A per-tensor requantization (b, c) the C kernels take: int32 multiplier, shift in [0, 62]."""
    if not (-2**31 <= int(mult) < 2**31 and 0 <= int(shift) <= 62):
        raise UnsupportedOpError(f"C package: {s.name}: requantization (b={mult}, c={shift}) out of range")


class CoverageKernelCalls:
    """``op_<op>`` methods for :class:`.kernels_c.KernelCalls` (which provides ``emit_call``, ``ptr`` and
    ``const_array``)."""

    def op_masked_mean_requant(self, s: Step, p: dict) -> None:
        x, mask, table = s.args
        b, t, d = x.shape
        tab = np.asarray(table.val.const).reshape(-1)
        check_requant(s, 0, p["shift"])
        if not fits(tab, -2**31, 2**31 - 1):
            raise UnsupportedOpError(f"C package: {s.name}: masked-mean reciprocals exceed int32")
        self.emit_call(s, "mmean", (x, mask, s.out), "qk_mmean_t",
                       dict(b=b, t=t, d=d, shift=p["shift"], qmin=c_i32(p["qmin"]), qmax=c_i32(p["qmax"]),
                            table=self.const_array(tab.astype(np.int32), "int32_t", "m")), [x, mask])

    def op_l2_normalize_int(self, s: Step, p: dict) -> None:
        (x,) = s.args
        c = x.shape[-1]
        self.emit_call(s, "l2norm", (x,), "qk_l2norm_t", dict(rows=prod(x.shape) // c, c=c, pre_shift=p["pre_shift"]))

    def op_pad_mirror(self, s: Step, p: dict) -> None:
        (x,) = s.args
        nd = len(x.shape)
        if nd > MAX_DIMS:
            raise UnsupportedOpError(f"C package: pad_mirror of rank {nd} ({s.name})")
        self.emit_call(s, "padm", (x,), "qk_padm_t",
                       dict(ndim=nd, count=prod(s.out.shape), reflect=int(p["mode"] == "reflect"),
                            shape=c_dims(s.out.shape), in_shape=c_dims(x.shape),
                            in_stride=c_dims(row_major_strides(x.shape)), before=c_dims(p["before"])))

    def op_log_softmax_int(self, s: Step, p: dict) -> None:
        from ..ops.log_softmax import log_softmax_consts
        from ..quant.scheme import variant_of

        x, table = s.args
        length = x.shape[-1]
        ce, log2_e0 = log_softmax_consts(p["in_scale"], p["n"], p["variant"], p["exp_poly"], length)
        check_requant(s, 0, p["shift"])
        kind = variant_of(p["variant"])
        fields = dict(rows=prod(x.shape) // length, len=length, pre_shift=ce.pre_shift, shift=p["shift"],
                      qmin=c_i32(p["qmin"]), qmax=c_i32(p["qmax"]), ma=c_i64(p["ma"]), mb=c_i64(p["mb"]),
                      log2_e0=c_i64(log2_e0))
        if kind.exp == "poly":
            fields.update(kind=2, n=c_i64(ce.n), x0=c_i64(ce.x0), b=c_i64(ce.b), c=c_i64(ce.c),
                          z_shift=c_i64(ce.z_shift), x_min=c_i64(ce.q_clamp * ce.x0))
        else:
            fields.update(kind=int(kind.division_free), i0=c_i64(ce.i0), n=c_i64(ce.n), ip_min=c_i64(ce.ip_min),
                          poly=c_i64(ce.poly), quad_m=c_i64(ce.quad_m), quad_s=c_i64(ce.quad_s),
                          div_m=c_i64(ce.div.m), div_s=c_i64(ce.div.s))
        fields["table"] = self.const_array(np.asarray(table.val.const).astype(np.int32), "int32_t", "m")
        self.emit_call(s, "logsm", (x, s.out), "qk_logsm_t", fields)
