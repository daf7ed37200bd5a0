/* synthetic_tensors.c - the tensor list and file writer the random-weight
 * writers share (see synthetic_tensors.h). */
#include "synthetic_tensors.h"
#include "temp_path.h"
#include "safetensors_header.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void synthetic_tensor_addv(synthetic_tensor_list *list, int kind, int ndim, const int64_t *shape,
                           const char *format, va_list args)
{
    if (list->failed)
        return;
    if (list->count == list->capacity) {
        int capacity = list->capacity ? 2 * list->capacity : 128;
        synthetic_tensor *grown = realloc(list->entries, (size_t)capacity * sizeof *grown);
        if (!grown) {
            list->failed = 1;
            return;
        }
        list->entries = grown;
        list->capacity = capacity;
    }
    synthetic_tensor *t = &list->entries[list->count++];
    vsnprintf(t->name, sizeof t->name, format, args);
    t->ndim = ndim;
    for (int d = 0; d < 4; d++)
        t->shape[d] = d < ndim ? shape[d] : 0;
    t->kind = kind;
}

void synthetic_tensor_add(synthetic_tensor_list *list, int kind, int ndim, const int64_t *shape,
                          const char *format, ...)
{
    va_list args;
    va_start(args, format);
    synthetic_tensor_addv(list, kind, ndim, shape, format, args);
    va_end(args);
}

void synthetic_tensor_list_free(synthetic_tensor_list *list)
{
    free(list->entries);
    memset(list, 0, sizeof *list);
}

int64_t synthetic_tensor_elements(const synthetic_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= t->shape[d];
    return n;
}

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

float synthetic_uniform(uint64_t *rng, float amplitude)
{
    double unit = (double)(splitmix64(rng) >> 11) * 0x1.0p-53;
    return amplitude * (float)(2.0 * unit - 1.0);
}

static const char *const storage_dtypes[] = {"F32", "BF16", "F16"};

void synthetic_header_add_tensors(cJSON *root, const synthetic_tensor_list *list,
                                  synthetic_storage storage)
{
    const int64_t element_size = storage == SYNTHETIC_F32 ? 4 : 2;
    int64_t offset = 0;
    for (int i = 0; i < list->count; i++) {
        const synthetic_tensor *t = &list->entries[i];
        cJSON *entry = cJSON_AddObjectToObject(root, t->name);
        cJSON_AddStringToObject(entry, "dtype", storage_dtypes[storage]);
        cJSON *shape = cJSON_AddArrayToObject(entry, "shape");
        for (int d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        const int64_t end = offset + synthetic_tensor_elements(t) * element_size;
        cJSON *offsets = cJSON_AddArrayToObject(entry, "data_offsets");
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)end));
        offset = end;
    }
}

static uint16_t to_bf16(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    bits += 0x7fffu + ((bits >> 16) & 1u);  /* round to nearest even */
    return (uint16_t)(bits >> 16);
}

static uint16_t to_f16(float value)
{
    uint32_t bits;
    memcpy(&bits, &value, sizeof bits);
    const uint16_t sign = (uint16_t)((bits >> 16) & 0x8000u);
    const int exponent = (int)((bits >> 23) & 0xffu) - 127 + 15;
    if (exponent <= 0)
        return sign;
    if (exponent >= 31)
        return (uint16_t)(sign | 0x7c00u);
    /* The 13 dropped mantissa bits, rounded to nearest even; a carry moves
     * into the exponent, and past the largest half to infinity. */
    uint32_t half = ((uint32_t)exponent << 10) | ((bits & 0x7fffffu) >> 13);
    const uint32_t dropped = bits & 0x1fffu;
    if (dropped > 0x1000u || (dropped == 0x1000u && (half & 1u)))
        half++;
    return (uint16_t)(sign | (half > 0x7c00u ? 0x7c00u : half));
}

int synthetic_tensors_write(const char *path, const char *json_header,
                            const synthetic_tensor_list *list, synthetic_storage storage,
                            synthetic_fill_fn fill, const void *context, uint64_t seed, char *err,
                            size_t err_size)
{
    const int halves_stored = storage != SYNTHETIC_F32;
    int64_t largest = 1;
    for (int i = 0; i < list->count; i++)
        if (synthetic_tensor_elements(&list->entries[i]) > largest)
            largest = synthetic_tensor_elements(&list->entries[i]);
    float *values = malloc((size_t)largest * sizeof(float));
    uint16_t *halves = halves_stored ? malloc((size_t)largest * sizeof(uint16_t)) : NULL;
    temp_file out;
    int rc = -1;
    if (list->failed || !json_header || !values || (halves_stored && !halves)) {
        snprintf(err, err_size, "%s: out of memory", path);
        goto done;
    }
    if (temp_file_create(&out, path, err, err_size) != 0)
        goto done;
    /* Tensor data in the host's byte order: little-endian, as the format
     * requires, on every machine fpdm targets. */
    int ok = write_safetensors_header(out.file, json_header) == 0;
    if (!ok)
        temp_file_failed(&out, errno);
    uint64_t rng = seed;
    for (int i = 0; ok && i < list->count; i++) {
        const synthetic_tensor *t = &list->entries[i];
        const size_t n = (size_t)synthetic_tensor_elements(t);
        fill(t, context, &rng, values);
        if (halves_stored) {
            for (size_t k = 0; k < n; k++)
                halves[k] = storage == SYNTHETIC_BF16 ? to_bf16(values[k]) : to_f16(values[k]);
            ok = temp_file_write(&out, halves, n * sizeof(uint16_t));
        } else {
            ok = temp_file_write(&out, values, n * sizeof(float));
        }
    }
    rc = temp_file_commit(&out, path, err, err_size);
done:
    free(values);
    free(halves);
    return rc;
}
