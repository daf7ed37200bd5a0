/* backend_cpu.c - the float32 CPU backend: matrix products through OpenBLAS,
 * everything else in plain loops parallelised with OpenMP. This backend is the
 * oracle the CUDA backend is tested against, so every op is written for
 * clarity first; accumulations that decide accuracy (LayerNorm statistics,
 * softmax sums, norms) are done in double. */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend.h"
#include "diffusion.h"
#include "philox.h"
#include "vector_math.h"

typedef struct cpu_backend {
    backend base;
    int num_threads;
} cpu_backend;

static int threads_of(backend *be) { return ((cpu_backend *)be->impl)->num_threads; }

/* Threads for a loop touching `elements` floats: one below ~64K, where waking
 * a second thread costs more than it saves (and far more on a loaded machine,
 * where the other thread may not be scheduled for milliseconds). */
static int threads_for(backend *be, size_t elements) {
    return elements < ((size_t)1 << 16) ? 1 : threads_of(be);
}

static float *cpu_alloc(backend *be, size_t num_floats) {
    (void)be;
    /* 64-byte alignment keeps BLAS and vector loops on full cache lines. */
    size_t bytes = (num_floats * sizeof(float) + 63) / 64 * 64;
    return aligned_alloc(64, bytes ? bytes : 64);
}

static void cpu_release(backend *be, float *device_ptr) {
    (void)be;
    free(device_ptr);
}

static int cpu_upload(backend *be, float *device_dst, const float *host_src, size_t n) {
    (void)be;
    if (n) memcpy(device_dst, host_src, n * sizeof(float));
    return 0;
}

static int cpu_synchronize(backend *be) {
    (void)be;
    return 0;
}

/* Host memory operations cannot fail. */
static const char *cpu_failure(const backend *be) {
    (void)be;
    return "";
}

static void cpu_destroy(backend *be) { free(be->impl); }

/* out[i] = act(in[i]) (out may be in): one loop per function, each of
 * which vectorises (vector_math.h has no library calls). */
VM_CLONES static void apply_activation(float *out, const float *in, size_t n,
                                       backend_activation act) {
    switch (act) {
    case BACKEND_ACT_GELU_TANH:
        for (size_t i = 0; i < n; i++) out[i] = vm_gelu_tanh(in[i]);
        break;
    case BACKEND_ACT_SILU:
        for (size_t i = 0; i < n; i++) out[i] = in[i] / (1.0f + vm_exp(-in[i]));
        break;
    default:
        if (out != in) memcpy(out, in, n * sizeof(float));
    }
}

/* Operands are float32 here, so both outputs are float32 buffers. */
static void cpu_linear(backend *be, void *out_buffer, backend_output output, const void *in_buffer,
                       int rows, const backend_linear *w, const void *add_buffer,
                       backend_activation act) {
    (void)output;
    float *out = out_buffer;
    const float *in = in_buffer, *add = add_buffer, *weight = w->weight;
    int nt = threads_for(be, (size_t)rows * (size_t)w->out_dim);
    size_t n = (size_t)rows * (size_t)w->out_dim;
    float beta = 0.0f;
    if (add) {
        if (add != out) memcpy(out, add, n * sizeof(float));
        beta = 1.0f;
    }
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, rows, w->out_dim, w->in_dim, 1.0f, in,
                w->in_dim, weight, w->weight_stride, beta, out, w->out_dim);
    if (!w->bias && act == BACKEND_ACT_NONE) return;
    const float *bias = w->bias;
    int out_dim = w->out_dim;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int r = 0; r < rows; r++) {
        float *row = out + (size_t)r * out_dim;
        if (bias)
            for (int o = 0; o < out_dim; o++) row[o] += bias[o];
        apply_activation(row, row, (size_t)out_dim, act);
    }
}

