/*
 * A fixed pool of worker threads that run one parallel-for at a time. The calling thread works too.
 * Items are handed out in contiguous blocks in a fixed order, but which thread runs an item never
 * changes its result: kernels computed per item are batch- and thread-count-invariant.
 *
 * A forward step is some 250 parallel-fors, a few microseconds apart: after a job, workers (and the
 * caller, for the workers to finish) spin for up to POOL_SPIN_US before sleeping on a condition
 * variable, so consecutive jobs hand off without a futex wake-up while a step runs, and an idle engine
 * costs nothing.
 */
#ifndef MLR_THREAD_POOL_H
#define MLR_THREAD_POOL_H

#include <pthread.h>
#include <stdint.h>

#define POOL_SPIN_US 50

/* Runs items [begin, end) of a parallel-for. */
typedef void (*pool_task_fn)(void *ctx, int64_t begin, int64_t end);

typedef struct thread_pool {
    int n_threads;          /* including the caller */
    pthread_t *workers;     /* n_threads - 1 */
    pthread_mutex_t mutex;
    pthread_cond_t wake;    /* a new job, or shutdown: for workers that stopped spinning */
    pthread_cond_t done;    /* the last worker finished the job: for a caller that stopped spinning */
    uint64_t generation;    /* bumped per job; atomic */
    int shutdown;           /* atomic */
    int busy;               /* workers still in the current job; atomic */
    int sleepers;           /* workers waiting on wake; under mutex */
    int caller_waiting;     /* the caller waits on done; under mutex */
    /* the current job, published by the generation bump */
    pool_task_fn fn;
    void *ctx;
    int64_t n_items;
    int64_t grain;
    int64_t next;           /* next unclaimed item; atomic */
} thread_pool;

/* Starts n_threads - 1 workers. Returns 0, or an errno value. */
int thread_pool_init(thread_pool *pool, int n_threads);
void thread_pool_free(thread_pool *pool);

/* Calls fn over [0, n_items) in blocks of at least grain items, on every thread; returns when done. Each
 * block is 1 / (2 n_threads) of the items not yet claimed (at least grain): large blocks first, small
 * ones last, so the threads finish close together. */
void thread_pool_run(thread_pool *pool, int64_t n_items, int64_t grain, pool_task_fn fn, void *ctx);

#endif /* MLR_THREAD_POOL_H */
