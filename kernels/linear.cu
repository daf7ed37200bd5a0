/* linear.cu - backend.h's `linear` (a PyTorch nn.Linear, plus an optional
 * residual `add` and activation) as one cuBLASLt matrix product: the row-major
 * out[rows, out_dim] is the column-major D[out_dim, rows] = W^T-op * in, with
 * the bias and GELU as the epilogue and `add` as C with beta = 1. Weights and
 * inputs are operands (float32, or bf16/fp16 with float32 accumulation); the
 * output is float32 or an operand, and C and the bias take its type. Plans
 * (the descriptors and the heuristic's algorithm) are cached per shape; a
 * shape cuBLASLt has no algorithm for goes through cublasGemmEx and a
 * bias/activation kernel instead. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "cuda_backend.cuh"
#include "operand.cuh"

__device__ __forceinline__ float gelu_tanh_device(float x) {
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    return 0.5f * x * (1.0f + tanhf(k * (x + 0.044715f * x * x * x)));
}

__device__ __forceinline__ float activate(float x, backend_activation act) {
    if (act == BACKEND_ACT_GELU_TANH) return gelu_tanh_device(x);
    if (act == BACKEND_ACT_SILU) return x / (1.0f + expf(-x));
    return x;
}

/* out and bias are both of type T (the product's output type). */
template <typename T>
__global__ void bias_activation_kernel(T *out, const T *bias, size_t n, int cols,
                                       backend_activation act) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        float v = operand_to_float(out[i]) + (bias ? operand_to_float(bias[i % (size_t)cols]) : 0.0f);
        out[i] = operand_from_float<T>(activate(v, act));
    }
}

template <typename T>
__global__ void activation_kernel(T *out, const float *in, size_t n, backend_activation act) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = operand_from_float<T>(activate(in[i], act));
}

static void bias_activation(cuda_backend *cb, void *out, backend_dtype out_type, const void *bias,
                            size_t rows, int cols, backend_activation act) {
    size_t n = rows * (size_t)cols;
    if (!n || (!bias && act == BACKEND_ACT_NONE)) return;
    OPERAND_DISPATCH(out_type, bias_activation_kernel<T><<<cuda_blocks_for(n, 256), 256, 0,
                                                           cb->stream>>>(
                                   (T *)out, (const T *)bias, n, cols, act));
    cuda_check_launch(cb, "bias_activation_kernel");
}

void cuda_activation(backend *be, void *out, const float *in, size_t n, backend_activation act) {
    cuda_backend *cb = cuda_of(be);
    if (!n || !cuda_enter(cb)) return;
    OPERAND_DISPATCH(be->operand_type,
                     activation_kernel<T><<<cuda_blocks_for(n, 256), 256, 0, cb->stream>>>(
                         (T *)out, in, n, act));
    cuda_check_launch(cb, "activation_kernel");
}

/* The largest power of two (up to 16 bytes) dividing the address. */
static int alignment_of(const void *ptr) {
    uintptr_t address = (uintptr_t)ptr;
    int alignment = 16;
    while (alignment > 2 && address % (uintptr_t)alignment) alignment /= 2;
    return alignment;
}

/* Products of float32 operands use the backend's compute type (true float32
 * in fp32 mode); 16-bit operands accumulate in float32. */
static cublasComputeType_t linear_compute_type(const cuda_backend *cb) {
    return cb->base.operand_type == BACKEND_F32 ? cb->compute_type : CUBLAS_COMPUTE_32F;
}

static void plan_release(linear_plan *plan) {
    if (!plan->used) return;
    if (plan->layout_c) cublasLtMatrixLayoutDestroy(plan->layout_c);
    if (plan->layout_b) cublasLtMatrixLayoutDestroy(plan->layout_b);
    if (plan->layout_a) cublasLtMatrixLayoutDestroy(plan->layout_a);
    if (plan->desc) cublasLtMatmulDescDestroy(plan->desc);
    memset(plan, 0, sizeof(*plan));
}

void cuda_linear_plans_destroy(cuda_backend *cb) {
    for (int i = 0; i < CUDA_LINEAR_PLANS; i++) plan_release(&cb->plans[i]);
    cb->next_plan_victim = 0;
}

/* Builds a plan's descriptors and the preference its heuristic query takes
 * (workspace, operand alignment). Returns -1 after recording a cuBLAS
 * failure (the caller releases what was made). */
