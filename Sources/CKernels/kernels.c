// SIMD kernels behind CKernels.h. Each function has an AVX-512F and an AVX2 body compiled for that target
// (function attributes; the rest of the program stays baseline x86-64) and a dispatcher that picks one once.
// Floating-point contraction is off so that a * b + c stays two roundings, as in the Swift references.
#include "CKernels.h"

#include <stdlib.h>

#pragma clang fp contract(off)

#if defined(__x86_64__)
#include <immintrin.h>

// fastExp's constants (FastMath.swift), as floats.
#define EXP_LO (-87.33f)
#define EXP_HI (88.3f)
#define EXP_LOG2E (1.44269504f)
#define EXP_MAGIC (12582912.0f)
#define EXP_LN2_HI (0.69314575f)
#define EXP_LN2_LO (1.4286068e-6f)

__attribute__((target("avx512f")))
static inline __m512 exp512(__m512 x) {
    const __m512 xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(EXP_LO)), _mm512_set1_ps(EXP_HI));
    const __m512 magic = _mm512_set1_ps(EXP_MAGIC);
    const __m512 shifted = _mm512_add_ps(_mm512_mul_ps(xc, _mm512_set1_ps(EXP_LOG2E)), magic);
    const __m512 n = _mm512_sub_ps(shifted, magic);
    const __m512 r = _mm512_sub_ps(_mm512_sub_ps(xc, _mm512_mul_ps(n, _mm512_set1_ps(EXP_LN2_HI))),
                                   _mm512_mul_ps(n, _mm512_set1_ps(EXP_LN2_LO)));
    __m512 p = _mm512_set1_ps(1.0f / 720);
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 120));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 24));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f / 6));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(0.5f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f));
    p = _mm512_add_ps(_mm512_mul_ps(p, r), _mm512_set1_ps(1.0f));
    const __m512i k = _mm512_sub_epi32(_mm512_castps_si512(shifted), _mm512_set1_epi32(0x4B400000));
    const __m512 scale = _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(k, _mm512_set1_epi32(127)), 23));
    const __mmask16 under = _mm512_cmp_ps_mask(x, _mm512_set1_ps(EXP_LO), _CMP_LT_OQ);
    return _mm512_maskz_mul_ps((__mmask16)~under, p, scale);
}

// max_j x[j] over n ≥ 1 floats (the softmax row's shift).
__attribute__((target("avx512f")))
static inline float row_max512(const float *x, long n) {
    __m512 m16 = _mm512_set1_ps(-__builtin_inff());
    long j = 0;
    for (; j + 16 <= n; j += 16) m16 = _mm512_max_ps(m16, _mm512_loadu_ps(x + j));
    if (j < n) {
        const __mmask16 tail = (__mmask16)((1u << (n - j)) - 1);
        m16 = _mm512_mask_max_ps(m16, tail, m16, _mm512_maskz_loadu_ps(tail, x + j));
    }
    return _mm512_reduce_max_ps(m16);
}

__attribute__((target("avx512f")))
static float exp_row_avx512(float *x, long n) {
    const __m512 m = _mm512_set1_ps(row_max512(x, n));
    __m512 s16 = _mm512_setzero_ps();
    long j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), m));
        _mm512_storeu_ps(x + j, e);
        s16 = _mm512_add_ps(s16, e);
    }
    if (j < n) {
        const __mmask16 tail = (__mmask16)((1u << (n - j)) - 1);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + j), m));
        _mm512_mask_storeu_ps(x + j, tail, e);
        s16 = _mm512_mask_add_ps(s16, tail, s16, e);
    }
    return _mm512_reduce_add_ps(s16);
}

