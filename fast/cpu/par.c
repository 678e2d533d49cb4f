/* par.c — cpu_parallel_for: a static split of independent work items (heads) over threads.
 *
 * The worker count is OpenBLAS's thread count (the session sets it from run_options.n_threads),
 * capped at CPU_MAX_WORKERS and at the number of items. Items [0, n) are cut into contiguous
 * equal ranges; range 0 runs on the calling thread, the others on threads created for this
 * call and joined before it returns (no pool, so nothing spins between phases). While the
 * ranges run, OpenBLAS is set to one thread, so the small GEMMs inside each range run in
 * their own thread; the count is restored afterwards. Each item is computed entirely by one
 * thread with the same code, so results do not depend on the worker count. A thread that
 * cannot be created leaves its range to the calling thread. Jobs whose estimated cost (about
 * the flop count) is below CPU_PAR_MIN_COST per worker use fewer workers (below it in all: the
 * calling thread alone), OpenBLAS still
 * single-threaded: every fast/cpu GEMM runs through here, so OpenBLAS's own worker threads
 * are never handed work (and never spin in sched_yield next to ours); the thread count set by
 * the session is only where this file reads the worker count from. */
#include <cblas.h>
#include <pthread.h>

#include "ops.h"

struct par_job {
    cpu_par_fn fn;
    void *ctx;
    int64_t begin, end;
    int worker;
};

static void *par_run(void *arg)
{
    struct par_job *j = arg;
    j->fn(j->ctx, j->begin, j->end, j->worker);
    return NULL;
}

int cpu_parallel_workers(void)
{
    int n = openblas_get_num_threads();
    if (n < 1) n = 1;
    return n > CPU_MAX_WORKERS ? CPU_MAX_WORKERS : n;
}

void cpu_parallel_for(int64_t n, double cost, cpu_par_fn fn, void *ctx)
{
    if (n <= 0) return;
    int blas_threads = openblas_get_num_threads();
    int64_t w = cpu_parallel_workers();
    if (w > n) w = n;
    /* each worker costs a thread start (~20-50 us): give each at least CPU_PAR_MIN_COST */
    if ((double)w * CPU_PAR_MIN_COST > cost) w = (int64_t)(cost / CPU_PAR_MIN_COST);
    if (w < 1) w = 1;
    if (w <= 1) {
        if (blas_threads > 1) openblas_set_num_threads(1);
        fn(ctx, 0, n, 0);
        if (blas_threads > 1) openblas_set_num_threads(blas_threads);
        return;
    }
    struct par_job jobs[CPU_MAX_WORKERS];
    pthread_t tid[CPU_MAX_WORKERS];
    int started[CPU_MAX_WORKERS] = {0};
    for (int64_t i = 0; i < w; i++)
        jobs[i] = (struct par_job){.fn = fn, .ctx = ctx, .begin = n * i / w, .end = n * (i + 1) / w, .worker = (int)i};
    openblas_set_num_threads(1);
    for (int64_t i = 1; i < w; i++) started[i] = pthread_create(&tid[i], NULL, par_run, &jobs[i]) == 0;
    par_run(&jobs[0]);
    for (int64_t i = 1; i < w; i++) {
        if (started[i])
            pthread_join(tid[i], NULL);
        else
            par_run(&jobs[i]);
    }
    openblas_set_num_threads(blas_threads);
}
