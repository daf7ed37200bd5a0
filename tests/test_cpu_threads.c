/* test_cpu_threads.c - what `fpdm-sample --threads 1` arranges (the
 * program's OpenMP setting, through cli_use_threads, and the context's
 * num_threads) runs a forward's matrix products and loops on the calling
 * thread alone: afterwards the process has one thread (/proc/self/task).
 * OpenBLAS's OpenMP build sizes its teams by the calling thread's OpenMP
 * setting, so the library leaves that to the program: changing it per call
 * raced between contexts on different threads (OpenBLAS keeps the count in
 * one global and reallocates its buffers when it changes), which the second
 * part checks: two threads with contexts of 2 and 4 threads get the same
 * products every time (with the per-call setting, 52-85 of 300 came out
 * wrong, by up to 3.2).
 *
 *   ./build/test_cpu_threads
 */
#define _GNU_SOURCE /* DT_DIR */

#include <dirent.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "cli.h"
#include "test_util.h"

enum { ROWS = 256, DIM = 512 };

static int process_threads(void) {
    DIR *tasks = opendir("/proc/self/task");
    if (!tasks) return -1;
    int count = 0;
    for (struct dirent *entry; (entry = readdir(tasks));) count += entry->d_name[0] != '.';
    closedir(tasks);
    return count;
}

typedef struct products {
    backend *cpu;
    float *in, *weight, *out;
    backend_linear w;
} products;

static void products_init(products *p, int threads) {
    p->cpu = backend_cpu_create(threads);
    p->in = p->cpu->alloc(p->cpu, (size_t)ROWS * DIM);
    p->weight = p->cpu->alloc(p->cpu, (size_t)DIM * DIM);
    p->out = p->cpu->alloc(p->cpu, (size_t)ROWS * DIM);
    for (size_t i = 0; i < (size_t)ROWS * DIM; i++) p->in[i] = (float)(i % 13) * 0.01f;
    for (size_t i = 0; i < (size_t)DIM * DIM; i++) p->weight[i] = (float)(i % 7) * 0.01f;
    backend_linear w = {p->weight, NULL, NULL, DIM, DIM, DIM};
    p->w = w;
}

static void products_run(products *p) {
    p->cpu->linear(p->cpu, p->out, BACKEND_OUT_F32, p->in, ROWS, &p->w, NULL, BACKEND_ACT_NONE);
}

static void products_free(products *p) {
    p->cpu->release(p->cpu, p->in), p->cpu->release(p->cpu, p->weight);
    p->cpu->release(p->cpu, p->out);
    p->cpu->destroy(p->cpu);
}

/* A thread with its own context, repeating one product and counting results
 * that differ from its first. */
typedef struct worker {
    int threads, wrong;
} worker;

static void *work(void *arg) {
    worker *w = arg;
    products p;
    products_init(&p, w->threads);
    products_run(&p);
    float *first = malloc((size_t)ROWS * DIM * sizeof(float));
    memcpy(first, p.out, (size_t)ROWS * DIM * sizeof(float));
    for (int r = 0; r < 1000; r++) {
        products_run(&p);
        w->wrong += memcmp(first, p.out, (size_t)ROWS * DIM * sizeof(float)) != 0;
    }
    free(first);
    products_free(&p);
    return NULL;
}

int main(void) {
    if (omp_get_num_procs() < 2 || process_threads() != 1) {
        fprintf(stderr, "test_cpu_threads: one core, or no /proc/self/task: skipped\n");
        return TEST_SKIP;
    }
    cli_use_threads(1);
    products one;
    products_init(&one, 1);
    for (int r = 0; r < 4; r++) products_run(&one);
    int threads = process_threads();
    printf("after products with --threads 1: %d thread(s)\n", threads);
    CHECK_MSG(threads == 1, "--threads 1 ran with %d threads", threads);
    products_free(&one);

    worker workers[2] = {{2, 0}, {4, 0}};
    pthread_t ids[2];
    for (int i = 0; i < 2; i++) pthread_create(&ids[i], NULL, work, &workers[i]);
    for (int i = 0; i < 2; i++) pthread_join(ids[i], NULL);
    for (int i = 0; i < 2; i++)
        CHECK_MSG(workers[i].wrong == 0, "%d of 1000 products of a %d-thread context changed",
                  workers[i].wrong, workers[i].threads);
    return test_finish("test_cpu_threads");
}