// exp_row_avx512's exponentials and sum, in its order, written as bf16 (AVX512-BF16's round to nearest even,
// vcvtneps2bf16, as compress_to_bf16 does) to out instead of back to x: a bf16 product's softmax numerator without a
// float pass over the row and a conversion pass after it.
__attribute__((target("avx512f,avx512bf16,avx512vl,avx512bw")))
static float exp_row_bf16_avx512(const float *x, long n, uint16_t *out) {
    const __m512 m = _mm512_set1_ps(row_max512(x, n));
    __m512 s16 = _mm512_setzero_ps();
    long j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), m));
        _mm256_storeu_si256((__m256i *)(out + j), (__m256i)_mm512_cvtneps_pbh(e));
        s16 = _mm512_add_ps(s16, e);
    }
    if (j < n) {
        const __mmask16 tail = (__mmask16)((1u << (n - j)) - 1);
        const __m512 e = exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + j), m));
        _mm256_mask_storeu_epi16(out + j, tail, (__m256i)_mm512_cvtneps_pbh(e));
        s16 = _mm512_mask_add_ps(s16, tail, s16, e);
    }
    return _mm512_reduce_add_ps(s16);
}

// The quantizer's grid error and symmetric refit sums (Quantization/Quantizer.swift, searchGroup), 16 weights a
// vector: q_k = clamp(round_half_away((x_k − lo) / s), qlo, qhi) (the code minus the symmetric offset), then
//   err = Σ_k (h_k · d_k) · d_k,  d_k = x_k − (lo + s · q_k),   xq = Σ_k (h_k · x_k) · q_k,   qq = Σ_k (h_k · q_k) · q_k,
// each term the Swift expression's float, the sums taken in k order (scalar adds), so every result is bit for bit
// the Swift loop's. round_half_away: |v| truncated (vrndscaleps, exact), +1 when its fraction is ≥ 1/2, v's sign.
__attribute__((target("avx512f")))
static void group_error_avx512(const float *x, const float *h, long n, float s, float lo, float qlo, float qhi,
                               int refit, float *err, float *xq, float *qq) {
    float te[16], tx[16], tq[16];
    float e = 0, sxq = 0, sqq = 0;
    const __m512 sv = _mm512_set1_ps(s), lov = _mm512_set1_ps(lo), half = _mm512_set1_ps(0.5f),
                 one = _mm512_set1_ps(1.0f), qlov = _mm512_set1_ps(qlo), qhiv = _mm512_set1_ps(qhi);
    const __m512i sign = _mm512_set1_epi32((int)0x80000000);
    for (long j = 0; j < n; j += 16) {
        const long m = n - j < 16 ? n - j : 16;
        const __mmask16 mask = (__mmask16)(m == 16 ? 0xffff : (1u << m) - 1);
        const __m512 xv = _mm512_maskz_loadu_ps(mask, x + j), hv = _mm512_maskz_loadu_ps(mask, h + j);
        const __m512 v = _mm512_div_ps(_mm512_sub_ps(xv, lov), sv);
        const __m512 a = _mm512_abs_ps(v);
        const __m512 t = _mm512_roundscale_ps(a, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
        const __mmask16 up = _mm512_cmp_ps_mask(_mm512_sub_ps(a, t), half, _CMP_GE_OQ);
        const __m512 r = _mm512_mask_add_ps(t, up, t, one);
        const __m512 rs = _mm512_castsi512_ps(_mm512_or_si512(_mm512_castps_si512(r),
                                              _mm512_and_si512(_mm512_castps_si512(v), sign)));
        const __m512 q = _mm512_min_ps(_mm512_max_ps(rs, qlov), qhiv);
        const __m512 d = _mm512_sub_ps(xv, _mm512_add_ps(lov, _mm512_mul_ps(sv, q)));
        _mm512_storeu_ps(te, _mm512_mul_ps(_mm512_mul_ps(hv, d), d));
        if (refit) {
            _mm512_storeu_ps(tx, _mm512_mul_ps(_mm512_mul_ps(hv, xv), q));
            _mm512_storeu_ps(tq, _mm512_mul_ps(_mm512_mul_ps(hv, q), q));
        }
        for (long k = 0; k < m; k++) e += te[k];
        if (refit) {
            for (long k = 0; k < m; k++) { sxq += tx[k]; sqq += tq[k]; }
        }
    }
    *err = e;
    if (refit) { *xq = sxq; *qq = sqq; }
}

int compress_group_error(const float *x, const float *h, long n, float s, float lo, float qlo, float qhi, int refit,
                         float *err, float *xq, float *qq) {
    if (compress_kernels_lanes() < 16) return -1;
    group_error_avx512(x, h, n, s, lo, qlo, qhi, refit, err, xq, qq);
    return 0;
}

// Σ_j fastExp(x[j] - m), each exponential a float, summed in 16 double lanes (the sum is then exact to ~1e-16
// relative whatever the order, so a log-sum-exp over a 49,152-word vocabulary does not depend on the SIMD width).
__attribute__((target("avx512f")))
static double exp_sum_avx512(const float *x, long n, float m) {
    const __m512 mv = _mm512_set1_ps(m);
    __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
    long j = 0;
    for (; j + 16 <= n; j += 16) {
        const __m512 e = exp512(_mm512_sub_ps(_mm512_loadu_ps(x + j), mv));
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    if (j < n) {
        const __mmask16 tail = (__mmask16)((1u << (n - j)) - 1);
        const __m512 e = _mm512_maskz_mov_ps(tail, exp512(_mm512_sub_ps(_mm512_maskz_loadu_ps(tail, x + j), mv)));
        lo = _mm512_add_pd(lo, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
        hi = _mm512_add_pd(hi, _mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(e), 1))));
    }
    return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

// out = g / (1 + fastExp(-g)) * up (SiLU-gated, swigluForward) or
// out = 0.5 * x * (2 - 2 / (fastExp(2 * u) + 1)) * up, u = 0.79788456 * (x + 0.044715 * x * x * x)
// (GELU-tanh-gated, geluTanhGatedForward); the Swift expressions' operations in their order.
__attribute__((target("avx512f")))
static inline __m512 gated512(__m512 g, __m512 u, int gelu) {
    const __m512 one = _mm512_set1_ps(1.0f), two = _mm512_set1_ps(2.0f);
    if (!gelu) {
        const __m512 neg = _mm512_castsi512_ps(_mm512_xor_si512(_mm512_castps_si512(g), _mm512_set1_epi32((int)0x80000000)));
        return _mm512_mul_ps(_mm512_div_ps(g, _mm512_add_ps(one, exp512(neg))), u);
    }
    const __m512 cube = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.044715f), g), g), g);
    const __m512 t = _mm512_mul_ps(_mm512_set1_ps(0.79788456f), _mm512_add_ps(g, cube));
    const __m512 e = exp512(_mm512_mul_ps(two, t));
    const __m512 th = _mm512_sub_ps(two, _mm512_div_ps(two, _mm512_add_ps(e, one)));
    return _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5f), g), th), u);
}

