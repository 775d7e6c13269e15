/* qk_internal.h - helpers of the tvm-qplugin integer kernels (qkernels.c). Not a public header.
 *
 * Requantization is THE rule of tvm_qplugin/quant/dyadic.py:
 *     y = clamp((acc * b + ((1 << c) >> 1)) >> c, qmin, qmax)      in int64, b int32, 0 <= c <= 62
 * (round half up, arithmetic shift). Every variant below computes exactly that integer:
 *   - MVE (Armv8.1-M): SMULL + SQRSHRL (signed rounding shift right long: adds 2^(c-1) first);
 *   - c >= 33: only the high word of acc*b matters:  ((hi + 2^(c-33)) >> (c-32)),
 *     exact because floor((hi*2^32 + lo + 2^(c-1)) / 2^c) = floor((hi + 2^(c-33)) / 2^(c-32))
 *     for 0 <= lo < 2^32;
 *   - otherwise the plain int64 expression.
 * The accumulator handed in must be the exact int32 sum (the exporter checks that
 * |sum| + |bias| < 2^31 from the layer's shapes and dtypes).
 */
#ifndef QK_INTERNAL_H
#define QK_INTERNAL_H

#include <stdint.h>
#include <string.h>

#if !defined(QK_NO_SIMD) && defined(__ARM_FEATURE_MVE) && (__ARM_FEATURE_MVE & 1)
#define QK_MVE 1
#include <arm_mve.h>
#elif !defined(QK_NO_SIMD) && defined(__ARM_FEATURE_DSP) && defined(__ARM_ARCH) && !defined(__aarch64__)
#define QK_DSP 1
#include <arm_acle.h>
#endif

#if defined(__GNUC__)
#define QK_NOINLINE __attribute__((noinline))
#define QK_INLINE static inline __attribute__((always_inline))
#define QK_LIKELY(x) __builtin_expect(!!(x), 1)
#else
#define QK_NOINLINE
#define QK_INLINE static inline
#define QK_LIKELY(x) (x)
#endif

