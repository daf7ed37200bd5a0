/* backend_cuda.h - the CUDA backend: the ops of backend.h on one CUDA stream,
 * matrix products through cuBLASLt, everything else in the kernels of
 * .cu files of kernels/.
 *
 * Ops return void, so a failure inside one (a CUDA or cuBLAS error, or an
 * argument this backend cannot serve, such as head_dim > 128) is recorded:
 * the first one is kept, every later op is skipped, and the next synchronize,
 * download, upload or row_norms returns non-zero. The failure is sticky (a
 * faulted CUDA context cannot be trusted again); backend_cuda_error says what
 * it was. Only synchronize, download, upload and row_norms wait for the GPU.
 *
 * Precision: FPDM_PRECISION_FP32 runs true float32 products (CUBLAS_COMPUTE_32F,
 * no TF32) on float32 operands. BF16 (and DEFAULT, which fpdm.h makes bf16 on
 * CUDA) and FP16 make the operand type (backend.h, "Operands") bf16 / fp16:
 * linear weights and the activations that feed products are stored in 16
 * bits, products run on tensor cores with float32 accumulation, attention
 * runs on tensor cores (attention.cu), and the residual stream, the
 * fixed-point state and the sampler stay float32. The VAE's products
 * (vae_ops_cuda.cu) keep float32 tensors and let cuBLAS round their inputs
 * (CUBLAS_COMPUTE_32F_FAST_16BF / _16F).
 *
 * Graphs (backend.h's graph ops, graph.cu): recorded by stream capture and
 * kept, instantiated, in a table of CUDA_GRAPHS entries; any release of
 * device memory empties the table. A capture that fails switches graphs off
 * for the backend (the caller then issues the ops directly) and is not
 * recorded as a failure, since nothing ran.
 */
#ifndef FPDM_BACKEND_CUDA_H
#define FPDM_BACKEND_CUDA_H

#include <stddef.h>
#include <stdint.h>

/* backend.h has no C++ guards of its own. */
#ifdef __cplusplus
extern "C" {
#endif

#include "backend.h"
#include "fpdm.h"

/* NULL and a message in err on failure (no device, bad index, CUDA, cuBLAS
 * or memory failure during setup). */
backend *backend_cuda_create(int device_index, fpdm_precision precision, char *err,
                             size_t err_size);
/* 0 when there is no driver or no device. */
int backend_cuda_device_count(void);
/* The device's name, or "unknown" if it cannot be queried. */
void backend_cuda_device_name(int device_index, char *out, size_t size);
/* The first error recorded by this CUDA backend, "" if none. */
const char *backend_cuda_error(const backend *be);

/* The tensor-core attention kernel of bf16 and fp16 backends comes in
 * variants (kernels/attention.cu), each checked against the CPU by
 * tests/gpu/test_attention.c and timed side by side by
 * tests/gpu/bench_attention.c; the backend's attention op runs the one
 * CMake's FPDM_ATTENTION_VARIANT names (2 by default) for head_dim 49 to 80,
 * and variant 0 for the rest.
 * Variants above 0 serve head_dim 49 to 80 only. A variant call is backend.h's
 * attention through that variant (failures recorded as for any op). */
int backend_cuda_attention_variant_count(void);
const char *backend_cuda_attention_variant_name(int variant);
void backend_cuda_attention_variant(backend *be, int variant, void *out, const void *qkv, int batch,
                                    int tokens, int heads, int head_dim);

/* The cached LayerNorm kernel (rows of DiT's widths) comes in variants
 * (kernels/layernorm.cu): 0 reads each row's shift, scale and gate from
 * global memory, 1 stages the block's image's modulation in shared memory.
 * tests/gpu/test_ops.c checks each against the CPU, tests/gpu/bench_layernorm.c
 * times them; the backend runs the one CMake's FPDM_LAYERNORM_VARIANT names
 * (1 by default). A variant call is backend.h's residual_layernorm_modulate
 * (y and gate given) or layernorm_modulate (both NULL) through that variant;
 * shapes the cached kernel does not serve take the plain one either way. */
int backend_cuda_layernorm_variant_count(void);
void backend_cuda_layernorm_variant(backend *be, int variant, void *out, float *x, const void *y,
                                    const float *gate, const float *shift, const float *scale,
                                    int mod_stride, int batch, int tokens, int dim);

/* For tests/gpu/bench_linear.c: backend.h's linear product (out, output,
 * in, rows, w, add, act) through each of the first `candidates` (at most 16)
 * algorithms cuBLASLt's heuristic offers, the first being the one the
 * backend runs: one warm-up, then `repeats` timed; ms[i] gets each one's
 * mean milliseconds (NAN where one would not run). Only the product with
 * its epilogue is timed, not a bias or activation that runs after it.
 * Returns how many the heuristic offered (0: none; the backend then uses
 * cublasGemmEx), -1 on a failure (recorded as for any op). Synchronizes. */
int backend_cuda_linear_candidates(backend *be, void *out, backend_output output, const void *in,
                                   int rows, const backend_linear *w, const void *add,
                                   backend_activation act, int candidates, int repeats,
                                   double *ms);

#ifdef __cplusplus
}
#endif

#endif