__attribute__((target("avx512f")))
static void gated_avx512(float *out, const float *gate, const float *up, long n, int gelu) {
    long j = 0;
    for (; j + 16 <= n; j += 16)
        _mm512_storeu_ps(out + j, gated512(_mm512_loadu_ps(gate + j), _mm512_loadu_ps(up + j), gelu));
    if (j < n) {
        const __mmask16 tail = (__mmask16)((1u << (n - j)) - 1);
        const __m512 r = gated512(_mm512_maskz_loadu_ps(tail, gate + j), _mm512_maskz_loadu_ps(tail, up + j), gelu);
        _mm512_mask_storeu_ps(out + j, tail, r);
    }
}

__attribute__((target("avx2")))
static inline __m256 exp256(__m256 x) {
    const __m256 xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(EXP_LO)), _mm256_set1_ps(EXP_HI));
    const __m256 magic = _mm256_set1_ps(EXP_MAGIC);
    const __m256 shifted = _mm256_add_ps(_mm256_mul_ps(xc, _mm256_set1_ps(EXP_LOG2E)), magic);
    const __m256 n = _mm256_sub_ps(shifted, magic);
    const __m256 r = _mm256_sub_ps(_mm256_sub_ps(xc, _mm256_mul_ps(n, _mm256_set1_ps(EXP_LN2_HI))),
                                   _mm256_mul_ps(n, _mm256_set1_ps(EXP_LN2_LO)));
    __m256 p = _mm256_set1_ps(1.0f / 720);
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 120));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 24));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f / 6));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(0.5f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f));
    p = _mm256_add_ps(_mm256_mul_ps(p, r), _mm256_set1_ps(1.0f));
    const __m256i k = _mm256_sub_epi32(_mm256_castps_si256(shifted), _mm256_set1_epi32(0x4B400000));
    const __m256 scale = _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(k, _mm256_set1_epi32(127)), 23));
    const __m256 keep = _mm256_cmp_ps(x, _mm256_set1_ps(EXP_LO), _CMP_NLT_UQ);
    return _mm256_and_ps(keep, _mm256_mul_ps(p, scale));
}

