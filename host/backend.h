/* backend.h - the small set of operations the network and the sampler are
 * written over. The CPU backend (backend_cpu.c, float32, OpenBLAS, OpenMP) is
 * the oracle; the CUDA backend (kernels/) implements the same table and is
 * tested against it.
 *
 * Pointers named device_* or passed as activations/weights live in the
 * backend's memory (host memory for the CPU backend). Arguments named host_*
 * are host memory. Operations are issued in order on the backend's one stream;
 * only `synchronize`, `download` and `row_norms` wait for them.
 *
 * Tensor layouts are row-major. A "linear" applies a PyTorch nn.Linear:
 * out[r, o] = sum_i in[r, i] * weight[o, i] + bias[o].
 *
 * Operands. Buffers are float32 except the "operand" buffers: the inputs of
 * matrix products (linear weights, linear's `in`, attention's qkv) and what
 * produces them, which hold the backend's operand_type. That is float32 on
 * the CPU and in the CUDA backend's fp32 mode, and bf16 (or fp16) in its bf16
 * (fp16) mode, so that products run on 16-bit tensor-core inputs that are
 * stored, not converted on every use, and the activations they read take half
 * the memory. Where a signature says `void *` the buffer is an operand buffer;
 * sizes stay counted in elements. Everything that accumulates across blocks
 * or steps (the residual stream, the fixed-point state, the sampler's x)
 * stays float32.
 */
#ifndef FPDM_BACKEND_H
#define FPDM_BACKEND_H

#include <stddef.h>
#include <stdint.h>

typedef enum backend_activation {
    BACKEND_ACT_NONE = 0,
    BACKEND_ACT_GELU_TANH = 1,
    BACKEND_ACT_SILU = 2,
} backend_activation;

typedef enum backend_dtype {
    BACKEND_F32 = 0,
    BACKEND_BF16 = 1,
    BACKEND_F16 = 2,
} backend_dtype;

/* Bytes per element of a dtype. */
static inline size_t backend_dtype_bytes(backend_dtype type) { return type == BACKEND_F32 ? 4 : 2; }

/* Floats (the unit of alloc, upload and download) that hold n elements of a
 * dtype: 16-bit elements travel in pairs. */
static inline size_t backend_dtype_floats(backend_dtype type, size_t n) {
    return (n * backend_dtype_bytes(type) + sizeof(float) - 1) / sizeof(float);
}

/* Where linear's result goes: a float32 buffer, or an operand buffer (then
 * the bias is added in the operand type, as a 16-bit framework would). */
typedef enum backend_output {
    BACKEND_OUT_F32 = 0,
    BACKEND_OUT_OPERAND = 1,
} backend_output;

/* A weight matrix [out_dim, in_dim] in the operand type whose rows are
 * weight_stride elements apart (so a column block of a wider matrix is a
 * linear of its own), and an optional bias [out_dim], in float32 (`bias`)
 * and in the operand type (`bias_operand`, the same pointer when that is
 * float32). */
typedef struct backend_linear {
    const void *weight;
    const float *bias;
    const void *bias_operand;
    int out_dim, in_dim, weight_stride;
} backend_linear;

/* What benchmark_matmul returns when its operands do not fit (-1 is any
 * other failure). */
enum { BACKEND_NO_MEMORY = 1 };

/* Coefficients of one sampler update, computed on the host in float64 and
 * applied elementwise in float32 (see diffusion.h for their meaning). */
typedef struct diffusion_step_coefs diffusion_step_coefs;

typedef struct backend backend;
struct backend {
    const char *name;
    void *impl;
    backend_dtype operand_type; /* see "Operands" above */
    /* 1 when alloc returns host memory the library may write directly (the
     * CPU backend): a model is then loaded in place. Otherwise a load
     * converts the weights into a host chunk of staging_bytes (0: model.c's
     * default, 64 MB; a chunk always holds the largest tensor) and uploads it
     * whenever the next tensor would not fit, so that it never holds a whole
     * converted copy of the weights in host memory. */
    int host_memory;
    size_t staging_bytes;
    /* Memory: used at setup only, never inside the sampling loop. */
    float *(*alloc)(backend *be, size_t num_floats);
    void (*release)(backend *be, float *device_ptr);
    int (*upload)(backend *be, float *device_dst, const float *host_src, size_t n);
    int (*download)(backend *be, float *host_dst, const float *device_src, size_t n);
    int (*synchronize)(backend *be);
    /* Why upload, download or synchronize returned -1: the first failure the
     * backend recorded ("" when none). */
    const char *(*failure)(const backend *be);
    void (*destroy)(backend *be);

