/* synthetic_tensors.h - what the random-weight file writers share
 * (synthetic_model.c, synthetic_vae.c): a list of named tensors, each with a
 * fill kind that its writer interprets, written as one .safetensors file in
 * float32, bfloat16 or float16, the values drawn from one seeded splitmix64
 * stream in list order. */
#ifndef FPDM_SYNTHETIC_TENSORS_H
#define FPDM_SYNTHETIC_TENSORS_H

#include <cjson/cJSON.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* How the values are stored (each rounded to nearest, ties to even; float16
 * flushes values below its normal range to 0). */
typedef enum synthetic_storage { SYNTHETIC_F32, SYNTHETIC_BF16, SYNTHETIC_F16 } synthetic_storage;

typedef struct synthetic_tensor {
    char name[96];
    int ndim;
    int64_t shape[4];
    int kind;                 /* how its writer fills it */
} synthetic_tensor;

typedef struct synthetic_tensor_list {
    synthetic_tensor *entries;
    int count, capacity;
    int failed;               /* an add ran out of memory: the list is incomplete */
} synthetic_tensor_list;

/* Appends a tensor of ndim (<= 4) sizes named by the format; out of memory
 * sets list->failed, after which adds do nothing. */
void synthetic_tensor_add(synthetic_tensor_list *list, int kind, int ndim, const int64_t *shape,
                          const char *format, ...) __attribute__((format(printf, 5, 6)));
void synthetic_tensor_addv(synthetic_tensor_list *list, int kind, int ndim, const int64_t *shape,
                           const char *format, va_list args);
void synthetic_tensor_list_free(synthetic_tensor_list *list);

int64_t synthetic_tensor_elements(const synthetic_tensor *t);

/* The next value of the stream, uniform in [-amplitude, amplitude). */
float synthetic_uniform(uint64_t *rng, float amplitude);

/* Adds each tensor's entry (dtype, shape, data offsets, back to back in list
 * order) to the header object root. */
void synthetic_header_add_tensors(cJSON *root, const synthetic_tensor_list *list,
                                  synthetic_storage storage);

/* Fills values (synthetic_tensor_elements(t) floats) for tensor t. */
typedef void (*synthetic_fill_fn)(const synthetic_tensor *t, const void *context, uint64_t *rng,
                                  float *values);

/* Writes the file: json_header (with the entries above), then every tensor
 * as fill makes it, stored as storage says, from the stream seeded with
 * seed. A failed write removes the file. 0, or -1 with a message. */
int synthetic_tensors_write(const char *path, const char *json_header,
                            const synthetic_tensor_list *list, synthetic_storage storage,
                            synthetic_fill_fn fill, const void *context, uint64_t seed, char *err,
                            size_t err_size);

#endif
