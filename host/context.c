/* context.c - contexts (device, arena, last error), status names, and the
 * public single forward pass. */
#include <math.h>
#include <omp.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "error_message.h"
#include "model.h"
#include "network.h"

#ifdef FPDM_HAVE_CUDA
#include "backend_cuda.h"
#endif

const char *fpdm_status_name(fpdm_status status) {
    switch (status) {
    case FPDM_OK: return "ok";
    case FPDM_ERR_INVALID_ARGUMENT: return "invalid argument";
    case FPDM_ERR_IO: return "i/o error";
    case FPDM_ERR_BAD_FILE: return "bad file";
    case FPDM_ERR_OUT_OF_MEMORY: return "out of memory";
    case FPDM_ERR_UNSUPPORTED: return "unsupported";
    case FPDM_ERR_DEVICE: return "device error";
    case FPDM_ERR_CANCELLED: return "cancelled";
    case FPDM_ERR_NOT_FINITE: return "not finite";
    }
    return "unknown status";
}

static void emit(fpdm_context *ctx, fpdm_log_level level, const char *message) {
    if (ctx->params.log_callback) ctx->params.log_callback(level, message, ctx->params.log_user_data);
}

fpdm_status context_fail(fpdm_context *ctx, fpdm_status status, const char *format, ...) {
    va_list args;
    va_start(args, format);
    vsnprintf(ctx->error, sizeof ctx->error, format, args);
    va_end(args);
    make_printable(ctx->error);
    emit(ctx, FPDM_LOG_ERROR, ctx->error);
    return status;
}

fpdm_status context_device_fail(fpdm_context *ctx, const char *format, ...) {
    char what[512];
    va_list args;
    va_start(args, format);
    vsnprintf(what, sizeof what, format, args);
    va_end(args);
    const char *why = ctx->be && ctx->be->failure ? ctx->be->failure(ctx->be) : "";
    return context_fail(ctx, FPDM_ERR_DEVICE, "%s failed%s%s", what, why[0] ? ": " : "", why);
}

void context_log(fpdm_context *ctx, fpdm_log_level level, const char *format, ...) {
    if (!ctx->params.log_callback) return;
    char message[1024];
    va_list args;
    va_start(args, format);
    vsnprintf(message, sizeof message, format, args);
    va_end(args);
    make_printable(message);
    emit(ctx, level, message);
}

void *context_row_scratch(fpdm_context *ctx, size_t bytes) {
    if (bytes <= ctx->row_scratch_bytes) return ctx->row_scratch;
    free(ctx->row_scratch);
    ctx->row_scratch = malloc(bytes);
    ctx->row_scratch_bytes = ctx->row_scratch ? bytes : 0;
    if (!ctx->row_scratch)
        context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "cannot allocate %zu bytes for %s", bytes,
                     "the rows' bookkeeping");
    return ctx->row_scratch;
}

float *context_arena_try(fpdm_context *ctx, size_t num_floats) {
    if (num_floats <= ctx->arena_floats) return ctx->arena;
    if (ctx->arena) ctx->be->release(ctx->be, ctx->arena);
    ctx->arena = ctx->be->alloc(ctx->be, num_floats);
    ctx->arena_floats = ctx->arena ? num_floats : 0;
    if (ctx->arena)
        context_log(ctx, FPDM_LOG_DEBUG, "%s: activation arena %.2f MB", ctx->device_name,
                    (double)(num_floats * sizeof(float)) / (1 << 20));
    return ctx->arena;
}

float *context_arena(fpdm_context *ctx, size_t num_floats) {
    float *arena = context_arena_try(ctx, num_floats);
    if (!arena)
        context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "%s: cannot allocate %.1f MB of activations",
                     ctx->device_name, (double)(num_floats * sizeof(float)) / (1 << 20));
    return arena;
}

fpdm_context_params fpdm_context_default_params(void) {
    fpdm_context_params p;
    memset(&p, 0, sizeof p);
    p.device = "cpu";
    p.precision = FPDM_PRECISION_DEFAULT;
    return p;
}

enum { MAX_DEVICE_INDEX = 1024 };

/* "cpu" -> -1; "cuda" -> 0; "cuda:N" -> N (N <= MAX_DEVICE_INDEX); "auto" ->
 * 0 where this build has CUDA and a device is visible, else -1; anything
 * else -> -2. */
