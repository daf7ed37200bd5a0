/* test_vae.c - the VAE decoder (host/vae.c) against diffusers' AutoencoderKL.
 *
 *   - decoding the golden latents equals diffusers' float64 decode
 *     (tests/golden/vae-small*.safetensors, written by
 *     tests/golden/make_vae_golden.py);
 *   - the same weights under the older attention names (query/key/value/
 *     proj_attn, stored as 1x1 convolutions) give the same images;
 *   - the configuration given in the metadata instead of inferred gives the
 *     same images, and is checked against the shapes;
 *   - a missing, a misshapen and an unknown tensor, and a NaN weight, are
 *     refused with messages naming the file and the tensor.
 *   - the CPU GroupNorm on sizes that are no multiple of its summing lanes
 *     (21 values a group) equals a plain double-precision one;
 *   - the same random decoder written in float16 and in float32 (the
 *     synthetic writer of tools/support, which test_vae_sd uses in float16)
 *     decodes to the same images up to float16's rounding.
 * The full Stable Diffusion size is tests/test_vae_sd.c.
 *
 * Run from the repository root: build/test_vae (ctest does this).
 */
#define _POSIX_C_SOURCE 200809L

#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fpdm.h"
#include "safetensors.h"
#include "synthetic_vae.h"
#include "test_util.h"
#include "vae.h"
#include "vae_ops.h"

#define GOLDEN_WEIGHTS "tests/golden/vae-small.safetensors"
#define GOLDEN_IO "tests/golden/vae-small.io.safetensors"

/* ---- writing safetensors files (variants of the golden one) ------------------------------------------ */

typedef struct out_tensor {
    char name[160];
    const char *dtype;
    int ndim;
    int64_t shape[4];
    const void *data;
    size_t num_bytes;
} out_tensor;

typedef struct out_file {
    out_tensor *tensors;
    int count, capacity;
    int num_metadata;
    const char *const *metadata_keys;
    const char *const *metadata_values;
} out_file;

static out_tensor *add_tensor(out_file *f, const char *name, const char *dtype, int ndim,
                              const int64_t *shape, const void *data, size_t num_bytes) {
    if (f->count == f->capacity) {
        f->capacity = f->capacity ? 2 * f->capacity : 64;
        f->tensors = realloc(f->tensors, (size_t)f->capacity * sizeof *f->tensors);
    }
    out_tensor *t = &f->tensors[f->count++];
    snprintf(t->name, sizeof t->name, "%s", name);
    t->dtype = dtype;
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->data = data;
    t->num_bytes = num_bytes;
    return t;
}

static void out_file_free(out_file *f) { free(f->tensors); }

typedef struct text {
    char *s;
    size_t len, cap;
} text;

static void appendf(text *t, const char *format, ...) __attribute__((format(printf, 2, 3)));
static void appendf(text *t, const char *format, ...) {
    va_list args;
    va_start(args, format);
    int needed = vsnprintf(NULL, 0, format, args);
    va_end(args);
    if (t->len + (size_t)needed + 1 > t->cap) {
        t->cap = 2 * (t->len + (size_t)needed + 1);
        t->s = realloc(t->s, t->cap);
    }
    va_start(args, format);
    vsnprintf(t->s + t->len, t->cap - t->len, format, args);
    va_end(args);
    t->len += (size_t)needed;
}

static int write_file(const char *path, const out_file *f) {
    text header = {0};
    appendf(&header, "{");
    if (f->num_metadata) {
        appendf(&header, "\"__metadata__\":{");
        for (int i = 0; i < f->num_metadata; i++)
            appendf(&header, "%s\"%s\":\"%s\"", i ? "," : "", f->metadata_keys[i],
                    f->metadata_values[i]);
        appendf(&header, "}");
    }
    size_t offset = 0;
    for (int i = 0; i < f->count; i++) {
        const out_tensor *t = &f->tensors[i];
        appendf(&header, "%s\"%s\":{\"dtype\":\"%s\",\"shape\":[", i || f->num_metadata ? "," : "",
                t->name, t->dtype);
        for (int d = 0; d < t->ndim; d++) appendf(&header, "%s%lld", d ? "," : "", (long long)t->shape[d]);
        appendf(&header, "],\"data_offsets\":[%zu,%zu]}", offset, offset + t->num_bytes);
        offset += t->num_bytes;
    }
    appendf(&header, "}");
    while (header.len % 8) appendf(&header, " ");
    FILE *out = fopen(path, "wb");
    int ok = out != NULL;
    if (ok) {
        uint64_t n = header.len;
        unsigned char length[8];
        for (int i = 0; i < 8; i++) length[i] = (unsigned char)(n >> (8 * i));
        ok = fwrite(length, 1, 8, out) == 8 && fwrite(header.s, 1, header.len, out) == header.len;
        for (int i = 0; ok && i < f->count; i++)
            ok = fwrite(f->tensors[i].data, 1, f->tensors[i].num_bytes, out) == f->tensors[i].num_bytes;
        ok = (fclose(out) == 0) && ok;
    }
    free(header.s);
    CHECK_MSG(ok, "cannot write %s", path);
    return ok;
}

