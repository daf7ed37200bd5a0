/* blas_threads.h - OpenBLAS calls on a context's thread count. The OpenMP
 * build of OpenBLAS sizes each call's team by omp_get_max_threads() of the
 * calling thread: the program's setting (OMP_NUM_THREADS), not the context's
 * num_threads, so `--threads 1` still ran every product on all cores. The
 * setting belongs to the calling program, so it is put back after the call:
 *
 *   int saved = blas_threads_begin(threads);
 *   cblas_sgemm(...);
 *   blas_threads_end(saved);
 *
 * (Inside a parallel region OpenBLAS runs on the calling thread alone, so
 * calls from there need neither.) */
#ifndef FPDM_BLAS_THREADS_H
#define FPDM_BLAS_THREADS_H

#include <omp.h>

static inline int blas_threads_begin(int threads) {
    int saved = omp_get_max_threads();
    if (threads > 0 && threads != saved) omp_set_num_threads(threads);
    return saved;
}

static inline void blas_threads_end(int saved) {
    if (omp_get_max_threads() != saved) omp_set_num_threads(saved);
}

#endif
