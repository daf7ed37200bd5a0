/* test_out_of_memory.c - every allocation the library makes, failed in turn
 * (SQLite's way): a context, an FPDM model sampled with guidance, reuse and
 * residuals, then in batches of one with a tolerance and carried-over
 * iterations, then cancelled from its progress callback; its latents decoded
 * by a VAE; a DiT model sampled with DDIM; a benchmark product; the DiT
 * loaded as for a GPU (through staging chunks); run once for each
 * allocation with that one allocation failing. Each run must either fail cleanly
 * (FPDM_ERR_OUT_OF_MEMORY, never a status that blames the file or the
 * arguments, and a message saying "out of memory", "cannot allocate" or
 * ENOMEM's text) or, where the library can do without the memory, give the
 * very bits of the run that failed nothing, with no more errors logged or
 * left in fpdm_last_error than that run. Everything is freed either way:
 * under test.sh's sanitizer pass, LeakSanitizer checks that, and
 * AddressSanitizer that no failure path touches freed or unallocated memory.
 *
 * The library's malloc, calloc, realloc and aligned_alloc calls, and its
 * mmap of model files (which fails with ENOMEM when address space runs out),
 * reach the wrappers below through the linker's --wrap (cmake/tests.cmake);
 * the C library's own allocations (inside fopen, say) and OpenBLAS's and
 * OpenMP's are not counted. The JSON reader of model headers is the
 * library's own (host/json.c), so its allocations are.
 * Run: ctest -R test_out_of_memory (from the build folder's ctest). */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "fpdm.h"
#include "test_util.h"

/* ---- the allocation wrappers -------------------------------------------- */

void *__real_malloc(size_t size);
void *__real_calloc(size_t count, size_t size);
void *__real_realloc(void *pointer, size_t size);
void *__real_aligned_alloc(size_t alignment, size_t size);
void *__real_mmap(void *address, size_t length, int protection, int flags, int fd, off_t offset);

static long allocations_seen; /* since the count was armed */
static long fail_at;          /* the allocation number that fails; 0: none */
static int failure_injected;

/* Whether this allocation is the one to fail. */
static int should_fail(void) {
    if (!fail_at) return 0;
    if (++allocations_seen != fail_at) return 0;
    failure_injected = 1;
    return 1;
}

void *__wrap_malloc(size_t size) { return should_fail() ? NULL : __real_malloc(size); }
void *__wrap_calloc(size_t count, size_t size) {
    return should_fail() ? NULL : __real_calloc(count, size);
}
void *__wrap_realloc(void *pointer, size_t size) {
    return should_fail() ? NULL : __real_realloc(pointer, size);
}
void *__wrap_aligned_alloc(size_t alignment, size_t size) {
    return should_fail() ? NULL : __real_aligned_alloc(alignment, size);
}
void *__wrap_mmap(void *address, size_t length, int protection, int flags, int fd, off_t offset) {
    if (should_fail()) {
        errno = ENOMEM;
        return MAP_FAILED;
    }
    return __real_mmap(address, length, protection, flags, fd, offset);
}

/* ---- the scenario ------------------------------------------------------- */

#define FPDM_MODEL "tests/golden/forward-fpdm.model.safetensors"
#define DIT_MODEL "tests/golden/forward-dit-p2.model.safetensors"
#define VAE_FILE "tests/golden/vae-small.safetensors"
#define NUM_IMAGES 2
#define MAX_FLOATS (NUM_IMAGES * 3 * 64 * 64)

typedef struct outcome {
    fpdm_status status;
    char message[512];
    int error_logs;        /* messages the context logged at FPDM_LOG_ERROR */
    char last_error[512];  /* fpdm_last_error at the end */
    float fpdm_latents[MAX_FLOATS], tol_latents[MAX_FLOATS], images[MAX_FLOATS],
        dit_latents[MAX_FLOATS];
    size_t fpdm_floats, image_floats, dit_floats;
} outcome;

typedef enum sampling { DDPM_REUSE, TOL_CARRY_OVER, CANCELLED, DDIM } sampling;