/* Every tensor and the metadata of an open file, pointing into its mapping. */
static void copy_of(const safetensors_file *src, out_file *f) {
    memset(f, 0, sizeof *f);
    for (int i = 0; i < src->num_tensors; i++) {
        const safetensors_tensor *t = &src->tensors[i];
        add_tensor(f, t->name, safetensors_dtype_name(t->dtype), t->ndim, t->shape, t->data,
                   t->num_bytes);
    }
    f->num_metadata = src->num_metadata;
    f->metadata_keys = (const char *const *)src->metadata_keys;
    f->metadata_values = (const char *const *)src->metadata_values;
}

static out_tensor *find_out(out_file *f, const char *name) {
    for (int i = 0; i < f->count; i++)
        if (strcmp(f->tensors[i].name, name) == 0) return &f->tensors[i];
    return NULL;
}

/* ---- the golden decode and its variants -------------------------------- */

static float *decode(fpdm_context *ctx, const char *path, int batch, int latent_size,
                     const float *latents, size_t image_floats) {
    fpdm_vae *vae = NULL;
    fpdm_status status = fpdm_vae_load(ctx, path, &vae);
    CHECK_MSG(status == FPDM_OK, "loading %s: %s", path, fpdm_last_error(ctx));
    if (status != FPDM_OK) return NULL;
    float *images = malloc(image_floats * sizeof(float));
    status = fpdm_vae_decode(ctx, vae, batch, latent_size, latents, images);
    CHECK_MSG(status == FPDM_OK, "decoding with %s: %s", path, fpdm_last_error(ctx));
    fpdm_vae_free(vae);
    if (status != FPDM_OK) {
        free(images);
        return NULL;
    }
    return images;
}

/* Loading `path` fails with FPDM_ERR_BAD_FILE and a message holding each of
 * the given fragments. */
static void expect_refused(fpdm_context *ctx, const char *path, const char *what,
                           const char *fragment1, const char *fragment2) {
    fpdm_vae *vae = NULL;
    fpdm_status status = fpdm_vae_load(ctx, path, &vae);
    const char *message = fpdm_last_error(ctx);
    fprintf(stderr, "  %s: %s\n", what, message);
    CHECK_MSG(status == FPDM_ERR_BAD_FILE, "%s: status %s", what, fpdm_status_name(status));
    CHECK(vae == NULL);
    CHECK_MSG(strstr(message, path) != NULL, "%s: message does not name the file", what);
    CHECK_MSG(strstr(message, fragment1) != NULL, "%s: message lacks \"%s\"", what, fragment1);
    CHECK_MSG(strstr(message, fragment2) != NULL, "%s: message lacks \"%s\"", what, fragment2);
    fpdm_vae_free(vae);
}

static const char *const OLD_ATTENTION_NAMES[4][2] = {
    {".to_q.", ".query."}, {".to_k.", ".key."}, {".to_v.", ".value."}, {".to_out.0.", ".proj_attn."}};

/* vae.scaling_factor (configured's fifth value) is a plain decimal, read as
 * Python writes it whatever the program's locale: under one whose decimal
 * point is ',' (when this machine has one; strtod then stopped at the '.')
 * "0.25" still gives 0.25. */
