/* The dot and axpy kernels of each path, the path selection, and the per-row operations (gemm.c has the
 * matrix products). */
#include "kernels.h"

#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../common/dtype_size.h"
#include "dtype.h"
#include "multilora.h"

/* ---------------------------------------------------------------------------------------------- */
/* portable dot products: 8 partial sums, combined in a fixed tree */

static float sum8(const float s[8]) { return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7])); }

static float dot_f32_portable(const float *x, const void *w, int64_t n) {
    const float *v = w;
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += x[i + j] * v[i + j];
    for (; i < n; i++) s[i & 7] += x[i] * v[i];
    return sum8(s);
}

static float dot_bf16_portable(const float *x, const void *w, int64_t n) {
    const uint16_t *v = w;
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += x[i + j] * f32_from_bits((uint32_t)v[i + j] << 16);
    for (; i < n; i++) s[i & 7] += x[i] * f32_from_bits((uint32_t)v[i] << 16);
    return sum8(s);
}

static float dot_f16_portable(const float *x, const void *w, int64_t n) {
    const uint16_t *v = w;
    float s[8] = {0};
    int64_t i = 0;
    for (; i + 8 <= n; i += 8)
        for (int j = 0; j < 8; j++) s[j] += x[i + j] * f32_from_bits(f32_bits_from_f16(v[i + j]));
    for (; i < n; i++) s[i & 7] += x[i] * f32_from_bits(f32_bits_from_f16(v[i]));
    return sum8(s);
}

static void axpy_f32_portable(float *y, float c, const void *w, int64_t n) {
    const float *v = w;
    for (int64_t i = 0; i < n; i++) y[i] += c * v[i];
}

static void axpy_bf16_portable(float *y, float c, const void *w, int64_t n) {
    const uint16_t *v = w;
    for (int64_t i = 0; i < n; i++) y[i] += c * f32_from_bits((uint32_t)v[i] << 16);
}

static void axpy_f16_portable(float *y, float c, const void *w, int64_t n) {
    const uint16_t *v = w;
    for (int64_t i = 0; i < n; i++) y[i] += c * f32_from_bits(f32_bits_from_f16(v[i]));
}

/* ---------------------------------------------------------------------------------------------- */
/* AVX2 + FMA + F16C: 4 accumulators of 8 lanes */

#define AVX2 __attribute__((target("avx2,fma,f16c")))

AVX2 static float hsum256(__m256 v) {
    __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
    __m128 s = _mm_add_ps(lo, hi);
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
}

AVX2 static inline __m256 load_bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}

AVX2 static inline __m256 load_f16x8(const uint16_t *p) { return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p)); }

#define DOT_AVX2(name, T, LOAD, TAIL)                                                                  \
    AVX2 static float name(const float *x, const void *w, int64_t n) {                                 \
        const T *v = w;                                                                                \
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;                                     \
        int64_t i = 0;                                                                                 \
        for (; i + 32 <= n; i += 32) {                                                                 \
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), LOAD(v + i), a0);                             \
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 8), LOAD(v + i + 8), a1);                     \
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 16), LOAD(v + i + 16), a2);                   \
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i + 24), LOAD(v + i + 24), a3);                   \
        }                                                                                              \
        for (; i + 8 <= n; i += 8) a0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + i), LOAD(v + i), a0);     \
        float s = hsum256(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)));                \
        for (; i < n; i++) s += x[i] * TAIL(v[i]);                                                     \
        return s;                                                                                      \
    }

#define TAIL_F32(v) (v)
#define TAIL_BF16(v) f32_from_bits((uint32_t)(v) << 16)
#define TAIL_F16(v) f32_from_bits(f32_bits_from_f16(v))

DOT_AVX2(dot_f32_avx2, float, _mm256_loadu_ps, TAIL_F32)
DOT_AVX2(dot_bf16_avx2, uint16_t, load_bf16x8, TAIL_BF16)
DOT_AVX2(dot_f16_avx2, uint16_t, load_f16x8, TAIL_F16)

