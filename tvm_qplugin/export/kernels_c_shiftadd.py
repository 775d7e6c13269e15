"""C kernels of the shift/add primitives (ops/shiftadd.py) for the C package, and the check that
their inner loops multiply nothing -- on the machine code the cross compiler produced.

* ``qk_shiftdense_<X>_<O>``: shift linear; per output ``qk_shiftdot_*`` sums
  ``+-(x << (e - 1))`` over the 4-bit codes (two per byte), then the per-channel requantization.
* ``qk_addatt_<X>_<V>``: add attention; Hamming codes of Q and K (``qk_hamcodes_*``), then the
  masked sums ``qk_addatt_kv_*`` (KᵀV) and ``qk_addatt_row{32,64}_*`` (Q(KᵀV) and the row sum),
  then one rounded floor division per output. Scratch: codes, KᵀV, Σv, key bit counts, one
  numerator row (:data:`ADDATT_SCRATCH`, the formula the arena planner and the C companion share).

The inner loops live in their own ``QK_NOINLINE`` functions (:data:`MULTIPLY_FREE_FUNCS`) so that
:func:`multiply_instructions` can read their disassembly: no ``mul`` / ``mla`` / ``mls`` /
``smla*`` / ``smul*`` / ``vmul`` / ``vmla*`` instruction may appear there. The code packing (which
may multiply by d when d is not a power of two) and the requantization are outside them.

This module is a mixin of :class:`.kernels_c.KernelCalls` (``op_shift_dense_requant``,
``op_add_attention``) plus :func:`sources`, which qkernels.py appends to the package's kernels.
"""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from ..errors import UnsupportedOpError
from ..ops.shiftadd import WORD_BITS, attention_acc_dtype
from . import scratch
from .c_emit import c_i32, fits
from .c_graph import DTYPES, Step, dt_info, prod
from .templates import fill

ADDATT_SCRATCH = "round_up(4 * (2 * batch_words + d * dv + dv + d) + 8 * dv, ALIGN)"
scratch.SCRATCH_FORMULAS.setdefault("addatt", ("qk_addatt_t", ADDATT_SCRATCH))  # the planner's registry

#: the functions holding the shift/add inner loops (name prefixes, type codes follow)
MULTIPLY_FREE_FUNCS = ("qk_shiftdot_", "qk_addatt_kv_", "qk_addatt_row32_", "qk_addatt_row64_")
# Thumb-2 / MVE multiplies: MUL, MLA, MLS, SMULL/UMULL, SMLAL/UMLAL, SMLA<x><y>, SMUL<x><y>, SMMUL,
# SMMLA, SMLAD/SMUAD/SMUSD/SMLSD, SMLALD, VMUL, VMLA(V), VMLADAV, VMLALDAV, VQDMULH, VQRDMULH...
_MULTIPLY = re.compile(r"^(v?q?r?d?mul|v?mla|v?mls|[su]m(ul|la|ls|ua|us|ma|mu)|umaal|vmla|vmladav|vmlaldav|vrmlaldavh)",
                       re.IGNORECASE)

TYPEDEFS = """\
/* shift_dense_requant: y[m, j] = requant(sum_k +-(x[m, k] << (e_jk - 1)) + bias[j]); w rows are
 * (k + 1) / 2 bytes of 4-bit codes (bit 3 sign, bits 0-2 e, e = 0 a zero weight), low nibble first */
typedef struct {
  int32_t m, k, n, qmin, qmax;
  const uint8_t *wt;
  const int32_t *bias;
  const int32_t *mult;
  const int8_t *shift;
} qk_shiftdense_t;

/* add_attention: q (batch, n, d), kt (batch, d, n), v and y (batch, n, dv); log2d = -1 when d is
 * not a power of two; wide: the numerators need int64. batch_words = n * ceil(d / 32).
 * keep_off: NULL, or per batch the offset of its n-byte key mask row in the keep tensor. */
typedef struct {
  int32_t batch, n, d, dv, words, batch_words, log2d, wide, qmin, qmax;
  const int32_t *keep_off;
} qk_addatt_t;
"""

