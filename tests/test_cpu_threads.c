/* test_cpu_threads.c - a CPU backend made for one thread runs its matrix
 * products on one thread (OpenBLAS's OpenMP build otherwise takes the
 * program's OpenMP thread count: `--threads 1` used every core), and leaves
 * the program's own OpenMP setting as it found it.
 *
 * The sign: the processor time of the whole process against that of the
 * calling thread. OpenBLAS splits a product's work between its threads in
 * fixed shares, so with two threads about half the time is spent on the
 * other one, however loaded the machine is. Skipped on a one-core machine.
 *
 *   ./build/test_cpu_threads
 */
#define _GNU_SOURCE /* RUSAGE_THREAD */

#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/resource.h>

#include "backend.h"
#include "test_util.h"

static double cpu_seconds(int who) {
    struct rusage usage;
    getrusage(who, &usage);
    return (double)usage.ru_utime.tv_sec + 1e-6 * (double)usage.ru_utime.tv_usec +
           (double)usage.ru_stime.tv_sec + 1e-6 * (double)usage.ru_stime.tv_usec;
}

int main(void) {
    if (omp_get_num_procs() < 2) {
        fprintf(stderr, "test_cpu_threads: one core, skipped\n");
        return TEST_SKIP;
    }
    omp_set_num_threads(2);
    enum { ROWS = 512, DIM = 1024, REPEATS = 8 };
    backend *cpu = backend_cpu_create(1);
    float *in = cpu->alloc(cpu, (size_t)ROWS * DIM), *weight = cpu->alloc(cpu, (size_t)DIM * DIM),
          *out = cpu->alloc(cpu, (size_t)ROWS * DIM);
    for (size_t i = 0; i < (size_t)ROWS * DIM; i++) in[i] = (float)(i % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)DIM * DIM; i++) weight[i] = (float)(i % 7) * 0.01f;
    backend_linear w = {weight, NULL, NULL, DIM, DIM, DIM};

    double process_start = cpu_seconds(RUSAGE_SELF), thread_start = cpu_seconds(RUSAGE_THREAD);
    for (int r = 0; r < REPEATS; r++)
        cpu->linear(cpu, out, BACKEND_OUT_F32, in, ROWS, &w, NULL, BACKEND_ACT_NONE);
    double process = cpu_seconds(RUSAGE_SELF) - process_start;
    double other_threads = process - (cpu_seconds(RUSAGE_THREAD) - thread_start);
    printf("one-thread backend: %.3f s of processor time, %.3f s of it on other threads\n", process,
           other_threads);
    /* 10% and 10 ms of slack for the clocks' granularity. */
    CHECK_MSG(other_threads <= 0.1 * process + 0.01,
              "a one-thread backend's products spent %.3f s of %.3f s on other threads",
              other_threads, process);
    CHECK_MSG(omp_get_max_threads() == 2, "the program's OpenMP thread count became %d",
              omp_get_max_threads());

    cpu->release(cpu, in), cpu->release(cpu, weight), cpu->release(cpu, out);
    cpu->destroy(cpu);
    return test_finish("test_cpu_threads");
}