__attribute__((target("avx2")))
static float exp_row_avx2(float *x, long n) {
    __m256 m8 = _mm256_set1_ps(-__builtin_inff());
    long j = 0;
    for (; j + 8 <= n; j += 8) m8 = _mm256_max_ps(m8, _mm256_loadu_ps(x + j));
    float m = -__builtin_inff();
    float lanes[8];
    _mm256_storeu_ps(lanes, m8);
    for (int l = 0; l < 8; l++) m = lanes[l] > m ? lanes[l] : m;
    for (long t = j; t < n; t++) m = x[t] > m ? x[t] : m;
    const __m256 mv = _mm256_set1_ps(m);
    __m256 s8 = _mm256_setzero_ps();
    for (j = 0; j + 8 <= n; j += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
        _mm256_storeu_ps(x + j, e);
        s8 = _mm256_add_ps(s8, e);
    }
    float tail[8] = {0}, out[8];
    const long rest = n - j;
    for (long t = 0; t < rest; t++) tail[t] = x[j + t] - m;
    _mm256_storeu_ps(out, exp256(_mm256_loadu_ps(tail)));
    _mm256_storeu_ps(lanes, s8);
    float s = 0;
    for (long t = 0; t < rest; t++) { x[j + t] = out[t]; lanes[t] += out[t]; }
    for (int l = 0; l < 8; l++) s += lanes[l];
    return s;
}

// The AVX2 forms of exp_sum and gated (tails through a zero-padded block of 8).
__attribute__((target("avx2")))
static double exp_sum_avx2(const float *x, long n, float m) {
    const __m256 mv = _mm256_set1_ps(m);
    __m256d lo = _mm256_setzero_pd(), hi = _mm256_setzero_pd();
    long j = 0;
    for (; j + 8 <= n; j += 8) {
        const __m256 e = exp256(_mm256_sub_ps(_mm256_loadu_ps(x + j), mv));
        lo = _mm256_add_pd(lo, _mm256_cvtps_pd(_mm256_castps256_ps128(e)));
        hi = _mm256_add_pd(hi, _mm256_cvtps_pd(_mm256_extractf128_ps(e, 1)));
    }
    float tail[8] = {0}, out[8];
    const long rest = n - j;
    for (long t = 0; t < rest; t++) tail[t] = x[j + t] - m;
    _mm256_storeu_ps(out, exp256(_mm256_loadu_ps(tail)));
    double lanes[4], s = 0;
    _mm256_storeu_pd(lanes, _mm256_add_pd(lo, hi));
    for (int l = 0; l < 4; l++) s += lanes[l];
    for (long t = 0; t < rest; t++) s += (double)out[t];
    return s;
}

