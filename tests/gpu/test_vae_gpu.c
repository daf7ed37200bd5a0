/* test_vae_gpu.c - the VAE decoder (host/vae.c) on CUDA contexts
 * (kernels/vae_ops_cuda.cu) against diffusers and against the CPU decode:
 *   - the golden latents (tests/golden/vae-small*.safetensors, written by
 *     tests/golden/make_vae_golden.py) decode to diffusers' float64 images
 *     within 1e-4 (relative L2) in fp32, and within 1e-4 of the CPU decode;
 *     a second decode (cached cuDNN algorithms), the batch decoded one image
 *     at a time (within 1e-5 of it at once; also 1100 images, more than one
 *     GroupNorm pass serves) and a one-pixel latent too;
 *     in bf16 within 2e-2, and an fp16 context (bf16 activations as well)
 *     within 2e-2 of diffusers and 1e-5 of the bf16 context (bf16
 *     activations are pixel-major, NHWC: these checks cover that layout,
 *     fp32 ones the channel-major one), and the 1100 images in bf16 within
 *     2e-2 of fp32;
 *   - a VAE loaded on a CUDA context is refused by a CPU context and the
 *     other way round;
 *   - Stable Diffusion's decoder size with random weights (the writer of
 *     tools/support/synthetic_vae.c) decodes 32x32 latents to 3x256x256 with
 *     no NaN, within 2e-2 of the CPU in bf16 and 1e-3 in fp32 (cuDNN's fp32
 *     Winograd and FFT algorithms round differently from the CPU's GEMM over
 *     some thirty convolutions).
 * Every output is filled with NaN before a decode, so nothing left unwritten
 * passes. Exits 77 (SKIPPED) without a GPU, or when the build has no cuDNN.
 *
 * Run from the repository root: build/gpu_test_vae_gpu (ctest -L gpu does
 * this; about 10 s, most of it the CPU decode at the SD size).
 */
#define _POSIX_C_SOURCE 200809L

/* The writer of random-weight decoder files (tools/support, linked in). */
#include "synthetic_vae.h"

#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "backend_cuda.h"
#include "fpdm.h"
#include "safetensors.h"
#include "test_util.h"
#include "vae.h"

#define GOLDEN_WEIGHTS "tests/golden/vae-small.safetensors"
#define GOLDEN_IO "tests/golden/vae-small.io.safetensors"
#define SD_LATENT_SIZE 32

static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

/* Uniform in [-1, 1). */
static float uniform_value(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (float)((double)(rng_state >> 11) * 0x1.0p-52 - 1.0);
}

static fpdm_context *open_context(const char *device, fpdm_precision precision) {
    fpdm_context_params params = fpdm_context_default_params();
    params.device = device;
    params.precision = precision;
    fpdm_context *ctx = NULL;
    fpdm_status status = fpdm_context_create(&params, &ctx);
    CHECK_MSG(status == FPDM_OK, "context %s: %s", device, ctx ? fpdm_last_error(ctx) : "out of memory");
    if (status != FPDM_OK) {
        fpdm_context_free(ctx);
        return NULL;
    }
    return ctx;
}

static float *nan_filled(size_t n) {
    float *x = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) x[i] = NAN;
    return x;
}

static size_t count_nan(const float *x, size_t n) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++) count += isnan(x[i]) != 0;
    return count;
}

/* Decodes into a NaN-filled array with an already loaded VAE; NULL after a
 * failed check. */
static float *decode_with(fpdm_context *ctx, const fpdm_vae *vae, const char *what, int batch,
                          int latent_size, const float *latents, size_t image_floats) {
    float *images = nan_filled(image_floats);
    fpdm_status status = fpdm_vae_decode(ctx, vae, batch, latent_size, latents, images);
    CHECK_MSG(status == FPDM_OK, "%s: %s", what, fpdm_last_error(ctx));
    if (status != FPDM_OK) {
        free(images);
        return NULL;
    }
    size_t nans = count_nan(images, image_floats);
    CHECK_MSG(nans == 0, "%s: %zu of %zu values are NaN", what, nans, image_floats);
    return images;
}

