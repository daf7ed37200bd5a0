/* test_vae_sd.c - the VAE decoder at the full Stable Diffusion size: a file
 * with diffusers' tensor names and shapes for AutoencoderKL's decoder
 * (block_out_channels 128,256,512,512, layers_per_block 2, 4 latent channels,
 * no metadata, so everything is inferred and the defaults of 32 groups and
 * scaling factor 0.18215 apply), random float16 weights, decodes a 32x32
 * latent to 3x256x256 without NaN; the decode time is printed.
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
#include "test_util.h"

typedef struct sd_tensor {
    char name[128];
    int ndim;
    int64_t shape[4];
    uint16_t *data;  /* float16 */
    size_t count;
} sd_tensor;

typedef struct sd_file {
    sd_tensor tensors[160];
    int count;
    uint64_t rng;
} sd_file;

static uint64_t next_random(uint64_t *state) {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    return *state;
}

/* Uniform in [-1, 1). */
static float uniform(uint64_t *state) {
    return (float)((double)(next_random(state) >> 11) * 0x1.0p-52 - 1.0);
}

/* IEEE binary16, rounding to nearest; values below the normal range become 0. */
static uint16_t to_half(float value) {
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    uint16_t sign = (uint16_t)((bits >> 16) & 0x8000);
    int exponent = (int)((bits >> 23) & 0xff) - 127 + 15;
    uint32_t mantissa = bits & 0x7fffff;
    if (exponent <= 0) return sign;
    if (exponent >= 31) return (uint16_t)(sign | 0x7c00);
    uint32_t half = ((uint32_t)exponent << 10) | (mantissa >> 13);
    if (mantissa & 0x1000) half++;
    return (uint16_t)(sign | half);
}

/* A tensor of values center + spread * uniform. */
static void add_random(sd_file *f, const char *name, int ndim, const int64_t *shape, float center,
                       float spread) {
    if (f->count == (int)(sizeof f->tensors / sizeof f->tensors[0])) {
        CHECK_MSG(0, "too many tensors");
        return;
    }
    sd_tensor *t = &f->tensors[f->count++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->ndim = ndim;
    t->count = 1;
    for (int d = 0; d < ndim; d++) {
        t->shape[d] = shape[d];
        t->count *= (size_t)shape[d];
    }
    t->data = malloc(t->count * sizeof *t->data);
    for (size_t i = 0; i < t->count; i++) t->data[i] = to_half(center + spread * uniform(&f->rng));
}

static void add_conv(sd_file *f, const char *prefix, int cin, int cout, int kernel) {
    char name[128];
    int64_t weight_shape[4] = {cout, cin, kernel, kernel}, bias_shape[1] = {cout};
    snprintf(name, sizeof name, "%s.weight", prefix);
    add_random(f, name, 4, weight_shape, 0.0f, sqrtf(3.0f / (float)(cin * kernel * kernel)));
    snprintf(name, sizeof name, "%s.bias", prefix);
    add_random(f, name, 1, bias_shape, 0.0f, 0.1f);
}

static void add_norm(sd_file *f, const char *prefix, int channels) {
    char name[128];
    int64_t shape[1] = {channels};
    snprintf(name, sizeof name, "%s.weight", prefix);
    add_random(f, name, 1, shape, 1.0f, 0.2f);
    snprintf(name, sizeof name, "%s.bias", prefix);
    add_random(f, name, 1, shape, 0.0f, 0.2f);
}

static void add_resnet(sd_file *f, const char *prefix, int cin, int cout) {
    char name[96];
    snprintf(name, sizeof name, "%s.norm1", prefix);
    add_norm(f, name, cin);
    snprintf(name, sizeof name, "%s.conv1", prefix);
    add_conv(f, name, cin, cout, 3);
    snprintf(name, sizeof name, "%s.norm2", prefix);
    add_norm(f, name, cout);
    snprintf(name, sizeof name, "%s.conv2", prefix);
    add_conv(f, name, cout, cout, 3);
    if (cin != cout) {
        snprintf(name, sizeof name, "%s.conv_shortcut", prefix);
        add_conv(f, name, cin, cout, 1);
    }
}

static void build_sd_decoder(sd_file *f) {
    static const int reversed_channels[4] = {512, 512, 256, 128};
    static const char *const projections[4] = {"to_q", "to_k", "to_v", "to_out.0"};
    char name[64];
    add_conv(f, "post_quant_conv", 4, 4, 1);
    add_conv(f, "decoder.conv_in", 4, 512, 3);
    add_resnet(f, "decoder.mid_block.resnets.0", 512, 512);
    add_norm(f, "decoder.mid_block.attentions.0.group_norm", 512);
    for (int p = 0; p < 4; p++) {
        int64_t weight_shape[2] = {512, 512}, bias_shape[1] = {512};
        snprintf(name, sizeof name, "decoder.mid_block.attentions.0.%s.weight", projections[p]);
        add_random(f, name, 2, weight_shape, 0.0f, sqrtf(3.0f / 512.0f));
        snprintf(name, sizeof name, "decoder.mid_block.attentions.0.%s.bias", projections[p]);
        add_random(f, name, 1, bias_shape, 0.0f, 0.1f);
    }
    add_resnet(f, "decoder.mid_block.resnets.1", 512, 512);
    int prev = 512;
    for (int i = 0; i < 4; i++) {
        int out = reversed_channels[i];
        for (int j = 0; j < 3; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
            add_resnet(f, name, j == 0 ? prev : out, out);
        }
        if (i < 3) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            add_conv(f, name, out, out, 3);
        }
        prev = out;
    }
    add_norm(f, "decoder.conv_norm_out", 128);
    add_conv(f, "decoder.conv_out", 128, 3, 3);
}

