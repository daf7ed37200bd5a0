/* test_network.c - the whole CUDA forward and whole sampling runs against the
 * CPU backend, through the public API, on the golden models.
 *   fp32: forward <= 1e-4, final latents <= 1e-4;  bf16: forward <= 2e-2.
 * Also: a warmed-up sampling run allocates no device memory.
 * Exits 77 (SKIPPED) without a GPU. */
#include <cuda_runtime_api.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend_cuda.h"
#include "context.h"
#include "fpdm.h"
#include "test_util.h"

static const char *FORWARD_CASES[] = {"dit-p2", "dit-hd12", "dit-p4-nosigma", "fpdm",
                                      "fpdm-nocond", "fpdm-deep", "fpdm-p4-nosigma"};

static fpdm_context *open_context(const char *device, fpdm_precision precision) {
    fpdm_context_params cp = fpdm_context_default_params();
    cp.device = device;
    cp.precision = precision;
    fpdm_context *ctx;
    fpdm_status status = fpdm_context_create(&cp, &ctx);
    CHECK_MSG(status == FPDM_OK, "%s: %s", device, fpdm_last_error(ctx));
    return ctx;
}

static void compare_forward(const char *name, fpdm_context *cpu, fpdm_context *gpu,
                            double tolerance) {
    char path[256];
    snprintf(path, sizeof path, "tests/golden/forward-%s.model.safetensors", name);
    fpdm_model *mc = test_load_model(cpu, path), *mg = test_load_model(gpu, path);
    if (!mc || !mg) goto done;
    const fpdm_model_info *info = fpdm_model_get_info(mc);
    int batch = 5, size = info->input_size;
    size_t in_n = (size_t)batch * info->in_channels * size * size;
    size_t out_n = (size_t)batch * info->out_channels * size * size;
    unsigned seed = 1234;
    float *x = malloc(in_n * sizeof(float)), *a = malloc(out_n * sizeof(float)),
          *b = malloc(out_n * sizeof(float));
    test_random_fill(x, in_n, &seed);
    float t[5] = {0, 17, 250.5f, 600, 999};
    int y[5] = {0, 1, 2, 3, info->num_classes};
    for (size_t i = 0; i < out_n; i++) a[i] = b[i] = NAN;
    CHECK(fpdm_forward(cpu, mc, batch, x, t, y, 6, NULL, a, NULL) == FPDM_OK);
    CHECK_MSG(fpdm_forward(gpu, mg, batch, x, t, y, 6, NULL, b, NULL) == FPDM_OK, "%s",
              fpdm_last_error(gpu));
    char what[128];
    snprintf(what, sizeof what, "forward %s", name);
    check_close(what, b, a, out_n, tolerance);
    free(x), free(a), free(b);
done:
    fpdm_model_free(mc);
    fpdm_model_free(mg);
}

static float *run_sample(fpdm_context *ctx, fpdm_model *model, const fpdm_sample_params *p, int n,
                         const int *labels) {
    size_t floats = fpdm_sample_output_size(model, n);
    float *out = malloc(floats * sizeof(float));
    for (size_t i = 0; i < floats; i++) out[i] = NAN;
    CHECK_MSG(fpdm_sample(ctx, model, p, n, labels, out, NULL) == FPDM_OK, "%s",
              fpdm_last_error(ctx));
    return out;
}

static void compare_sampling(fpdm_context *cpu, fpdm_context *gpu) {
    const char *models[] = {"tests/golden/sample-model-dit.safetensors",
                            "tests/golden/sample-model-fpdm.safetensors",
                            "tests/golden/sample-model-fpdm-v.safetensors"};
    int labels[4] = {3, 1, 4, 1};
    for (int m = 0; m < 3; m++) {
        fpdm_model *mc = test_load_model(cpu, models[m]), *mg = test_load_model(gpu, models[m]);
        if (!mc || !mg) {
            fpdm_model_free(mc);
            fpdm_model_free(mg);
            continue;
        }
        for (int variant = 0; variant < 4; variant++) {
            fpdm_sample_params p = fpdm_sample_default_params(mc);
            p.num_steps = 8;
            p.noise_seed = 7;
            p.iters = 4;
            p.cfg_scale = variant == 1 ? 1.0f : 3.0f;
            p.sampler = variant == 2 ? FPDM_SAMPLER_DDIM : FPDM_SAMPLER_DDPM;
            p.reuse = variant >= 2;
            p.iteration_schedule = variant == 3 ? FPDM_ITERS_INCREASING : FPDM_ITERS_FIXED;
            if (fpdm_model_get_info(mc)->zero_terminal_snr) p.sampler = FPDM_SAMPLER_DDIM;
            float *a = run_sample(cpu, mc, &p, 4, labels), *b = run_sample(gpu, mg, &p, 4, labels);
            char what[160];
            snprintf(what, sizeof what, "sample %s variant %d", models[m] + 13, variant);
            check_close(what, b, a, fpdm_sample_output_size(mc, 4), 1e-4);
            free(a), free(b);
        }
        /* A second identical run on a warm context allocates nothing. */
        fpdm_sample_params p = fpdm_sample_default_params(mg);
        p.num_steps = 4;
        p.reuse = 1;
        free(run_sample(gpu, mg, &p, 4, labels));
        size_t free_before, free_after, total;
        cudaMemGetInfo(&free_before, &total);
        float *arena = gpu->arena;
        free(run_sample(gpu, mg, &p, 4, labels));
        cudaMemGetInfo(&free_after, &total);
        CHECK(gpu->arena == arena);
        CHECK_MSG(free_after == free_before, "device free memory changed by %lld bytes",
                  (long long)free_before - (long long)free_after);
        fpdm_model_free(mc);
        fpdm_model_free(mg);
    }
}

int main(void) {
    if (backend_cuda_device_count() <= 0) {
        fprintf(stderr, "test_network: no CUDA device, SKIPPED\n");
        return TEST_SKIP;
    }
    fpdm_context *cpu = open_context("cpu", FPDM_PRECISION_FP32);
    fpdm_context *gpu32 = open_context("cuda", FPDM_PRECISION_FP32);
    fpdm_context *gpu16 = open_context("cuda", FPDM_PRECISION_BF16);
    size_t cases = sizeof FORWARD_CASES / sizeof FORWARD_CASES[0];
    for (size_t i = 0; i < cases; i++) {
        compare_forward(FORWARD_CASES[i], cpu, gpu32, 1e-4);
        compare_forward(FORWARD_CASES[i], cpu, gpu16, 2e-2);
    }
    compare_sampling(cpu, gpu32);
    fpdm_context_free(cpu);
    fpdm_context_free(gpu32);
    fpdm_context_free(gpu16);
    return test_finish("test_network");
}