/* Loads path on ctx, decodes, frees the VAE. */
static float *decode_file(fpdm_context *ctx, const char *path, const char *what, int batch,
                          int latent_size, const float *latents, size_t image_floats) {
    fpdm_vae *vae = NULL;
    fpdm_status status = fpdm_vae_load(ctx, path, &vae);
    CHECK_MSG(status == FPDM_OK, "%s: loading %s: %s", what, path, fpdm_last_error(ctx));
    if (status != FPDM_OK) return NULL;
    float *images = decode_with(ctx, vae, what, batch, latent_size, latents, image_floats);
    fpdm_vae_free(vae);
    return images;
}

/* 0, or TEST_SKIP when CUDA contexts have no VAE decoder in this build. */
static int test_golden(fpdm_context *cpu, fpdm_context *fp32, fpdm_context *bf16) {
    safetensors_file io;
    char err[1024];
    if (safetensors_open(GOLDEN_IO, &io, err, sizeof err) != 0) {
        CHECK_MSG(0, "%s", err);
        return 0;
    }
    int batch = golden_int(&io, "batch", 0), latent_size = golden_int(&io, "latent_size", 0);
    size_t latent_floats = 0, image_floats = 0;
    float *latents = golden_tensor(&io, "latents", &latent_floats);
    float *expected = golden_tensor(&io, "images", &image_floats);
    CHECK(batch > 0 && latent_floats == (size_t)batch * 4 * latent_size * latent_size);

    fpdm_vae *vae = NULL;
    fpdm_status status = fpdm_vae_load(fp32, GOLDEN_WEIGHTS, &vae);
    CHECK_MSG(status == FPDM_OK, "loading on %s: %s", fpdm_context_device_name(fp32),
              fpdm_last_error(fp32));
    int skip = 0;
    if (vae) {
        float *probe = nan_filled(image_floats);
        status = fpdm_vae_decode(fp32, vae, batch, latent_size, latents, probe);
        free(probe);
        if (status == FPDM_ERR_UNSUPPORTED) {
            fprintf(stderr, "no VAE decoder on CUDA contexts in this build: %s\n",
                    fpdm_last_error(fp32));
            skip = 1;
        }
    }
    if (vae && !skip) {
        float *cpu_images = decode_file(cpu, GOLDEN_WEIGHTS, "cpu decode", batch, latent_size,
                                        latents, image_floats);
        float *images = decode_with(fp32, vae, "fp32 decode", batch, latent_size, latents,
                                    image_floats);
        if (images) {
            check_close("fp32 vs diffusers (float64)", images, expected, image_floats, 1e-4);
            if (cpu_images) check_close("fp32 vs cpu", images, cpu_images, image_floats, 1e-4);
        }
        float *again = decode_with(fp32, vae, "fp32 second decode", batch, latent_size, latents,
                                   image_floats);
        if (again) check_close("fp32 second decode vs diffusers", again, expected, image_floats, 1e-4);

        /* One image per chunk (a 1-byte bound; other cuDNN shapes, so other
         * algorithms) against the whole batch at once. */
        float *chunked = nan_filled(image_floats);
        status = vae_decode_in_chunks(fp32, vae, batch, latent_size, latents, chunked, 1);
        CHECK_MSG(status == FPDM_OK, "fp32 decode one image at a time: %s", fpdm_last_error(fp32));
        if (status == FPDM_OK && images)
            check_close("fp32 one image at a time vs the batch", chunked, images, image_floats, 1e-5);
        free(chunked);

        /* A batch past what one GroupNorm pass serves (the statistics of
         * VAE_MAX_GROUPS groups: 1024 images of the golden decoder's 4): the
         * default decodes it in one chunk, GroupNorm in two passes; against
         * one image at a time. */
        enum { MANY = 1100 };
        size_t one_latent = latent_floats / batch, one_image = image_floats / batch;
        float *many_latents = malloc(MANY * one_latent * sizeof(float));
        float *many_images = nan_filled(MANY * one_image), *many_single = nan_filled(MANY * one_image);
        if (many_latents && many_images && many_single) {
            for (size_t i = 0; i < MANY; i++)
                for (size_t j = 0; j < one_latent; j++)
                    many_latents[i * one_latent + j] =
                        latents[(i % batch) * one_latent + j] * (1.0f + 0.001f * (float)i);
            status = fpdm_vae_decode(fp32, vae, MANY, latent_size, many_latents, many_images);
            CHECK_MSG(status == FPDM_OK, "fp32 decode of %d images: %s", MANY, fpdm_last_error(fp32));
            status = vae_decode_in_chunks(fp32, vae, MANY, latent_size, many_latents, many_single, 1);
            CHECK_MSG(status == FPDM_OK, "fp32 decode of %d images one at a time: %s", MANY,
                      fpdm_last_error(fp32));
            check_close("fp32 1100 images at once vs one at a time", many_images, many_single,
                        MANY * one_image, 1e-5);
        }
        free(many_single);

        /* One pixel a side: 3x3 convolutions see nothing but padding around it. */
        float pixel[4];
        for (int c = 0; c < 4; c++) pixel[c] = latents[(size_t)c * latent_size * latent_size];
        size_t pixel_image_floats = (size_t)3 * 4 * 4;
        float *pixel_gpu = decode_with(fp32, vae, "fp32 one-pixel decode", 1, 1, pixel,
                                       pixel_image_floats);
        float *pixel_cpu = decode_file(cpu, GOLDEN_WEIGHTS, "cpu one-pixel decode", 1, 1, pixel,
                                       pixel_image_floats);
        if (pixel_gpu && pixel_cpu)
            check_close("fp32 one-pixel latent vs cpu", pixel_gpu, pixel_cpu, pixel_image_floats, 1e-4);

        /* Each context decodes only a VAE loaded on its own device. */
        float *unused = nan_filled(image_floats);
        CHECK(fpdm_vae_decode(cpu, vae, batch, latent_size, latents, unused) ==
              FPDM_ERR_INVALID_ARGUMENT);
        fprintf(stderr, "  cpu context, cuda VAE: %s\n", fpdm_last_error(cpu));
        fpdm_vae *cpu_vae = NULL;
        CHECK(fpdm_vae_load(cpu, GOLDEN_WEIGHTS, &cpu_vae) == FPDM_OK);
        if (cpu_vae) {
            CHECK(fpdm_vae_decode(fp32, cpu_vae, batch, latent_size, latents, unused) ==
                  FPDM_ERR_INVALID_ARGUMENT);
            fprintf(stderr, "  cuda context, cpu VAE: %s\n", fpdm_last_error(fp32));
            CHECK(fpdm_vae_prepare(fp32, cpu_vae, batch, latent_size) == FPDM_ERR_INVALID_ARGUMENT);
            CHECK(strstr(fpdm_last_error(fp32), "fpdm_vae_prepare") != NULL);
            fpdm_vae_free(cpu_vae);
        }
        CHECK_MSG(count_nan(unused, image_floats) == image_floats, "a refused decode wrote images");

        float *bf16_images = decode_file(bf16, GOLDEN_WEIGHTS, "bf16 decode", batch, latent_size,
                                         latents, image_floats);
        if (bf16_images)
            check_close("bf16 vs diffusers (float64)", bf16_images, expected, image_floats, 2e-2);
        /* bf16 activations are pixel-major, with a GroupNorm of their own:
         * the 1100 images again (two GroupNorm passes), against fp32. */
        if (many_latents && many_images) {
            float *bf16_many = decode_file(bf16, GOLDEN_WEIGHTS, "bf16 decode of 1100 images", MANY,
                                           latent_size, many_latents, MANY * one_image);
            if (bf16_many)
                check_close("bf16 1100 images vs fp32", bf16_many, many_images, MANY * one_image,
                            2e-2);
            free(bf16_many);
        }
        free(many_latents);
        free(many_images);

        /* An fp16 context decodes with bf16 activations too (fp16 would
         * overflow in SD decoders): the bf16 path's images. */
        fpdm_context *fp16 = open_context("cuda", FPDM_PRECISION_FP16);
        float *fp16_images = fp16 ? decode_file(fp16, GOLDEN_WEIGHTS, "fp16 decode", batch,
                                                latent_size, latents, image_floats)
                                  : NULL;
        if (fp16_images) {
            check_close("fp16 context vs diffusers (float64)", fp16_images, expected, image_floats,
                        2e-2);
            if (bf16_images)
                check_close("fp16 context vs bf16 context", fp16_images, bf16_images, image_floats,
                            1e-5);
        }
        free(fp16_images);
        fpdm_context_free(fp16);

        free(unused);
        free(pixel_gpu);
        free(pixel_cpu);
        free(again);
        free(images);
        free(cpu_images);
        free(bf16_images);
    }
    fpdm_vae_free(vae);
    free(latents);
    free(expected);
    safetensors_close(&io);
    return skip ? TEST_SKIP : 0;
}

