/*
 * The benchmark kernels of multilora.h ("Benchmark kernels"): a read-bandwidth kernel and a peak
 * multiply-add kernel, the yardsticks bench/engine.ts divides by, and the engine's matrix product on its
 * own for the kernel tests.
 *
 * Both yardsticks run on the engine's thread pool, cut into many more items than threads so that a thread
 * that starts late still gets its share; the time is the whole parallel-for's.
 */
#include <immintrin.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../common/dtype_size.h"
#include "kernels.h"
#include "multilora.h"
#include "thread_pool.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

const char *mlr_cpu_kernel_path(void) {
    kernels k;
    kernels_select(&k);
    return k.isa;
}

/* ---------------------------------------------------------------------------------------------- */
/* read bandwidth */

typedef struct read_job {
    const unsigned char *buf;
    int64_t slice;   /* bytes per item, a multiple of 256 */
    int64_t bytes;
    int level;
    uint64_t sink;   /* keeps the loads; atomic */
} read_job;

__attribute__((target("avx512f"))) static uint64_t read512(const unsigned char *p, int64_t n) {
    __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i + 256 <= n; i += 256) {
        a0 = _mm512_xor_si512(a0, _mm512_load_si512(p + i));
        a1 = _mm512_xor_si512(a1, _mm512_load_si512(p + i + 64));
        a2 = _mm512_xor_si512(a2, _mm512_load_si512(p + i + 128));
        a3 = _mm512_xor_si512(a3, _mm512_load_si512(p + i + 192));
    }
    const __m512i s = _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3));
    return (uint64_t)_mm512_reduce_add_epi64(s);
}