static int plan_describe(cuda_backend *cb, linear_plan *plan,
                         cublasLtMatmulPreference_t *preference) {
    const cublasOperation_t transpose = CUBLAS_OP_T, no_transpose = CUBLAS_OP_N;
    const cudaDataType_t operand = cuda_data_type(cb->base.operand_type);
    const cudaDataType_t output = cuda_data_type(plan->out_type);
    *preference = NULL;
    if (cublas_check(cb, cublasLtMatmulDescCreate(&plan->desc, linear_compute_type(cb), CUDA_R_32F),
                     "cublasLtMatmulDescCreate") ||
        cublas_check(cb, cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSA,
                                                        &transpose, sizeof(transpose)),
                     "cuBLASLt TRANSA") ||
        cublas_check(cb, cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_TRANSB,
                                                        &no_transpose, sizeof(no_transpose)),
                     "cuBLASLt TRANSB") ||
        cublas_check(cb, cublasLtMatmulDescSetAttribute(plan->desc, CUBLASLT_MATMUL_DESC_EPILOGUE,
                                                        &plan->epilogue, sizeof(plan->epilogue)),
                     "cuBLASLt EPILOGUE") ||
        /* A is the weight seen column-major: [in_dim, out_dim] with ld = weight_stride. */
        cublas_check(cb, cublasLtMatrixLayoutCreate(&plan->layout_a, operand, plan->k, plan->m,
                                                    plan->lda),
                     "cuBLASLt layout A") ||
        cublas_check(cb, cublasLtMatrixLayoutCreate(&plan->layout_b, operand, plan->k, plan->n,
                                                    plan->k),
                     "cuBLASLt layout B") ||
        cublas_check(cb, cublasLtMatrixLayoutCreate(&plan->layout_c, output, plan->m, plan->n,
                                                    plan->m),
                     "cuBLASLt layout C") ||
        cublas_check(cb, cublasLtMatmulPreferenceCreate(preference), "cuBLASLt preference"))
        return -1;
    const size_t workspace = CUDA_LT_WORKSPACE_BYTES;
    const uint32_t alignment = (uint32_t)plan->alignment;
    const cublasLtMatmulPreferenceAttributes_t alignment_attributes[4] = {
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
        CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
    int status = cublas_check(cb, cublasLtMatmulPreferenceSetAttribute(
                                      *preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                      &workspace, sizeof(workspace)),
                              "cuBLASLt workspace preference");
    /* The heuristic assumes 256-byte aligned operands unless told otherwise;
     * column blocks of a weight and offsets into the arena are not. */
    for (int i = 0; i < 4 && !status; i++)
        status = cublas_check(cb, cublasLtMatmulPreferenceSetAttribute(
                                      *preference, alignment_attributes[i], &alignment,
                                      sizeof(alignment)),
                              "cuBLASLt alignment preference");
    return status ? -1 : 0;
}

/* Up to `wanted` algorithms for a described plan, best first by the
 * heuristic's estimate; how many it gave. Any refusal (NOT_SUPPORTED for a
 * combination of compute type, epilogue and alignment) only means none. */
static int plan_algorithms(cuda_backend *cb, const linear_plan *plan,
                           cublasLtMatmulPreference_t preference, int wanted,
                           cublasLtMatmulHeuristicResult_t *results) {
    int found = 0;
    if (cublasLtMatmulAlgoGetHeuristic(cb->lt, plan->desc, plan->layout_a, plan->layout_b,
                                       plan->layout_c, plan->layout_c, preference, wanted, results,
                                       &found) != CUBLAS_STATUS_SUCCESS)
        return 0;
    return found;
}

/* Builds the descriptors and asks the heuristic for an algorithm; use_lt
 * stays 0 when there is none. Returns -1 after recording a cuBLAS failure. */
static int plan_build(cuda_backend *cb, linear_plan *plan) {
    cublasLtMatmulPreference_t preference = NULL;
    int status = plan_describe(cb, plan, &preference);
    cublasLtMatmulHeuristicResult_t result;
    int found = status ? 0 : plan_algorithms(cb, plan, preference, 1, &result);
    if (preference) cublasLtMatmulPreferenceDestroy(preference);
    if (status) return -1;
    plan->use_lt = found > 0 && result.state == CUBLAS_STATUS_SUCCESS;
    if (plan->use_lt) plan->algo = result.algo;
    return 0;
}

static linear_plan *plan_for(cuda_backend *cb, int m, int n, int k, int lda, int has_add,
                             int alignment, cublasLtEpilogue_t epilogue, backend_dtype out_type) {
    for (int i = 0; i < CUDA_LINEAR_PLANS; i++) {
        linear_plan *p = &cb->plans[i];
        if (p->used && p->m == m && p->n == n && p->k == k && p->lda == lda &&
            p->has_add == has_add && p->alignment == alignment && p->epilogue == epilogue &&
            p->out_type == out_type)
            return p;
    }
    linear_plan *plan = NULL;
    for (int i = 0; i < CUDA_LINEAR_PLANS && !plan; i++)
        if (!cb->plans[i].used) plan = &cb->plans[i];
    if (!plan) {
        plan = &cb->plans[cb->next_plan_victim];
        cb->next_plan_victim = (cb->next_plan_victim + 1) % CUDA_LINEAR_PLANS;
        plan_release(plan);
    }
    plan->used = 1;
    plan->m = m;
    plan->n = n;
    plan->k = k;
    plan->lda = lda;
    plan->has_add = has_add;
    plan->alignment = alignment;
    plan->epilogue = epilogue;
    plan->out_type = out_type;
    if (plan_build(cb, plan)) {
        plan_release(plan);
        return NULL;
    }
    return plan;
}