static void check_scaling_factor(fpdm_context *ctx, const char *path, out_file *configured,
                                 const char **config_values) {
    config_values[4] = "0.25";
    fpdm_vae *vae = NULL;
    static const char *const comma_locales[] = {"de_DE.UTF-8", "de_DE.utf8", "fr_FR.UTF-8",
                                                "fr_FR.utf8", "ru_RU.UTF-8", "ru_RU.utf8"};
    const char *comma_locale = NULL;
    for (size_t i = 0; i < sizeof comma_locales / sizeof comma_locales[0] && !comma_locale; i++)
        if (setlocale(LC_NUMERIC, comma_locales[i])) comma_locale = comma_locales[i];
    if (!comma_locale) fprintf(stderr, "  (no locale with a decimal comma here: 0.25 read in C)\n");
    if (write_file(path, configured)) {
        CHECK_MSG(fpdm_vae_load(ctx, path, &vae) == FPDM_OK, "%s", fpdm_last_error(ctx));
        CHECK_MSG(vae && fpdm_vae_get_info(vae)->scaling_factor == 0.25f,
                  "vae.scaling_factor 0.25 under the %s locale", comma_locale ? comma_locale : "C");
        fpdm_vae_free(vae);
    }
    setlocale(LC_NUMERIC, "C");
    const char *const refused[3] = {"1e-3", "0", "-0.5"};
    for (int i = 0; i < 3; i++) {
        config_values[4] = refused[i];
        if (write_file(path, configured))
            expect_refused(ctx, path, "scaling factor", "vae.scaling_factor",
                           "is not a positive plain decimal");
    }
    /* The smallest factor (27 decimals) and a large first weight: divided,
     * it is past float's range. */
    out_tensor *first = find_out(configured, "post_quant_conv.weight");
    CHECK(first != NULL && strcmp(first->dtype, "F32") == 0);
    float *large = first ? malloc(first->num_bytes) : NULL;
    if (large) {
        const void *kept = first->data;
        memcpy(large, kept, first->num_bytes);
        large[5] = 1e12f;
        first->data = large;
        config_values[4] = "0.000000000000000000000000001";
        if (write_file(path, configured))
            expect_refused(ctx, path, "scaling factor overflowing a weight",
                           "post_quant_conv.weight[5] / vae.scaling_factor", "is not a finite float");
        first->data = kept;
    }
    free(large);
    config_values[4] = "0.5";
}