static int write_file(const char *path, const sd_file *f) {
    size_t capacity = (size_t)f->count * 200 + 16;
    char *header = malloc(capacity);
    size_t len = 0, offset = 0;
    len += (size_t)snprintf(header + len, capacity - len, "{");
    for (int i = 0; i < f->count; i++) {
        const sd_tensor *t = &f->tensors[i];
        size_t bytes = t->count * sizeof *t->data;
        len += (size_t)snprintf(header + len, capacity - len, "%s\"%s\":{\"dtype\":\"F16\",\"shape\":[",
                                i ? "," : "", t->name);
        for (int d = 0; d < t->ndim; d++)
            len += (size_t)snprintf(header + len, capacity - len, "%s%lld", d ? "," : "",
                                    (long long)t->shape[d]);
        len += (size_t)snprintf(header + len, capacity - len, "],\"data_offsets\":[%zu,%zu]}",
                                offset, offset + bytes);
        offset += bytes;
    }
    len += (size_t)snprintf(header + len, capacity - len, "}");
    while (len % 8) header[len++] = ' ';
    FILE *out = fopen(path, "wb");
    int ok = out != NULL && len < capacity;
    if (ok) {
        unsigned char length[8];
        for (int i = 0; i < 8; i++) length[i] = (unsigned char)((uint64_t)len >> (8 * i));
        ok = fwrite(length, 1, 8, out) == 8 && fwrite(header, 1, len, out) == len;
        for (int i = 0; ok && i < f->count; i++)
            ok = fwrite(f->tensors[i].data, sizeof(uint16_t), f->tensors[i].count, out) ==
                 f->tensors[i].count;
    }
    if (out) ok = (fclose(out) == 0) && ok;
    free(header);
    CHECK_MSG(ok, "cannot write %s", path);
    return ok;
}

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

    sd_file *f = calloc(1, sizeof *f);
    f->rng = 0x9E3779B97F4A7C15ull;
    build_sd_decoder(f);
    int written = write_file(path, f);
    for (int i = 0; i < f->count; i++) free(f->tensors[i].data);

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
        for (int i = 0; i < 4 * LATENT * LATENT; i++) latents[i] = 1.7f * uniform(&f->rng);
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
    free(f);
    fpdm_context_free(ctx);
    return test_finish("test_vae_sd");
}