/* cublasGemmEx with the same types, then bias and activation. */
static void linear_fallback(cuda_backend *cb, void *out, backend_dtype out_type, const void *in,
                            int rows, const backend_linear *w, const void *bias, const void *add,
                            backend_activation act) {
    size_t n = (size_t)rows * (size_t)w->out_dim;
    float one = 1.0f, beta = 0.0f;
    if (add) {
        if (add != out &&
            cuda_check(cb, cudaMemcpyAsync(out, add, n * backend_dtype_bytes(out_type),
                                           cudaMemcpyDeviceToDevice, cb->stream),
                       "linear add copy"))
            return;
        beta = 1.0f;
    }
    const cudaDataType_t operand = cuda_data_type(cb->base.operand_type);
    if (cublas_check(cb, cublasGemmEx(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, w->out_dim, rows,
                                      w->in_dim, &one, w->weight, operand, w->weight_stride, in,
                                      operand, w->in_dim, &beta, out, cuda_data_type(out_type),
                                      w->out_dim, linear_compute_type(cb), CUBLAS_GEMM_DEFAULT),
                     "cublasGemmEx"))
        return;
    bias_activation(cb, out, out_type, bias, (size_t)rows, w->out_dim, act);
}

/* How one call of backend.h's linear runs: the output type, where the bias
 * goes (cuBLASLt's epilogue, or a separate pass afterwards with the
 * activation), the epilogue, and the alignment every pointer shares. */
typedef struct linear_call {
    backend_dtype out_type;
    const void *bias, *epilogue_bias, *late_bias;
    backend_activation late_act;
    cublasLtEpilogue_t epilogue;
    int alignment;
} linear_call;

/* 0, or -1 after recording why the call cannot run. */
static int linear_setup(cuda_backend *cb, void *out, backend_output output, const void *in,
                        const backend_linear *w, const void *add, backend_activation act,
                        linear_call *call) {
    if (w->in_dim <= 0 || w->weight_stride < w->in_dim) {
        cuda_fail(cb, "linear: in_dim %d, weight_stride %d", w->in_dim, w->weight_stride);
        return -1;
    }
    call->out_type = output == BACKEND_OUT_OPERAND ? cb->base.operand_type : BACKEND_F32;
    /* The bias in the output's type (cuBLASLt's rule for the epilogue). */
    call->bias = call->out_type == BACKEND_F32 ? (const void *)w->bias : w->bias_operand;
    if (w->bias && !call->bias) {
        cuda_fail(cb, "linear: the weight has no bias in the operand type");
        return -1;
    }
    call->alignment = alignment_of(out);
    const void *operands[3] = {in, w->weight, add};
    for (int i = 0; i < 3; i++)
        if (operands[i] && alignment_of(operands[i]) < call->alignment)
            call->alignment = alignment_of(operands[i]);
    /* Bias alignment is not a heuristic preference, so only a 16-byte aligned
     * bias goes into the epilogue. */
    call->epilogue_bias = call->bias && alignment_of(call->bias) == 16 ? call->bias : NULL;
    call->late_bias = call->epilogue_bias ? NULL : call->bias;
    int fuse_gelu = act == BACKEND_ACT_GELU_TANH && cb->gelu_epilogue_is_tanh && !call->late_bias;
    call->late_act = fuse_gelu ? BACKEND_ACT_NONE : act;
    call->epilogue = fuse_gelu ? (call->epilogue_bias ? CUBLASLT_EPILOGUE_GELU_BIAS
                                                      : CUBLASLT_EPILOGUE_GELU)
                               : (call->epilogue_bias ? CUBLASLT_EPILOGUE_BIAS
                                                      : CUBLASLT_EPILOGUE_DEFAULT);
    return 0;
}