static void test_golden(fpdm_context *ctx, const char *dir) {
    safetensors_file weights, io;
    char err[1024];
    if (safetensors_open(GOLDEN_WEIGHTS, &weights, err, sizeof err) != 0 ||
        safetensors_open(GOLDEN_IO, &io, err, sizeof err) != 0) {
        CHECK_MSG(0, "%s", err);
        return;
    }
    int batch = golden_int(&io, "batch", 0), latent_size = golden_int(&io, "latent_size", 0);
    size_t latent_floats = 0, image_floats = 0;
    float *latents = golden_tensor(&io, "latents", &latent_floats);
    float *expected = golden_tensor(&io, "images", &image_floats);
    CHECK(latent_floats == (size_t)batch * 4 * latent_size * latent_size);
    CHECK(image_floats == (size_t)batch * 3 * (4 * latent_size) * (4 * latent_size));

    fpdm_vae *vae = NULL;
    CHECK(fpdm_vae_load(ctx, GOLDEN_WEIGHTS, &vae) == FPDM_OK);
    if (vae) {
        const fpdm_vae_info *info = fpdm_vae_get_info(vae);
        CHECK(info->latent_channels == 4 && info->image_channels == 3 && info->upscale == 4);
        CHECK(info->scaling_factor == 0.5f);
        float scratch[1];
        CHECK(fpdm_vae_decode(ctx, vae, 0, latent_size, latents, scratch) == FPDM_ERR_INVALID_ARGUMENT);
        fpdm_vae_free(vae);
    }

    float *images = decode(ctx, GOLDEN_WEIGHTS, batch, latent_size, latents, image_floats);
    if (images) check_close("decode vs diffusers (float64)", images, expected, image_floats, 1e-5);

    /* NaN latents are refused; a finite weight that overflows (3e38 in
     * conv_out) gives FPDM_ERR_NOT_FINITE rather than black images. */
    char overflowing[1024];
    snprintf(overflowing, sizeof overflowing, "%s/vae-overflowing.safetensors", dir);
    fpdm_vae *vae_overflowing = NULL;
    float *overflow_images = malloc(image_floats * sizeof(float));
    if (test_write_model_with_value(GOLDEN_WEIGHTS, overflowing, "decoder.conv_out.weight", 0, 3e38f) == 0)
        CHECK_MSG(fpdm_vae_load(ctx, overflowing, &vae_overflowing) == FPDM_OK, "%s", fpdm_last_error(ctx));
    if (vae_overflowing) {
        fpdm_status status = fpdm_vae_decode(ctx, vae_overflowing, batch, latent_size, latents,
                                             overflow_images);
        CHECK_MSG(status == FPDM_ERR_NOT_FINITE && strstr(fpdm_last_error(ctx), "past float32's range"),
                  "overflowing VAE: status %d: %s", (int)status, fpdm_last_error(ctx));
        const float kept = latents[1];
        latents[1] = NAN;
        status = fpdm_vae_decode(ctx, vae_overflowing, batch, latent_size, latents, overflow_images);
        CHECK_MSG(status == FPDM_ERR_INVALID_ARGUMENT && strstr(fpdm_last_error(ctx), "latents[1] is nan"),
                  "NaN latents: status %d: %s", (int)status, fpdm_last_error(ctx));
        latents[1] = kept;
    }
    fpdm_vae_free(vae_overflowing);
    free(overflow_images);
    unlink(overflowing);

    /* The images of a batch decode alike together and in chunks: one image
     * per chunk (a 1-byte bound) gives the very same floats as the whole
     * batch at once, the default here. */
    if (images) {
        fpdm_vae *vae_again = NULL;
        float *one_by_one = malloc(image_floats * sizeof(float));
        CHECK(fpdm_vae_load(ctx, GOLDEN_WEIGHTS, &vae_again) == FPDM_OK);
        if (vae_again && one_by_one) {
            for (size_t i = 0; i < image_floats; i++) one_by_one[i] = NAN;
            CHECK_MSG(vae_decode_in_chunks(ctx, vae_again, batch, latent_size, latents,
                                           one_by_one, 1) == FPDM_OK,
                      "decoding in chunks: %s", fpdm_last_error(ctx));
            CHECK_MSG(memcmp(one_by_one, images, image_floats * sizeof(float)) == 0,
                      "a batch of %d decoded one image at a time differs from the whole batch",
                      batch);
        }
        free(one_by_one);
        fpdm_vae_free(vae_again);
    }

    /* The older names, with the linears stored as [C, C, 1, 1] convolutions. */
    out_file old;
    copy_of(&weights, &old);
    int renamed = 0;
    for (int i = 0; i < old.count; i++) {
        out_tensor *t = &old.tensors[i];
        if (strncmp(t->name, "decoder.mid_block.attentions.0", 30) != 0) continue;
        for (int k = 0; k < 4; k++) {
            char *at = strstr(t->name, OLD_ATTENTION_NAMES[k][0]);
            if (!at) continue;
            char renamed_name[160];
            snprintf(renamed_name, sizeof renamed_name, "%.*s%s%s", (int)(at - t->name), t->name,
                     OLD_ATTENTION_NAMES[k][1], at + strlen(OLD_ATTENTION_NAMES[k][0]));
            snprintf(t->name, sizeof t->name, "%s", renamed_name);
            if (t->ndim == 2) {
                t->ndim = 4;
                t->shape[2] = t->shape[3] = 1;
            }
            renamed++;
        }
    }
    CHECK(renamed == 8);
    char path[512];
    snprintf(path, sizeof path, "%s/vae-old-names.safetensors", dir);
    if (write_file(path, &old)) {
        float *old_images = decode(ctx, path, batch, latent_size, latents, image_floats);
        if (old_images && images)
            CHECK_MSG(memcmp(old_images, images, image_floats * sizeof(float)) == 0,
                      "old attention names decode differently");
        if (old_images) check_close("decode, old attention names", old_images, expected, image_floats, 1e-5);
        free(old_images);
        unlink(path);
    }
    out_file_free(&old);

    /* The whole configuration in the metadata, first right, then with a
     * block width the tensors do not have. */
    static const char *const config_keys[5] = {"vae.block_out_channels", "vae.layers_per_block",
                                               "vae.latent_channels", "vae.norm_num_groups",
                                               "vae.scaling_factor"};
    const char *config_values[5] = {"[8, 16, 16]", "1", "4", "4", "0.5"};
    out_file configured;
    copy_of(&weights, &configured);
    configured.num_metadata = 5;
    configured.metadata_keys = config_keys;
    configured.metadata_values = config_values;
    snprintf(path, sizeof path, "%s/vae-configured.safetensors", dir);
    if (write_file(path, &configured)) {
        float *configured_images = decode(ctx, path, batch, latent_size, latents, image_floats);
        if (configured_images && images)
            CHECK_MSG(memcmp(configured_images, images, image_floats * sizeof(float)) == 0,
                      "the configuration from metadata decodes differently");
        free(configured_images);
    }
    config_values[0] = "8,16,32";
    if (write_file(path, &configured))
        expect_refused(ctx, path, "metadata against shapes", "decoder.conv_in.weight",
                       "expected [32, 4, 3, 3]");
    config_values[0] = "[8, 16, 16]";
    check_scaling_factor(ctx, path, &configured, config_values);
    unlink(path);
    out_file_free(&configured);

    /* A missing tensor. */
    out_file broken;
    copy_of(&weights, &broken);
    const char *dropped = "decoder.up_blocks.2.resnets.0.conv_shortcut.weight";
    out_tensor *t = find_out(&broken, dropped);
    CHECK(t != NULL);
    if (t) *t = broken.tensors[--broken.count];
    snprintf(path, sizeof path, "%s/vae-missing.safetensors", dir);
    if (write_file(path, &broken)) expect_refused(ctx, path, "missing tensor", dropped, "missing");
    unlink(path);
    out_file_free(&broken);

    /* A misshapen tensor (same element count). */
    copy_of(&weights, &broken);
    const char *reshaped = "decoder.mid_block.resnets.1.conv2.weight";
    t = find_out(&broken, reshaped);
    CHECK(t != NULL);
    if (t) {
        t->shape[2] = 1;
        t->shape[3] = 9;
    }
    snprintf(path, sizeof path, "%s/vae-misshapen.safetensors", dir);
    if (write_file(path, &broken))
        expect_refused(ctx, path, "misshapen tensor", reshaped, "[16, 16, 1, 9], expected [16, 16, 3, 3]");
    unlink(path);
    out_file_free(&broken);

    /* A NaN weight, which would decode NaN images. */
    copy_of(&weights, &broken);
    const char *poisoned = "decoder.conv_out.bias";
    t = find_out(&broken, poisoned);
    CHECK(t != NULL && strcmp(t->dtype, "F32") == 0);
    float *nan_data = t ? malloc(t->num_bytes) : NULL;
    if (nan_data) {
        memcpy(nan_data, t->data, t->num_bytes);
        nan_data[2] = NAN;
        t->data = nan_data;
        snprintf(path, sizeof path, "%s/vae-nan.safetensors", dir);
        if (write_file(path, &broken))
            expect_refused(ctx, path, "NaN weight", "decoder.conv_out.bias[2] is nan",
                           "allowed: finite numbers");
        unlink(path);
    }
    free(nan_data);
    out_file_free(&broken);

    /* A tensor the decoder does not know. */
    copy_of(&weights, &broken);
    t = find_out(&broken, "decoder.conv_out.bias");
    const char *unknown = "decoder.mid_block.attentions.0.extra.bias";
    if (t) add_tensor(&broken, unknown, t->dtype, t->ndim, t->shape, t->data, t->num_bytes);
    snprintf(path, sizeof path, "%s/vae-unknown.safetensors", dir);
    if (write_file(path, &broken)) expect_refused(ctx, path, "unknown tensor", unknown, "unexpected");
    unlink(path);
    out_file_free(&broken);

    expect_refused(ctx, GOLDEN_IO, "not a VAE file", "decoder.up_blocks.0.resnets.0.conv1.weight",
                   "AutoencoderKL");

    fpdm_vae *none = NULL;
    CHECK(fpdm_vae_load(ctx, "tests/golden/no-such-vae.safetensors", &none) == FPDM_ERR_IO);
    CHECK(none == NULL);

    free(images);
    free(latents);
    free(expected);
    safetensors_close(&weights);
    safetensors_close(&io);
}

