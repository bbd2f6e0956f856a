/*
 * A fixed pool of worker threads that run one parallel-for at a time. The calling thread works too.
 * Items are handed out in contiguous blocks in a fixed order, but which thread runs an item never
 * changes its result: kernels computed per item are batch- and thread-count-invariant.
 */
#ifndef MLR_THREAD_POOL_H
#define MLR_THREAD_POOL_H

#include <pthread.h>
#include <stdint.h>

/* Runs items [begin, end) of a parallel-for. */
typedef void (*pool_task_fn)(void *ctx, int64_t begin, int64_t end);

typedef struct thread_pool {
    int n_threads;          /* including the caller */
    pthread_t *workers;     /* n_threads - 1 */
    pthread_mutex_t mutex;
    pthread_cond_t wake;    /* a new job, or shutdown */
    pthread_cond_t done;    /* the last worker finished the job */
    uint64_t generation;    /* bumped per job */
    int shutdown;
    int busy;               /* workers still in the current job */
    /* the current job */
    pool_task_fn fn;
    void *ctx;
    int64_t n_items;
    int64_t grain;
    int64_t next;           /* next unclaimed item, under mutex-free atomics */
} thread_pool;

/* Starts n_threads - 1 workers. Returns 0, or an errno value. */
int thread_pool_init(thread_pool *pool, int n_threads);
void thread_pool_free(thread_pool *pool);

/* Calls fn over [0, n_items) in blocks of at least grain items, on every thread; returns when done. */
void thread_pool_run(thread_pool *pool, int64_t n_items, int64_t grain, pool_task_fn fn, void *ctx);

#endif /* MLR_THREAD_POOL_H */