#define AXPY_AVX2(name, T, LOAD, TAIL)                                                                 \
    AVX2 static void name(float *y, float c, const void *w, int64_t n) {                               \
        const T *v = w;                                                                                \
        const __m256 cc = _mm256_set1_ps(c);                                                           \
        int64_t i = 0;                                                                                 \
        for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(cc, LOAD(v + i), _mm256_loadu_ps(y + i))); \
        for (; i < n; i++) y[i] = fmaf(c, TAIL(v[i]), y[i]);                                           \
    }

AXPY_AVX2(axpy_f32_avx2, float, _mm256_loadu_ps, TAIL_F32)
AXPY_AVX2(axpy_bf16_avx2, uint16_t, load_bf16x8, TAIL_BF16)
AXPY_AVX2(axpy_f16_avx2, uint16_t, load_f16x8, TAIL_F16)

/* ---------------------------------------------------------------------------------------------- */
/* AVX-512F: 2 accumulators of 16 lanes */

#define AVX512 __attribute__((target("avx512f,avx2,fma,f16c")))

AVX512 static inline __m512 load_bf16x16(const uint16_t *p) {
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p)), 16));
}

AVX512 static inline __m512 load_f16x16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

#define DOT_AVX512(name, T, LOAD, TAIL)                                                                \
    AVX512 static float name(const float *x, const void *w, int64_t n) {                               \
        const T *v = w;                                                                                \
        __m512 a0 = _mm512_setzero_ps(), a1 = a0;                                                      \
        int64_t i = 0;                                                                                 \
        for (; i + 32 <= n; i += 32) {                                                                 \
            a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), LOAD(v + i), a0);                             \
            a1 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i + 16), LOAD(v + i + 16), a1);                   \
        }                                                                                              \
        for (; i + 16 <= n; i += 16) a0 = _mm512_fmadd_ps(_mm512_loadu_ps(x + i), LOAD(v + i), a0);   \
        float s = _mm512_reduce_add_ps(_mm512_add_ps(a0, a1));                                         \
        for (; i < n; i++) s += x[i] * TAIL(v[i]);                                                     \
        return s;                                                                                      \
    }

DOT_AVX512(dot_f32_avx512, float, _mm512_loadu_ps, TAIL_F32)
DOT_AVX512(dot_bf16_avx512, uint16_t, load_bf16x16, TAIL_BF16)
DOT_AVX512(dot_f16_avx512, uint16_t, load_f16x16, TAIL_F16)

#define AXPY_AVX512(name, T, LOAD, TAIL)                                                               \
    AVX512 static void name(float *y, float c, const void *w, int64_t n) {                             \
        const T *v = w;                                                                                \
        const __m512 cc = _mm512_set1_ps(c);                                                           \
        int64_t i = 0;                                                                                 \
        for (; i + 16 <= n; i += 16) _mm512_storeu_ps(y + i, _mm512_fmadd_ps(cc, LOAD(v + i), _mm512_loadu_ps(y + i))); \
        for (; i < n; i++) y[i] = fmaf(c, TAIL(v[i]), y[i]);                                           \
    }

AXPY_AVX512(axpy_f32_avx512, float, _mm512_loadu_ps, TAIL_F32)
AXPY_AVX512(axpy_bf16_avx512, uint16_t, load_bf16x16, TAIL_BF16)
AXPY_AVX512(axpy_f16_avx512, uint16_t, load_f16x16, TAIL_F16)

/* ---------------------------------------------------------------------------------------------- */

static int os_saves_ymm_zmm(int want_zmm) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !((c >> 27) & 1)) return 0; /* OSXSAVE */
    unsigned lo, hi;
    __asm__("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    (void)hi;
    unsigned need = want_zmm ? 0xE6u : 0x6u;
    return (lo & need) == need;
}

