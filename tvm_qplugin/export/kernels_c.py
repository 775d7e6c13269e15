"""Kernel descriptions: which C kernel each integer op calls, with which parameter block.

One ``op_<op>`` method per integer op (``conv2d_requant``) or Relax layout op
(``relax.permute_dims`` -> ``op_relax_permute_dims``): it checks what the kernel can take
(ranges, ranks, the int32 accumulator bound), writes the weights and the const parameter block,
records the kernel instance (kind + type codes) for qkernels.c and appends the call. An op
without a method has no C kernel (one line naming it). :func:`conv_dims` / :func:`dense_dims`
are the shape fields of ``qk_conv_t`` / ``qk_dense_t``: the scratch formula
(:mod:`.scratch`) reads the same fields as the C companion does.
"""
from __future__ import annotations

import numpy as np

from ..errors import UnsupportedOpError
from ..quant import abs_max
from . import scratch
from .c_emit import CEmitter, c_array, c_dims, c_i32, c_i64, fits
from .c_graph import MAX_DIMS, Ref, Step, dt_info, prod, row_major_strides
from .kernels_c_coverage import CoverageKernelCalls, check_requant
from .kernels_c_int4 import W4_OPS, Int4KernelCalls, w4_scratch_bytes, weight_shape
from .kernels_c_transformer import TransformerKernelCalls
from .tir_kernels import TirKernelCalls
from .kernels_c_shiftadd import ShiftAddKernelCalls, addatt_scratch_bytes

# largest |x| a C GEMM input contributes per weight: the dtype's own bound, except uint8, which the
# MVE path flips to int8 (x - 128) and corrects by 128 * sum(w): partial sums reach 256 * sum|w|
GEMM_INPUT_MAX_ABS = {"uint8": 2 * abs_max("int8"), "int8": abs_max("int8"), "int16": abs_max("int16")}
_SCRATCH_KIND = {"conv2d_requant": "conv2d", "dense_requant": "dense"}


def conv_dims(s: Step) -> dict:
    """The shape fields of ``qk_conv_t`` for a conv2d_requant step (in the struct's order)."""
    x, p = s.args[0], s.params
    n, c, h, wd = x.shape
    o, _, kh, kw = weight_shape(s)
    _, _, oh, ow = s.out.shape
    (sh, sw), (dh, dw), (pt, pl, _pb, _pr) = p["strides"], p["dilation"], p["padding"]
    return dict(n=n, c=c, h=h, w=wd, o=o, oh=oh, ow=ow, kh=kh, kw=kw, sh=sh, sw=sw, dh=dh, dw=dw, pt=pt, pl=pl,
                groups=p["groups"])


def dense_dims(s: Step) -> dict:
    """The shape fields of ``qk_dense_t`` for a dense_requant step: x (m, k) times w (n, k)."""
    nn_, k = weight_shape(s)
    return dict(m=prod(s.args[0].shape[:-1]), k=k, n=nn_)


def macs(s: Step) -> int:
    """Multiply-accumulates of a step (conv2d / dense; 0 for the others)."""
    if s.op in ("conv2d_requant", "conv2d_requant_w4"):
        n, o, oh, ow = s.out.shape
        _, cg, kh, kw = weight_shape(s)
        return int(n * o * oh * ow * cg * kh * kw)
    if s.op in ("dense_requant", "dense_requant_w4"):
        d = dense_dims(s)
        return int(d["m"] * d["n"] * d["k"])
    if s.op == "shift_dense_requant":  # a shift linear: one shift-add per weight, counted like a MAC
        return int(prod(s.args[0].shape[:-1]) * s.out.shape[-1] * s.args[0].shape[-1])
    return 0


def scratch_bytes(s: Step) -> int:
    """Scratch bytes the step's kernel needs: its ``*_buffer_size`` formula (:mod:`.scratch`)."""
    if s.op in W4_OPS:
        return w4_scratch_bytes(s)
    kind = _SCRATCH_KIND.get(s.op)
    if s.op == "add_attention":
        return addatt_scratch_bytes(s)
    if kind is None:
        return 0
    dims = conv_dims(s) if kind == "conv2d" else dense_dims(s)
    return scratch.buffer_size(kind, dims, x8=dt_info(s.args[0].dtype)[2] == 1)