__attribute__((target("avx2"))) static uint64_t read256(const unsigned char *p, int64_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (int64_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_xor_si256(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_xor_si256(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_xor_si256(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_xor_si256(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    const __m256i s = _mm256_xor_si256(_mm256_xor_si256(a0, a1), _mm256_xor_si256(a2, a3));
    uint64_t out[4];
    _mm256_storeu_si256((__m256i *)out, s);
    return out[0] ^ out[1] ^ out[2] ^ out[3];
}

static uint64_t read_portable(const unsigned char *p, int64_t n) {
    const uint64_t *v = (const uint64_t *)(const void *)p;
    uint64_t a[8] = {0};
    for (int64_t i = 0; i + 8 <= n / 8; i += 8)
        for (int j = 0; j < 8; j++) a[j] ^= v[i + j];
    return a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4] ^ a[5] ^ a[6] ^ a[7];
}

static void read_items(void *ctx, int64_t begin, int64_t end) {
    read_job *j = ctx;
    uint64_t s = 0;
    for (int64_t item = begin; item < end; item++) {
        const int64_t from = item * j->slice;
        const int64_t n = from + j->slice <= j->bytes ? j->slice : j->bytes - from;
        const unsigned char *p = j->buf + from;
        s ^= j->level >= KERNELS_AVX512 ? read512(p, n) : j->level >= KERNELS_AVX2 ? read256(p, n) : read_portable(p, n);
    }
    __atomic_fetch_xor(&j->sink, s, __ATOMIC_RELAXED);
}

double mlr_bench_read_bandwidth(int32_t threads, int64_t bytes, int32_t rounds) {
    if (threads < 1 || bytes < (1 << 20) || rounds < 1) return 0;
    bytes = bytes / 4096 * 4096;
    void *buf = NULL;
    if (posix_memalign(&buf, 4096, (size_t)bytes) != 0) return 0;
    memset(buf, 0x5a, (size_t)bytes); /* touch every page */
    thread_pool pool;
    if (thread_pool_init(&pool, threads) != 0) {
        free(buf);
        return 0;
    }
    /* ~64 items per thread, each a multiple of 256 bytes */
    int64_t slice = bytes / (64 * (int64_t)threads) / 256 * 256;
    if (slice < 256) slice = 256;
    read_job job = {buf, slice, bytes, (int)kernels_cpu_level(), 0};
    const int64_t items = (bytes + slice - 1) / slice;
    double best = 0;
    for (int32_t r = 0; r < rounds; r++) {
        const double t0 = now_s();
        thread_pool_run(&pool, items, 1, read_items, &job);
        const double dt = now_s() - t0;
        if (dt > 0 && (double)bytes / dt > best) best = (double)bytes / dt;
    }
    thread_pool_free(&pool);
    free(buf);
    return best;
}

/* ---------------------------------------------------------------------------------------------- */
/* peak multiply-add */

#define PEAK_ITERS 4096 /* inner iterations per item */

typedef struct peak_job {
    int kind;
    int level;
    float sink; /* keeps the results; written under no lock, only to be read never */
    uint64_t guard;
} peak_job;

#define ACC_CHAIN(OP)                                                                                    \
    OP(0) OP(1) OP(2) OP(3) OP(4) OP(5) OP(6) OP(7) OP(8) OP(9) OP(10) OP(11) OP(12) OP(13) OP(14) OP(15)

__attribute__((target("avx512f"))) static float peak_fma512(void) {
    __m512 a[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_set1_ps(1.0f + (float)i * 1e-3f);
    const __m512 b = _mm512_set1_ps(0.999999f), c = _mm512_set1_ps(1e-6f);
    for (int it = 0; it < PEAK_ITERS; it++) {
#define FMA512(i) a[i] = _mm512_fmadd_ps(a[i], b, c);
        ACC_CHAIN(FMA512)
#undef FMA512
        __asm__ volatile("" : "+v"(a[0]), "+v"(a[5]), "+v"(a[10]), "+v"(a[15]));
    }
    __m512 s = a[0];
    for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

__attribute__((target("avx2,fma"))) static float peak_fma256(void) {
    __m256 a[12];
    for (int i = 0; i < 12; i++) a[i] = _mm256_set1_ps(1.0f + (float)i * 1e-3f);
    const __m256 b = _mm256_set1_ps(0.999999f), c = _mm256_set1_ps(1e-6f);
    for (int it = 0; it < PEAK_ITERS; it++) {
        for (int i = 0; i < 12; i++) a[i] = _mm256_fmadd_ps(a[i], b, c);
        __asm__ volatile("" : "+x"(a[0]), "+x"(a[6]), "+x"(a[11]));
    }
    __m256 s = a[0];
    for (int i = 1; i < 12; i++) s = _mm256_add_ps(s, a[i]);
    float out[8];
    _mm256_storeu_ps(out, s);
    return out[0] + out[7];
}

__attribute__((target("avx512f,avx512bw,avx512bf16"))) static float peak_dpbf16(void) {
    __m512 a[16];
    for (int i = 0; i < 16; i++) a[i] = _mm512_setzero_ps();
    const __m512bh x = (__m512bh)_mm512_set1_epi16(0x3a83); /* ~1e-3 */
    const __m512bh y = (__m512bh)_mm512_set1_epi16(0x3a84);
    for (int it = 0; it < PEAK_ITERS; it++) {
#define DP(i) a[i] = _mm512_dpbf16_ps(a[i], x, y);
        ACC_CHAIN(DP)
#undef DP
        __asm__ volatile("" : "+v"(a[0]), "+v"(a[5]), "+v"(a[10]), "+v"(a[15]));
    }
    __m512 s = a[0];
    for (int i = 1; i < 16; i++) s = _mm512_add_ps(s, a[i]);
    return _mm512_reduce_add_ps(s);
}

/* FLOP per item */
static double peak_item_flops(int kind, int level) {
    if (kind == 1) return (double)PEAK_ITERS * 16 * 64;      /* 16 lanes x 2 products x 2 */
    if (level >= KERNELS_AVX512) return (double)PEAK_ITERS * 16 * 32; /* 16 lanes x 2 */
    return (double)PEAK_ITERS * 12 * 16;
}

static void peak_items(void *ctx, int64_t begin, int64_t end) {
    peak_job *j = ctx;
    float s = 0;
    for (int64_t item = begin; item < end; item++) {
        if (j->kind == 1) s += peak_dpbf16();
        else if (j->level >= KERNELS_AVX512) s += peak_fma512();
        else s += peak_fma256();
    }
    if (s == 12345.0f) __atomic_fetch_add(&j->guard, 1, __ATOMIC_RELAXED); /* never: keeps s alive */
}

double mlr_bench_peak_flops(int32_t threads, int32_t kind) {
    const int level = (int)kernels_cpu_level();
    if (threads < 1 || kind < 0 || kind > 1) return 0;
    if (kind == 1 && level < KERNELS_AVX512_BF16) return 0;
    if (kind == 0 && level < KERNELS_AVX2) return 0;
    thread_pool pool;
    if (thread_pool_init(&pool, threads) != 0) return 0;
    peak_job job = {kind, level, 0, 0};
    /* size the run to ~0.1 s from a short one */
    int64_t items = 16 * (int64_t)threads;
    double t0 = now_s();
    thread_pool_run(&pool, items, 1, peak_items, &job);
    double dt = now_s() - t0;
    if (dt > 0 && dt < 0.1) items = (int64_t)((double)items * 0.1 / dt) + 1;
    double best = 0;
    for (int r = 0; r < 3; r++) {
        t0 = now_s();
        thread_pool_run(&pool, items, 1, peak_items, &job);
        dt = now_s() - t0;
        const double rate = (double)items * peak_item_flops(kind, level) / dt;
        if (dt > 0 && rate > best) best = rate;
    }
    thread_pool_free(&pool);
    return best;
}

/* ---------------------------------------------------------------------------------------------- */
/* the engine's matrix product */

int32_t mlr_bench_matmul(const char *path, int32_t threads, float *y, const float *x, const void *w, int32_t w_dtype,
                         int64_t n_tokens, int64_t n_in, int64_t n_out) {
    if (!y || !x || !w || threads < 1 || n_tokens < 1 || n_in < 1 || n_out < 1 || w_dtype < MLR_DTYPE_F32 ||
        w_dtype > MLR_DTYPE_BF16)
        return MLR_INVALID_ARGUMENT;
    kernels k;
    if (path) {
        if (!kernels_select_named(&k, path)) return MLR_UNSUPPORTED;
    } else {
        kernels_select(&k);
    }
    uint16_t *buf = malloc((size_t)gemm_prepare_elems(n_tokens, n_in) * sizeof(uint16_t));
    thread_pool pool;
    if (!buf || thread_pool_init(&pool, threads) != 0) {
        free(buf);
        return MLR_OUT_OF_MEMORY;
    }
    gemm_x gx;
    gemm_prepare(&k, &gx, buf, x, n_tokens, n_in);
    matmul(&k, &pool, y, &gx, w, w_dtype, NULL, n_tokens, n_in, n_out);
    thread_pool_free(&pool);
    free(buf);
    return MLR_OK;
}
