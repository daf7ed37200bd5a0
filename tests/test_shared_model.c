/* test_shared_model.c - what fpdm.h promises a program that serves several
 * requests at once: one model and one VAE, loaded once, shared by contexts on
 * several threads (a context each). Four threads sample at the same time, each
 * its own seed and classes, FPDM with reuse, DiT with DDIM and a VAE decode,
 * three rounds over; then four threads load their own copies of the files at
 * the same time and serve the same requests with them. Every result must
 * equal, bit for bit, the same request run alone beforehand. Everything runs
 * on one OpenMP thread per caller, as the serial runs do, so the products sum
 * in the same order.
 * tests/gpu/test_shared_model.c builds this file for contexts on the GPU.
 *
 *   ./build/test_shared_model
 */
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fpdm.h"
#include "test_util.h"

#ifndef SHARED_MODEL_DEVICE
#define SHARED_MODEL_DEVICE "cpu"
#endif
#define FPDM_MODEL "tests/golden/forward-fpdm.model.safetensors"
#define DIT_MODEL "tests/golden/forward-dit-p2.model.safetensors"
#define VAE_FILE "tests/golden/vae-small.safetensors"
#define WORKERS 4
#define ROUNDS 3
#define NUM_IMAGES 2
#define LATENT_SIZE 8
#define MAX_FLOATS (NUM_IMAGES * 3 * 64 * 64)

typedef struct shared {
    const fpdm_model *fpdm, *dit;
    const fpdm_vae *vae;
} shared;

typedef struct request {
    const shared *models; /* NULL: the worker loads its own */
    int worker;
    fpdm_status status;
    char message[256];
    float fpdm_latents[MAX_FLOATS], dit_latents[MAX_FLOATS], images[MAX_FLOATS];
} request;

static fpdm_context *open_context(void) {
    fpdm_context_params params = fpdm_context_default_params();
    params.device = SHARED_MODEL_DEVICE;
    params.num_threads = 1;
    fpdm_context *ctx = NULL;
    if (fpdm_context_create(&params, &ctx) != FPDM_OK) {
        fpdm_context_free(ctx);
        return NULL;
    }
    return ctx;
}

/* One worker's request: its seed and classes follow its number. */
static void serve(request *r) {
    omp_set_num_threads(1);
    fpdm_context *ctx = open_context();
    if (!ctx) {
        r->status = FPDM_ERR_OUT_OF_MEMORY;
        snprintf(r->message, sizeof r->message, "no context");
        return;
    }
    fpdm_model *own_fpdm = NULL, *own_dit = NULL;
    fpdm_vae *own_vae = NULL;
    fpdm_status status = FPDM_OK;
    shared models = r->models ? *r->models : (shared){0};
    if (!r->models) {
        status = fpdm_model_load(ctx, FPDM_MODEL, &own_fpdm);
        if (status == FPDM_OK) status = fpdm_model_load(ctx, DIT_MODEL, &own_dit);
        if (status == FPDM_OK) status = fpdm_vae_load(ctx, VAE_FILE, &own_vae);
        models = (shared){own_fpdm, own_dit, own_vae};
    }
    const int labels[NUM_IMAGES] = {r->worker % 10, (3 * r->worker + 1) % 10};
    if (status == FPDM_OK) {
        fpdm_sample_params params = fpdm_sample_default_params(models.fpdm);
        params.num_steps = 4;
        params.noise_seed = 100 + (uint64_t)r->worker;
        params.reuse = 1;
        status = fpdm_sample(ctx, models.fpdm, &params, NUM_IMAGES, labels, r->fpdm_latents, NULL);
    }
    if (status == FPDM_OK)
        status = fpdm_vae_decode(ctx, models.vae, NUM_IMAGES, LATENT_SIZE, r->fpdm_latents,
                                 r->images);
    if (status == FPDM_OK) {
        fpdm_sample_params params = fpdm_sample_default_params(models.dit);
        params.num_steps = 4;
        params.noise_seed = 200 + (uint64_t)r->worker;
        params.sampler = FPDM_SAMPLER_DDIM;
        status = fpdm_sample(ctx, models.dit, &params, NUM_IMAGES, labels, r->dit_latents, NULL);
    }
    r->status = status;
    if (status != FPDM_OK) snprintf(r->message, sizeof r->message, "%s", fpdm_last_error(ctx));
    fpdm_vae_free(own_vae);
    fpdm_model_free(own_dit);
    fpdm_model_free(own_fpdm);
    fpdm_context_free(ctx);
}

static void *serve_thread(void *argument) {
    serve(argument);
    return NULL;
}