static size_t arena_bytes(fpdm_context *ctx) {
    fpdm_memory_info memory;
    CHECK(fpdm_context_memory(ctx, &memory) == FPDM_OK);
    return memory.arena_bytes;
}

/* fpdm_vae_prepare reserves what the decode of the same size will use, no
 * less (the decode then allocates nothing) and no more (a context that only
 * decodes ends with the same arena), never shrinks the arena, and refuses
 * what fpdm_vae_decode refuses, naming itself. */
static void test_prepare(void) {
    fpdm_context_params params = fpdm_context_default_params();
    fpdm_context *prepared = NULL, *plain = NULL;
    fpdm_vae *vae = NULL, *plain_vae = NULL;
    CHECK(fpdm_context_create(&params, &prepared) == FPDM_OK);
    CHECK(fpdm_context_create(&params, &plain) == FPDM_OK);
    CHECK(prepared && fpdm_vae_load(prepared, GOLDEN_WEIGHTS, &vae) == FPDM_OK);
    CHECK(plain && fpdm_vae_load(plain, GOLDEN_WEIGHTS, &plain_vae) == FPDM_OK);
    if (!vae || !plain_vae) goto done;

    const int batch = 3, latent_size = 8;
    const size_t latent_floats = (size_t)batch * 4 * latent_size * latent_size;
    const size_t image_floats = (size_t)batch * 3 * (4 * latent_size) * (4 * latent_size);
    float *latents = malloc(latent_floats * sizeof(float));
    float *images = malloc(image_floats * sizeof(float));
    if (!latents || !images) {
        CHECK_MSG(0, "out of memory");
        free(latents);
        free(images);
        goto done;
    }
    for (size_t i = 0; i < latent_floats; i++) latents[i] = (float)((int)(i % 7) - 3) * 0.25f;

    CHECK(arena_bytes(prepared) == 0);
    CHECK_MSG(fpdm_vae_prepare(prepared, vae, batch, latent_size) == FPDM_OK, "%s",
              fpdm_last_error(prepared));
    size_t reserved = arena_bytes(prepared);
    CHECK(reserved > 0);
    CHECK(fpdm_vae_decode(prepared, vae, batch, latent_size, latents, images) == FPDM_OK);
    CHECK_MSG(arena_bytes(prepared) == reserved, "the decode grew the prepared arena: %zu -> %zu",
              reserved, arena_bytes(prepared));
    CHECK(fpdm_vae_decode(plain, plain_vae, batch, latent_size, latents, images) == FPDM_OK);
    CHECK_MSG(arena_bytes(plain) == reserved, "prepare reserved %zu bytes, a decode uses %zu",
              reserved, arena_bytes(plain));
    CHECK(fpdm_vae_prepare(prepared, vae, 1, latent_size) == FPDM_OK);
    CHECK(arena_bytes(prepared) == reserved);
    CHECK(fpdm_vae_prepare(prepared, vae, batch, 2 * latent_size) == FPDM_OK);
    CHECK(arena_bytes(prepared) > reserved);

    CHECK(fpdm_vae_prepare(prepared, NULL, batch, latent_size) == FPDM_ERR_INVALID_ARGUMENT);
    CHECK(strstr(fpdm_last_error(prepared), "fpdm_vae_prepare") != NULL);
    CHECK(fpdm_vae_prepare(prepared, vae, 0, latent_size) == FPDM_ERR_INVALID_ARGUMENT);
    CHECK(strstr(fpdm_last_error(prepared), "batch 0") != NULL);
    CHECK(fpdm_vae_prepare(prepared, vae, batch, 0) == FPDM_ERR_INVALID_ARGUMENT);
    CHECK(fpdm_vae_prepare(prepared, vae, batch, 100000) == FPDM_ERR_INVALID_ARGUMENT);
    CHECK(fpdm_vae_prepare(NULL, vae, batch, latent_size) == FPDM_ERR_INVALID_ARGUMENT);
    free(latents);
    free(images);
done:
    fpdm_vae_free(vae);
    fpdm_vae_free(plain_vae);
    fpdm_context_free(prepared);
    fpdm_context_free(plain);
}