QK_INLINE int32_t qk_clamp(int32_t v, int32_t lo, int32_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

QK_INLINE int64_t qk_clamp64(int64_t v, int32_t lo, int32_t hi) {
  return v < lo ? lo : (v > hi ? hi : v);
}

/* clamp((acc * b + ((1 << c) >> 1)) >> c) for an exact int32 acc, |b| < 2^31, 0 <= c <= 62 */
QK_INLINE int32_t qk_requant(int32_t acc, int32_t b, int32_t c, int32_t lo, int32_t hi) {
#if defined(QK_MVE)
  int64_t v = sqrshrl((int64_t)acc * b, c);
  return (int32_t)qk_clamp64(v, lo, hi);
#else
  if (QK_LIKELY(c >= 33)) {
    int32_t h = (int32_t)(((int64_t)acc * b) >> 32);
    int32_t s = c - 32;
    return qk_clamp((h + (int32_t)(1u << (s - 1))) >> s, lo, hi);
  } else {
    int64_t v = ((int64_t)acc * b + ((INT64_C(1) << c) >> 1)) >> c;
    return (int32_t)qk_clamp64(v, lo, hi);
  }
#endif
}

/* The same rule on a 64-bit sum, with int64 wrap-around exactly like NumPy's int64 arithmetic
 * (used by add_requant, whose a*ma + b*mb may not fit 32 bits). */
QK_INLINE int32_t qk_round_shift_clamp64(uint64_t acc, int32_t c, int32_t lo, int32_t hi) {
  uint64_t v = acc + (((uint64_t)1 << c) >> 1);
  int64_t s = (int64_t)v >> c;
  return (int32_t)qk_clamp64(s, lo, hi);
}

QK_INLINE uint64_t qk_mul64(int64_t a, int64_t b) { return (uint64_t)a * (uint64_t)b; }

/* bit length of v (0 for 0) */
QK_INLINE int32_t qk_bitlen64(uint64_t v) {
  int32_t n = 0;
  while (v) { n++; v >>= 1; }
  return n;
}

/* x brought to +-2^15 by l2_normalize_int's pre_shift (LayerNorm's): k < 0 shifts left, k > 0 rounds
 * half up to the right and saturates */
QK_INLINE int64_t qk_l2_pre(int64_t v, int32_t k) {
  if (k < 0) return v * ((int64_t)1 << -k);
  if (k > 0) v = (v + ((int64_t)1 << (k - 1))) >> k;
  return v > 32768 ? 32768 : (v < -32768 ? -32768 : v);
}

/* (v + 2^(k-1)) >> k for k > 0, v << -k for k < 0 (softmax / log-softmax pre-shift of x - max) */
QK_INLINE int64_t qk_pre_shift(int64_t v, int32_t k) {
  if (k < 0) return v * ((int64_t)1 << -k);
  return k > 0 ? (v + ((int64_t)1 << (k - 1))) >> k : v;
}

/* floor(sqrt(v)), exact (digit by digit): the value the TE kernels reach by Newton + fix-up */
QK_INLINE uint64_t qk_isqrt64(uint64_t v) {
  uint64_t r = 0, bit = (uint64_t)1 << 62;
  while (bit > v) bit >>= 2;
  while (bit) {
    if (v >= r + bit) { v -= r + bit; r = (r >> 1) + bit; } else r >>= 1;
    bit >>= 2;
  }
  return r;
}

/* high word of acc * b: floor(acc * b / 2^32) (SMULL / SMMUL) */
QK_INLINE int32_t qk_mulhi(int32_t acc, int32_t b) { return (int32_t)(((int64_t)acc * b) >> 32); }

/* (h + 2^(s-1)) >> s for 1 <= s <= 30 (|h| < 2^30): the c >= 33 requantization */
QK_INLINE int32_t qk_rshift_round(int32_t h, int32_t s) {
#if defined(QK_MVE)
  return sqrshr(h, s);   /* signed rounding shift right: adds 2^(s-1) first */
#else
  return (h + (int32_t)(1u << (s - 1))) >> s;
#endif
}

/* qk_requant with the c >= 33 path inline (per-output use in loops) */
QK_INLINE int32_t qk_requant2(int32_t acc, int32_t b, int32_t c, int32_t lo, int32_t hi) {
  if (QK_LIKELY(c >= 33)) return qk_clamp(qk_rshift_round(qk_mulhi(acc, b), c - 32), lo, hi);
  return qk_requant(acc, b, c, lo, hi);
}

/* output pixels per GEMM block (register blocking: 1 output channel x QK_NPIX pixels) */
#define QK_NPIX 4

#if defined(QK_DSP)
typedef uint32_t __attribute__((may_alias)) qk_u32a;   /* word stores into the int16 column scratch */
QK_INLINE uint32_t qk_load32(const void *p) { uint32_t v; memcpy(&v, p, 4); return v; }
QK_INLINE int32_t qk_smlad(uint32_t a, uint32_t b, int32_t acc) { return __smlad(a, b, acc); }
QK_INLINE uint32_t qk_sxtb16_ror8(uint32_t x) {
  uint32_t r;
  __asm__("sxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
  return r;
}
QK_INLINE uint32_t qk_uxtb16_ror8(uint32_t x) {
  uint32_t r;
  __asm__("uxtb16 %0, %1, ror #8" : "=r"(r) : "r"(x));
  return r;
}
#endif

#if defined(QK_MVE)
/* store 4 int32 lanes narrowed to the output type (the low bytes: values are already clamped) */
#define QK_VST_u8(p, v) vstrbq_s32((int8_t *)(void *)(p), (v))
#define QK_VST_s8(p, v) vstrbq_s32((int8_t *)(void *)(p), (v))
#define QK_VST_u16(p, v) vstrhq_s32((int16_t *)(void *)(p), (v))
#define QK_VST_s16(p, v) vstrhq_s32((int16_t *)(void *)(p), (v))
#define QK_VST_u32(p, v) vstrwq_s32((int32_t *)(void *)(p), (v))
#define QK_VST_s32(p, v) vstrwq_s32((int32_t *)(void *)(p), (v))
/* 4 consecutive / stride-2 bytes widened to int32 lanes */
#define QK_LD4_u8(p) vreinterpretq_s32_u32(vldrbq_u32((const uint8_t *)(p)))
#define QK_LD4_s8(p) vldrbq_s32((const int8_t *)(p))
#define QK_LDG4_u8(p, off) vreinterpretq_s32_u32(vldrbq_gather_offset_u32((const uint8_t *)(p), (off)))
#define QK_LDG4_s8(p, off) vldrbq_gather_offset_s32((const int8_t *)(p), (off))
#endif
#if defined(QK_DSP)
/* bytes 0 and 2 (and, rotated, 1 and 3) of a word as two 16-bit lanes, zero/sign extended */
#define QK_XTB16_u8(v) __uxtb16(v)
#define QK_XTB16R_u8(v) qk_uxtb16_ror8(v)
#define QK_XTB16_s8(v) ((uint32_t)__sxtb16((int32_t)(v)))
#define QK_XTB16R_s8(v) qk_sxtb16_ror8(v)
#endif

/* small byte fills/copies (rows of a padded plane): vector loops on MVE, libc elsewhere */
QK_INLINE void qk_zero_bytes(uint8_t *d, int32_t n) {
#if defined(QK_MVE)
  const uint8x16_t z = vdupq_n_u8(0);
  for (; n > 0; n -= 16, d += 16) vstrbq_p_u8(d, z, vctp8q((uint32_t)n));
#else
  if (n > 0) memset(d, 0, (size_t)n);
#endif
}

QK_INLINE void qk_copy_bytes(uint8_t *d, const uint8_t *s, int32_t n) {
#if defined(QK_MVE)
  for (; n >= 16; n -= 16, d += 16, s += 16) vstrbq_u8(d, vldrbq_u8(s));
  if (n > 0) {   /* the tail: predicated, nothing read or written past n */
    mve_pred16_t p = vctp8q((uint32_t)n);
    vstrbq_p_u8(d, vldrbq_z_u8(s, p), p);
  }
#else
  if (n > 0) memcpy(d, s, (size_t)n);
#endif
}

/* rows of n bytes: d[r * ds + i] = s[r * ss + i] (the interior of a padded plane); on MVE the tail
 * predicate is set up once for all rows */
QK_INLINE void qk_copy_rows(uint8_t *d, int32_t ds, const uint8_t *s, int32_t ss, int32_t rows, int32_t n) {
#if defined(QK_MVE)
  const mve_pred16_t tail = vctp8q((uint32_t)(n & 15));
  const int32_t nfull = n >> 4;
  int32_t r, i;
  if (n <= 32) {   /* small planes: two predicated vectors per row, no inner loop */
    const mve_pred16_t p0 = vctp8q((uint32_t)n), p1 = vctp8q((uint32_t)(n > 16 ? n - 16 : 0));
    for (r = 0; r < rows; r++, d += ds, s += ss) {
      vstrbq_p_u8(d, vldrbq_z_u8(s, p0), p0);
      vstrbq_p_u8(d + 16, vldrbq_z_u8(s + 16, p1), p1);
    }
    return;
  }
  for (r = 0; r < rows; r++, d += ds, s += ss) {
    const uint8_t *sr = s;
    uint8_t *dr = d;
    for (i = 0; i < nfull; i++, sr += 16, dr += 16) vstrbq_u8(dr, vldrbq_u8(sr));
    vstrbq_p_u8(dr, vldrbq_z_u8(sr, tail), tail);   /* inactive lanes touch no memory */
  }
#else
  int32_t r;
  for (r = 0; r < rows; r++, d += ds, s += ss)
    if (n > 0) memcpy(d, s, (size_t)n);
#endif
}

#define QK_MAX_DIMS 6

/* odometer over up to QK_MAX_DIMS dims: advance idx[], return the linear offsets' deltas */
QK_INLINE void qk_next(int32_t nd, const int32_t *shape, int32_t *idx, const int32_t *s0, int32_t *o0,
                       const int32_t *s1, int32_t *o1) {
  int32_t d = nd - 1;
  for (; d >= 0; d--) {
    idx[d]++;
    *o0 += s0[d];
    if (s1) *o1 += s1[d];
    if (idx[d] < shape[d]) return;
    *o0 -= s0[d] * shape[d];
    if (s1) *o1 -= s1[d] * shape[d];
    idx[d] = 0;
  }
}

#endif /* QK_INTERNAL_H */
