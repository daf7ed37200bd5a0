/* test_context.c - device strings of fpdm_context_params: "auto" picks the
 * first GPU exactly when a "cuda" context can be made on this machine and
 * build, else the CPU; malformed names are refused with a message that lists
 * the accepted ones; a context whose creation failed refuses every call that
 * needs its device; the benchmark product refuses bad sizes and reports
 * operands too big as out of memory. Public API only. Run: ctest -R
 * test_context. */
#include <limits.h>
#include <stdio.h>
#include <string.h>

#include "fpdm.h"
#include "test_util.h"

static fpdm_status open_device(const char *device, fpdm_context **ctx) {
    fpdm_context_params params = fpdm_context_default_params();
    params.device = device;
    return fpdm_context_create(&params, ctx);
}

/* fpdm.h lets a caller keep a context whose creation failed, to read its
 * error: every call that needs its device then refuses, saying why, and
 * none crashes (loading a model through one used to). */
static void check_failed_context(void) {
    fpdm_context *ctx = NULL;
    CHECK(open_device("no-such-device", &ctx) == FPDM_ERR_INVALID_ARGUMENT && ctx != NULL);
    if (!ctx) return;
    CHECK(fpdm_context_precision(ctx) == FPDM_PRECISION_FP32);
    fpdm_model *model = (fpdm_model *)1;
    CHECK(fpdm_model_load(ctx, "tests/golden/forward-fpdm.model.safetensors", &model) ==
          FPDM_ERR_INVALID_ARGUMENT);
    CHECK(model == NULL);
    CHECK_MSG(strstr(fpdm_last_error(ctx), "the context has no device"), "%s",
              fpdm_last_error(ctx));
    fpdm_vae *vae = (fpdm_vae *)1;
    CHECK(fpdm_vae_load(ctx, "tests/golden/vae-small.safetensors", &vae) ==
          FPDM_ERR_INVALID_ARGUMENT);
    CHECK(vae == NULL);
    fpdm_memory_info memory;
    CHECK(fpdm_context_memory(ctx, &memory) == FPDM_ERR_INVALID_ARGUMENT);
    double seconds = 0;
    CHECK(fpdm_benchmark_matmul(ctx, 8, 8, 8, 1, &seconds) == FPDM_ERR_INVALID_ARGUMENT);
    fpdm_context_free(ctx);
}

/* The benchmark product: a small one runs; operands too big for the
 * device's memory, or for a size_t, are out of memory, not a device fault. */
static void check_benchmark(fpdm_context *ctx) {
    double seconds = -1;
    CHECK(fpdm_benchmark_matmul(ctx, 4, 3, 2, 2, &seconds) == FPDM_OK && seconds >= 0);
    CHECK(fpdm_benchmark_matmul(ctx, 4, 0, 2, 2, &seconds) == FPDM_ERR_INVALID_ARGUMENT);
    CHECK(fpdm_benchmark_matmul(ctx, 4, 3, 2, 0, &seconds) == FPDM_ERR_INVALID_ARGUMENT);
    /* A NULL result is named as such, not as a size problem. */
    CHECK(fpdm_benchmark_matmul(ctx, 4, 3, 2, 1, NULL) == FPDM_ERR_INVALID_ARGUMENT);
    CHECK_MSG(strstr(fpdm_last_error(ctx), "seconds is NULL"), "%s", fpdm_last_error(ctx));
    CHECK(fpdm_context_memory(ctx, NULL) == FPDM_ERR_INVALID_ARGUMENT);
    CHECK_MSG(strstr(fpdm_last_error(ctx), "info is NULL"), "%s", fpdm_last_error(ctx));
    CHECK(fpdm_benchmark_matmul(ctx, INT_MAX, INT_MAX, INT_MAX, 1, &seconds) ==
          FPDM_ERR_OUT_OF_MEMORY);
    CHECK_MSG(strstr(fpdm_last_error(ctx), "out of memory for the 2147483647x2147483647x"),
              "%s", fpdm_last_error(ctx));
    /* 2^40 elements an operand pass the size_t check; a GPU cannot hold
     * them (a CPU's malloc is left to test_out_of_memory: a sanitizer
     * aborts on a request that large). */
    if (strncmp(fpdm_context_device_name(ctx), "cuda", 4) == 0) {
        CHECK(fpdm_benchmark_matmul(ctx, 1 << 20, 1 << 20, 1 << 20, 1, &seconds) ==
              FPDM_ERR_OUT_OF_MEMORY);
        CHECK(fpdm_benchmark_matmul(ctx, 4, 3, 2, 2, &seconds) == FPDM_OK);
    }
}

int main(void) {
    fpdm_context *cuda = NULL, *automatic = NULL;
    int have_gpu = open_device("cuda", &cuda) == FPDM_OK;
    CHECK(open_device("auto", &automatic) == FPDM_OK);
    if (automatic) check_benchmark(automatic);
    const char *name = fpdm_context_device_name(automatic);
    fprintf(stderr, "  auto -> %s (a cuda context %s)\n", name, have_gpu ? "opens" : "does not open");
    if (have_gpu)
        CHECK_MSG(strncmp(name, "cuda:0 ", 7) == 0, "auto gave %s with a GPU present", name);
    else
        CHECK_MSG(strcmp(name, "cpu") == 0, "auto gave %s without a GPU", name);
    fpdm_context_free(cuda);
    fpdm_context_free(automatic);

    const char *malformed[5] = {"gpu", "cuda:", "cuda:x", "Auto", "cuda:99999"};
    for (int i = 0; i < 5; i++) {
        fpdm_context *ctx = NULL;
        CHECK(open_device(malformed[i], &ctx) == FPDM_ERR_INVALID_ARGUMENT);
        CHECK_MSG(ctx && strstr(fpdm_last_error(ctx), "auto, cpu, cuda or cuda:N (N in 0..1024)"),
                  "%s: %s",
                  malformed[i], ctx ? fpdm_last_error(ctx) : "no context");
        fpdm_context_free(ctx);
    }
    check_failed_context();
    /* A thread count OpenMP could not start. */
    int thread_counts[2] = {-1, 4097};
    for (int i = 0; i < 2; i++) {
        fpdm_context_params threads = fpdm_context_default_params();
        threads.num_threads = thread_counts[i];
        fpdm_context *ctx = NULL;
        CHECK(fpdm_context_create(&threads, &ctx) == FPDM_ERR_INVALID_ARGUMENT);
        CHECK_MSG(ctx && strstr(fpdm_last_error(ctx), "num_threads must be in 0..4096"), "%s",
                  ctx ? fpdm_last_error(ctx) : "no context");
        fpdm_context_free(ctx);
    }
    /* A precision outside the enum is a bad argument, not a missing feature. */
    fpdm_context_params params = fpdm_context_default_params();
    params.precision = (fpdm_precision)7;
    fpdm_context *ctx = NULL;
    CHECK(fpdm_context_create(&params, &ctx) == FPDM_ERR_INVALID_ARGUMENT);
    CHECK_MSG(ctx && strstr(fpdm_last_error(ctx), "precision 7 is not an fpdm_precision"), "%s",
              ctx ? fpdm_last_error(ctx) : "no context");
    fpdm_context_free(ctx);
    return test_finish("test_context");
}
