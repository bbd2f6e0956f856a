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
} peak_job;

/* The peak loops are written in assembly: 16 (AVX2: 12) independent accumulators, zeroed first (so no
 * denormal slows them), each fed one multiply-add per iteration from two zeroed registers. Written in C,
 * the compiler kept the accumulators in memory (a store-to-load round trip per multiply-add: a third of
 * the peak). */
#define ACC16(INS, R)                                                                                    \
    INS " " R "30, " R "31, " R "0\n\t" INS " " R "30, " R "31, " R "1\n\t" INS " " R "30, " R "31, " R "2\n\t"       \
    INS " " R "30, " R "31, " R "3\n\t" INS " " R "30, " R "31, " R "4\n\t" INS " " R "30, " R "31, " R "5\n\t"       \
    INS " " R "30, " R "31, " R "6\n\t" INS " " R "30, " R "31, " R "7\n\t" INS " " R "30, " R "31, " R "8\n\t"       \
    INS " " R "30, " R "31, " R "9\n\t" INS " " R "30, " R "31, " R "10\n\t" INS " " R "30, " R "31, " R "11\n\t"     \
    INS " " R "30, " R "31, " R "12\n\t" INS " " R "30, " R "31, " R "13\n\t" INS " " R "30, " R "31, " R "14\n\t"    \
    INS " " R "30, " R "31, " R "15\n\t"
#define ZERO_ZMM                                                                                          \
    "vpxord %%zmm0, %%zmm0, %%zmm0\n\t"                                                                  \
    "vmovaps %%zmm0, %%zmm1\n\t vmovaps %%zmm0, %%zmm2\n\t vmovaps %%zmm0, %%zmm3\n\t vmovaps %%zmm0, %%zmm4\n\t"   \
    "vmovaps %%zmm0, %%zmm5\n\t vmovaps %%zmm0, %%zmm6\n\t vmovaps %%zmm0, %%zmm7\n\t vmovaps %%zmm0, %%zmm8\n\t"   \
    "vmovaps %%zmm0, %%zmm9\n\t vmovaps %%zmm0, %%zmm10\n\t vmovaps %%zmm0, %%zmm11\n\t vmovaps %%zmm0, %%zmm12\n\t" \
    "vmovaps %%zmm0, %%zmm13\n\t vmovaps %%zmm0, %%zmm14\n\t vmovaps %%zmm0, %%zmm15\n\t vmovaps %%zmm0, %%zmm30\n\t" \
    "vmovaps %%zmm0, %%zmm31\n\t"
#define ZMM_CLOBBERS                                                                                      \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",  \
        "xmm13", "xmm14", "xmm15", "xmm30", "xmm31"

__attribute__((target("avx512f"))) static void peak_fma512(void) {
    int64_t n = PEAK_ITERS;
    __asm__ volatile(ZERO_ZMM "1:\n\t" ACC16("vfmadd231ps", "%%zmm") "dec %0\n\t jnz 1b"
                     : "+r"(n)
                     :
                     : ZMM_CLOBBERS, "cc");
}

__attribute__((target("avx512f,avx512bf16"))) static void peak_dpbf16(void) {
    int64_t n = PEAK_ITERS;
    __asm__ volatile(ZERO_ZMM "1:\n\t" ACC16("vdpbf16ps", "%%zmm") "dec %0\n\t jnz 1b"
                     : "+r"(n)
                     :
                     : ZMM_CLOBBERS, "cc");
}

/* 12 accumulators ymm0 .. ymm11 from ymm14 x ymm15 */
#define ACC12_YMM                                                                                         \
    "vfmadd231ps %%ymm14, %%ymm15, %%ymm0\n\t vfmadd231ps %%ymm14, %%ymm15, %%ymm1\n\t"                   \
    "vfmadd231ps %%ymm14, %%ymm15, %%ymm2\n\t vfmadd231ps %%ymm14, %%ymm15, %%ymm3\n\t"                   \
    "vfmadd231ps %%ymm14, %%ymm15, %%ymm4\n\t vfmadd231ps %%ymm14, %%ymm15, %%ymm5\n\t"                   \
    "vfmadd231ps %%ymm14, %%ymm15, %%ymm6\n\t vfmadd231ps %%ymm14, %%ymm15, %%ymm7\n\t"                   \
    "vfmadd231ps %%ymm14, %%ymm15, %%ymm8\n\t vfmadd231ps %%ymm14, %%ymm15, %%ymm9\n\t"                   \
    "vfmadd231ps %%ymm14, %%ymm15, %%ymm10\n\t vfmadd231ps %%ymm14, %%ymm15, %%ymm11\n\t"