static int parse_device(const char *device) {
    if (!device || strcmp(device, "cpu") == 0) return -1;
    if (strcmp(device, "auto") == 0) {
#ifdef FPDM_HAVE_CUDA
        return backend_cuda_device_count() > 0 ? 0 : -1;
#else
        return -1;
#endif
    }
    if (strcmp(device, "cuda") == 0) return 0;
    if (strncmp(device, "cuda:", 5) != 0) return -2;
    /* Digits only: strtol would also take " 1", "+1" and "-0". */
    long index = 0;
    const char *digit = device + 5;
    for (; *digit >= '0' && *digit <= '9' && index <= MAX_DEVICE_INDEX; digit++)
        index = index * 10 + (*digit - '0');
    if (*digit || digit == device + 5 || index > MAX_DEVICE_INDEX) return -2;
    return (int)index;
}

static fpdm_status open_backend(fpdm_context *ctx) {
    const fpdm_context_params *p = &ctx->params;
    int index = parse_device(p->device);
    if (index == -2)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "unknown device \"%s\": use auto, cpu, cuda or cuda:N (N in 0..%d)",
                            p->device, MAX_DEVICE_INDEX);
    /* OpenMP would try to start every thread asked for. */
    if (p->num_threads < 0 || p->num_threads > 4096)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "num_threads must be in 0..4096, got %d",
                            p->num_threads);
    if (p->precision < FPDM_PRECISION_DEFAULT || p->precision > FPDM_PRECISION_FP16)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "precision %d is not an fpdm_precision (0 default, 1 fp32, 2 bf16, "
                            "3 fp16)", (int)p->precision);
    ctx->device_index = index;
    ctx->num_threads = p->num_threads > 0 ? p->num_threads : omp_get_max_threads();
    if (index < 0) {
        if (p->precision != FPDM_PRECISION_DEFAULT && p->precision != FPDM_PRECISION_FP32)
            return context_fail(ctx, FPDM_ERR_UNSUPPORTED,
                                "the CPU backend computes in fp32 only; bf16 and fp16 need a CUDA device");
        ctx->be = backend_cpu_create(p->num_threads);
        if (!ctx->be) return context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "out of memory");
        snprintf(ctx->device_name, sizeof ctx->device_name, "cpu");
        return FPDM_OK;
    }
#ifdef FPDM_HAVE_CUDA
    char err[512];
    ctx->be = backend_cuda_create(index, p->precision, err, sizeof err);
    if (!ctx->be) return context_fail(ctx, FPDM_ERR_DEVICE, "%s", err);
    char name[128];
    backend_cuda_device_name(index, name, sizeof name);
    snprintf(ctx->device_name, sizeof ctx->device_name, "cuda:%d (%s)", index, name);
    return FPDM_OK;
#else
    return context_fail(ctx, FPDM_ERR_UNSUPPORTED,
                        "device \"%s\": this build of fpdm has no CUDA backend (built without nvcc)",
                        p->device);
#endif
}

fpdm_status fpdm_context_create(const fpdm_context_params *params, fpdm_context **out) {
    if (!out) return FPDM_ERR_INVALID_ARGUMENT;
    fpdm_context *ctx = calloc(1, sizeof(*ctx));
    *out = ctx;
    if (!ctx) return FPDM_ERR_OUT_OF_MEMORY;
    ctx->device_index = -1; /* until a device opens */
    ctx->params = params ? *params : fpdm_context_default_params();
    return open_backend(ctx);
}

void fpdm_context_free(fpdm_context *ctx) {
    if (!ctx) return;
    if (ctx->be) {
        if (ctx->arena) ctx->be->release(ctx->be, ctx->arena);
        ctx->be->destroy(ctx->be);
    }
    free(ctx->row_scratch);
    free(ctx);
}

const char *fpdm_last_error(const fpdm_context *ctx) { return ctx ? ctx->error : "no context"; }

const char *fpdm_context_device_name(const fpdm_context *ctx) {
    return ctx ? ctx->device_name : "";
}

fpdm_precision fpdm_context_precision(const fpdm_context *ctx) {
    if (!ctx || ctx->device_index < 0) return FPDM_PRECISION_FP32;
    return ctx->params.precision == FPDM_PRECISION_DEFAULT ? FPDM_PRECISION_BF16
                                                           : ctx->params.precision;
}

