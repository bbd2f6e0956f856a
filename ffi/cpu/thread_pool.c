#include "thread_pool.h"

#include <stdlib.h>

static void work_on_job(thread_pool *pool) {
    for (;;) {
        int64_t begin = __atomic_fetch_add(&pool->next, pool->grain, __ATOMIC_RELAXED);
        if (begin >= pool->n_items) return;
        int64_t end = begin + pool->grain < pool->n_items ? begin + pool->grain : pool->n_items;
        pool->fn(pool->ctx, begin, end);
    }
}

static void *worker_main(void *arg) {
    thread_pool *pool = arg;
    uint64_t seen = 0;
    pthread_mutex_lock(&pool->mutex);
    for (;;) {
        while (!pool->shutdown && pool->generation == seen) pthread_cond_wait(&pool->wake, &pool->mutex);
        if (pool->shutdown) break;
        seen = pool->generation;
        pthread_mutex_unlock(&pool->mutex);
        work_on_job(pool);
        pthread_mutex_lock(&pool->mutex);
        if (--pool->busy == 0) pthread_cond_signal(&pool->done);
    }
    pthread_mutex_unlock(&pool->mutex);
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
    pool->shutdown = 1;
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
    pthread_mutex_lock(&pool->mutex);
    pool->fn = fn;
    pool->ctx = ctx;
    pool->n_items = n_items;
    pool->grain = grain;
    pool->next = 0;
    pool->busy = pool->n_threads - 1;
    pool->generation++;
    pthread_cond_broadcast(&pool->wake);
    pthread_mutex_unlock(&pool->mutex);
    work_on_job(pool);
    pthread_mutex_lock(&pool->mutex);
    while (pool->busy > 0) pthread_cond_wait(&pool->done, &pool->mutex);
    pthread_mutex_unlock(&pool->mutex);
}