_STATIC = """\
/* ---- shift/add primitives (ShiftAddViT): shifts, selects and adds in the inner loops ---- */
"""

_SHIFT_STATIC = """\
static inline int32_t qk_shift_term(int32_t x, uint32_t code) {
  const uint32_t e = code & 7u;
  int32_t mag = (int32_t)((uint32_t)x << ((e - 1u) & 31u));
  mag = e ? mag : 0;
  return (code & 8u) ? -mag : mag;
}
"""

_ADDATT_STATIC = """\
/* floor((2 num + den) / (2 den)), den >= 1: round half up, as ops/shiftadd.py */
static int32_t qk_round_div64(int64_t num, int64_t den) {
  const int64_t a = num + num + den, b = den + den;
  int64_t q = a / b;
  if ((a % b != 0) && (a < 0)) q--;
  return (int32_t)q;
}

/* the same in int32 (``wide`` = 0: |2 num + den| < 2^31): one SDIV on Cortex-M, no library call */
static int32_t qk_round_div32(int32_t num, int32_t den) {
  const int32_t a = num + num + den, b = den + den;
  int32_t q = a / b;
  if ((a % b != 0) && (a < 0)) q--;
  return q;
}
"""

_SHIFTDENSE = """\
/* one output of a shift linear: sum_k +-(x_k << (e_k - 1)) over two codes per byte */
static QK_NOINLINE int32_t qk_shiftdot_@X@_@O@(const @XT@ *x, const uint8_t *w, int32_t k) {
  int32_t acc = 0, i;
  for (i = 0; i + 2 <= k; i += 2) {
    const uint32_t byte = *w++;
    acc += qk_shift_term((int32_t)x[0], byte & 15u);
    acc += qk_shift_term((int32_t)x[1], byte >> 4);
    x += 2;
  }
  if (i < k) acc += qk_shift_term((int32_t)x[0], (uint32_t)*w & 15u);
  return acc;
}

void qk_shiftdense_@X@_@O@(const qk_shiftdense_t *p, const @XT@ *x, @OT@ *y) {
  const int32_t kb = (p->k + 1) >> 1;
  int32_t m, j;
  for (m = 0; m < p->m; m++) {
    const uint8_t *w = p->wt;
    for (j = 0; j < p->n; j++) {
      const int32_t acc = qk_shiftdot_@X@_@O@(x, w, p->k) + p->bias[j];
      y[j] = (@OT@)qk_requant(acc, p->mult[j], p->shift[j], p->qmin, p->qmax);
      w += kb;
    }
    x += p->k;
    y += p->n;
  }
}
"""

_HAMCODES = """\
/* Hamming codes: bit i of token t is x[t, i] above the token's mean (d * x > sum), packed into
 * words; token t's features at x + t * st + i * si */
static void qk_hamcodes_@X@(const @XT@ *x, int32_t n, int32_t d, int32_t st, int32_t si, int32_t log2d,
                            int32_t words, uint32_t *code) {
  int32_t t, i;
  for (t = 0; t < n; t++) {
    const @XT@ *xt = x + t * st;
    int32_t sum = 0;
    for (i = 0; i < d; i++) sum += (int32_t)xt[i * si];
    for (i = 0; i < words; i++) code[t * words + i] = 0;
    for (i = 0; i < d; i++) {
      const int32_t v = (int32_t)xt[i * si];
      const int32_t scaled = log2d >= 0 ? (int32_t)((uint32_t)v << log2d) : v * d;
      if (scaled > sum) code[t * words + (i >> 5)] |= 1u << (i & 31);
    }
  }
}
"""