/* One cublasLtMatmul of a call with a plan's descriptors and `algo`. */
static cublasStatus_t linear_matmul(cuda_backend *cb, const linear_plan *plan,
                                    const cublasLtMatmulAlgo_t *algo, const linear_call *call,
                                    void *out, const void *in, const backend_linear *w,
                                    const void *add) {
    if (call->epilogue_bias) {
        cublasStatus_t status = cublasLtMatmulDescSetAttribute(
            plan->desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &call->epilogue_bias,
            sizeof(call->epilogue_bias));
        if (status != CUBLAS_STATUS_SUCCESS) return status;
    }
    const float one = 1.0f, beta = add ? 1.0f : 0.0f;
    return cublasLtMatmul(cb->lt, plan->desc, &one, w->weight, plan->layout_a, in, plan->layout_b,
                          &beta, add ? add : out, plan->layout_c, out, plan->layout_c, algo,
                          cb->lt_workspace, CUDA_LT_WORKSPACE_BYTES, cb->stream);
}

void cuda_linear(backend *be, void *out, backend_output output, const void *in, int rows,
                 const backend_linear *w, const void *add, backend_activation act) {
    cuda_backend *cb = cuda_of(be);
    if (rows <= 0 || w->out_dim <= 0 || !cuda_enter(cb)) return;
    linear_call call;
    if (linear_setup(cb, out, output, in, w, add, act, &call)) return;
    linear_plan *plan = plan_for(cb, w->out_dim, rows, w->in_dim, w->weight_stride, add != NULL,
                                 call.alignment, call.epilogue, call.out_type);
    if (!plan) return;
    if (!plan->use_lt) {
        linear_fallback(cb, out, call.out_type, in, rows, w, call.bias, add, act);
        return;
    }
    cublasStatus_t status = linear_matmul(cb, plan, &plan->algo, &call, out, in, w, add);
    /* A launch cuBLASLt refuses before running (nothing was written) moves
     * this shape to the fallback for good; anything else is a failure. */
    if (status == CUBLAS_STATUS_NOT_SUPPORTED || status == CUBLAS_STATUS_INVALID_VALUE) {
        plan->use_lt = 0;
        linear_fallback(cb, out, call.out_type, in, rows, w, call.bias, add, act);
        return;
    }
    if (cublas_check(cb, status, "cublasLtMatmul")) return;
    bias_activation(cb, out, call.out_type, call.late_bias, (size_t)rows, w->out_dim,
                    call.late_act);
}

int backend_cuda_linear_candidates(backend *be, void *out, backend_output output, const void *in,
                                   int rows, const backend_linear *w, const void *add,
                                   backend_activation act, int candidates, int repeats,
                                   double *ms) {
    enum { MOST = 16 };
    cuda_backend *cb = cuda_of(be);
    if (rows <= 0 || w->out_dim <= 0 || candidates < 1 || repeats < 1 || !cuda_enter(cb))
        return -1;
    linear_call call;
    if (linear_setup(cb, out, output, in, w, add, act, &call)) return -1;
    linear_plan plan;
    memset(&plan, 0, sizeof plan);
    plan.used = 1;
    plan.m = w->out_dim;
    plan.n = rows;
    plan.k = w->in_dim;
    plan.lda = w->weight_stride;
    plan.has_add = add != NULL;
    plan.alignment = call.alignment;
    plan.epilogue = call.epilogue;
    plan.out_type = call.out_type;
    cublasLtMatmulPreference_t preference = NULL;
    cublasLtMatmulHeuristicResult_t results[MOST];
    int status = plan_describe(cb, &plan, &preference);
    int wanted = candidates < MOST ? candidates : MOST;
    int found = status ? 0 : plan_algorithms(cb, &plan, preference, wanted, results);
    if (preference) cublasLtMatmulPreferenceDestroy(preference);
    cudaEvent_t start = NULL, stop = NULL;
    if (!status && (cuda_check(cb, cudaEventCreate(&start), "cudaEventCreate") ||
                    cuda_check(cb, cudaEventCreate(&stop), "cudaEventCreate")))
        status = -1;
    for (int i = 0; i < found && !status; i++) {
        ms[i] = NAN;
        if (results[i].state != CUBLAS_STATUS_SUCCESS ||
            linear_matmul(cb, &plan, &results[i].algo, &call, out, in, w, add) !=
                CUBLAS_STATUS_SUCCESS)
            continue;
        cudaEventRecord(start, cb->stream);
        for (int r = 0; r < repeats; r++)
            linear_matmul(cb, &plan, &results[i].algo, &call, out, in, w, add);
        cudaEventRecord(stop, cb->stream);
        float elapsed = 0.0f;
        if (cuda_check(cb, cudaEventSynchronize(stop), "cudaEventSynchronize") ||
            cuda_check(cb, cudaEventElapsedTime(&elapsed, start, stop), "cudaEventElapsedTime"))
            status = -1;
        else
            ms[i] = elapsed / repeats;
    }
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    plan_release(&plan);
    return status ? -1 : found;
}
