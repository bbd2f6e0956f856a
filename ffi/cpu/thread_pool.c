#include "thread_pool.h"

#include <stdlib.h>
#include <time.h>

static void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* Spins until *word != not (generation changed) or, with not < 0, until *word == 0; at most
 * POOL_SPIN_US. Returns 1 when the condition came true. */
static int spin_for_generation(const uint64_t *word, uint64_t not) {
    int64_t deadline = 0;
    for (int i = 0;; i++) {
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) != not) return 1;
        if ((i & 63) == 63) {
            const int64_t t = now_ns();
            if (deadline == 0) deadline = t + POOL_SPIN_US * 1000;
            else if (t > deadline) return 0;
        }
        cpu_relax();
    }
}

static int spin_for_zero(const int *word) {
    int64_t deadline = 0;
    for (int i = 0;; i++) {
        if (__atomic_load_n(word, __ATOMIC_ACQUIRE) == 0) return 1;
        if ((i & 63) == 63) {
            const int64_t t = now_ns();
            if (deadline == 0) deadline = t + POOL_SPIN_US * 1000;
            else if (t > deadline) return 0;
        }
        cpu_relax();
    }
}

/* Guided self-scheduling: each claim takes 1 / (2 n_threads) of the items left, at least grain, so the
 * first blocks are large (few hand-offs, long runs of consecutive items) and the last ones small (the
 * threads finish close together). */
static void work_on_job(thread_pool *pool) {
    const int64_t n = pool->n_items, grain = pool->grain, parts = 2 * (int64_t)pool->n_threads;
    int64_t begin = __atomic_load_n(&pool->next, __ATOMIC_RELAXED);
    for (;;) {
        if (begin >= n) return;
        int64_t size = (n - begin) / parts;
        if (size < grain) size = grain;
        const int64_t end = begin + size < n ? begin + size : n;
        if (!__atomic_compare_exchange_n(&pool->next, &begin, end, 1, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) continue;
        pool->fn(pool->ctx, begin, end);
        begin = __atomic_load_n(&pool->next, __ATOMIC_RELAXED);
    }
}

static void *worker_main(void *arg) {
    thread_pool *pool = arg;
    uint64_t seen = 0;
    for (;;) {
        if (!spin_for_generation(&pool->generation, seen)) {
            pthread_mutex_lock(&pool->mutex);
            pool->sleepers++;
            while (!__atomic_load_n(&pool->shutdown, __ATOMIC_ACQUIRE) &&
                   __atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE) == seen)
                pthread_cond_wait(&pool->wake, &pool->mutex);
            pool->sleepers--;
            pthread_mutex_unlock(&pool->mutex);
        }
        if (__atomic_load_n(&pool->shutdown, __ATOMIC_ACQUIRE)) break;
        seen = __atomic_load_n(&pool->generation, __ATOMIC_ACQUIRE);
        work_on_job(pool);
        if (__atomic_sub_fetch(&pool->busy, 1, __ATOMIC_ACQ_REL) == 0) {
            pthread_mutex_lock(&pool->mutex);
            if (pool->caller_waiting) pthread_cond_signal(&pool->done);
            pthread_mutex_unlock(&pool->mutex);
        }
    }
    return NULL;
}

int thread_pool_init(thread_pool *pool, int n_threads) {
    *pool = (thread_pool){0};
    pool->n_threads = n_threads < 1 ? 1 : n_threads;
    pthread_mutex_init(&pool->mutex, NULL);
    pthread_cond_init(&pool->wake, NULL);
    pthread_cond_init(&pool->done, NULL);
    pool->workers = calloc((size_t)pool->n_threads, sizeof(pthread_t));
    if (!pool->workers) return 12; /* ENOMEM */
    for (int i = 0; i < pool->n_threads - 1; i++) {
        int rc = pthread_create(&pool->workers[i], NULL, worker_main, pool);
        if (rc != 0) {
            pool->n_threads = i + 1;
            thread_pool_free(pool);
            return rc;
        }
    }
    return 0;
}

void thread_pool_free(thread_pool *pool) {
    if (!pool->workers) return;
    pthread_mutex_lock(&pool->mutex);
    __atomic_store_n(&pool->shutdown, 1, __ATOMIC_RELEASE);
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    for (int i = 0; i < pool->n_threads - 1; i++) pthread_join(pool->workers[i], NULL);
    free(pool->workers);
    pool->workers = NULL;
    pthread_mutex_destroy(&pool->mutex);
    pthread_cond_destroy(&pool->wake);
    pthread_cond_destroy(&pool->done);
}

void thread_pool_run(thread_pool *pool, int64_t n_items, int64_t grain, pool_task_fn fn, void *ctx) {
    if (n_items <= 0) return;
    if (grain < 1) grain = 1;
    /* Few items, or one thread: no hand-off. */
    if (pool->n_threads == 1 || n_items <= grain) {
        fn(ctx, 0, n_items);
        return;
    }
    /* No worker is in a job here (the last run waited for busy == 0), so the fields are free to write;
     * the release of the generation bump publishes them. */
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n_items = n_items;
    pool->grain = grain;
    __atomic_store_n(&pool->next, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&pool->busy, pool->n_threads - 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&pool->generation, 1, __ATOMIC_RELEASE);
    pthread_mutex_lock(&pool->mutex); /* orders against a worker going to sleep: it sees the bump, or we see it */
    if (pool->sleepers > 0) pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    work_on_job(pool);
    if (!spin_for_zero(&pool->busy)) {
        pthread_mutex_lock(&pool->mutex);
        pool->caller_waiting = 1;
        while (__atomic_load_n(&pool->busy, __ATOMIC_ACQUIRE) > 0) pthread_cond_wait(&pool->done, &pool->mutex);
        pool->caller_waiting = 0;
        pthread_mutex_unlock(&pool->mutex);
    }
}