_ADDATT_V = """\
/* K^T V as masked sums over the kept keys (keep: NULL = all): kv[i, :] = sum of v[m, :] over keys
 * m with bit i; tot = sum_m v[m, :]; ones[i] = keys with bit i; returns the number of kept keys */
static QK_NOINLINE int32_t qk_addatt_kv_@V@(const uint32_t *kc, int32_t words, int32_t n, int32_t d, int32_t dv,
                                           const @VT@ *v, const uint8_t *keep, int32_t *kv, int32_t *tot,
                                           int32_t *ones) {
  int32_t i, j, m, kept = 0;
  int32_t *row = kv;
  for (j = 0; j < dv; j++) tot[j] = 0;
  for (i = 0; i < d; i++) {
    ones[i] = 0;
    for (j = 0; j < dv; j++) row[j] = 0;
    row += dv;
  }
  for (m = 0; m < n; m++) {
    if (keep && !keep[m]) {
      kc += words;
      v += dv;
      continue;
    }
    kept += 1;
    for (j = 0; j < dv; j++) tot[j] += (int32_t)v[j];
    row = kv;
    for (i = 0; i < d; i++) {
      if ((kc[i >> 5] >> (i & 31)) & 1u) {
        ones[i] += 1;
        for (j = 0; j < dv; j++) row[j] += (int32_t)v[j];
      }
      row += dv;
    }
    kc += words;
    v += dv;
  }
  return kept;
}

/* one query: num[j] = sum_i (bit i ? kv[i, j] : tot[j] - kv[i, j]); returns the row sum of its
 * Hamming scores over the n kept keys */
#define QK_ADDATT_ROW(bits, acc_t)                                                                 \\
  static QK_NOINLINE int32_t qk_addatt_row##bits##_@V@(const uint32_t *qc, int32_t n, int32_t d,     \\
                                                      int32_t dv, const int32_t *kv,             \\
                                                      const int32_t *tot, const int32_t *ones,   \\
                                                      acc_t *num) {                              \\
    int32_t i, j, den = 0;                                                                       \\
    const int32_t *row = kv;                                                                     \\
    for (j = 0; j < dv; j++) num[j] = 0;                                                         \\
    for (i = 0; i < d; i++) {                                                                    \\
      if ((qc[i >> 5] >> (i & 31)) & 1u) {                                                       \\
        den += ones[i];                                                                          \\
        for (j = 0; j < dv; j++) num[j] += (acc_t)row[j];                                        \\
      } else {                                                                                   \\
        den += n - ones[i];                                                                      \\
        for (j = 0; j < dv; j++) num[j] += (acc_t)(tot[j] - row[j]);                             \\
      }                                                                                          \\
      row += dv;                                                                                 \\
    }                                                                                            \\
    return den;                                                                                  \\
  }
QK_ADDATT_ROW(32, int32_t)
QK_ADDATT_ROW(64, int64_t)
#undef QK_ADDATT_ROW
"""

_ADDATT = """\
/* (the definition stays on one line: qkernels.py takes the header's prototypes from it) */
void qk_addatt_@X@_@V@(const qk_addatt_t *p, const @XT@ *q, const @XT@ *kt, const @VT@ *v, const uint8_t *keep, @VT@ *y, void *scratch) {
  const int32_t n = p->n, d = p->d, dv = p->dv;
  uint32_t *qc = (uint32_t *)scratch, *kc = qc + p->batch_words;
  int32_t *kv = (int32_t *)(kc + p->batch_words), *tot = kv + d * dv, *ones = tot + dv;
  int64_t *num = (int64_t *)(void *)(((uintptr_t)(ones + d) + 7u) & ~(uintptr_t)7u);
  int32_t b, t, j;
  for (b = 0; b < p->batch; b++) {
    qk_hamcodes_@X@(q, n, d, d, 1, p->log2d, p->words, qc);
    qk_hamcodes_@X@(kt, n, d, 1, n, p->log2d, p->words, kc);
    const int32_t nk = qk_addatt_kv_@V@(kc, p->words, n, d, dv, v, p->keep_off ? keep + p->keep_off[b] : 0, kv,
                                        tot, ones);
    for (t = 0; t < n; t++) {
      int32_t den;
      if (p->wide) {
        den = qk_addatt_row64_@V@(qc + t * p->words, nk, d, dv, kv, tot, ones, num);
      } else {
        den = qk_addatt_row32_@V@(qc + t * p->words, nk, d, dv, kv, tot, ones, (int32_t *)(void *)num);
      }
      if (den < 1) den = 1;
      if (p->wide) {
        for (j = 0; j < dv; j++) y[j] = (@VT@)qk_clamp(qk_round_div64(num[j], den), p->qmin, p->qmax);
      } else {
        const int32_t *num32 = (const int32_t *)(void *)num;
        for (j = 0; j < dv; j++) y[j] = (@VT@)qk_clamp(qk_round_div32(num32[j], den), p->qmin, p->qmax);
      }
      y += dv;
    }
    q += n * d;
    kt += d * n;
    v += n * dv;
  }
}

/* Scratch bytes qk_addatt_@X@_@V@ needs for *p (export/kernels_c_shiftadd.py:ADDATT_SCRATCH). */
int32_t qk_addatt_@X@_@V@_buffer_size(const qk_addatt_t *p) {
  return @BUFFER_SIZE@;
}
"""