static void test_sd_size(fpdm_context *cpu, fpdm_context *fp32, fpdm_context *bf16) {
    synthetic_vae_config config;
    char err[512], dir[] = "/tmp/fpdm-test-vae-gpu-XXXXXX", path[600];
    if (synthetic_vae_config_lookup("sd", &config, err, sizeof err) != 0 || !mkdtemp(dir)) {
        CHECK_MSG(0, "cannot set up the SD decoder file: %s", err);
        return;
    }
    snprintf(path, sizeof path, "%s/vae-sd.safetensors", dir);
    const synthetic_vae_format f32_with_groups = {SYNTHETIC_F32, 1};
    if (synthetic_vae_write(&config, f32_with_groups, path, 7, err, sizeof err) != 0) {
        CHECK_MSG(0, "%s", err);
        rmdir(dir);
        return;
    }
    size_t latent_floats = (size_t)4 * SD_LATENT_SIZE * SD_LATENT_SIZE;
    size_t image_size = (size_t)8 * SD_LATENT_SIZE;
    size_t image_floats = 3 * image_size * image_size;
    float *latents = malloc(latent_floats * sizeof(float));
    for (size_t i = 0; i < latent_floats; i++) latents[i] = uniform_value();

    float *cpu_images = decode_file(cpu, path, "SD size, cpu", 1, SD_LATENT_SIZE, latents,
                                    image_floats);
    float *bf16_images = decode_file(bf16, path, "SD size, bf16", 1, SD_LATENT_SIZE, latents,
                                     image_floats);
    float *fp32_images = decode_file(fp32, path, "SD size, fp32", 1, SD_LATENT_SIZE, latents,
                                     image_floats);
    if (cpu_images && bf16_images)
        check_close("SD size 256 px, bf16 vs cpu", bf16_images, cpu_images, image_floats, 2e-2);
    if (cpu_images && fp32_images)
        check_close("SD size 256 px, fp32 vs cpu", fp32_images, cpu_images, image_floats, 1e-3);

    /* fpdm_vae_prepare on a fresh context: the decode after it allocates
     * nothing and, with algorithms chosen beforehand, agrees all the same. */
    fpdm_context *fresh = open_context("cuda", FPDM_PRECISION_BF16);
    fpdm_vae *vae = NULL;
    if (fresh && fpdm_vae_load(fresh, path, &vae) == FPDM_OK) {
        fpdm_status status = fpdm_vae_prepare(fresh, vae, 2, SD_LATENT_SIZE);
        CHECK_MSG(status == FPDM_OK, "prepare: %s", fpdm_last_error(fresh));
        fpdm_memory_info before, after;
        CHECK(fpdm_context_memory(fresh, &before) == FPDM_OK && before.arena_bytes > 0);
        float *pair = malloc(2 * latent_floats * sizeof(float));
        float *pair_images = nan_filled(2 * image_floats);
        if (pair && pair_images && status == FPDM_OK) {
            memcpy(pair, latents, latent_floats * sizeof(float));
            memcpy(pair + latent_floats, latents, latent_floats * sizeof(float));
            status = fpdm_vae_decode(fresh, vae, 2, SD_LATENT_SIZE, pair, pair_images);
            CHECK_MSG(status == FPDM_OK, "decode after prepare: %s", fpdm_last_error(fresh));
            CHECK(fpdm_context_memory(fresh, &after) == FPDM_OK);
            CHECK_MSG(after.arena_bytes == before.arena_bytes,
                      "the decode grew the prepared arena: %zu -> %zu", before.arena_bytes,
                      after.arena_bytes);
            if (status == FPDM_OK && cpu_images)
                for (int i = 0; i < 2; i++)
                    check_close("SD size 256 px, bf16 after prepare vs cpu",
                                pair_images + i * image_floats, cpu_images, image_floats, 2e-2);
        }
        free(pair);
        free(pair_images);
    } else {
        CHECK_MSG(0, "cannot load the SD decoder for prepare: %s",
                  fresh ? fpdm_last_error(fresh) : "no context");
    }
    fpdm_vae_free(vae);

    /* bf16 precision keeps the activations in bf16: the same preparation
     * on a fresh fp32 context reserves more. */
    fpdm_context *fresh_fp32 = open_context("cuda", FPDM_PRECISION_FP32);
    fpdm_vae *fp32_vae = NULL;
    if (fresh && fresh_fp32 && fpdm_vae_load(fresh_fp32, path, &fp32_vae) == FPDM_OK &&
        fpdm_vae_prepare(fresh_fp32, fp32_vae, 2, SD_LATENT_SIZE) == FPDM_OK) {
        fpdm_memory_info bf16_memory, fp32_memory;
        CHECK(fpdm_context_memory(fresh, &bf16_memory) == FPDM_OK);
        CHECK(fpdm_context_memory(fresh_fp32, &fp32_memory) == FPDM_OK);
        fprintf(stderr, "  SD size 256 px, 2 images: arena bf16 %zu MB, fp32 %zu MB\n",
                bf16_memory.arena_bytes >> 20, fp32_memory.arena_bytes >> 20);
        CHECK_MSG(bf16_memory.arena_bytes < fp32_memory.arena_bytes,
                  "bf16 decode arena %zu >= fp32's %zu", bf16_memory.arena_bytes,
                  fp32_memory.arena_bytes);
    } else {
        CHECK_MSG(0, "fp32 prepare for the arena comparison: %s",
                  fresh_fp32 ? fpdm_last_error(fresh_fp32) : "no context");
    }
    fpdm_vae_free(fp32_vae);
    fpdm_context_free(fresh_fp32);
    fpdm_context_free(fresh);
    free(cpu_images);
    free(bf16_images);
    free(fp32_images);
    free(latents);
    unlink(path);
    rmdir(dir);
}

int main(void) {
    if (backend_cuda_device_count() == 0) {
        fprintf(stderr, "test_vae_gpu: no CUDA device, skipped\n");
        return TEST_SKIP;
    }
    fpdm_context *cpu = open_context("cpu", FPDM_PRECISION_FP32);
    fpdm_context *fp32 = open_context("cuda", FPDM_PRECISION_FP32);
    fpdm_context *bf16 = open_context("cuda", FPDM_PRECISION_BF16);
    int skip = 0;
    if (cpu && fp32 && bf16) {
        skip = test_golden(cpu, fp32, bf16) == TEST_SKIP;
        if (!skip) test_sd_size(cpu, fp32, bf16);
    }
    fpdm_context_free(cpu);
    fpdm_context_free(fp32);
    fpdm_context_free(bf16);
    if (skip && !test_failures) return TEST_SKIP;
    return test_finish("test_vae_gpu");
}