    /* out[rows, out_dim] = act(in[rows, in_dim] W^T + bias + add), where `add`
     * is [rows, out_dim] of out's type, or NULL. in (operand) rows are in_dim
     * elements apart; out is float32 or an operand buffer as `output` says. */
    void (*linear)(backend *be, void *out, backend_output output, const void *in, int rows,
                   const backend_linear *w, const void *add, backend_activation act);
    /* out (operand)[b, t, :] = LayerNorm(x[b, t, :]) * (1 + scale[b, :]) + shift[b, :],
     * LayerNorm without affine, eps 1e-6. shift/scale rows are mod_stride apart. */
    void (*layernorm_modulate)(backend *be, void *out, const float *x, const float *shift,
                               const float *scale, int mod_stride, int batch, int tokens, int dim);
    /* qkv (operand) [batch, tokens, 3 * heads * head_dim] laid out (3, heads,
     * head_dim) per token; out (operand) [batch, tokens, heads * head_dim];
     * softmax(q k^T / sqrt(head_dim)) v. scratch holds
     * attention_scratch_floats(...) floats of the caller's arena (a backend
     * that needs none returns 0 and may get NULL). */
    size_t (*attention_scratch_floats)(backend *be, int batch, int tokens, int heads,
                                       int head_dim);
    void (*attention)(backend *be, void *out, const void *qkv, int batch, int tokens,
                      int heads, int head_dim, float *scratch);
    /* out (operand)[i] = in[i], rounded to the operand type. */
    void (*to_operand)(backend *be, void *out, const float *in, size_t n);
    /* x[b, t, :] += gate[b, :] * y[b, t, :]; gate rows are gate_stride apart.
     * y is an operand buffer (the output of proj or fc2, which a 16-bit
     * backend stores in 16 bits as PyTorch's bf16 run does: half the bytes
     * of the passes over the token stream); x stays float32. */
    void (*gated_residual)(backend *be, float *x, const void *y, const float *gate,
                           int gate_stride, int batch, int tokens, int dim);
    /* Optional (NULL: the caller runs the two ops): gated_residual(x, y, gate)
     * then layernorm_modulate(out, x, shift, scale), in one pass over x; gate,
     * shift and scale rows are mod_stride apart. out must not overlap x or y
     * (rows are processed in no fixed order, so a row of out written early
     * could clobber a row of y not yet read). */
    void (*residual_layernorm_modulate)(backend *be, void *out, float *x, const void *y,
                                        const float *gate, const float *shift, const float *scale,
                                        int mod_stride, int batch, int tokens, int dim);
    /* Optional (NULL: the caller runs the two ops): gated_residual(x, y,
     * gate), then out (operand) = x rounded to the operand type, in one pass
     * (FPDM's iteration keeps its state's operand copy this way). out must
     * not overlap x or y. */
    void (*gated_residual_to_operand)(backend *be, void *out, float *x, const void *y,
                                      const float *gate, int gate_stride, int batch, int tokens,
                                      int dim);
    /* out (operand)[i] = act(in[i]) */
    void (*activation)(backend *be, void *out, const float *in, size_t n, backend_activation act);
    /* out[b, t, :] = a[b, t, :] + b_rows[t, :] (b_rows is [tokens, dim]) when
     * broadcast_rows, else out = a + b elementwise over batch*tokens*dim. */
    void (*add)(backend *be, float *out, const float *a, const float *b, int batch, int tokens,
                int dim, int broadcast_rows);
    void (*copy)(backend *be, float *device_dst, const float *device_src, size_t n);
    /* out (operand)[b, :] = [cos(t_b * f_k), sin(t_b * f_k)], f_k = exp(-ln(10000) k / half). */
    void (*timestep_frequencies)(backend *be, void *out, const float *host_timesteps, int batch,
                                 int dim);
    /* out[b, :] = table[host_labels[b], :] */
    void (*embedding_rows)(backend *be, float *out, const float *table, const int *host_labels,
                           int batch, int dim);
    /* x [batch, channels, size, size] -> out (operand) [batch, tokens, channels * p * p],
     * each patch vector in (channel, row, column) order, tokens row-major. */
    void (*patchify)(backend *be, void *out, const float *x, int batch, int channels, int size,
                     int patch);
    /* x [batch, tokens, p * p * channels] in (row, column, channel) order ->
     * out [batch, channels, size, size]. */
    void (*unpatchify)(backend *be, float *out, const float *x, int batch, int channels, int size,
                       int patch);