__attribute__((target("avx2")))
static inline __m256 gated256(__m256 g, __m256 u, int gelu) {
    const __m256 one = _mm256_set1_ps(1.0f), two = _mm256_set1_ps(2.0f);
    if (!gelu) {
        const __m256 neg = _mm256_xor_ps(g, _mm256_set1_ps(-0.0f));
        return _mm256_mul_ps(_mm256_div_ps(g, _mm256_add_ps(one, exp256(neg))), u);
    }
    const __m256 cube = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.044715f), g), g), g);
    const __m256 t = _mm256_mul_ps(_mm256_set1_ps(0.79788456f), _mm256_add_ps(g, cube));
    const __m256 e = exp256(_mm256_mul_ps(two, t));
    const __m256 th = _mm256_sub_ps(two, _mm256_div_ps(two, _mm256_add_ps(e, one)));
    return _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_set1_ps(0.5f), g), th), u);
}

__attribute__((target("avx2")))
static void gated_avx2(float *out, const float *gate, const float *up, long n, int gelu) {
    long j = 0;
    for (; j + 8 <= n; j += 8)
        _mm256_storeu_ps(out + j, gated256(_mm256_loadu_ps(gate + j), _mm256_loadu_ps(up + j), gelu));
    if (j < n) {
        float g[8] = {0}, u[8] = {0}, r[8];
        for (long t = 0; t < n - j; t++) { g[t] = gate[j + t]; u[t] = up[j + t]; }
        _mm256_storeu_ps(r, gated256(_mm256_loadu_ps(g), _mm256_loadu_ps(u), gelu));
        for (long t = 0; t < n - j; t++) out[j + t] = r[t];
    }
}

// Column sums of squares and float → double accumulation (Passes/Layerwise.swift's calibration statistics). A float
// squared in double is exact (24-bit significands), so each acc[j] gets the same doubles as the scalar loop
// acc[j] += (double)x * (double)x, whatever the vector width: only the order over t matters, and it is kept.
// The columns [j0, cols) the vector loops leave, one at a time.
static void add_squares_scalar(const float *x, long rows, long j0, long cols, long ld, double *acc) {
    for (long j = j0; j < cols; j++) {
        double a = acc[j];
        for (long t = 0; t < rows; t++) { const double v = (double)x[t * ld + j]; a += v * v; }
        acc[j] = a;
    }
}

__attribute__((target("avx512f")))
static void add_squares_avx512(const float *x, long rows, long cols, long ld, double *acc) {
    long j = 0;
    for (; j + 8 <= cols; j += 8) {
        __m512d a = _mm512_loadu_pd(acc + j);
        for (long t = 0; t < rows; t++) {
            const __m512d v = _mm512_cvtps_pd(_mm256_loadu_ps(x + t * ld + j));
            a = _mm512_add_pd(a, _mm512_mul_pd(v, v));
        }
        _mm512_storeu_pd(acc + j, a);
    }
    add_squares_scalar(x, rows, j, cols, ld, acc);
}

__attribute__((target("avx512f")))
static void add_to_double_avx512(const float *x, long n, double *acc) {
    long j = 0;
    for (; j + 8 <= n; j += 8)
        _mm512_storeu_pd(acc + j, _mm512_add_pd(_mm512_loadu_pd(acc + j), _mm512_cvtps_pd(_mm256_loadu_ps(x + j))));
    for (; j < n; j++) acc[j] += (double)x[j];
}

__attribute__((target("avx2")))
static void add_squares_avx2(const float *x, long rows, long cols, long ld, double *acc) {
    long j = 0;
    for (; j + 4 <= cols; j += 4) {
        __m256d a = _mm256_loadu_pd(acc + j);
        for (long t = 0; t < rows; t++) {
            const __m256d v = _mm256_cvtps_pd(_mm_loadu_ps(x + t * ld + j));
            a = _mm256_add_pd(a, _mm256_mul_pd(v, v));
        }
        _mm256_storeu_pd(acc + j, a);
    }
    add_squares_scalar(x, rows, j, cols, ld, acc);
}