_CTYPE = {code: ctype for code, ctype, _, _ in DTYPES.values()}


def _subst(text: str, **codes) -> str:
    values = {}
    for k, code in codes.items():
        values[k], values[k + "T"] = code, _CTYPE[code]
    used = set(re.findall(r"@([A-Z0-9_]+)@", text))
    return fill(text, **{k: v for k, v in values.items() if k in used})


def sources(instances) -> tuple[str, str]:
    """(typedefs for qkernels.h, code for qkernels.c) of the shift/add kernel instances among
    ``instances`` (``("shiftdense", X, O)`` / ``("addatt", X, V)``); empty strings when none."""
    mine = sorted(i for i in instances if i[0] in ("shiftdense", "addatt"))
    if not mine:
        return "", ""
    parts = [_STATIC]
    if any(i[0] == "shiftdense" for i in mine):
        parts.append(_SHIFT_STATIC)
    if any(i[0] == "addatt" for i in mine):
        parts.append(_ADDATT_STATIC)
    for x in sorted({i[1] for i in mine if i[0] == "addatt"}):
        parts.append(_subst(_HAMCODES, X=x))
    for v in sorted({i[2] for i in mine if i[0] == "addatt"}):
        parts.append(_subst(_ADDATT_V, V=v))
    for kind, a, b in mine:
        if kind == "shiftdense":
            parts.append(_subst(_SHIFTDENSE, X=a, O=b))
        else:
            body = _ADDATT.replace("@BUFFER_SIZE@", scratch.c_expression("addatt", x8=a in ("s8", "u8")))
            parts.append(_subst(body, X=a, V=b))
    return TYPEDEFS, "\n".join(parts)