def broadcast_fields(s: Step, op: str) -> dict:
    """The shape fields of a two-operand broadcasting kernel (qk_add_t, qk_mul_t): rank, count,
    output shape, and each operand's strides with 0 on its broadcast axes; ``flat`` when neither
    operand broadcasts (the kernel then walks one flat loop)."""
    a, b = s.args
    out = tuple(s.out.shape)
    nd = len(out)
    if nd > MAX_DIMS:
        raise UnsupportedOpError(f"C package: {op} of rank {nd} ({s.name})")

    def strides(shape):
        shape = (1,) * (nd - len(shape)) + tuple(shape)
        st = row_major_strides(shape)
        return [0 if shape[i] == 1 and out[i] != 1 else st[i] for i in range(nd)]

    flat = tuple(a.shape) == out and tuple(b.shape) == out
    return dict(ndim=nd, count=prod(out), flat=int(flat), shape=c_dims(out), sa=c_dims(strides(a.shape)),
                sb=c_dims(strides(b.shape)))

class KernelCalls(CEmitter, CoverageKernelCalls, Int4KernelCalls, TransformerKernelCalls, TirKernelCalls,
                  ShiftAddKernelCalls):
    """The C call of every supported op (see the module docstring)."""

    def _weights(self, s: Step, w2d: np.ndarray, bias, mult, shift, x: Ref, gemm: bool = True,
                 packed: np.ndarray | None = None) -> dict:
        """Checks and constant arrays of a GEMM-shaped layer; ``packed``: int4 rows stored instead
        of the int8 ones (the kernel widens them, and its weight sums, at run time)."""
        o, k = w2d.shape
        kp = (k + 3) // 4 * 4
        wp = np.zeros((o, kp), dtype=np.int8)
        wp[:, :k] = w2d
        # 16 zero bytes after the last row: the MVE loop reads whole 16-byte vectors
        wp = np.concatenate([wp.reshape(-1), np.zeros(16, np.int8)])
        if not (fits(np.asarray(mult), -2**31, 2**31 - 1) and fits(np.asarray(shift), 0, 62)
                and fits(np.asarray(bias), -2**31, 2**31 - 1)):
            raise UnsupportedOpError(f"C package: {s.name}: requantization parameters out of range")
        xmax = GEMM_INPUT_MAX_ABS.get(x.dtype)
        if xmax is None:
            raise UnsupportedOpError(f"C package: {s.name}: {s.op} input dtype {x.dtype} "
                                     "(supported: uint8, int8, int16)")
        bound = np.abs(w2d.astype(np.int64)).sum(axis=1) * xmax + np.abs(np.asarray(bias, np.int64).reshape(-1))
        if int(bound.max(initial=0)) >= 2**31:
            raise UnsupportedOpError(f"C package: {s.name}: the int32 accumulator could overflow "
                                     f"(bound {int(bound.max())})")
        wcorr = "0"
        if packed is not None:
            wp, gemm = packed, False
        if gemm and x.dtype == "uint8":  # MVE GEMM path flips uint8 to int8: 128 * sum(w) per channel, MVE builds only
            name = f"qm_c{self.nconst}"
            self.nconst += 1
            self.mve_consts.append(c_array("int32_t", name, (128 * w2d.astype(np.int64).sum(axis=1)).astype(np.int32)))
            self.mve_bytes += 4 * o
            wcorr = f"QM_WCORR({name})"
        return {"kp": kp, "wcorr": wcorr,
                "wt": self.const_array(wp, "int8_t", "w"),
                "bias": self.const_array(np.asarray(bias).astype(np.int32).reshape(-1), "int32_t", "b"),
                "mult": self.const_array(np.asarray(mult).astype(np.int32).reshape(-1), "int32_t", "m"),
                "shift": self.const_array(np.asarray(shift).astype(np.int8).reshape(-1), "int8_t", "s")}

    def op_conv2d_requant(self, s: Step, p: dict) -> None:
        x, w, bias, mult, shift = s.args
        o, cg, kh, kw = w.shape
        depthwise = cg == 1 and p["groups"] > 1
        wk = self._weights(s, w.val.const.reshape(o, cg * kh * kw), bias.val.const, mult.val.const, shift.val.const, x,
                           gemm=not depthwise)
        fields = dict(conv_dims(s), kp=wk["kp"], qmin=p["qmin"], qmax=p["qmax"], wt=wk["wt"], bias=wk["bias"],
                      mult=wk["mult"], shift=wk["shift"], wcorr=wk["wcorr"])
        self._gemm_call(s, "conv2d", "qk_conv_t", fields, x)
        if s.index in self.tir_choice:  # a TensorIR kernel measured faster on this board (kernel_choice.py)
            (self.tir_dw_call if depthwise else self.tir_dense_call)(s, p, wk)

    def op_dense_requant(self, s: Step, p: dict) -> None:
        x, w, bias, mult, shift = s.args
        dims = dense_dims(s)
        wk = self._weights(s, w.val.const.reshape(dims["n"], dims["k"]), bias.val.const, mult.val.const,
                           shift.val.const, x)
        fields = dict(dims, kp=wk["kp"], qmin=p["qmin"], qmax=p["qmax"], wt=wk["wt"], bias=wk["bias"],
                      mult=wk["mult"], shift=wk["shift"], wcorr=wk["wcorr"])
        self._gemm_call(s, "dense", "qk_dense_t", fields, x)
        if s.index in self.tir_choice:  # a TensorIR kernel measured faster on this board (kernel_choice.py)
            self.tir_dense_call(s, p, wk)

    def _gemm_call(self, s: Step, kind: str, struct: str, fields: dict, x: Ref) -> None:
        """The call of a GEMM-shaped kernel ``qk_<kind>_<X>_<O>`` (input x output dtype), with its scratch."""
        self.emit_call(s, kind, (x, s.out), struct, fields, [x], [self.scratch(s)])

    def op_requantize(self, s: Step, p: dict) -> None:
        (x,) = s.args
        check_requant(s, p["multiplier"], p["shift"])
        if x.dtype not in ("uint8", "int8", "int16", "uint16", "int32"):
            raise UnsupportedOpError(f"C package: requantize of {x.dtype} ({s.name})")
        self.emit_call(s, "requantize", (x, s.out), "qk_requant_t",
                       dict(count=prod(x.shape), mult=c_i32(p["multiplier"]), shift=p["shift"], qmin=c_i32(p["qmin"]),
                            qmax=c_i32(p["qmax"])))

    def op_add_requant(self, s: Step, p: dict) -> None:
        a, b = s.args
        fields = dict(broadcast_fields(s, "add_requant"), ma=c_i64(p["ma"]), mb=c_i64(p["mb"]), shift=p["shift"],
                      qmin=c_i32(p["qmin"]), qmax=c_i32(p["qmax"]))
        self.emit_call(s, "add", (a, b, s.out), "qk_add_t", fields, [a, b])

    def op_max_pool2d(self, s: Step, p: dict) -> None:
        (x,) = s.args
        n, c, h, w = x.shape
        _, _, oh, ow = s.out.shape
        (kh, kw), (sh, sw), (dh, dw), (pt, pl, _, _) = p["pool_size"], p["strides"], p["dilation"], p["padding"]
        self.emit_call(s, "maxpool", (x,), "qk_maxpool_t", dict(n=n, c=c, h=h, w=w, oh=oh, ow=ow, kh=kh, kw=kw, sh=sh,
                                                                sw=sw, dh=dh, dw=dw, pt=pt, pl=pl,
                                                                pad_value=c_i32(p["pad_value"])))

    def op_avg_pool2d_requant(self, s: Step, p: dict) -> None:
        x, mult = s.args
        n, c, h, w = x.shape
        _, _, oh, ow = s.out.shape
        (kh, kw), (sh, sw), (pt, pl, _, _) = p["pool_size"], p["strides"], p["padding"]
        m = np.asarray(mult.val.const)
        if not fits(m, -2**31, 2**31 - 1):
            raise UnsupportedOpError(f"C package: {s.name}: multipliers exceed int32")
        mn = self.const_array(m.astype(np.int32).reshape(-1), "int32_t", "m")
        self.emit_call(s, "avgpool", (x, s.out), "qk_avgpool_t",
                       dict(n=n, c=c, h=h, w=w, oh=oh, ow=ow, kh=kh, kw=kw, sh=sh, sw=sw, pt=pt, pl=pl, shift=p["shift"],
                            qmin=c_i32(p["qmin"]), qmax=c_i32(p["qmax"]), mult=mn))

    def op_sum_requant(self, s: Step, p: dict) -> None:
        (x,) = s.args
        shape = tuple(x.shape)
        nd = len(shape)
        axes = sorted({a % nd for a in p["axes"]})
        st = row_major_strides(shape)
        kept = [i for i in range(nd) if i not in axes]
        kshape, kstride = [shape[i] for i in kept], [st[i] for i in kept]
        rshape, rstride = merge_dims([shape[i] for i in axes], [st[i] for i in axes])
        if len(kshape) > MAX_DIMS or len(rshape) > MAX_DIMS:
            raise UnsupportedOpError(f"C package: sum_requant of rank {nd} ({s.name})")
        check_requant(s, p["multiplier"], p["shift"])
        self.emit_call(s, "sum", (x, s.out), "qk_sum_t",
                       dict(nk=len(kshape), nr=len(rshape), count=prod(kshape), kshape=c_dims(kshape),
                            kstride=c_dims(kstride), rshape=c_dims(rshape), rstride=c_dims(rstride),
                            mult=c_i32(p["multiplier"]), shift=p["shift"], qmin=c_i32(p["qmin"]), qmax=c_i32(p["qmax"])))

    def op_mask_fill(self, s: Step, p: dict) -> None:
        x, keep = s.args
        out = tuple(x.shape)
        nd = len(out)
        kshape = (1,) * (nd - len(keep.shape)) + tuple(keep.shape)
        st = row_major_strides(kshape)
        sk = [0 if kshape[i] == 1 and out[i] != 1 else st[i] for i in range(nd)]
        self.emit_call(s, "maskfill", (x,), "qk_maskfill_t",
                       dict(ndim=nd, count=prod(out), shape=c_dims(out), sk=c_dims(sk), fill=c_i32(p["fill"])),
                       [x, f"(const uint8_t *){self.ptr(keep, True)}"])

    def op_relax_permute_dims(self, s: Step, p: dict) -> None:
        (x,) = s.args
        nd = len(x.shape)
        axes = p["axes"] if p["axes"] is not None else list(range(nd))[::-1]
        xs = row_major_strides(x.shape)
        s.c_func = "qk_copy_nd"
        self._copy(s, "", s.out.shape, [xs[a] for a in axes], row_major_strides(s.out.shape), self.ptr(x, True),
                   self.ptr(s.out), x.val.itemsize)

    def op_relax_concat(self, s: Step, p: dict) -> None:
        nd = len(s.out.shape)
        axis = p["axis"] % nd
        os_ = row_major_strides(s.out.shape)
        root_y, yoff = s.out.val.root()
        s.c_func = "qk_copy_nd"
        pos = copies = 0
        for i, a in enumerate(s.args):
            rx, xoff = a.val.root()
            dst_off = pos * os_[axis] * s.out.val.itemsize
            pos += a.shape[axis]
            if rx is root_y and xoff == yoff + dst_off:
                continue  # produced in place inside the concat output
            dst = f"(void *)((uint8_t *){self.ptr(s.out)} + {dst_off})"
            self._copy(s, f"_{i}", a.shape, row_major_strides(a.shape), os_, self.ptr(a, True), dst, a.val.itemsize)
            copies += 1
        if not copies:
            self.calls.append(f"  /* {s.name}: concat: every input was written in place */")

    def op_relax_nn_pad(self, s: Step, p: dict) -> None:
        (x,) = s.args
        w = p["pad_width"]
        before = w[0::2]
        os_ = row_major_strides(s.out.shape)
        off = sum(b * st for b, st in zip(before, os_)) * s.out.val.itemsize
        self.calls.append(f"  qk_fill_zero({self.ptr(s.out)}, {s.out.nbytes});")
        s.c_func = "qk_copy_nd"
        self._copy(s, "", x.shape, row_major_strides(x.shape), os_, self.ptr(x, True),
                   f"(void *)((uint8_t *){self.ptr(s.out)} + {off})", x.val.itemsize)

    def op_relax_astype(self, s: Step, p: dict) -> None:
        (x,) = s.args
        s.c_func = "qk_cast"
        self.calls.append(f"  qk_cast({prod(x.shape)}, {dt_info(x.dtype)[3]}, {self.ptr(x, True)}, "
                          f"{dt_info(s.out.dtype)[3]}, {self.ptr(s.out)});")

    # --- coverage ops (ops/activation.py, ops/resample.py) ---
    def op_lut(self, s: Step, p: dict) -> None:
        x, table = s.args
        if x.dtype not in ("uint8", "int8"):
            raise UnsupportedOpError(f"C package: lut of {x.dtype} ({s.name}): 8-bit inputs only")
        self.emit_call(s, "lut", (x, s.out), "qk_lut_t",
                       dict(count=prod(x.shape), table=f"(const void *){self.ptr(table, True)}"))

    def op_mul_requant(self, s: Step, p: dict) -> None:
        a, b = s.args
        fields = broadcast_fields(s, "mul_requant")
        check_requant(s, p["multiplier"], p["shift"])
        self.emit_call(s, "mul", (a, b, s.out), "qk_mul_t",
                       dict(fields, mult=c_i32(p["multiplier"]), shift=p["shift"], qmin=c_i32(p["qmin"]),
                            qmax=c_i32(p["qmax"])), [a, b])

    def op_prelu_requant(self, s: Step, p: dict) -> None:
        x, neg = s.args
        m = np.asarray(neg.val.const).reshape(-1)
        check_requant(s, p["pos"], p["shift"])
        if not fits(m, -2**31, 2**31 - 1):
            raise UnsupportedOpError(f"C package: {s.name}: prelu slopes exceed int32")
        shape = tuple(x.shape)
        inner = prod(shape[p["axis"] + 1:]) if m.size > 1 else 1
        self.emit_call(s, "prelu", (x, s.out), "qk_prelu_t",
                       dict(count=prod(shape), inner=inner, channels=m.size, pos=c_i32(p["pos"]), shift=p["shift"],
                            qmin=c_i32(p["qmin"]), qmax=c_i32(p["qmax"]),
                            neg=self.const_array(m.astype(np.int32), "int32_t", "m")))

    def op_sqrt_requant(self, s: Step, p: dict) -> None:
        (x,) = s.args
        self.emit_call(s, "sqrt", (x, s.out), "qk_sqrt_t", dict(count=prod(x.shape), shift=p["shift"],
                                                                qmax=c_i32(p["qmax"]),
                                                                mult4=f"INT64_C({4 * int(p['multiplier'])})"))

    def op_resize_nearest(self, s: Step, p: dict) -> None:
        x, rows, cols = s.args
        n, c, h, w = x.shape
        _, _, oh, ow = s.out.shape
        self.emit_call(s, "resize", (x,), "qk_resize_t", dict(nc=n * c, h=h, w=w, oh=oh, ow=ow,
                                                              rows=self.ptr(rows, True), cols=self.ptr(cols, True)))

    def op_strided_slice(self, s: Step, p: dict) -> None:
        (x,) = s.args
        xs = row_major_strides(x.shape)
        off = sum(b * st for b, st in zip(p["begin"], xs)) * x.val.itemsize
        s.c_func = "qk_copy_nd"
        self._copy(s, "", p["out_shape"], [st * k for st, k in zip(xs, p["stride"])], row_major_strides(p["out_shape"]),
                   f"(const void *)((const uint8_t *){self.ptr(x, True)} + {off})", self.ptr(s.out), x.val.itemsize)

    def op_pad_constant(self, s: Step, p: dict) -> None:
        (x,) = s.args
        if p["value"] != 0:
            raise UnsupportedOpError(f"C package: {s.name}: pad_constant with value {p['value']} (the C kernel pads "
                                     "with 0 only)")
        os_ = row_major_strides(s.out.shape)
        off = sum(b * st for b, st in zip(p["before"], os_)) * s.out.val.itemsize
        self.calls.append(f"  qk_fill_zero({self.ptr(s.out)}, {s.out.nbytes});")
        s.c_func = "qk_copy_nd"
        self._copy(s, "", x.shape, row_major_strides(x.shape), os_, self.ptr(x, True),
                   f"(void *)((uint8_t *){self.ptr(s.out)} + {off})", x.val.itemsize)

    def op_resize_bilinear(self, s: Step, p: dict) -> None:
        x, rows, rw, cols, cw = s.args
        n, c, h, w = x.shape
        _, _, oh, ow = s.out.shape
        check_requant(s, p["multiplier"], p["shift"])
        self.emit_call(s, "bilinear", (x, s.out), "qk_bilinear_t",
                       dict(nc=n * c, h=h, w=w, oh=oh, ow=ow, mult=c_i32(p["multiplier"]), shift=p["shift"],
                            qmin=c_i32(p["qmin"]), qmax=c_i32(p["qmax"]), rows=self.ptr(rows, True),
                            rw=self.ptr(rw, True), cols=self.ptr(cols, True), cw=self.ptr(cw, True)))

    def op_zero_insert(self, s: Step, p: dict) -> None:
        (x,) = s.args
        sh, sw = p["strides"]
        os_ = row_major_strides(s.out.shape)
        self.calls.append(f"  qk_fill_zero({self.ptr(s.out)}, {s.out.nbytes});")
        s.c_func = "qk_copy_nd"
        self._copy(s, "", x.shape, row_major_strides(x.shape), [os_[0], os_[1], os_[2] * sh, os_[3] * sw],
                   self.ptr(x, True), self.ptr(s.out), x.val.itemsize)


def merge_dims(shape, strides):
    """Merge adjacent dims that are contiguous with each other (fewer odometer steps)."""
    if not shape:
        return [], []
    sh, st = [shape[0]], [strides[0]]
    for d, s in zip(shape[1:], strides[1:]):
        if st[-1] == s * d:
            sh[-1] *= d
            st[-1] = s
        else:
            sh.append(d)
            st.append(s)
    return sh, st