static void cpu_layernorm_modulate(backend *be, void *out_buffer, const float *x, const float *shift,
                                   const float *scale, int mod_stride, int batch, int tokens,
                                   int dim) {
    float *out = out_buffer;
    int nt = threads_for(be, (size_t)batch * tokens * dim);
    long long rows = (long long)batch * tokens;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long long r = 0; r < rows; r++) {
        const float *xr = x + r * dim;
        float *o = out + r * dim;
        int b = (int)(r / tokens);
        const float *sh = shift + (size_t)b * mod_stride;
        const float *sc = scale + (size_t)b * mod_stride;
        double mean = vm_sum(xr, (size_t)dim) / dim;
        double var = vm_sum_squared_deviations(xr, (size_t)dim, mean) / dim;
        float inv = (float)(1.0 / sqrt(var + 1e-6));
        float m = (float)mean;
        for (int i = 0; i < dim; i++) o[i] = ((xr[i] - m) * inv) * (1.0f + sc[i]) + sh[i];
    }
}

static size_t cpu_attention_scratch_floats(backend *be, int batch, int tokens, int heads,
                                           int head_dim) {
    (void)batch;
    (void)heads;
    (void)head_dim;
    /* One tokens x tokens score matrix per thread. */
    return (size_t)threads_of(be) * (size_t)tokens * (size_t)tokens;
}

/* Per (image, head): S = Q K^T * scale with BLAS straight from the strided qkv
 * rows, a softmax per row in double, then out = S V. The (image, head) pairs
 * are spread over the threads; the OpenMP build of OpenBLAS runs each product
 * on its calling thread inside a parallel region, so nothing oversubscribes. */
static void cpu_attention(backend *be, void *out_buffer, const void *qkv_buffer, int batch,
                          int tokens, int heads, int head_dim, float *scratch) {
    float *out = out_buffer;
    const float *qkv = qkv_buffer;
    int pairs = batch * heads;
    int nt = threads_for(be, (size_t)pairs * tokens * tokens);
    int dim = heads * head_dim;
    int qkv_stride = 3 * dim;
    float scale = 1.0f / sqrtf((float)head_dim);
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
    for (int pair = 0; pair < pairs; pair++) {
        int b = pair / heads, h = pair % heads;
        float *scores = scratch + (size_t)omp_get_thread_num() * tokens * tokens;
        const float *base = qkv + (size_t)b * tokens * qkv_stride;
        const float *q = base + h * head_dim;
        const float *k = base + dim + h * head_dim;
        const float *v = base + 2 * dim + h * head_dim;
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, tokens, tokens, head_dim, scale, q,
                    qkv_stride, k, qkv_stride, 0.0f, scores, tokens);
        vm_softmax_rows(scores, (size_t)tokens, (size_t)tokens);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, tokens, head_dim, tokens, 1.0f,
                    scores, tokens, v, qkv_stride, 0.0f, out + (size_t)b * tokens * dim + h * head_dim,
                    dim);
    }
}

static void cpu_gated_residual(backend *be, float *x, const void *y_buffer, const float *gate,
                               int gate_stride, int batch, int tokens, int dim) {
    const float *y = y_buffer;
    int nt = threads_for(be, (size_t)batch * tokens * dim);
    long long rows = (long long)batch * tokens;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long long r = 0; r < rows; r++) {
        const float *g = gate + (size_t)(r / tokens) * gate_stride;
        float *xr = x + r * dim;
        const float *yr = y + r * dim;
        for (int i = 0; i < dim; i++) xr[i] += g[i] * yr[i];
    }
}

/* The two ops one after the other: fusing them buys the CPU nothing, and with
 * the op the network's chained blocks (network.c) run on the oracle too. */
static void cpu_residual_layernorm_modulate(backend *be, void *out, float *x, const void *y,
                                            const float *gate, const float *shift,
                                            const float *scale, int mod_stride, int batch,
                                            int tokens, int dim) {
    cpu_gated_residual(be, x, y, gate, mod_stride, batch, tokens, dim);
    cpu_layernorm_modulate(be, out, x, shift, scale, mod_stride, batch, tokens, dim);
}

static void cpu_activation(backend *be, void *out_buffer, const float *in, size_t n,
                           backend_activation act) {
    float *out = out_buffer;
    int nt = threads_for(be, n);
    /* Each thread takes one contiguous share. */
#pragma omp parallel num_threads(nt)
    {
        size_t share = (n + (size_t)omp_get_num_threads() - 1) / (size_t)omp_get_num_threads();
        size_t first = share * (size_t)omp_get_thread_num();
        if (first < n)
            apply_activation(out + first, in + first, first + share < n ? share : n - first, act);
    }
}

