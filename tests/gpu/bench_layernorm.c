/* bench_layernorm.c - times the variants of the cached LayerNorm kernel
 * (kernels/layernorm.cu, listed in backend_cuda.h) side by side in bf16 on
 * DiT-XL/2's 256 px forward: 128 rows (64 images with guidance) of 256
 * tokens of 1152, in the two forms a block runs: plain layernorm_modulate,
 * and residual_layernorm_modulate (x += gate * y first, y in bf16, x written
 * back). Prints one line per variant and form: milliseconds (fastest of the
 * rounds), the bytes the form must move to and from device memory (x in and
 * out as float32, y and the output in bf16; the modulation, a few KB an
 * image, left out) and the rate that gives, and whether the output and x
 * equal variant 0's bit for bit (they must: the variants differ in where
 * they read the modulation from, not in arithmetic). Correctness against
 * the CPU is tests/gpu/test_ops.c's; this is a benchmark, run by
 * tests/gpu/run.sh:
 *
 *   build-gpu/bench_layernorm [rounds]
 *
 * Exits 77 without a GPU, 1 when a variant fails or differs from 0. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cuda.h"
#include "test_util.h"

#define LAUNCHES_PER_ROUND 5
#define BATCH 128
#define TOKENS 256
#define DIM 1152
#define MOD_STRIDE (6 * DIM)

typedef struct buffers {
    float *x, *x_start, *mod;
    void *y, *out;
} buffers;

static void run(backend *gpu, int variant, int with_residual, const buffers *b) {
    backend_cuda_layernorm_variant(gpu, variant, b->out, b->x, with_residual ? b->y : NULL,
                                   with_residual ? b->mod + 2 * DIM : NULL, b->mod + 3 * DIM,
                                   b->mod + 4 * DIM, MOD_STRIDE, BATCH, TOKENS, DIM);
}

/* One launch, as test_fastest_launch_ms times it. The residual form keeps
 * adding to x: the gate is small, so x stays finite. */
typedef struct layernorm_launch {
    backend *gpu;
    int variant, with_residual;
    const buffers *b;
} layernorm_launch;

static void launch_layernorm(void *arg) {
    const layernorm_launch *l = arg;
    run(l->gpu, l->variant, l->with_residual, l->b);
}

/* One launch from the starting x; the output and the new x, downloaded. */
static int result_of(backend *gpu, int variant, int with_residual, const buffers *b,
                     float *out_host, float *x_host, size_t n) {
    gpu->copy(gpu, b->x, b->x_start, n);
    run(gpu, variant, with_residual, b);
    return test_download_operand(gpu, out_host, b->out, n) || gpu->download(gpu, x_host, b->x, n);
}

int main(int argc, char **argv) {
    if (backend_cuda_device_count() == 0) {
        fprintf(stderr, "bench_layernorm: no CUDA device, skipped\n");
        return TEST_SKIP;
    }
    int rounds = argc > 1 ? atoi(argv[1]) : 10;
    if (rounds < 1) {
        fprintf(stderr, "bench_layernorm: rounds must be a positive count, not '%s'\n", argv[1]);
        return 2;
    }
    test_seed_random("bench_layernorm");
    char err[256], name[256];
    backend *gpu = backend_cuda_create(0, FPDM_PRECISION_BF16, err, sizeof err);
    if (!gpu) {
        fprintf(stderr, "bench_layernorm: %s\n", err);
        return 1;
    }
    backend_cuda_device_name(0, name, sizeof name);
    const size_t n = (size_t)BATCH * TOKENS * DIM, mod_n = (size_t)BATCH * MOD_STRIDE;
    float *host = malloc(n * sizeof(float)), *mod_host = malloc(mod_n * sizeof(float));
    float *out_ref = malloc(n * sizeof(float)), *x_ref = malloc(n * sizeof(float));
    float *out_got = malloc(n * sizeof(float)), *x_got = malloc(n * sizeof(float));
    if (!host || !mod_host || !out_ref || !x_ref || !out_got || !x_got) {
        fprintf(stderr, "bench_layernorm: out of host memory\n");
        return 1;
    }
    for (size_t i = 0; i < mod_n; i++) mod_host[i] = 0.01f * test_uniform();
    buffers b = {gpu->alloc(gpu, n), gpu->alloc(gpu, n), gpu->alloc(gpu, mod_n), NULL, NULL};
    for (size_t i = 0; i < n; i++) host[i] = test_uniform();
    b.y = test_upload_operand(gpu, host, n);
    b.out = gpu->alloc(gpu, backend_dtype_floats(gpu->operand_type, n));
    for (size_t i = 0; i < n; i++) host[i] = 2.0f * test_uniform();
    if (!b.x || !b.x_start || !b.mod || !b.y || !b.out ||
        gpu->upload(gpu, b.x_start, host, n) || gpu->upload(gpu, b.mod, mod_host, mod_n)) {
        fprintf(stderr, "bench_layernorm: cannot set up the device buffers: %s\n",
                backend_cuda_error(gpu));
        return 1;
    }
    printf("LayerNorm + modulate variants on %s, bf16 out, %d x %d rows of %d (ms: fastest of"
           " %d rounds of %d)\n",
           name, BATCH, TOKENS, DIM, rounds, LAUNCHES_PER_ROUND);
    printf("%7s %-9s %9s %9s %8s  %s\n", "variant", "form", "ms", "GB moved", "TB/s", "vs 0");
    int failed = 0;
    for (int with_residual = 0; with_residual < 2; with_residual++) {
        /* float32 x read (and written back with a residual), bf16 y read, bf16 out written. */
        double bytes = (double)n * (4 + 2 + (with_residual ? 4 + 2 : 0));
        for (int variant = 0; variant < backend_cuda_layernorm_variant_count(); variant++) {
            float *out_host = variant ? out_got : out_ref, *x_host = variant ? x_got : x_ref;
            const char *form = with_residual ? "residual" : "plain";
            /* A failed launch is recorded on the backend, and every later op
             * is skipped: the rest of the table cannot be measured. */
            if (result_of(gpu, variant, with_residual, &b, out_host, x_host, n) != 0) {
                printf("%7d %-9s FAILED (%s)\n", variant, form, backend_cuda_error(gpu));
                failed = 1;
                break;
            }
            if (variant > 0 &&
                (memcmp(out_got, out_ref, n * sizeof(float)) != 0 ||
                 memcmp(x_got, x_ref, n * sizeof(float)) != 0)) {
                printf("%7d %-9s FAILED (differs from variant 0)\n", variant, form);
                failed = 1;
                continue;
            }
            gpu->copy(gpu, b.x, b.x_start, n);
            layernorm_launch launch = {gpu, variant, with_residual, &b};
            double ms = test_fastest_launch_ms(gpu, launch_layernorm, &launch, rounds,
                                               LAUNCHES_PER_ROUND);
            if (ms < 0) {
                printf("%7d %-9s FAILED (%s)\n", variant, form, backend_cuda_error(gpu));
                failed = 1;
                break;
            }
            printf("%7d %-9s %9.4f %9.3f %8.2f  %s\n", variant, form, ms, bytes / 1e9,
                   bytes / (ms * 1e-3) / 1e12, variant ? "same bits" : "-");
        }
    }
    free(host);
    free(mod_host);
    free(out_ref);
    free(x_ref);
    free(out_got);
    free(x_got);
    gpu->destroy(gpu);
    return failed;
}
