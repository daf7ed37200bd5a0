/* test_util.c - see test_util.h. */
/* for rand_r, which is POSIX */
#define _POSIX_C_SOURCE 200809L
#include "test_util.h"

#include <limits.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "context.h"
#include "float16.h"
#include "fpdm.h"
#include "safetensors.h"

int test_failures = 0;

double rel_l2(const float *a, const float *b, size_t n) {
    double diff = 0, norm = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - (double)b[i];
        diff += d * d;
        norm += (double)b[i] * (double)b[i];
    }
    if (norm == 0) return sqrt(diff);
    return sqrt(diff / norm);
}

void check_close(const char *what, const float *actual, const float *expected, size_t n,
                 double tolerance) {
    double err = rel_l2(actual, expected, n);
    int ok = err <= tolerance && !isnan(err);
    fprintf(stderr, "  %-48s rel_l2 %.3e (<= %.0e) %s\n", what, err, tolerance, ok ? "ok" : "FAIL");
    if (!ok) test_failures++;
}

float *golden_tensor(const safetensors_file *file, const char *name, size_t *n_out) {
    const safetensors_tensor *t = safetensors_find(file, name);
    if (!t) {
        fprintf(stderr, "golden file %s has no tensor %s\n", file->path, name);
        test_failures++;
        return NULL;
    }
    float *out = malloc((size_t)(t->num_elements ? t->num_elements : 1) * sizeof(float));
    safetensors_to_f32(t, out);
    if (n_out) *n_out = (size_t)t->num_elements;
    return out;
}

int golden_int(const safetensors_file *file, const char *metadata_key, int fallback) {
    const char *v = safetensors_metadata(file, metadata_key);
    return v ? atoi(v) : fallback;
}

static uint64_t random_state = 1;

void test_seed_random(const char *test_name) {
    const char *seed_text = getenv("FPDM_TEST_SEED");
    uint64_t seed = seed_text ? strtoull(seed_text, NULL, 10) : (uint64_t)time(NULL);
    fprintf(stderr, "%s: seed %llu (FPDM_TEST_SEED repeats it)\n", test_name,
            (unsigned long long)seed);
    random_state = seed * 2654435761u + 1;
}

float test_uniform(void) {
    random_state ^= random_state << 13;
    random_state ^= random_state >> 7;
    random_state ^= random_state << 17;
    return (float)((random_state >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

void test_random_fill(float *x, size_t n, unsigned *seed) {
    for (size_t i = 0; i < n; i++) x[i] = (float)((double)rand_r(seed) / RAND_MAX * 2.0 - 1.0);
}

void test_set_loading(fpdm_context *ctx, backend_dtype type, size_t staging_bytes) {
    ctx->be->operand_type = type;
    if (staging_bytes) {
        ctx->be->host_memory = 0;
        ctx->be->staging_bytes = staging_bytes;
    }
}

fpdm_model *test_load_model(fpdm_context *ctx, const char *path) {
    fpdm_model *model = NULL;
    CHECK_MSG(fpdm_model_load(ctx, path, &model) == FPDM_OK, "%s", fpdm_last_error(ctx));
    return model;
}

uint16_t test_to_16bit(float value, backend_dtype type) {
    return type == BACKEND_BF16 ? f32_to_bf16(value) : f32_to_f16(value);
}

static float from_16bit(uint16_t bits, backend_dtype type) {
    return type == BACKEND_BF16 ? bf16_to_f32(bits) : f16_to_f32(bits);
}

float test_operand_value(float value, backend_dtype type) {
    return type == BACKEND_F32 ? value : from_16bit(test_to_16bit(value, type), type);
}

float *test_upload_operand(backend *be, float *values, size_t n) {
    backend_dtype type = be->operand_type;
    size_t floats = backend_dtype_floats(type, n);
    float *device = be->alloc(be, floats ? floats : 1);
    CHECK_MSG(device != NULL, "cannot allocate %zu operands", n);
    if (!device) return NULL;
    if (type == BACKEND_F32) {
        CHECK(be->upload(be, device, values, n) == 0);
        return device;
    }
    uint16_t *packed = calloc(2 * floats + 2, sizeof(uint16_t));
    for (size_t i = 0; i < n; i++) {
        packed[i] = test_to_16bit(values[i], type);
        values[i] = from_16bit(packed[i], type);
    }
    CHECK(be->upload(be, device, (const float *)packed, floats) == 0);
    free(packed);
    return device;
}

int test_download_operand(backend *be, float *values, const float *device, size_t n) {
    backend_dtype type = be->operand_type;
    if (type == BACKEND_F32) return be->download(be, values, device, n);
    size_t floats = backend_dtype_floats(type, n);
    uint16_t *packed = calloc(2 * floats + 2, sizeof(uint16_t));
    int status = be->download(be, (float *)packed, device, floats);
    for (size_t i = 0; i < n; i++) values[i] = from_16bit(packed[i], type);
    free(packed);
    return status;
}

int test_make_temp_dir(char *dir, size_t size, const char *name) {
    snprintf(dir, size, "/tmp/fpdm_%s.XXXXXX", name);
    return mkdtemp(dir) ? 0 : -1;
}

void test_remove_temp_dir(const char *dir) {
    char command[PATH_MAX + 16];
    snprintf(command, sizeof command, "rm -rf '%s'", dir);
    if (system(command) != 0) fprintf(stderr, "could not remove %s\n", dir);
}

double test_now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

double test_fastest_launch_ms(backend *be, void (*launch)(void *arg), void *arg, int rounds,
                              int launches) {
    for (int warmup = 0; warmup < 2; warmup++) launch(arg);
    if (be->synchronize(be)) return -1;
    double best = -1;
    for (int round = 0; round < rounds; round++) {
        double start = test_now_seconds();
        for (int i = 0; i < launches; i++) launch(arg);
        if (be->synchronize(be)) return -1;
        double ms = 1e3 * (test_now_seconds() - start) / launches;
        if (best < 0 || ms < best) best = ms;
    }
    return best;
}

int test_finish(const char *name) {
    if (test_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, test_failures);
        return 1;
    }
    fprintf(stderr, "%s: all checks passed\n", name);
    return 0;
}

int test_write_model_with_value(const char *path, const char *copy, const char *name,
                                size_t index, float value) {
    safetensors_file file;
    char err[256];
    CHECK_MSG(safetensors_open(path, &file, err, sizeof err) == 0, "%s", err);
    const safetensors_tensor *t = safetensors_find(&file, name);
    CHECK_MSG(t && (size_t)t->num_elements > index, "%s has no element %zu of %s", path, index,
              name);
    FILE *out = fopen(copy, "wb");
    CHECK(out != NULL);
    int ok = t && (size_t)t->num_elements > index && out;
    if (ok) {
        size_t element = t->dtype == SAFETENSORS_F32 ? 4 : 2;
        size_t at = (size_t)(t->data - (const uint8_t *)file.mapping) + index * element;
        uint8_t *bytes = malloc(file.file_size);
        ok = bytes != NULL;
        if (ok) {
            memcpy(bytes, file.mapping, file.file_size);
            uint16_t half = t->dtype == SAFETENSORS_BF16 ? f32_to_bf16(value) : f32_to_f16(value);
            /* Little-endian, as the format and this machine store them. */
            if (element == 4)
                memcpy(bytes + at, &value, 4);
            else
                memcpy(bytes + at, &half, 2);
            ok = fwrite(bytes, 1, file.file_size, out) == file.file_size;
        }
        free(bytes);
    }
    if (out) ok = fclose(out) == 0 && ok;
    safetensors_close(&file);
    return ok ? 0 : -1;
}
