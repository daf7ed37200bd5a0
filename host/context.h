/* context.h - the inside of an fpdm_context: its backend, its activation
 * arena, and the last error message. */
#ifndef FPDM_CONTEXT_H
#define FPDM_CONTEXT_H

#include "backend.h"
#include "fpdm.h"

struct fpdm_context {
    fpdm_context_params params;
    backend *be;
    int device_index;         /* -1 for the CPU */
    int num_threads;          /* params.num_threads, or OpenMP's default it stood for */
    char device_name[160];
    char error[1024];
    /* One block of backend memory for all activations. It grows only when a
     * call needs more than any call before (setting a larger batch), never
     * inside the sampling loop. */
    float *arena;
    size_t arena_floats;
    /* Host memory for a forward's per-row bookkeeping (the fixed-point
     * solve's residuals and stop flags), grown like the arena: thousands of
     * rows would not fit a thread's stack. */
    void *row_scratch;
    size_t row_scratch_bytes;
};

/* Records the message (printf-style) as the context's last error, passes it to
 * the log callback, and returns status, so a failure is one line:
 *   return context_fail(ctx, FPDM_ERR_BAD_FILE, "%s: ...", path); */
fpdm_status context_fail(fpdm_context *ctx, fpdm_status status, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
/* context_fail for FPDM_ERR_DEVICE: the printf-style subject, then " failed:
 * <the backend's recorded failure>", so the message says what the device
 * said. */
fpdm_status context_device_fail(fpdm_context *ctx, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
void context_log(fpdm_context *ctx, fpdm_log_level level, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* FPDM_OK when the context has a backend (its creation succeeded); otherwise
 * records FPDM_ERR_INVALID_ARGUMENT. Every call that uses the device checks
 * this first: fpdm.h lets a caller keep a failed context to read its error. */
fpdm_status context_check_device(fpdm_context *ctx);

/* FPDM_OK when the context has a backend and the model lives on its device;
 * otherwise records why. */
fpdm_status context_check_model(fpdm_context *ctx, const fpdm_model *model);

/* The index of the first NaN or infinity of values[n], or n when all are
 * finite (one vectorised pass over the exponent bits when they are). */
size_t context_first_non_finite(const float *values, size_t n);

/* FPDM_OK when values (NULL: none) holds n finite floats; otherwise records
 * FPDM_ERR_INVALID_ARGUMENT naming "what[i]". NaN or infinite inputs would
 * give NaN outputs without a word. */
fpdm_status context_check_finite(fpdm_context *ctx, const char *what, const float *values,
                                 size_t n);

/* Makes the arena hold at least num_floats; returns it, or NULL after
 * recording FPDM_ERR_OUT_OF_MEMORY. */
float *context_arena(fpdm_context *ctx, size_t num_floats);
/* The same, recording nothing on failure: for a caller that has a smaller
 * request to fall back on (a call that succeeds leaves no error behind). */
float *context_arena_try(fpdm_context *ctx, size_t num_floats);

/* The same for the host row scratch, in bytes. */
void *context_row_scratch(fpdm_context *ctx, size_t bytes);

#endif