int fpdm_context_num_threads(const fpdm_context *ctx) { return ctx ? ctx->num_threads : 0; }

static const char *dtype_name(backend_dtype type) {
    return type == BACKEND_BF16 ? "bf16" : type == BACKEND_F16 ? "fp16" : "float32";
}

/* Checks that a context can run a model: it has a backend, the model's
 * weights live on the same device, and they are stored in the operand type
 * this context's products read (a model loaded through a bf16 context holds
 * 16-bit weights an fp32 context cannot use, and the reverse). */
fpdm_status context_check_device(fpdm_context *ctx) {
    if (ctx->be) return FPDM_OK;
    return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                        "the context has no device (its creation failed)");
}

size_t context_first_non_finite(const float *values, size_t n) {
    /* Exponent bits all set is NaN or infinity. Tested on the bits and
     * without an early exit, the pass vectorises: fpdm_forward's x is checked
     * in the time fpdm-bench measures (for DiT-XL/2's 128 rows, 0.5 ms with
     * isfinite and an early exit, 0.09 ms this way, on a 2-core VM). */
    uint32_t any_non_finite = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t bits;
        memcpy(&bits, values + i, sizeof bits);
        any_non_finite |= (bits & 0x7f800000u) == 0x7f800000u;
    }
    if (!any_non_finite) return n;
    size_t i = 0;
    while (isfinite(values[i])) i++;
    return i;
}

fpdm_status context_check_finite(fpdm_context *ctx, const char *what, const float *values,
                                 size_t n) {
    size_t i = values ? context_first_non_finite(values, n) : n;
    if (i == n) return FPDM_OK;
    return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "%s[%zu] is %g (allowed: finite numbers)",
                        what, i, (double)values[i]);
}

fpdm_status context_check_model(fpdm_context *ctx, const fpdm_model *model) {
    if (context_check_device(ctx) != FPDM_OK) return FPDM_ERR_INVALID_ARGUMENT;
    if (!model) return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "the model is NULL");
    if (model->device_index != ctx->device_index)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "the model was loaded on another device than this context's (%s)",
                            ctx->device_name);
    if (model->be->operand_type != ctx->be->operand_type)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "the model was loaded through a context of another precision (its "
                            "weights are %s, this context's products read %s): load it through a "
                            "context of this precision",
                            dtype_name(model->be->operand_type), dtype_name(ctx->be->operand_type));
    return FPDM_OK;
}

fpdm_status fpdm_forward(fpdm_context *ctx, const fpdm_model *model, int batch, const float *x,
                         const float *timesteps, const int *labels, int iters,
                         const float *init_solution, float *out, float *solution_out) {
    if (!ctx) return FPDM_ERR_INVALID_ARGUMENT;
    fpdm_status status = context_check_model(ctx, model);
    if (status != FPDM_OK) return status;
    const model_config *cfg = &model->config;
    if (batch <= 0 || !x || !timesteps || !labels || !out)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "fpdm_forward: batch must be positive and x, timesteps, labels, out non-NULL");
    for (int i = 0; i < batch; i++)
        if (labels[i] < 0 || labels[i] > cfg->num_classes)
            return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                                "label %d of image %d is outside 0..%d (%d is the null class)",
                                labels[i], i, cfg->num_classes, cfg->num_classes);
    if (cfg->fixed_point && (iters < 0 || iters > FPDM_MAX_ITERS))
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "iters must be in 0..%d, got %d",
                            FPDM_MAX_ITERS, iters);
    const size_t image_floats = (size_t)cfg->in_channels * cfg->input_size * cfg->input_size;
    if ((status = context_check_finite(ctx, "timesteps", timesteps, (size_t)batch)) != FPDM_OK ||
        (status = context_check_finite(ctx, "x", x, (size_t)batch * image_floats)) != FPDM_OK ||
        (cfg->fixed_point &&
         (status = context_check_finite(ctx, "init_solution", init_solution,
                                        (size_t)batch * cfg->num_tokens * cfg->hidden_size)) !=
             FPDM_OK))
        return status;

    /* FPDM keeps a [B, T, D] buffer for the caller's initial solution and
     * one for the final solution (the post blocks then work on the iterate
     * in place), each only when asked for. */
    size_t solution_floats = (size_t)batch * cfg->num_tokens * cfg->hidden_size;
    size_t network_floats = network_arena_floats(ctx, cfg, batch);
    size_t init_floats = cfg->fixed_point && init_solution ? solution_floats : 0;
    size_t out_solution_floats = cfg->fixed_point && solution_out ? solution_floats : 0;
    float *arena = context_arena(ctx, network_floats + init_floats + out_solution_floats);
    if (!arena || !context_row_scratch(ctx, network_row_scratch_bytes(batch)))
        return FPDM_ERR_OUT_OF_MEMORY;
    network_state st;
    network_layout(ctx, cfg, batch, arena, &st);
    backend *be = ctx->be;
    float *device_init = init_floats ? arena + network_floats : NULL;
    float *device_solution = out_solution_floats ? arena + network_floats + init_floats : NULL;
    size_t in_floats = (size_t)batch * cfg->in_channels * cfg->input_size * cfg->input_size;
    if (be->upload(be, st.x, x, in_floats) != 0 ||
        (device_init && be->upload(be, device_init, init_solution, solution_floats) != 0))
        return context_device_fail(ctx, "%s: upload", ctx->device_name);
    network_solve solve = {iters, 0.0f, 0, device_init, device_solution, 0, -1.0f, NULL, NULL};
    status = network_forward(ctx, model, &st, timesteps, labels, &solve);
    if (status != FPDM_OK) return status;
    size_t out_floats = (size_t)batch * cfg->out_channels * cfg->input_size * cfg->input_size;
    if (be->download(be, out, st.out, out_floats) != 0 ||
        (solution_out && device_solution &&
         be->download(be, solution_out, device_solution, solution_floats) != 0))
        return context_device_fail(ctx, "%s: download", ctx->device_name);
    return FPDM_OK;
}

