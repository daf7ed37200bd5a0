/* test_util.h - what every C test needs: checks that count failures, relative
 * L2 error, and golden files (safetensors written by tools/reference.py). */
#ifndef FPDM_TEST_UTIL_H
#define FPDM_TEST_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "backend.h"

#define TEST_SKIP 77

extern int test_failures;

#define CHECK(cond)                                                                   \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: check failed: %s\n", __FILE__, __LINE__, #cond);  \
            test_failures++;                                                          \
        }                                                                             \
    } while (0)

#define CHECK_MSG(cond, ...)                                                          \
    do {                                                                              \
        if (!(cond)) {                                                                \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond); \
            fprintf(stderr, __VA_ARGS__);                                             \
            fprintf(stderr, "\n");                                                    \
            test_failures++;                                                          \
        }                                                                             \
    } while (0)

/* ||a - b|| / ||b||, in double. */
double rel_l2(const float *a, const float *b, size_t n);

/* Checks rel_l2(actual, expected) <= tolerance, printing the figure either way. */
void check_close(const char *what, const float *actual, const float *expected, size_t n,
                 double tolerance);

/* Reads a whole golden tensor as float32 (malloc'd); NULL and a failed check if
 * missing. *n_out receives the element count when not NULL. */
typedef struct safetensors_file safetensors_file;
float *golden_tensor(const safetensors_file *file, const char *name, size_t *n_out);
int golden_int(const safetensors_file *file, const char *metadata_key, int fallback);

/* Random inputs: test_seed_random seeds test_uniform from FPDM_TEST_SEED, or
 * from the clock, and prints the seed so a failing run can be repeated. */
void test_seed_random(const char *test_name);
float test_uniform(void); /* in [-1, 1) */
/* x[i] uniform in [-1, 1] from rand_r, for tests that fix their seed. */
void test_random_fill(float *x, size_t n, unsigned *seed);

/* Sets how a CPU context loads models, for the loader's tests: weights in
 * `type` (as a bf16 or fp16 CUDA context stores them) and, when
 * staging_bytes is not 0, through host chunks of that size as for a device
 * (the CPU backend's "upload" is a copy). */
typedef struct fpdm_context fpdm_context;
void test_set_loading(fpdm_context *ctx, backend_dtype type, size_t staging_bytes);

/* Loads a model, failing the check with the library's message; NULL then. */
typedef struct fpdm_model fpdm_model;
fpdm_model *test_load_model(fpdm_context *ctx, const char *path);

/* Operand buffers (backend.h) from a test's side. A value as a 16-bit
 * operand type (BACKEND_BF16 or BACKEND_F16) stores it, and that stored value
 * back as a float (the value itself for BACKEND_F32). */
uint16_t test_to_16bit(float value, backend_dtype type);
float test_operand_value(float value, backend_dtype type);
/* Uploads n values into a new buffer of the backend's operand type; with a
 * 16-bit type `values` is rounded in place to exactly what was stored, so a
 * CPU reference can use the same numbers. NULL (and a failed check) when the
 * backend refuses. */
float *test_upload_operand(backend *be, float *values, size_t n);
/* Reads n operands of the backend's operand type back as float32; 0, or the
 * backend's non-zero status. */
int test_download_operand(backend *be, float *values, const float *device, size_t n);

/* Benchmarks (tests/gpu/bench_*.c): a monotonic clock in seconds, and the
 * fastest mean milliseconds of one launch(arg) over `rounds` rounds of
 * `launches` launches each, after two untimed ones; the backend is
 * synchronized around every round. -1 when a synchronize fails. */
double test_now_seconds(void);
double test_fastest_launch_ms(backend *be, void (*launch)(void *arg), void *arg, int rounds,
                              int launches);

/* A fresh folder "/tmp/fpdm_NAME.XXXXXX" into dir (size bytes); 0, or -1. */
int test_make_temp_dir(char *dir, size_t size, const char *name);
/* Removes that folder and everything in it (a note on stderr if it cannot). */
void test_remove_temp_dir(const char *dir);

/* Writes `copy`: the safetensors file `path` with element `index` of tensor
 * `name` set to value (in the tensor's dtype). 0, or -1 after a failed check. */
int test_write_model_with_value(const char *path, const char *copy, const char *name,
                                size_t index, float value);

/* Prints "N passed, M failed" style summary and returns the exit code. */
int test_finish(const char *name);

#endif