static void cpu_add(backend *be, float *out, const float *a, const float *b, int batch, int tokens,
                    int dim, int broadcast_rows) {
    int nt = threads_for(be, (size_t)batch * tokens * dim);
    size_t per_image = (size_t)tokens * dim;
    size_t n = (size_t)batch * per_image;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[broadcast_rows ? i % per_image : i];
}

static void cpu_copy(backend *be, float *device_dst, const float *device_src, size_t n) {
    (void)be;
    if (n && device_dst != device_src) memmove(device_dst, device_src, n * sizeof(float));
}

static void cpu_to_operand(backend *be, void *out, const float *in, size_t n) {
    cpu_copy(be, out, in, n);
}

static int cpu_download(backend *be, float *host_dst, const float *device_src, size_t n) {
    cpu_copy(be, host_dst, device_src, n);
    return 0;
}

/* The official frequencies are float32 (torch computes them in float32), so
 * they are rounded the same way here; the phase t * f can reach ~1000 rad,
 * where float32 would lose ~1e-4, so phase, cos and sin are taken in double. */
static void cpu_timestep_frequencies(backend *be, void *out_buffer, const float *host_timesteps,
                                     int batch, int dim) {
    (void)be;
    float *out = out_buffer;
    int half = dim / 2;
    for (int b = 0; b < batch; b++) {
        float *row = out + (size_t)b * dim;
        for (int k = 0; k < half; k++) {
            float freq = expf(-logf(10000.0f) * (float)k / (float)half);
            double phase = (double)host_timesteps[b] * (double)freq;
            row[k] = (float)cos(phase);
            row[half + k] = (float)sin(phase);
        }
        if (dim % 2) row[dim - 1] = 0.0f;
    }
}

static void cpu_embedding_rows(backend *be, float *out, const float *table, const int *host_labels,
                               int batch, int dim) {
    (void)be;
    for (int b = 0; b < batch; b++)
        memcpy(out + (size_t)b * dim, table + (size_t)host_labels[b] * dim, (size_t)dim * sizeof(float));
}

static void cpu_patchify(backend *be, void *out_buffer, const float *x, int batch, int channels,
                         int size, int patch) {
    float *out = out_buffer;
    int nt = threads_for(be, (size_t)batch * channels * size * size);
    int grid = size / patch;
    int tokens = grid * grid;
    int patch_dim = channels * patch * patch;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long long bt = 0; bt < (long long)batch * tokens; bt++) {
        int b = (int)(bt / tokens), token = (int)(bt % tokens);
        int gy = token / grid, gx = token % grid;
        float *o = out + bt * patch_dim;
        for (int c = 0; c < channels; c++)
            for (int i = 0; i < patch; i++)
                for (int j = 0; j < patch; j++)
                    *o++ = x[(((size_t)b * channels + c) * size + gy * patch + i) * size + gx * patch + j];
    }
}

static void cpu_unpatchify(backend *be, float *out, const float *x, int batch, int channels,
                           int size, int patch) {
    int nt = threads_for(be, (size_t)batch * channels * size * size);
    int grid = size / patch;
    int tokens = grid * grid;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long long bt = 0; bt < (long long)batch * tokens; bt++) {
        int b = (int)(bt / tokens), token = (int)(bt % tokens);
        int gy = token / grid, gx = token % grid;
        const float *in = x + bt * patch * patch * channels;
        for (int i = 0; i < patch; i++)
            for (int j = 0; j < patch; j++)
                for (int c = 0; c < channels; c++)
                    out[(((size_t)b * channels + c) * size + gy * patch + i) * size + gx * patch + j] =
                        *in++;
    }
}

static void cpu_cfg_combine(backend *be, float *out, int half, int channels, int hw,
                            int guided_channels, float scale) {
    (void)be;
    for (int i = 0; i < half; i++) {
        float *cond = out + (size_t)i * channels * hw;
        const float *uncond = out + (size_t)(half + i) * channels * hw;
        for (size_t e = 0; e < (size_t)guided_channels * hw; e++)
            cond[e] = uncond[e] + scale * (cond[e] - uncond[e]);
    }
}