int main(void) {
#ifdef SHARED_MODEL_NEEDS_GPU
    if (backend_cuda_device_count() <= 0) {
        fprintf(stderr, "test_shared_model: no CUDA device, SKIPPED\n");
        return TEST_SKIP;
    }
#endif
    omp_set_num_threads(1);
    fpdm_context *loader = open_context();
    CHECK(loader != NULL);
    if (!loader) return test_finish("test_shared_model");
    fpdm_model *fpdm = NULL, *dit = NULL;
    fpdm_vae *vae = NULL;
    CHECK(fpdm_model_load(loader, FPDM_MODEL, &fpdm) == FPDM_OK);
    CHECK(fpdm_model_load(loader, DIT_MODEL, &dit) == FPDM_OK);
    CHECK(fpdm_vae_load(loader, VAE_FILE, &vae) == FPDM_OK);
    if (!fpdm || !dit || !vae) {
        fprintf(stderr, "%s\n", fpdm_last_error(loader));
        return test_finish("test_shared_model");
    }
    CHECK(fpdm_sample_output_size(fpdm, NUM_IMAGES) <= MAX_FLOATS &&
          fpdm_sample_output_size(dit, NUM_IMAGES) <= MAX_FLOATS);
    const fpdm_vae_info *info = fpdm_vae_get_info(vae);
    const size_t image_floats = (size_t)NUM_IMAGES * info->image_channels *
                                (LATENT_SIZE * info->upscale) * (LATENT_SIZE * info->upscale);
    CHECK(image_floats <= MAX_FLOATS);
    const shared models = {fpdm, dit, vae};
#ifdef SHARED_MODEL_NEEDS_GPU
    /* The loader is bf16 (the GPU's default): its 16-bit weights cannot serve
     * an fp32 context's products, and sampling through one says so. */
    {
        fpdm_context_params fp32_params = fpdm_context_default_params();
        fp32_params.device = SHARED_MODEL_DEVICE;
        fp32_params.precision = FPDM_PRECISION_FP32;
        fpdm_context *fp32 = NULL;
        CHECK(fpdm_context_create(&fp32_params, &fp32) == FPDM_OK);
        const int label = 1;
        float latents[MAX_FLOATS];
        fpdm_sample_params params = fpdm_sample_default_params(fpdm);
        params.num_steps = 2;
        CHECK(fpdm_sample(fp32, fpdm, &params, 1, &label, latents, NULL) ==
              FPDM_ERR_INVALID_ARGUMENT);
        CHECK_MSG(strstr(fpdm_last_error(fp32), "another precision") != NULL, "%s",
                  fpdm_last_error(fp32));
        fpdm_context_free(fp32);
    }
#endif

    static request alone[WORKERS], together[WORKERS];
    for (int w = 0; w < WORKERS; w++) {
        alone[w] = (request){.models = &models, .worker = w};
        serve(&alone[w]);
        CHECK_MSG(alone[w].status == FPDM_OK, "worker %d alone: %s", w, alone[w].message);
    }
    /* The requests differ from each other, so equal results below cannot come
     * from one thread's output landing in another's buffers. */
    CHECK(memcmp(alone[0].images, alone[1].images, image_floats * sizeof(float)) != 0);

    /* ROUNDS rounds on the shared models, then one where each worker loads
     * its own copies at the same time as the others. */
    int mismatches = 0;
    for (int round = 0; round <= ROUNDS; round++) {
        pthread_t threads[WORKERS];
        for (int w = 0; w < WORKERS; w++) {
            together[w] = (request){.models = round < ROUNDS ? &models : NULL, .worker = w};
            CHECK(pthread_create(&threads[w], NULL, serve_thread, &together[w]) == 0);
        }
        for (int w = 0; w < WORKERS; w++) pthread_join(threads[w], NULL);
        for (int w = 0; w < WORKERS; w++) {
            CHECK_MSG(together[w].status == FPDM_OK, "round %d worker %d: %s", round, w,
                      together[w].message);
            const struct {
                const char *name;
                const float *got, *want;
                size_t n;
            } outputs[] = {
                {"FPDM latents", together[w].fpdm_latents, alone[w].fpdm_latents,
                 fpdm_sample_output_size(fpdm, NUM_IMAGES)},
                {"DiT latents", together[w].dit_latents, alone[w].dit_latents,
                 fpdm_sample_output_size(dit, NUM_IMAGES)},
                {"decoded images", together[w].images, alone[w].images, image_floats},
            };
            for (int o = 0; o < 3; o++) {
                if (memcmp(outputs[o].got, outputs[o].want, outputs[o].n * sizeof(float)) == 0)
                    continue;
                mismatches++;
                size_t differing = 0;
                double worst = 0.0;
                for (size_t i = 0; i < outputs[o].n; i++) {
                    double d = fabs((double)outputs[o].got[i] - outputs[o].want[i]);
                    if (outputs[o].got[i] != outputs[o].want[i]) differing++;
                    if (d > worst || d != d) worst = d;
                }
                fprintf(stderr,
                        "  round %d worker %d: %s differ from the serial run's (%zu of %zu, "
                        "largest difference %.3g)\n",
                        round, w, outputs[o].name, differing, outputs[o].n, worst);
            }
        }
    }
    CHECK(mismatches == 0);
    fpdm_vae_free(vae);
    fpdm_model_free(dit);
    fpdm_model_free(fpdm);
    fpdm_context_free(loader);
    return test_finish("test_shared_model");
}
