/* row_norms.cu - backend.h's `row_norms`, the residuals of the fixed-point
 * solver: per row, sum (a - b)^2 and sum b^2, accumulated in double like the
 * CPU oracle. One block per row; results come back through a pinned buffer
 * after the one wait this op is allowed. */
#include "cuda_backend.cuh"

#define ROW_NORMS_THREADS 256

__global__ void row_norms_kernel(double *norms, const float *a, const float *b, size_t cols) {
    __shared__ double diff_partial[ROW_NORMS_THREADS / 32], norm_partial[ROW_NORMS_THREADS / 32];
    const float *ar = a + (size_t)blockIdx.x * cols, *br = b + (size_t)blockIdx.x * cols;
    double diff = 0, norm = 0;
    for (size_t i = threadIdx.x; i < cols; i += ROW_NORMS_THREADS) {
        double d = (double)ar[i] - (double)br[i];
        diff += d * d;
        norm += (double)br[i] * (double)br[i];
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        diff += __shfl_xor_sync(0xffffffffu, diff, offset);
        norm += __shfl_xor_sync(0xffffffffu, norm, offset);
    }
    int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (lane == 0) {
        diff_partial[warp] = diff;
        norm_partial[warp] = norm;
    }
    __syncthreads();
    if (threadIdx.x == 0) {
        double diff_sum = 0, norm_sum = 0;
        for (int w = 0; w < ROW_NORMS_THREADS / 32; w++) {
            diff_sum += diff_partial[w];
            norm_sum += norm_partial[w];
        }
        norms[2 * (size_t)blockIdx.x] = diff_sum;
        norms[2 * (size_t)blockIdx.x + 1] = norm_sum;
    }
}

int cuda_row_norms(backend *be, const float *a, const float *b, int rows, size_t cols,
                   double *host_diff_sq, double *host_norm_sq) {
    cuda_backend *cb = cuda_of(be);
    if (!cuda_enter(cb)) return -1;
    for (int first = 0; first < rows; first += CUDA_ROW_NORMS_CHUNK) {
        int chunk = rows - first < CUDA_ROW_NORMS_CHUNK ? rows - first : CUDA_ROW_NORMS_CHUNK;
        row_norms_kernel<<<chunk, ROW_NORMS_THREADS, 0, cb->stream>>>(
            cb->device_norms, a + (size_t)first * cols, b + (size_t)first * cols, cols);
        cuda_check_launch(cb, "row_norms_kernel");
        if (cb->failed) return -1;
        if (cuda_check(cb, cudaMemcpyAsync(cb->host_norms, cb->device_norms,
                                           (size_t)chunk * 2 * sizeof(double),
                                           cudaMemcpyDeviceToHost, cb->stream),
                       "row_norms download") ||
            cuda_check(cb, cudaStreamSynchronize(cb->stream), "row_norms"))
            return -1;
        for (int r = 0; r < chunk; r++) {
            host_diff_sq[first + r] = cb->host_norms[2 * r];
            host_norm_sq[first + r] = cb->host_norms[2 * r + 1];
        }
    }
    return cb->failed ? -1 : 0;
}