static void cpu_sampler_update(backend *be, float *x, const float *model_out, const float *noise,
                               const diffusion_step_coefs *coefs, int batch, int channels, int hw,
                               int model_channels) {
    (void)be;
    diffusion_apply_step(coefs, x, model_out, noise, batch, channels, hw, model_channels);
}

static void cpu_normal_noise(backend *be, float *out, uint64_t noise_seed, uint64_t first_image,
                             int count, uint32_t stage, size_t per_image) {
    int nt = threads_for(be, (size_t)count * per_image);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int i = 0; i < count; i++)
        philox_normal(noise_seed, first_image + (uint64_t)i, stage, out + (size_t)i * per_image,
                      per_image);
}

static int cpu_row_norms(backend *be, const float *a, const float *b, int rows, size_t cols,
                         double *host_diff_sq, double *host_norm_sq) {
    int nt = threads_for(be, (size_t)rows * cols);
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int r = 0; r < rows; r++) {
        const float *ar = a + (size_t)r * cols, *br = b + (size_t)r * cols;
        double diff = 0, norm = 0;
        for (size_t i = 0; i < cols; i++) {
            double d = (double)ar[i] - br[i];
            diff += d * d;
            norm += (double)br[i] * br[i];
        }
        host_diff_sq[r] = diff;
        host_norm_sq[r] = norm;
    }
    return 0;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int cpu_benchmark_matmul(backend *be, int m, int n, int k, int repeats, double *seconds) {
    (void)be;
    size_t a_n = (size_t)m * k, b_n = (size_t)k * n, c_n = (size_t)m * n;
    float *a = malloc(a_n * sizeof(float)), *b = malloc(b_n * sizeof(float)),
          *c = malloc(c_n * sizeof(float));
    int failed = !a || !b || !c;
    if (!failed) {
        for (size_t i = 0; i < a_n; i++) a[i] = (float)(i % 7) * 0.1f;
        for (size_t i = 0; i < b_n; i++) b[i] = (float)(i % 5) * 0.1f;
        /* One untimed product warms the caches and OpenBLAS's threads. */
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f, c, n);
        for (int r = 0; r < repeats; r++) {
            double start = now_seconds();
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, m, n, k, 1.0f, a, k, b, n, 0.0f,
                        c, n);
            double elapsed = now_seconds() - start;
            if (r == 0 || elapsed < *seconds) *seconds = elapsed;
        }
    }
    free(a), free(b), free(c);
    return failed ? BACKEND_NO_MEMORY : 0;
}

backend *backend_cpu_create(int num_threads) {
    cpu_backend *cpu = calloc(1, sizeof(*cpu));
    if (!cpu) return NULL;
    cpu->num_threads = num_threads > 0 ? num_threads : omp_get_max_threads();
    backend *be = &cpu->base;
    be->name = "cpu";
    be->impl = cpu;
    be->operand_type = BACKEND_F32;
    be->host_memory = 1;
    be->alloc = cpu_alloc;
    be->release = cpu_release;
    be->upload = cpu_upload;
    be->download = cpu_download;
    be->synchronize = cpu_synchronize;
    be->failure = cpu_failure;
    be->destroy = cpu_destroy;
    be->linear = cpu_linear;
    be->layernorm_modulate = cpu_layernorm_modulate;
    be->attention_scratch_floats = cpu_attention_scratch_floats;
    be->attention = cpu_attention;
    be->to_operand = cpu_to_operand;
    be->gated_residual = cpu_gated_residual;
    be->residual_layernorm_modulate = cpu_residual_layernorm_modulate;
    be->activation = cpu_activation;
    be->add = cpu_add;
    be->copy = cpu_copy;
    be->timestep_frequencies = cpu_timestep_frequencies;
    be->embedding_rows = cpu_embedding_rows;
    be->patchify = cpu_patchify;
    be->unpatchify = cpu_unpatchify;
    be->cfg_combine = cpu_cfg_combine;
    be->sampler_update = cpu_sampler_update;
    be->normal_noise = cpu_normal_noise;
    be->row_norms = cpu_row_norms;
    be->memory_info = NULL;
    be->benchmark_matmul = cpu_benchmark_matmul;
    return be;
}
