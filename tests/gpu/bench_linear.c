/* bench_linear.c - what choosing cuBLASLt's algorithm by timing (autotuning)
 * would give the bf16 forward: for each matrix product of a DiT-XL/2 block
 * and an FPDM-XL/2 iteration at 128 rows of 256 tokens (64 images with
 * guidance), the heuristic's first algorithm (the one the backend runs)
 * against the fastest of its first 8, through backend_cuda_linear_candidates
 * (backend_cuda.h). Prints one line per product: milliseconds and TFLOP/s of
 * both, and the fastest one's index. A benchmark, run by tests/gpu/run.sh:
 *
 *   build-gpu/bench_linear
 *
 * Exits 77 without a GPU, 1 on a failure. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "backend_cuda.h"
#include "test_util.h"

#define ROWS (128 * 256)
#define HIDDEN 1152
#define CANDIDATES 8
#define REPEATS 10

typedef struct product {
    const char *name;
    int in_dim, out_dim, has_bias, has_add;
    backend_output output;
    backend_activation act;
} product;

/* A device buffer of n operands (16-bit) or floats, filled from `host`. */
static float *upload(backend *gpu, float *host, size_t n, int operand) {
    for (size_t i = 0; i < n; i++) host[i] = test_uniform();
    if (operand) return test_upload_operand(gpu, host, n);
    float *device = gpu->alloc(gpu, n);
    if (device && gpu->upload(gpu, device, host, n)) {
        gpu->release(gpu, device);
        return NULL;
    }
    return device;
}

int main(void) {
    if (backend_cuda_device_count() == 0) {
        fprintf(stderr, "bench_linear: no CUDA device, skipped\n");
        return TEST_SKIP;
    }
    test_seed_random("bench_linear");
    const product products[] = {
        {"qkv", HIDDEN, 3 * HIDDEN, 1, 0, BACKEND_OUT_OPERAND, BACKEND_ACT_NONE},
        {"proj", HIDDEN, HIDDEN, 1, 0, BACKEND_OUT_OPERAND, BACKEND_ACT_NONE},
        {"fc1 + GELU", HIDDEN, 4 * HIDDEN, 1, 0, BACKEND_OUT_OPERAND, BACKEND_ACT_GELU_TANH},
        {"fc2", 4 * HIDDEN, HIDDEN, 1, 0, BACKEND_OUT_OPERAND, BACKEND_ACT_NONE},
        {"FPDM fc1_state + injection + GELU", HIDDEN, 2 * HIDDEN, 0, 1, BACKEND_OUT_OPERAND,
         BACKEND_ACT_GELU_TANH},
        {"FPDM fc2", 2 * HIDDEN, HIDDEN, 1, 0, BACKEND_OUT_F32, BACKEND_ACT_NONE},
    };
    char err[256], device[128];
    backend *gpu = backend_cuda_create(0, FPDM_PRECISION_BF16, err, sizeof err);
    if (!gpu) {
        fprintf(stderr, "bench_linear: %s\n", err);
        return 1;
    }
    backend_cuda_device_name(0, device, sizeof device);
    float *host = malloc((size_t)ROWS * 4 * HIDDEN * sizeof(float));
    if (!host) {
        fprintf(stderr, "bench_linear: out of host memory\n");
        return 1;
    }
    printf("cuBLASLt algorithms on %s, bf16, %d rows (ms: mean of %d after a warm-up)\n", device,
           ROWS, REPEATS);
    printf("%-34s %5s %5s %4s %9s %8s %9s %8s %5s\n", "product", "in", "out", "algs", "first ms",
           "TFLOP/s", "best ms", "TFLOP/s", "best");
    int failed = 0;
    double first_total = 0, best_total = 0;
    for (size_t p = 0; p < sizeof products / sizeof products[0]; p++) {
        const product *pr = &products[p];
        int operand_out = pr->output == BACKEND_OUT_OPERAND;
        float *weight = upload(gpu, host, (size_t)pr->out_dim * pr->in_dim, 1);
        float *bias = pr->has_bias ? upload(gpu, host, (size_t)pr->out_dim, 0) : NULL;
        float *bias_operand = pr->has_bias ? upload(gpu, host, (size_t)pr->out_dim, 1) : NULL;
        float *in = upload(gpu, host, (size_t)ROWS * pr->in_dim, 1);
        float *add = pr->has_add ? upload(gpu, host, (size_t)ROWS * pr->out_dim, operand_out) : NULL;
        float *out = upload(gpu, host, (size_t)ROWS * pr->out_dim, operand_out);
        double ms[CANDIDATES];
        int found = -1;
        if (weight && in && out && (!pr->has_bias || (bias && bias_operand)) &&
            (!pr->has_add || add)) {
            backend_linear w = {weight, bias, bias_operand, pr->out_dim, pr->in_dim, pr->in_dim};
            found = backend_cuda_linear_candidates(gpu, out, pr->output, in, ROWS, &w, add,
                                                   pr->act, CANDIDATES, REPEATS, ms);
        }
        double flops = 2.0 * ROWS * pr->in_dim * pr->out_dim;
        if (found <= 0 || isnan(ms[0])) {
            printf("%-34s %5d %5d %4d  FAILED or no cuBLASLt algorithm (%s)\n", pr->name,
                   pr->in_dim, pr->out_dim, found, backend_cuda_error(gpu));
            failed = 1;
        } else {
            int best = 0;
            for (int i = 1; i < found; i++)
                if (!isnan(ms[i]) && ms[i] < ms[best]) best = i;
            printf("%-34s %5d %5d %4d %9.4f %8.1f %9.4f %8.1f %5d\n", pr->name, pr->in_dim,
                   pr->out_dim, found, ms[0], flops / (ms[0] * 1e-3) / 1e12, ms[best],
                   flops / (ms[best] * 1e-3) / 1e12, best);
            first_total += ms[0];
            best_total += ms[best];
        }
        fflush(stdout);
        float *buffers[6] = {weight, bias, bias_operand, in, add, out};
        for (int i = 0; i < 6; i++)
            if (buffers[i]) gpu->release(gpu, buffers[i]);
    }
    if (!failed && first_total > 0)
        printf("all six: first %.3f ms, best %.3f ms (autotuning would save %.1f%%)\n", first_total,
               best_total, 100.0 * (first_total - best_total) / first_total);
    free(host);
    gpu->destroy(gpu);
    return failed;
}
