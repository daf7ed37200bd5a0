/* bench_attention.c - times the variants of the tensor-core attention kernel
 * (kernels/attention.cu, listed in backend_cuda.h) side by side in bf16 on
 * DiT-XL/2's shapes, 16 heads of 72: 128 rows of 256 tokens (256 px, 64
 * images with guidance) and 32 rows of 1024 tokens (512 px, the same work).
 * Prints one line per variant and shape: milliseconds (fastest of the rounds),
 * TFLOP/s (4 tokens^2 head_dim per image and head), and the relative L2
 * distance of its output from variant 0's (over 1e-2, or NaN: the variant is
 * marked FAILED and gets no time). Correctness against the CPU is
 * tests/gpu/test_attention.c's; this is a benchmark, run by tests/gpu/run.sh:
 *
 *   build-gpu/bench_attention [rounds]
 *
 * Exits 77 without a GPU, 1 when a variant fails or disagrees. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>

#include "backend.h"
#include "backend_cuda.h"
#include "test_util.h"

#define LAUNCHES_PER_ROUND 5
/* Two variants differ only in the rounding of P and of the output to bf16. */
#define MAX_DISTANCE 1e-2

/* One launch of a variant, as test_fastest_launch_ms times it. */
typedef struct attention_launch {
    backend *gpu;
    int variant, batch, tokens, heads, head_dim;
    float *out;
    const float *qkv;
} attention_launch;

static void launch_attention(void *arg) {
    const attention_launch *a = arg;
    backend_cuda_attention_variant(a->gpu, a->variant, a->out, a->qkv, a->batch, a->tokens,
                                   a->heads, a->head_dim);
}

int main(int argc, char **argv) {
    if (backend_cuda_device_count() == 0) {
        fprintf(stderr, "bench_attention: no CUDA device, skipped\n");
        return TEST_SKIP;
    }
    int rounds = argc > 1 ? atoi(argv[1]) : 10;
    if (rounds < 1) {
        fprintf(stderr, "bench_attention: rounds must be a positive count, not '%s'\n", argv[1]);
        return 2;
    }
    test_seed_random("bench_attention");
    const int heads = 16, head_dim = 72;
    const struct { int batch, tokens; } shapes[] = {{128, 256}, {32, 1024}};
    int variants = backend_cuda_attention_variant_count(), failed = 0;
    char device[128];
    backend_cuda_device_name(0, device, sizeof device);
    printf("attention_tc_kernel variants on %s, bf16, %d heads x %d (ms: fastest of %d rounds of %d)\n",
           device, heads, head_dim, rounds, LAUNCHES_PER_ROUND);
    printf("%7s %5s %6s %9s %8s %10s  %s\n", "variant", "rows", "tokens", "ms", "TFLOP/s",
           "vs 0", "shape");
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int batch = shapes[s].batch, tokens = shapes[s].tokens;
        size_t dim = (size_t)heads * head_dim;
        size_t qkv_floats = (size_t)batch * tokens * 3 * dim, out_floats = (size_t)batch * tokens * dim;
        float *host_qkv = malloc(qkv_floats * sizeof(float));
        float *first_out = malloc(out_floats * sizeof(float));
        float *host_out = malloc(out_floats * sizeof(float));
        if (!host_qkv || !first_out || !host_out) {
            fprintf(stderr, "bench_attention: out of host memory\n");
            return 1;
        }
        for (size_t i = 0; i < qkv_floats; i++) host_qkv[i] = test_uniform();
        int have_first = 0;
        double flops = 4.0 * batch * heads * (double)tokens * tokens * head_dim;
        for (int variant = 0; variant < variants; variant++) {
            /* A backend of its own: a variant's failure is sticky. */
            char err[256];
            backend *gpu = backend_cuda_create(0, FPDM_PRECISION_BF16, err, sizeof err);
            if (!gpu) {
                fprintf(stderr, "bench_attention: %s\n", err);
                return 1;
            }
            /* Poisoned: an element a variant leaves unwritten shows as NaN. */
            for (size_t i = 0; i < out_floats; i++) host_out[i] = NAN;
            float *qkv = test_upload_operand(gpu, host_qkv, qkv_floats);
            float *out = test_upload_operand(gpu, host_out, out_floats);
            attention_launch launch = {gpu, variant, batch, tokens, heads, head_dim, out, qkv};
            double ms = qkv && out ? test_fastest_launch_ms(gpu, launch_attention, &launch, rounds,
                                                            LAUNCHES_PER_ROUND)
                                   : -1;
            if (ms < 0 || test_download_operand(gpu, host_out, out, out_floats)) {
                printf("%7d %5d %6d %9s %8s %10s  %s: FAILED (%s)\n", variant, batch, tokens, "-",
                       "-", "-", backend_cuda_attention_variant_name(variant),
                       backend_cuda_error(gpu));
                failed = 1;
            } else {
                if (variant == 0) {
                    for (size_t i = 0; i < out_floats; i++) first_out[i] = host_out[i];
                    have_first = 1;
                }
                double distance = have_first ? rel_l2(host_out, first_out, out_floats) : NAN;
                /* A variant that disagrees with 0 (or is NaN) gets no time, so
                 * that run.sh cannot pick it. */
                if (!(distance <= MAX_DISTANCE)) {
                    printf("%7d %5d %6d %9s %8s %10.2e  %s: FAILED (%.1f ms; over %.0e from variant 0)\n",
                           variant, batch, tokens, "-", "-", distance,
                           backend_cuda_attention_variant_name(variant), ms, MAX_DISTANCE);
                    failed = 1;
                } else {
                    printf("%7d %5d %6d %9.4f %8.1f %10.2e  %s\n", variant, batch, tokens, ms,
                           flops / (ms * 1e-3) / 1e12, distance,
                           backend_cuda_attention_variant_name(variant));
                }
            }
            fflush(stdout);
            if (qkv) gpu->release(gpu, qkv);
            if (out) gpu->release(gpu, out);
            gpu->destroy(gpu);
        }
        free(host_qkv);
        free(first_out);
        free(host_out);
    }
    return failed;
}