def addatt_fields(q_shape, v_shape, v_dtype: str) -> dict:
    """The ``qk_addatt_t`` fields of an add_attention step (the scratch formula reads them too)."""
    *lead, n, d = q_shape
    words = -(-d // WORD_BITS)
    return dict(batch=prod(lead), n=n, d=d, dv=v_shape[-1], words=words, batch_words=n * words,
                log2d=d.bit_length() - 1 if d & (d - 1) == 0 else -1,
                wide=int(attention_acc_dtype(n, d, v_dtype) == "int64"))


def addatt_scratch_bytes(s: Step) -> int:
    q, _, v, *_keep = s.args
    return scratch.buffer_size("addatt", addatt_fields(tuple(q.shape), tuple(v.shape), v.dtype),
                               x8=dt_info(q.dtype)[2] == 1)


class ShiftAddKernelCalls:
    """``op_<op>`` methods for :class:`.kernels_c.KernelCalls` (module doc)."""

    def op_shift_dense_requant(self, s: Step, p: dict) -> None:
        x, w, bias, mult, shift = s.args
        mult_v, shift_v, bias_v = (np.asarray(a.val.const).reshape(-1) for a in (mult, shift, bias))
        if not (fits(mult_v, -2**31, 2**31 - 1) and fits(shift_v, 0, 62) and fits(bias_v, -2**31, 2**31 - 1)):
            raise UnsupportedOpError(f"C package: {s.name}: requantization parameters out of range")
        fields = dict(m=prod(x.shape[:-1]), k=x.shape[-1], n=w.shape[0], qmin=c_i32(p["qmin"]), qmax=c_i32(p["qmax"]),
                      wt=self.const_array(np.asarray(w.val.const, np.uint8).reshape(-1), "uint8_t", "w"),
                      bias=self.const_array(bias_v.astype(np.int32), "int32_t", "b"),
                      mult=self.const_array(mult_v.astype(np.int32), "int32_t", "m"),
                      shift=self.const_array(shift_v.astype(np.int8), "int8_t", "s"))
        pn = self.pstruct("qk_shiftdense_t", s, fields)
        X, O = dt_info(x.dtype)[0], dt_info(s.out.dtype)[0]
        self.instances.add(("shiftdense", X, O))
        s.c_func = f"qk_shiftdense_{X}_{O}"
        self.calls.append(f"  {s.c_func}(&{pn}, {self.ptr(x, True)}, {self.ptr(s.out)});")

    def op_add_attention(self, s: Step, p: dict) -> None:
        q, kt, v, *keep = s.args
        if q.dtype != kt.dtype:
            raise UnsupportedOpError(f"C package: {s.name}: add_attention with q {q.dtype} and kt {kt.dtype}")
        fields = dict(addatt_fields(tuple(q.shape), tuple(v.shape), v.dtype), qmin=c_i32(p["qmin"]),
                      qmax=c_i32(p["qmax"]), keep_off="0")
        if keep:
            fields["keep_off"] = self.const_array(_keep_offsets(tuple(keep[0].shape), tuple(q.shape[:-2])), "int32_t", "o")
        pn = self.pstruct("qk_addatt_t", s, fields)
        X, V = dt_info(q.dtype)[0], dt_info(v.dtype)[0]
        self.instances.add(("addatt", X, V))
        s.c_func = f"qk_addatt_{X}_{V}"
        keep_ptr = f"(const uint8_t *){self.ptr(keep[0], True)}" if keep else "(const uint8_t *)0"
        self.calls.append(f"  {s.c_func}(&{pn}, {self.ptr(q, True)}, {self.ptr(kt, True)}, {self.ptr(v, True)}, "
                          f"{keep_ptr}, {self.ptr(s.out)}, {self.scratch(s)});")


def _keep_offsets(keep_shape: tuple, lead: tuple) -> np.ndarray:
    """Per flattened batch index of ``lead``, the offset of its key-mask row in a (..., 1, N)
    ``keep`` tensor broadcast over ``lead`` (a head axis of 1 repeats the row)."""
    n = keep_shape[-1]
    strides, acc = [], n
    for dim in reversed(keep_shape[:-2]):
        strides.append(acc if dim != 1 else 0)
        acc *= dim
    strides = list(reversed(strides))
    idx = np.indices(lead).reshape(len(lead), -1) if lead else np.zeros((0, 1), np.int64)
    return (np.asarray(strides, np.int64)[:, None] * idx).sum(axis=0).astype(np.int32)


def multiply_instructions(elf: Path | str, objdump: str = "arm-none-eabi-objdump") -> dict[str, list[str]]:
    """Function name -> the multiply instructions in it, for every :data:`MULTIPLY_FREE_FUNCS`
    function of ``elf`` (present ones only; an empty list proves that function multiply-free)."""
    from .toolchain import run_tool, which

    r = run_tool([which(objdump), "-d", "--no-show-raw-insn", str(elf)], what="objdump")
    found: dict[str, list[str]] = {}
    current = None
    for line in r.stdout.splitlines():
        head = re.match(r"^[0-9a-f]+ <(\w+)>:$", line)
        if head:
            current = head.group(1) if head.group(1).startswith(MULTIPLY_FREE_FUNCS) else None
            if current:
                found[current] = []
            continue
        if current is None:
            continue
        insn = re.match(r"^\s+[0-9a-f]+:\s+(\S+)\s*(.*)$", line)
        if insn and _MULTIPLY.match(insn.group(1)):
            found[current].append(f"{insn.group(1)} {insn.group(2)}".strip())
    return found
