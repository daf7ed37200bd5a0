/* test_vae_sd.c - the VAE decoder at the full Stable Diffusion size: a file
 * with diffusers' tensor names and shapes for AutoencoderKL's decoder
 * (block_out_channels 128,256,512,512, layers_per_block 2, 4 latent channels,
 * no metadata, so everything is inferred and the defaults of 32 groups and
 * scaling factor 0.18215 apply), random float16 weights (written by
 * tools/support/synthetic_vae.c), decodes a 32x32 latent to 3x256x256
 * without NaN; the decode time is printed.
 * Correctness against diffusers is tests/test_vae.c; this one checks size,
 * inference of the configuration, float16 weights and speed.
 *
 * Run from the repository root: build/test_vae_sd (ctest does this; about
 * 10 s on 2 cores).
 */
#define _POSIX_C_SOURCE 200809L

#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fpdm.h"
#include "synthetic_vae.h"
#include "test_util.h"

int main(void) {
    fpdm_context_params params = fpdm_context_default_params();
    fpdm_context *ctx = NULL;
    if (fpdm_context_create(&params, &ctx) != FPDM_OK) {
        fprintf(stderr, "cannot create a CPU context: %s\n", ctx ? fpdm_last_error(ctx) : "out of memory");
        fpdm_context_free(ctx);
        return 1;
    }
    char path[] = "/tmp/fpdm-test-vae-sd-XXXXXX";
    int fd = mkstemp(path);
    if (fd < 0) {
        fprintf(stderr, "cannot create a temporary file\n");
        fpdm_context_free(ctx);
        return 1;
    }
    close(fd);

    synthetic_vae_config config;
    char err[256];
    const synthetic_vae_format f16_inferred = {SYNTHETIC_F16, 0};
    int written = synthetic_vae_config_lookup("sd", &config, err, sizeof err) == 0 &&
                  synthetic_vae_write(&config, f16_inferred, path, 0x9E3779B97F4A7C15ull, err,
                                      sizeof err) == 0;
    CHECK_MSG(written, "%s", err);

    fpdm_vae *vae = NULL;
    fpdm_status status = written ? fpdm_vae_load(ctx, path, &vae) : FPDM_ERR_IO;
    unlink(path);
    CHECK_MSG(status == FPDM_OK, "SD-size VAE: %s", fpdm_last_error(ctx));
    if (vae) {
        const fpdm_vae_info *info = fpdm_vae_get_info(vae);
        CHECK(info->latent_channels == 4 && info->image_channels == 3 && info->upscale == 8);
        CHECK(info->scaling_factor == 0.18215f);

        enum { LATENT = 32, IMAGE = 256, PIXELS = 3 * IMAGE * IMAGE };
        float *latents = malloc(4 * LATENT * LATENT * sizeof(float));
        float *images = malloc(PIXELS * sizeof(float));
        /* About the spread of real sampled latents (unit variance after scaling). */
        uint64_t rng = 12345;
        for (int i = 0; i < 4 * LATENT * LATENT; i++) latents[i] = synthetic_uniform(&rng, 1.7f);
        double start = omp_get_wtime();
        status = fpdm_vae_decode(ctx, vae, 1, LATENT, latents, images);
        double seconds = omp_get_wtime() - start;
        CHECK_MSG(status == FPDM_OK, "SD-size decode: %s", fpdm_last_error(ctx));
        if (status == FPDM_OK) {
            size_t bad = 0;
            double sum = 0, squares = 0;
            for (int i = 0; i < PIXELS; i++) {
                if (!isfinite(images[i])) bad++;
                sum += images[i];
                squares += (double)images[i] * images[i];
            }
            double mean = sum / PIXELS, std = sqrt(squares / PIXELS - mean * mean);
            CHECK_MSG(bad == 0, "%zu non-finite pixels", bad);
            CHECK_MSG(std > 1e-3, "the image is flat (std %g)", std);
            fprintf(stderr,
                    "  SD VAE decode 1x4x32x32 -> 1x3x256x256: %.2f s on %d thread(s) (image std %.3f)\n",
                    seconds, omp_get_max_threads(), std);
        }
        free(latents);
        free(images);
        fpdm_vae_free(vae);
    }
    fpdm_context_free(ctx);
    return test_finish("test_vae_sd");
}