fpdm_status fpdm_context_memory(fpdm_context *ctx, fpdm_memory_info *info) {
    if (!ctx) return FPDM_ERR_INVALID_ARGUMENT;
    if (!info)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "fpdm_context_memory: info is NULL");
    if (context_check_device(ctx) != FPDM_OK) return FPDM_ERR_INVALID_ARGUMENT;
    memset(info, 0, sizeof *info);
    info->arena_bytes = ctx->arena_floats * sizeof(float);
    info->operand_bytes = (int)backend_dtype_bytes(ctx->be->operand_type);
    if (ctx->be->memory_info &&
        ctx->be->memory_info(ctx->be, &info->device_used_bytes, &info->device_total_bytes) != 0)
        return context_fail(ctx, FPDM_ERR_DEVICE, "%s: cannot read the memory in use", ctx->device_name);
    return FPDM_OK;
}

fpdm_status fpdm_benchmark_matmul(fpdm_context *ctx, int m, int n, int k, int repeats,
                                  double *seconds) {
    if (!ctx) return FPDM_ERR_INVALID_ARGUMENT;
    if (!seconds)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "fpdm_benchmark_matmul: seconds is NULL");
    if (context_check_device(ctx) != FPDM_OK) return FPDM_ERR_INVALID_ARGUMENT;
    if (m <= 0 || n <= 0 || k <= 0 || repeats <= 0)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "fpdm_benchmark_matmul: sizes and repeats must be positive");
    if (!ctx->be->benchmark_matmul)
        return context_fail(ctx, FPDM_ERR_UNSUPPORTED, "%s: no matrix-product benchmark", ctx->device_name);
    /* Each operand's bytes, and their sum, must fit a size_t: the backends
     * add them up for one allocation. (Divided, so no product can wrap.) */
    const size_t most_elements = SIZE_MAX / 16;
    const int too_big = (size_t)m > most_elements / (size_t)k ||
                        (size_t)k > most_elements / (size_t)n ||
                        (size_t)m > most_elements / (size_t)n;
    const int rc = too_big ? BACKEND_NO_MEMORY
                           : ctx->be->benchmark_matmul(ctx->be, m, n, k, repeats, seconds);
    if (rc == BACKEND_NO_MEMORY)
        return context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY,
                            "%s: out of memory for the %dx%dx%d benchmark product's operands",
                            ctx->device_name, m, n, k);
    if (rc != 0)
        return context_device_fail(ctx, "%s: the %dx%dx%d benchmark product", ctx->device_name, m,
                                   n, k);
    return FPDM_OK;
}