/* GroupNorm's statistics run in eight lanes plus a tail: 6 channels in 2
 * groups of 7 pixels make groups of 21 values, two lanes' worth and a tail of
 * 5 (a mean of 4 and a spread of 1: like PyTorch, y = x * scale + shift folds
 * the mean into a float shift, which loses digits when the mean dwarfs the
 * spread). Against the textbook formula in double, with and without SiLU. */
static void test_group_norm_tails(void) {
    enum { BATCH = 2, CHANNELS = 6, GROUPS = 2, PIXELS = 7 };
    const int n = BATCH * CHANNELS * PIXELS, per_group = CHANNELS / GROUPS;
    float in[BATCH * CHANNELS * PIXELS], out[BATCH * CHANNELS * PIXELS],
        expected[BATCH * CHANNELS * PIXELS], gamma[CHANNELS], beta[CHANNELS];
    for (int i = 0; i < n; i++) in[i] = 3.0f + (float)((i * 37) % 23) * 0.125f;
    for (int c = 0; c < CHANNELS; c++) {
        gamma[c] = 0.5f + 0.25f * (float)c;
        beta[c] = 0.1f * (float)c - 0.2f;
    }
    vae_ops ops;
    vae_ops_cpu_init(&ops, 2);
    for (int silu = 0; silu <= 1; silu++) {
        for (int bg = 0; bg < BATCH * GROUPS; bg++) {
            const float *x = in + (size_t)bg * per_group * PIXELS;
            double sum = 0.0, squares = 0.0;
            for (int i = 0; i < per_group * PIXELS; i++) sum += x[i];
            double mean = sum / (per_group * PIXELS);
            for (int i = 0; i < per_group * PIXELS; i++) squares += (x[i] - mean) * (x[i] - mean);
            double rstd = 1.0 / sqrt(squares / (per_group * PIXELS) + 1e-6);
            for (int i = 0; i < per_group * PIXELS; i++) {
                int c = (bg % GROUPS) * per_group + i / PIXELS;
                double y = (x[i] - mean) * rstd * gamma[c] + beta[c];
                expected[(size_t)bg * per_group * PIXELS + i] = (float)(silu ? y / (1.0 + exp(-y)) : y);
            }
        }
        ops.group_norm(&ops, out, in, gamma, beta, BATCH, CHANNELS, PIXELS, GROUPS, 1e-6f, silu);
        check_close(silu ? "group_norm + SiLU, 21-value groups" : "group_norm, 21-value groups",
                    out, expected, (size_t)n, 1e-6);
    }
}