static int progress_calls;
/* Counts the calls; asks to stop at the second when user_data says so. */
static int on_progress(const fpdm_progress *progress, void *user_data) {
    (void)progress;
    progress_calls++;
    return user_data && *(int *)user_data && progress->step >= 2;
}

/* Samples `model_path` into latents as `how` says; returns the status, with
 * the cancelled run's FPDM_ERR_CANCELLED counted as success. */
static fpdm_status sample(fpdm_context *ctx, const char *model_path, sampling how, float *latents,
                          size_t *floats) {
    fpdm_model *model = NULL;
    fpdm_status status = fpdm_model_load(ctx, model_path, &model);
    if (status == FPDM_OK) {
        const int labels[NUM_IMAGES] = {3, 7};
        int cancel = how == CANCELLED;
        fpdm_sample_params params = fpdm_sample_default_params(model);
        params.num_steps = 3;
        params.noise_seed = 11;
        params.progress_callback = on_progress;
        params.progress_user_data = &cancel;
        if (how == DDIM) {
            params.sampler = FPDM_SAMPLER_DDIM;
            params.ddim_eta = 0.5f;
        } else if (how == TOL_CARRY_OVER) {
            params.batch_size = 1;
            params.tol = 0.3f;
            params.carry_over = 1;
        } else {
            params.reuse = 1;
            params.measure_residuals = 1;
            params.iteration_schedule = FPDM_ITERS_INCREASING;
        }
        *floats = fpdm_sample_output_size(model, NUM_IMAGES);
        fpdm_sample_report report = {0};
        if (*floats > MAX_FLOATS)
            status = FPDM_ERR_INVALID_ARGUMENT;
        else
            status = fpdm_sample(ctx, model, &params, NUM_IMAGES, labels, latents, &report);
        fpdm_sample_report_free(&report);
        if (how == CANCELLED && status == FPDM_ERR_CANCELLED) status = FPDM_OK;
    }
    fpdm_model_free(model);
    return status;
}

static void count_errors(fpdm_log_level level, const char *message, void *user_data) {
    (void)message;
    if (level == FPDM_LOG_ERROR) ((outcome *)user_data)->error_logs++;
}

static void run_scenario(outcome *out) {
    memset(out, 0, sizeof *out);
    fpdm_context_params params = fpdm_context_default_params();
    params.device = "cpu";
    params.num_threads = 1;
    params.log_callback = count_errors;
    params.log_user_data = out;
    fpdm_context *ctx = NULL;
    fpdm_vae *vae = NULL;
    fpdm_status status = fpdm_context_create(&params, &ctx);
    if (status == FPDM_OK)
        status = sample(ctx, FPDM_MODEL, DDPM_REUSE, out->fpdm_latents, &out->fpdm_floats);
    if (status == FPDM_OK)
        status = sample(ctx, FPDM_MODEL, TOL_CARRY_OVER, out->tol_latents, &out->fpdm_floats);
    if (status == FPDM_OK) {
        float cancelled[MAX_FLOATS];
        status = sample(ctx, FPDM_MODEL, CANCELLED, cancelled, &out->fpdm_floats);
    }
    if (status == FPDM_OK) status = fpdm_vae_load(ctx, VAE_FILE, &vae);
    if (status == FPDM_OK) status = fpdm_vae_prepare(ctx, vae, NUM_IMAGES, 8);
    if (status == FPDM_OK) {
        const fpdm_vae_info *info = fpdm_vae_get_info(vae);
        const int latent_size = 8;
        out->image_floats = (size_t)NUM_IMAGES * info->image_channels *
                            (latent_size * info->upscale) * (latent_size * info->upscale);
        status = out->image_floats > MAX_FLOATS
                     ? FPDM_ERR_INVALID_ARGUMENT
                     : fpdm_vae_decode(ctx, vae, NUM_IMAGES, latent_size, out->fpdm_latents,
                                       out->images);
    }
    if (status == FPDM_OK)
        status = sample(ctx, DIT_MODEL, DDIM, out->dit_latents, &out->dit_floats);
    if (status == FPDM_OK) {
        double seconds;
        status = fpdm_benchmark_matmul(ctx, 16, 8, 4, 1, &seconds);
    }
    /* Last, the loader's path for a device: the context is set to load as a
     * GPU context does (bf16 weights through small staging chunks). */
    if (status == FPDM_OK) {
        test_set_loading(ctx, BACKEND_BF16, 4096);
        fpdm_model *staged = NULL;
        status = fpdm_model_load(ctx, DIT_MODEL, &staged);
        fpdm_model_free(staged);
    }
    out->status = status;
    /* Without memory for the context itself, fpdm_context_create returns no
     * context to hold a message (fpdm.h): the status says it all. */
    if (status != FPDM_OK)
        snprintf(out->message, sizeof out->message, "%s",
                 ctx ? fpdm_last_error(ctx) : "out of memory (no context)");
    if (ctx) snprintf(out->last_error, sizeof out->last_error, "%s", fpdm_last_error(ctx));
    fpdm_vae_free(vae);
    fpdm_context_free(ctx);
}