static kernel_level cpu_level(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(1, &a, &b, &c, &d)) return KERNELS_PORTABLE;
    const int fma = (c >> 12) & 1, f16c = (c >> 29) & 1, avx = (c >> 28) & 1;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return KERNELS_PORTABLE;
    const int avx2 = avx && fma && f16c && ((b >> 5) & 1) && os_saves_ymm_zmm(0);
    if (!avx2) return KERNELS_PORTABLE;
    /* AVX-512 F, DQ, BW, VL (the masked 16-bit loads need BW and VL) */
    const int avx512 = ((b >> 16) & 1) && ((b >> 17) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1) && os_saves_ymm_zmm(1);
    if (!avx512) return KERNELS_AVX2;
    const int bf16 = __get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 5) & 1);
    return bf16 ? KERNELS_AVX512_BF16 : KERNELS_AVX512;
}

static const char *const level_names[] = {"portable", "avx2", "avx512", "avx512_bf16"};

/* vdpbf16ps issues about as often as an f32 FMA (kernels.h): AMD's cores, not Intel's. */
static int fast_dpbf16(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid(0, &a, &b, &c, &d)) return 0;
    return b == 0x68747541u && d == 0x69746e65u && c == 0x444d4163u; /* "AuthenticAMD" */
}

kernel_level kernels_cpu_most(void) { return cpu_level(); }

kernel_level kernels_cpu_level(void) {
    const kernel_level most = cpu_level();
    kernel_level level = most == KERNELS_AVX512_BF16 && !fast_dpbf16() ? KERNELS_AVX512 : most;
    const char *pick = getenv("MULTILORA_CPU_KERNELS");
    if (pick) {
        for (int i = 0; i <= KERNELS_AVX512_BF16; i++)
            if (strcmp(pick, level_names[i]) == 0) level = (kernel_level)(i < (int)most ? i : (int)most);
    }
    return level;
}

static void fill(kernels *k, kernel_level level) {
    if (level >= KERNELS_AVX512) {
        *k = (kernels){{dot_f32_avx512, dot_f16_avx512, dot_bf16_avx512},
                       {axpy_f32_avx512, axpy_f16_avx512, axpy_bf16_avx512}, level, level == KERNELS_AVX512,
                       level_names[level]};
    } else if (level == KERNELS_AVX2) {
        *k = (kernels){{dot_f32_avx2, dot_f16_avx2, dot_bf16_avx2},
                       {axpy_f32_avx2, axpy_f16_avx2, axpy_bf16_avx2}, level, 0, level_names[level]};
    } else {
        *k = (kernels){{dot_f32_portable, dot_f16_portable, dot_bf16_portable},
                       {axpy_f32_portable, axpy_f16_portable, axpy_bf16_portable}, KERNELS_PORTABLE, 0,
                       level_names[KERNELS_PORTABLE]};
    }
}

void kernels_select(kernels *k) { fill(k, kernels_cpu_level()); }

int kernels_select_named(kernels *k, const char *isa) {
    for (int i = 0; i <= KERNELS_AVX512_BF16; i++) {
        if (isa && strcmp(isa, level_names[i]) == 0) {
            if (i > (int)cpu_level()) return 0;
            fill(k, (kernel_level)i);
            return 1;
        }
    }
    return 0;
}

float weight_at(const void *w, int32_t dtype, int64_t i) {
    if (dtype == MLR_DTYPE_F32) return ((const float *)w)[i];
    uint16_t h = ((const uint16_t *)w)[i];
    return dtype == MLR_DTYPE_BF16 ? f32_from_bits((uint32_t)h << 16) : f32_from_bits(f32_bits_from_f16(h));
}

void rmsnorm(float *out, const float *x, const void *w, int32_t w_dtype, int64_t n, float eps) {
    double ss = 0;
    for (int64_t i = 0; i < n; i++) ss += (double)x[i] * x[i];
    const float inv = (float)(1.0 / sqrt(ss / (double)n + eps));
    for (int64_t i = 0; i < n; i++) out[i] = x[i] * inv * weight_at(w, w_dtype, i);
}