/* conv2d against the sum written out in double, on shapes the decoders here
 * miss: odd sizes (tiles cut by the edge), thin and wide channel counts on
 * both sides of Winograd's cut-off, 1x1 and 5x5 kernels, an in-place
 * residual, batches, and an image whose transformed inputs take two bands. */
static void test_conv_shapes(void) {
    static const struct {
        int batch, in_channels, out_channels, height, width, kernel, residual;
    } shapes[] = {
        {2, 8, 5, 7, 5, 3, 0},    {1, 12, 16, 6, 9, 3, 1},  {3, 16, 8, 5, 4, 3, 2},
        {1, 7, 9, 5, 6, 3, 1},    {2, 9, 4, 1, 3, 3, 0},    {1, 10, 6, 6, 7, 5, 1},
        {2, 6, 11, 3, 5, 1, 2},   {1, 32, 32, 130, 256, 3, 1},
    };
    vae_ops ops;
    vae_ops_cpu_init(&ops, 2);
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        const int b = shapes[s].batch, c = shapes[s].in_channels, k = shapes[s].out_channels;
        const int h = shapes[s].height, w = shapes[s].width, r = shapes[s].kernel;
        const size_t plane = (size_t)h * w, in_n = (size_t)b * c * plane,
                     out_n = (size_t)b * k * plane, weight_n = (size_t)k * c * r * r;
        float *in = malloc(in_n * sizeof(float)), *weight = malloc(weight_n * sizeof(float));
        float *bias = malloc((size_t)k * sizeof(float)), *out = malloc(out_n * sizeof(float));
        float *residual = malloc(out_n * sizeof(float)), *expected = malloc(out_n * sizeof(float));
        size_t scratch_n = ops.conv2d_scratch_floats(&ops, b, c, k, h, w, r);
        float *scratch = malloc((scratch_n ? scratch_n : 1) * sizeof(float));
        for (size_t i = 0; i < in_n; i++) in[i] = (float)((i * 7919) % 201) / 100.0f - 1.0f;
        for (size_t i = 0; i < weight_n; i++) weight[i] = (float)((i * 104729) % 97) / 97.0f - 0.5f;
        for (int o = 0; o < k; o++) bias[o] = 0.1f * (float)o - 0.3f;
        for (size_t i = 0; i < out_n; i++) residual[i] = (float)((i * 31) % 13) / 13.0f;
        for (int image = 0; image < b; image++)
            for (int o = 0; o < k; o++)
                for (int y = 0; y < h; y++)
                    for (int x = 0; x < w; x++) {
                        double sum = bias[o];
                        for (int ci = 0; ci < c; ci++)
                            for (int i = 0; i < r; i++)
                                for (int j = 0; j < r; j++) {
                                    int yy = y + i - r / 2, xx = x + j - r / 2;
                                    if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
                                    sum += (double)weight[((size_t)o * c + ci) * r * r + i * r + j] *
                                           in[((size_t)image * c + ci) * plane + (size_t)yy * w + xx];
                                }
                        size_t at = ((size_t)image * k + o) * plane + (size_t)y * w + x;
                        expected[at] = (float)(sum + (shapes[s].residual ? residual[at] : 0.0));
                    }
        /* residual 2: accumulate into out, which holds the residual. */
        for (size_t i = 0; i < out_n; i++) out[i] = shapes[s].residual == 2 ? residual[i] : NAN;
        const float *res = shapes[s].residual == 1 ? residual : shapes[s].residual == 2 ? out : NULL;
        ops.conv2d(&ops, out, in, weight, bias, res, b, c, k, h, w, r, scratch);
        char what[96];
        snprintf(what, sizeof what, "conv2d %dx%d, %d -> %d, %dx%d, batch %d%s", r, r, c, k, h, w,
                 b, shapes[s].residual == 2 ? ", in place" : "");
        check_close(what, out, expected, out_n, 1e-6);
        free(in), free(weight), free(bias), free(out), free(residual), free(expected), free(scratch);
    }
}