__attribute__((target("avx2")))
static void add_to_double_avx2(const float *x, long n, double *acc) {
    long j = 0;
    for (; j + 4 <= n; j += 4)
        _mm256_storeu_pd(acc + j, _mm256_add_pd(_mm256_loadu_pd(acc + j), _mm256_cvtps_pd(_mm_loadu_ps(x + j))));
    for (; j < n; j++) acc[j] += (double)x[j];
}

static int detect_lanes(void) {
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f")) return 16;
    if (__builtin_cpu_supports("avx2")) return 8;
    return 0;
}
#else
static int detect_lanes(void) { return 0; }
#endif

static int lanes_found = -1;

int compress_kernels_lanes(void) {
    int l = __atomic_load_n(&lanes_found, __ATOMIC_RELAXED);
    if (l < 0) {
        l = detect_lanes();
        const char *forced = getenv("COMPRESS_KERNELS");
        if (forced && forced[0] == '0') l = 0;
        __atomic_store_n(&lanes_found, l, __ATOMIC_RELAXED);
    }
    return l;
}

float compress_exp_row(float *x, long n) { return compress_exp_row_lanes(x, n, compress_kernels_lanes()); }

float compress_exp_row_lanes(float *x, long n, int lanes) {
    if (lanes > compress_kernels_lanes()) return -1;
#if defined(__x86_64__)
    switch (lanes) {
    case 16: return exp_row_avx512(x, n);
    case 8: return exp_row_avx2(x, n);
    default: break;
    }
#endif
    (void)x; (void)n;
    return -1;
}

float compress_exp_row_bf16(const float *x, long n, uint16_t *out) {
#if defined(__x86_64__)
    static int usable = -1;
    int u = __atomic_load_n(&usable, __ATOMIC_RELAXED);
    if (u < 0) {
        __builtin_cpu_init();
        u = compress_kernels_lanes() == 16 && __builtin_cpu_supports("avx512bf16") &&
            __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512vl");
        __atomic_store_n(&usable, u, __ATOMIC_RELAXED);
    }
    if (u) return exp_row_bf16_avx512(x, n, out);
#endif
    (void)x; (void)n; (void)out;
    return -1;
}

double compress_exp_sum_lanes(const float *x, long n, float m, int lanes) {
    if (lanes > compress_kernels_lanes()) return -1;
#if defined(__x86_64__)
    switch (lanes) {
    case 16: return exp_sum_avx512(x, n, m);
    case 8: return exp_sum_avx2(x, n, m);
    default: break;
    }
#endif
    (void)x; (void)n; (void)m;
    return -1;
}

int compress_gated_lanes(float *out, const float *gate, const float *up, long n, int gelu, int lanes) {
    if (lanes > compress_kernels_lanes()) return -1;
#if defined(__x86_64__)
    switch (lanes) {
    case 16: gated_avx512(out, gate, up, n, gelu); return 0;
    case 8: gated_avx2(out, gate, up, n, gelu); return 0;
    default: break;
    }
#endif
    (void)out; (void)gate; (void)up; (void)n; (void)gelu;
    return -1;
}

int compress_add_squares_lanes(const float *x, long rows, long cols, long ld, double *acc, int lanes) {
    if (lanes > compress_kernels_lanes()) return -1;
#if defined(__x86_64__)
    switch (lanes) {
    case 16: add_squares_avx512(x, rows, cols, ld, acc); return 0;
    case 8: add_squares_avx2(x, rows, cols, ld, acc); return 0;
    default: break;
    }
#endif
    (void)x; (void)rows; (void)cols; (void)ld; (void)acc;
    return -1;
}

int compress_add_to_double_lanes(const float *x, long n, double *acc, int lanes) {
    if (lanes > compress_kernels_lanes()) return -1;
#if defined(__x86_64__)
    switch (lanes) {
    case 16: add_to_double_avx512(x, n, acc); return 0;
    case 8: add_to_double_avx2(x, n, acc); return 0;
    default: break;
    }
#endif
    (void)x; (void)n; (void)acc;
    return -1;
}
