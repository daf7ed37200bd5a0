/* benchmark.cu - backend.h's memory_info (what cudaMemGetInfo reports) and
 * benchmark_matmul: the reference rate benchmarks compare the network
 * against, one cuBLASLt product on operands of the backend's operand type
 * with float32 accumulation, as the network's own products run: bf16 (fp16)
 * on tensor cores in bf16 (fp16) mode, true fp32 (no TF32) in fp32 mode. */
#include <stdint.h>

#include "cuda_backend.cuh"
#include "operand.cuh"

#define BENCHMARK_WARMUP_RUNS 2

int cuda_memory_info(backend *be, size_t *used_bytes, size_t *total_bytes) {
    cuda_backend *cb = cuda_of(be);
    if (!cuda_enter(cb)) return -1;
    size_t free_bytes = 0, total = 0;
    if (cuda_check(cb, cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo")) return -1;
    *used_bytes = total - free_bytes;
    *total_bytes = total;
    return 0;
}

/* Values in [-1, 1) from a hash of the index: zeros would let the tensor
 * cores idle at a lower power draw and flatter the rate. */
template <typename T>
__global__ void fill_operands_kernel(T *out, size_t n, uint32_t salt) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        uint32_t h = (uint32_t)i * 2654435761u ^ salt;
        h ^= h >> 15;
        h *= 2246822519u;
        h ^= h >> 13;
        out[i] = operand_from_float<T>((float)(h & 0xffff) / 32768.0f - 1.0f);
    }
}

/* n operands of the backend's type. */
static int fill_operands(cuda_backend *cb, void *device, size_t n, uint32_t salt) {
    OPERAND_DISPATCH(cb->base.operand_type,
                     fill_operands_kernel<T><<<cuda_blocks_for(n, 256), 256, 0, cb->stream>>>(
                         (T *)device, n, salt));
    return cuda_check(cb, cudaGetLastError(), "benchmark fill");
}

/* Column-major C[m, n] = A[m, k] B[k, n]; the heuristic's first algorithm. */
typedef struct matmul_setup {
    cublasLtMatmulDesc_t desc;
    cublasLtMatrixLayout_t a, b, c;
    cublasLtMatmulAlgo_t algo;
} matmul_setup;

static void matmul_setup_release(matmul_setup *s) {
    if (s->c) cublasLtMatrixLayoutDestroy(s->c);
    if (s->b) cublasLtMatrixLayoutDestroy(s->b);
    if (s->a) cublasLtMatrixLayoutDestroy(s->a);
    if (s->desc) cublasLtMatmulDescDestroy(s->desc);
}

static int matmul_setup_build(cuda_backend *cb, matmul_setup *s, cudaDataType_t type, int m,
                              int n, int k) {
    /* fp32 accumulation for every storage type; with fp32 operands this is
     * true fp32 (TF32 would need CUBLAS_COMPUTE_32F_FAST_TF32). */
    if (cublas_check(cb, cublasLtMatmulDescCreate(&s->desc, CUBLAS_COMPUTE_32F, CUDA_R_32F),
                     "benchmark cublasLtMatmulDescCreate") ||
        cublas_check(cb, cublasLtMatrixLayoutCreate(&s->a, type, m, k, m), "benchmark layout A") ||
        cublas_check(cb, cublasLtMatrixLayoutCreate(&s->b, type, k, n, k), "benchmark layout B") ||
        cublas_check(cb, cublasLtMatrixLayoutCreate(&s->c, type, m, n, m), "benchmark layout C"))
        return -1;
    cublasLtMatmulPreference_t preference = NULL;
    if (cublas_check(cb, cublasLtMatmulPreferenceCreate(&preference), "benchmark preference"))
        return -1;
    const size_t workspace = CUDA_LT_WORKSPACE_BYTES;
    cublasLtMatmulHeuristicResult_t result;
    int found = 0;
    int rc = cublas_check(cb, cublasLtMatmulPreferenceSetAttribute(
                                  preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                  &workspace, sizeof(workspace)),
                          "benchmark workspace preference");
    if (!rc)
        rc = cublas_check(cb, cublasLtMatmulAlgoGetHeuristic(cb->lt, s->desc, s->a, s->b, s->c,
                                                              s->c, preference, 1, &result, &found),
                          "benchmark heuristic");
    cublasLtMatmulPreferenceDestroy(preference);
    if (rc) return -1;
    if (found < 1) {
        cuda_fail(cb, "benchmark: cuBLASLt has no algorithm for a %dx%dx%d product", m, n, k);
        return -1;
    }
    s->algo = result.algo;
    return 0;
}

int cuda_benchmark_matmul(backend *be, int m, int n, int k, int repeats, double *seconds) {
    cuda_backend *cb = cuda_of(be);
    if (!cuda_enter(cb) || repeats < 1) return -1;
    const size_t element_bytes = backend_dtype_bytes(be->operand_type);
    size_t a_elems = (size_t)m * k, b_elems = (size_t)k * n, c_elems = (size_t)m * n;
    unsigned char *device = NULL;
    const cudaError_t allocated =
        cudaMalloc((void **)&device, (a_elems + b_elems + c_elems) * element_bytes);
    if (allocated == cudaErrorMemoryAllocation) {
        /* Too big for this device: the caller's to report, not a stream fault. */
        cudaGetLastError();
        return BACKEND_NO_MEMORY;
    }
    if (cuda_check(cb, allocated, "benchmark operands")) return -1;
    void *a = device, *b = device + a_elems * element_bytes;
    void *c = device + (a_elems + b_elems) * element_bytes;
    cudaEvent_t start = NULL, stop = NULL;
    matmul_setup setup = {};
    int rc = -1;
    if (cuda_check(cb, cudaEventCreate(&start), "benchmark event") ||
        cuda_check(cb, cudaEventCreate(&stop), "benchmark event") ||
        fill_operands(cb, a, a_elems, 1u) || fill_operands(cb, b, b_elems, 2u) ||
        matmul_setup_build(cb, &setup, cuda_data_type(be->operand_type), m, n, k))
        goto done;
    {
        const float one = 1.0f, zero = 0.0f;
        for (int r = 0; r < BENCHMARK_WARMUP_RUNS + repeats; r++) {
            int timed = r >= BENCHMARK_WARMUP_RUNS;
            if (timed && cuda_check(cb, cudaEventRecord(start, cb->stream), "benchmark event"))
                goto done;
            if (cublas_check(cb, cublasLtMatmul(cb->lt, setup.desc, &one, a, setup.a, b, setup.b,
                                                &zero, c, setup.c, c, setup.c, &setup.algo,
                                                cb->lt_workspace, CUDA_LT_WORKSPACE_BYTES,
                                                cb->stream),
                             "benchmark cublasLtMatmul"))
                goto done;
            if (!timed) continue;
            float ms = 0;
            if (cuda_check(cb, cudaEventRecord(stop, cb->stream), "benchmark event") ||
                cuda_check(cb, cudaEventSynchronize(stop), "benchmark wait") ||
                cuda_check(cb, cudaEventElapsedTime(&ms, start, stop), "benchmark elapsed"))
                goto done;
            if (r == BENCHMARK_WARMUP_RUNS || 1e-3 * ms < *seconds) *seconds = 1e-3 * ms;
        }
    }
    rc = 0;
done:
    cudaStreamSynchronize(cb->stream);
    matmul_setup_release(&setup);
    if (start) cudaEventDestroy(start);
    if (stop) cudaEventDestroy(stop);
    cuda_check(cb, cudaFree(device), "benchmark free");
    return rc || cb->failed ? -1 : 0;
}