/* The tiny synthetic decoder stored in float16 against float32. */
static void test_f16_storage(fpdm_context *ctx, const char *dir) {
    synthetic_vae_config config;
    char err[256], f32_path[512], f16_path[512];
    snprintf(f32_path, sizeof f32_path, "%s/synthetic-f32.safetensors", dir);
    snprintf(f16_path, sizeof f16_path, "%s/synthetic-f16.safetensors", dir);
    const synthetic_vae_format f32 = {SYNTHETIC_F32, 1}, f16 = {SYNTHETIC_F16, 1};
    int written = synthetic_vae_config_lookup("tiny", &config, err, sizeof err) == 0 &&
                  synthetic_vae_write(&config, f32, f32_path, 5, err, sizeof err) == 0 &&
                  synthetic_vae_write(&config, f16, f16_path, 5, err, sizeof err) == 0;
    CHECK_MSG(written, "%s", err);
    enum { LATENT = 4 };
    float latents[4 * LATENT * LATENT];
    for (int i = 0; i < 4 * LATENT * LATENT; i++) latents[i] = (float)((i * 7) % 11) * 0.2f - 1.0f;
    /* Two blocks: one upsampler, images twice the latents' size. */
    size_t image_floats = (size_t)3 * (LATENT * 2) * (LATENT * 2);
    float *from_f32 = written ? decode(ctx, f32_path, 1, LATENT, latents, image_floats) : NULL;
    float *from_f16 = written ? decode(ctx, f16_path, 1, LATENT, latents, image_floats) : NULL;
    if (from_f32 && from_f16)
        check_close("synthetic decoder, float16 file vs float32", from_f16, from_f32, image_floats,
                    2e-3);
    free(from_f32);
    free(from_f16);
    unlink(f32_path);
    unlink(f16_path);
}

int main(void) {
    fpdm_context_params params = fpdm_context_default_params();
    fpdm_context *ctx = NULL;
    if (fpdm_context_create(&params, &ctx) != FPDM_OK) {
        fprintf(stderr, "cannot create a CPU context: %s\n", ctx ? fpdm_last_error(ctx) : "out of memory");
        fpdm_context_free(ctx);
        return 1;
    }
    char dir[] = "/tmp/fpdm-test-vae-XXXXXX";
    if (!mkdtemp(dir)) {
        fprintf(stderr, "cannot create a temporary folder\n");
        fpdm_context_free(ctx);
        return 1;
    }
    test_golden(ctx, dir);
    test_prepare();
    test_group_norm_tails();
    test_conv_shapes();
    test_f16_storage(ctx, dir);
    rmdir(dir);
    fpdm_context_free(ctx);
    return test_finish("test_vae");
}
