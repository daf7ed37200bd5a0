/* safetensors.h - reading .safetensors files (the Hugging Face format) safely.
 *
 * Layout: 8-byte little-endian header length N, N bytes of JSON, then the data
 * section. The JSON maps tensor names to {"dtype", "shape", "data_offsets"}
 * (offsets relative to the data section) and may hold "__metadata__", a map of
 * strings to strings.
 *
 * safetensors_open maps the file read-only and checks everything before the
 * caller sees it: header length inside the file, well-formed JSON, known
 * dtypes, shapes of non-negative integers whose element count times dtype size
 * equals the byte span (no overflow), spans inside the data section, spans not
 * overlapping, unique names. Stricter than the format needs where that costs
 * nothing real: the header length is capped at 100 MB, may not contain NUL
 * bytes, and a tensor entry may hold only its three fields. Gaps between spans
 * are allowed. Every error message starts with the file's path.
 */
#ifndef FPDM_SAFETENSORS_H
#define FPDM_SAFETENSORS_H

#include <stddef.h>
#include <stdint.h>

#include "error_message.h"
#include "fpdm.h"

#define SAFETENSORS_MAX_DIMS 8

typedef enum safetensors_dtype {
    SAFETENSORS_F32 = 0,
    SAFETENSORS_F16 = 1,
    SAFETENSORS_BF16 = 2,
    SAFETENSORS_I64 = 3,
    SAFETENSORS_I32 = 4,
    SAFETENSORS_F64 = 5,
} safetensors_dtype;

typedef struct safetensors_tensor {
    char *name;
    safetensors_dtype dtype;
    int ndim;
    int64_t shape[SAFETENSORS_MAX_DIMS];
    int64_t num_elements;
    const uint8_t *data;  /* inside the mapping; not necessarily aligned */
    size_t num_bytes;
} safetensors_tensor;

typedef struct safetensors_file {
    char *path;
    void *mapping;
    size_t file_size;
    int num_tensors;
    safetensors_tensor *tensors;  /* in header order */
    int num_metadata;
    char **metadata_keys;
    char **metadata_values;
} safetensors_file;

/* Returns 0 on success. On failure returns ERROR_REFUSED or
 * ERROR_OUT_OF_MEMORY (error_message.h), writes "PATH: problem" into err
 * (always NUL-terminated) and leaves *file empty (safe to close). */
int safetensors_open(const char *path, safetensors_file *file, char *err, size_t err_size);
/* The status a failed safetensors_open's return value means to a caller of
 * the public API: FPDM_ERR_OUT_OF_MEMORY; FPDM_ERR_IO when the file cannot be
 * opened at all; else FPDM_ERR_BAD_FILE (the reader parsed it and refused). */
fpdm_status safetensors_failure_status(int open_result, const char *path);
void safetensors_close(safetensors_file *file);

const safetensors_tensor *safetensors_find(const safetensors_file *file, const char *name);
/* The metadata value for key, or NULL. */
const char *safetensors_metadata(const safetensors_file *file, const char *key);

const char *safetensors_dtype_name(safetensors_dtype dtype);
size_t safetensors_dtype_size(safetensors_dtype dtype);
/* Converts any float dtype (F32, F16, BF16, F64) to float32; integer dtypes are
 * converted by value. dst has num_elements floats. */
void safetensors_to_f32(const safetensors_tensor *tensor, float *dst);

#endif