static int same_bits(const float *a, const float *b, size_t n) {
    return memcmp(a, b, n * sizeof(float)) == 0;
}

int main(void) {
    static outcome reference, attempt;
    run_scenario(&reference);
    CHECK_MSG(reference.status == FPDM_OK, "the scenario fails without injected failures: %s",
              reference.message);
    if (reference.status != FPDM_OK) return test_finish("test_out_of_memory");

    long runs = 0, clean_failures = 0, tolerated = 0, bad = 0;
    for (fail_at = 1;; fail_at++) {
        allocations_seen = 0;
        failure_injected = 0;
        run_scenario(&attempt);
        const int injected = failure_injected;
        if (!injected) break; /* the scenario makes fewer allocations: all were failed */
        runs++;
        if (attempt.status != FPDM_OK) {
            if (attempt.status == FPDM_ERR_OUT_OF_MEMORY &&
                (strstr(attempt.message, "out of memory") ||
                 strstr(attempt.message, "cannot allocate") ||
                 strstr(attempt.message, strerror(ENOMEM)))) {
                clean_failures++;
            } else {
                bad++;
                if (bad <= 5) fprintf(stderr, "  allocation %ld: status %d, \"%s\"\n", fail_at,
                                      (int)attempt.status, attempt.message);
            }
        } else if (attempt.error_logs != reference.error_logs ||
                   strcmp(attempt.last_error, reference.last_error) != 0) {
            /* A run that did without the memory has no more to report than
             * the reference (whose one error is the cancelled run's). */
            bad++;
            if (bad <= 5)
                fprintf(stderr, "  allocation %ld failed and the run succeeded, yet it logged %d "
                        "error(s) against %d; last error \"%s\"\n", fail_at, attempt.error_logs,
                        reference.error_logs, attempt.last_error);
        } else if (same_bits(attempt.fpdm_latents, reference.fpdm_latents, reference.fpdm_floats) &&
                   same_bits(attempt.tol_latents, reference.tol_latents, reference.fpdm_floats) &&
                   same_bits(attempt.images, reference.images, reference.image_floats) &&
                   same_bits(attempt.dit_latents, reference.dit_latents, reference.dit_floats)) {
            tolerated++;
        } else {
            bad++;
            if (bad <= 5)
                fprintf(stderr, "  allocation %ld failed, yet the run reported success with other "
                        "results\n", fail_at);
        }
    }
    fail_at = 0;
    fprintf(stderr, "  %ld allocations failed in turn: %ld clean failures, %ld done without the "
            "memory, %ld misbehaved\n", runs, clean_failures, tolerated, bad);
    CHECK(bad == 0);
    /* The scenario allocates: a count of 0 would mean the wrappers are not in place. */
    CHECK(runs > 20);
    CHECK(progress_calls > 0);
    return test_finish("test_out_of_memory");
}