__attribute__((target("avx2,fma"))) static void peak_fma256(void) {
    int64_t n = PEAK_ITERS;
    __asm__ volatile("vxorps %%ymm0, %%ymm0, %%ymm0\n\t"
                     "vmovaps %%ymm0, %%ymm1\n\t vmovaps %%ymm0, %%ymm2\n\t vmovaps %%ymm0, %%ymm3\n\t"
                     "vmovaps %%ymm0, %%ymm4\n\t vmovaps %%ymm0, %%ymm5\n\t vmovaps %%ymm0, %%ymm6\n\t"
                     "vmovaps %%ymm0, %%ymm7\n\t vmovaps %%ymm0, %%ymm8\n\t vmovaps %%ymm0, %%ymm9\n\t"
                     "vmovaps %%ymm0, %%ymm10\n\t vmovaps %%ymm0, %%ymm11\n\t vmovaps %%ymm0, %%ymm14\n\t"
                     "vmovaps %%ymm0, %%ymm15\n\t"
                     "1:\n\t" ACC12_YMM "dec %0\n\t jnz 1b"
                     : "+r"(n)
                     :
                     : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",
                       "xmm11", "xmm14", "xmm15", "cc");
}

/* FLOP per item */
static double peak_item_flops(int kind, int level) {
    if (kind == 1) return (double)PEAK_ITERS * 16 * 64;      /* 16 lanes x 2 products x 2 */
    if (level >= KERNELS_AVX512) return (double)PEAK_ITERS * 16 * 32; /* 16 lanes x 2 */
    return (double)PEAK_ITERS * 12 * 16;
}

static void peak_items(void *ctx, int64_t begin, int64_t end) {
    const peak_job *j = ctx;
    for (int64_t item = begin; item < end; item++) {
        if (j->kind == 1) peak_dpbf16();
        else if (j->level >= KERNELS_AVX512) peak_fma512();
        else peak_fma256();
    }
}

double mlr_bench_peak_flops(int32_t threads, int32_t kind) {
    const int level = (int)kernels_cpu_most();
    if (threads < 1 || kind < 0 || kind > 1) return 0;
    if (kind == 1 && level < KERNELS_AVX512_BF16) return 0;
    if (kind == 0 && level < KERNELS_AVX2) return 0;
    thread_pool pool;
    if (thread_pool_init(&pool, threads) != 0) return 0;
    peak_job job = {kind, level};
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
/* the engine's matrix product and LoRA expansion */

/* The kernels of `path`, or the engine's own for NULL; 0 when this CPU cannot run the path. */
static int kernels_for(kernels *k, const char *path) {
    if (path) return kernels_select_named(k, path);
    kernels_select(k);
    return 1;
}

int32_t mlr_bench_matmul(const char *path, int32_t threads, float *y, const float *x, const void *w, int32_t w_dtype,
                         int64_t n_tokens, int64_t n_in, int64_t n_out) {
    if (!y || !x || !w || threads < 1 || n_tokens < 1 || n_in < 1 || n_out < 1 || w_dtype < MLR_DTYPE_F32 ||
        w_dtype > MLR_DTYPE_BF16)
        return MLR_INVALID_ARGUMENT;
    kernels k;
    if (!kernels_for(&k, path)) return MLR_UNSUPPORTED;
    const int pack = k.panels && w_dtype == MLR_DTYPE_BF16;
    uint16_t *buf = malloc((size_t)gemm_prepare_elems(n_tokens, n_in) * sizeof(uint16_t));
    uint16_t *panels = pack ? aligned_alloc(64, (size_t)panels_elems(n_out, n_in) * sizeof(uint16_t)) : NULL;
    thread_pool pool;
    if (!buf || (pack && !panels) || thread_pool_init(&pool, threads) != 0) {
        free(buf);
        free(panels);
        return MLR_OUT_OF_MEMORY;
    }
    if (pack) panels_pack(panels, w, n_out, n_in, 0, (n_out + 15) / 16);
    gemm_x gx;
    gemm_prepare(&k, &gx, buf, x, n_tokens, n_in);
    matmul(&k, &pool, y, &gx, w, w_dtype, panels, NULL, n_tokens, n_in, n_out);
    thread_pool_free(&pool);
    free(buf);
    free(panels);
    return MLR_OK;
}

int32_t mlr_bench_lora_expand(const char *path, float *y, const float *mid, const float *scale, const void *bt,
                              int32_t w_dtype, int64_t n_tokens, int32_t rank, int64_t n_out) {
    if (!y || !mid || !scale || !bt || n_tokens < 1 || rank < 1 || n_out < 1 || w_dtype < MLR_DTYPE_F32 ||
        w_dtype > MLR_DTYPE_BF16)
        return MLR_INVALID_ARGUMENT;
    kernels k;
    if (!kernels_for(&k, path)) return MLR_UNSUPPORTED;
    lora_expand(&k, y, n_out, NULL, n_tokens, scale, mid, rank, rank, bt, w_dtype, n_out * dtype_size(w_dtype), 0,
                n_out);
    return MLR_OK;
}
