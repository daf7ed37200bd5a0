/* cuda_backend.cuh - what the CUDA backend's files share: the backend's state,
 * the recording of the first error (ops return void), launch-size helpers,
 * and the op entry points each .cu file of kernels/ defines. */
#ifndef FPDM_CUDA_BACKEND_CUH
#define FPDM_CUDA_BACKEND_CUH

#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include "backend_cuda.h"

extern "C" {
#include "diffusion.h"
}

/* Host arrays an op receives (timesteps, labels) travel through small pinned
 * slots, used round-robin; an event per slot says when the GPU has read it,
 * so the host waits only if it runs CUDA_STAGING_SLOTS ops ahead. */
#define CUDA_STAGING_SLOTS 8
#define CUDA_STAGING_SLOT_BYTES (64 * 1024)
/* row_norms results go through a device and a pinned buffer of this many rows
 * (larger calls run in chunks). */
#define CUDA_ROW_NORMS_CHUNK 65536
#define CUDA_LT_WORKSPACE_BYTES (32u << 20)
#define CUDA_LINEAR_PLANS 64
/* Recorded graphs kept at once (see graph.cu), and the longest key. */
#define CUDA_GRAPHS 16
#define CUDA_GRAPH_KEY_WORDS 64

/* A cuBLASLt matrix product of one shape and epilogue, with the algorithm the
 * heuristic chose, kept so that the sampling loop does not query it again. */
typedef struct linear_plan {
    int used;
    /* key */
    int m, n, k, lda, has_add, alignment;
    cublasLtEpilogue_t epilogue;
    backend_dtype out_type;
    /* value */
    int use_lt; /* 0: no cuBLASLt algorithm; products go through cublasGemmEx */
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t layout_a, layout_b, layout_c;
    cublasLtMatmulAlgo_t algo;
} linear_plan;

/* A recorded graph, instantiated, under the key it was stored with. */
typedef struct cuda_graph_entry {
    cudaGraphExec_t exec; /* NULL: the slot is free */
    int key_words;
    uintptr_t key[CUDA_GRAPH_KEY_WORDS];
} cuda_graph_entry;

typedef struct cuda_backend {
    backend base; /* first, so that the backend pointer is the allocation */
    int device;
    fpdm_precision precision;
    cublasComputeType_t compute_type;
    cudaStream_t stream;
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    void *lt_workspace;
    /* Set at create after checking that cuBLASLt's GELU epilogue is the tanh
     * form (backend.h's GELU); otherwise GELU runs as a separate kernel. */
    int gelu_epilogue_is_tanh;

    unsigned char *host_staging;   /* pinned, CUDA_STAGING_SLOTS slots */
    unsigned char *device_staging; /* same layout on the device */
    cudaEvent_t staging_read[CUDA_STAGING_SLOTS];
    int next_slot;

    double *device_norms; /* [CUDA_ROW_NORMS_CHUNK][2] */
    double *host_norms;   /* pinned, same */

    linear_plan plans[CUDA_LINEAR_PLANS];
    int next_plan_victim;

    cuda_graph_entry graphs[CUDA_GRAPHS];
    int next_graph_victim;
    int capturing;       /* between graph_begin and graph_end */
    int graphs_disabled; /* a capture failed once: ops run directly */

    int failed;
    char error[512];
} cuda_backend;

static inline cuda_backend *cuda_of(backend *be) { return (cuda_backend *)be->impl; }

/* Records the first failure; later ones are consequences and are dropped. */
void cuda_fail(cuda_backend *cb, const char *format, ...) __attribute__((format(printf, 2, 3)));
/* Records a CUDA error if status is not cudaSuccess; returns 0 on success. */
int cuda_check(cuda_backend *cb, cudaError_t status, const char *what);
int cublas_check(cuda_backend *cb, cublasStatus_t status, const char *what);
/* Checks the last kernel launch (no synchronisation). */
static inline void cuda_check_launch(cuda_backend *cb, const char *kernel) {
    cuda_check(cb, cudaGetLastError(), kernel);
}
/* 0 when the op must be skipped (an earlier failure); otherwise makes the
 * backend's device current for this host thread. */