    /* Sampler. Classifier-free guidance on out [2 * half, channels, hw]: for the
     * first guided_channels channels of the conditional rows (0..half-1),
     * cond = uncond + scale * (cond - uncond), uncond being row half + i. */
    void (*cfg_combine)(backend *be, float *out, int half, int channels, int hw,
                        int guided_channels, float scale);
    /* One sampler step on x [batch, channels, hw] from model_out
     * [batch, model_channels, hw] and noise [batch, channels, hw] (may be NULL
     * when the step adds none). */
    void (*sampler_update)(backend *be, float *x, const float *model_out, const float *noise,
                           const diffusion_step_coefs *coefs, int batch, int channels, int hw,
                           int model_channels);
    /* Standard normal noise for images first_image..first_image+count-1 at a
     * stage (see fpdm_noise), per_image floats each. */
    void (*normal_noise)(backend *be, float *out, uint64_t noise_seed, uint64_t first_image,
                         int count, uint32_t stage, size_t per_image);
    /* Optional (NULL where a backend has nothing to say): memory the device
     * reports in use and in total, in bytes. */
    int (*memory_info)(backend *be, size_t *used_bytes, size_t *total_bytes);
    /* The fewest seconds of one product C[m, n] = A[m, k] B[k, n] over
     * `repeats` runs after warm-up, in the backend's compute precision, on
     * operands it allocates and frees itself (a benchmark, never called
     * while sampling). 0; BACKEND_NO_MEMORY when the operands do not fit in
     * its memory; -1 on any other failure (see `failure`). */
    int (*benchmark_matmul)(backend *be, int m, int n, int k, int repeats, double *seconds);
    /* Waits, then host_diff_sq[r] = sum_i (a[r,i] - b[r,i])^2 and
     * host_norm_sq[r] = sum_i b[r,i]^2 over rows of `cols` floats. */
    int (*row_norms)(backend *be, const float *a, const float *b, int rows, size_t cols,
                     double *host_diff_sq, double *host_norm_sq);

    /* Optional (NULL where a backend cannot record, as on the CPU): graphs,
     * a sequence of ops recorded once and replayed with one launch. A graph
     * is stored under a key of key_words words that names every pointer and
     * size its ops use, so it is only ever replayed on the very buffers and
     * shapes it was recorded with. A backend keeps a few graphs and may drop
     * any of them (when full, or when memory they could point into is
     * released); a dropped graph is simply recorded again.
     *   graph_launch: replays the graph stored under key and returns 1 (a
     *     failure is recorded like any op's), or returns 0 when none is.
     *   graph_begin: the ops issued until graph_end are recorded, not run;
     *     0, or -1 when the backend cannot record now (run them directly).
     *   graph_end: stores the recording under key; 0, or -1 when recording
     *     failed: then nothing ran and nothing was stored (run them directly). */
    int (*graph_launch)(backend *be, const uintptr_t *key, int key_words);
    int (*graph_begin)(backend *be);
    int (*graph_end)(backend *be, const uintptr_t *key, int key_words);
};

/* Creates the CPU backend with num_threads OpenMP threads (0: default). */
backend *backend_cpu_create(int num_threads);

#endif