int cuda_enter(cuda_backend *cb);
/* A pinned staging slot holding `bytes` copied from host_src, uploaded on the
 * stream; returns the device copy, or NULL after recording a failure. */
void *cuda_stage(cuda_backend *cb, const void *host_src, size_t bytes);
/* The same in two steps, for arrays built in place: the host side of a free
 * slot (NULL after recording a failure), then its upload (the device copy). */
void *cuda_stage_host(cuda_backend *cb, size_t bytes, int *slot);
void *cuda_stage_upload(cuda_backend *cb, int slot, size_t bytes);

/* Blocks for a grid-stride loop over n elements. */
static inline unsigned int cuda_blocks_for(size_t n, int threads) {
    size_t blocks = (n + (size_t)threads - 1) / (size_t)threads;
    const size_t max_blocks = (size_t)1 << 20;
    if (blocks > max_blocks) blocks = max_blocks;
    return (unsigned int)(blocks ? blocks : 1);
}

/* The ops, one file each (see backend.h for their semantics). */
void cuda_linear(backend *be, void *out, backend_output output, const void *in, int rows,
                 const backend_linear *w, const void *add, backend_activation act);
void cuda_linear_plans_destroy(cuda_backend *cb);
void cuda_layernorm_modulate(backend *be, void *out, const float *x, const float *shift,
                             const float *scale, int mod_stride, int batch, int tokens, int dim);
void cuda_residual_layernorm_modulate(backend *be, void *out, float *x, const void *y,
                                      const float *gate, const float *shift, const float *scale,
                                      int mod_stride, int batch, int tokens, int dim);
size_t cuda_attention_scratch_floats(backend *be, int batch, int tokens, int heads, int head_dim);
void cuda_attention(backend *be, void *out, const void *qkv, int batch, int tokens, int heads,
                    int head_dim, float *scratch);
void cuda_to_operand(backend *be, void *out, const float *in, size_t n);
void cuda_gated_residual(backend *be, float *x, const void *y, const float *gate,
                         int gate_stride, int batch, int tokens, int dim);
void cuda_gated_residual_to_operand(backend *be, void *out, float *x, const void *y,
                                    const float *gate, int gate_stride, int batch, int tokens,
                                    int dim);
void cuda_activation(backend *be, void *out, const float *in, size_t n, backend_activation act);
void cuda_add(backend *be, float *out, const float *a, const float *b, int batch, int tokens,
              int dim, int broadcast_rows);
void cuda_timestep_frequencies(backend *be, void *out, const float *host_timesteps, int batch,
                               int dim);
void cuda_embedding_rows(backend *be, float *out, const float *table, const int *host_labels,
                         int batch, int dim);
void cuda_patchify(backend *be, void *out, const float *x, int batch, int channels, int size,
                   int patch);
void cuda_unpatchify(backend *be, float *out, const float *x, int batch, int channels, int size,
                     int patch);
void cuda_cfg_combine(backend *be, float *out, int half, int channels, int hw,
                      int guided_channels, float scale);
void cuda_sampler_update(backend *be, float *x, const float *model_out, const float *noise,
                         const diffusion_step_coefs *coefs, int batch, int channels, int hw,
                         int model_channels);
void cuda_normal_noise(backend *be, float *out, uint64_t noise_seed, uint64_t first_image,
                       int count, uint32_t stage, size_t per_image);
int cuda_memory_info(backend *be, size_t *used_bytes, size_t *total_bytes);
int cuda_benchmark_matmul(backend *be, int m, int n, int k, int repeats, double *seconds);
int cuda_graph_launch(backend *be, const uintptr_t *key, int key_words);
int cuda_graph_begin(backend *be);
int cuda_graph_end(backend *be, const uintptr_t *key, int key_words);
/* Drops every recorded graph (device memory they may point into is going). */
void cuda_graphs_reset(cuda_backend *cb);
int cuda_row_norms(backend *be, const float *a, const float *b, int rows, size_t cols,
                   double *host_diff_sq, double *host_norm_sq);

#endif
