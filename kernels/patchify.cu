/* patchify.cu - backend.h's patchify (images [B, C, S, S] to patch tokens
 * [B, T, C*p*p] in (channel, row, column) order) and unpatchify (tokens
 * [B, T, p*p*C] in (row, column, channel) order back to [B, C, S, S]). One
 * thread per output element, so writes are coalesced. */
#include "cuda_backend.cuh"
#include "operand.cuh"

template <typename T>
__global__ void patchify_kernel(T *out, const float *x, int channels, int size, int patch,
                                size_t n) {
    int grid = size / patch;
    size_t tokens = (size_t)grid * grid, patch_dim = (size_t)channels * patch * patch;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t e = i % patch_dim, bt = i / patch_dim;
        size_t token = bt % tokens, b = bt / tokens;
        int c = (int)(e / ((size_t)patch * patch));
        int r = (int)(e / patch % patch), col = (int)(e % patch);
        int gy = (int)(token / grid), gx = (int)(token % grid);
        out[i] = operand_from_float<T>(
            x[((b * channels + c) * size + (size_t)gy * patch + r) * size + (size_t)gx * patch + col]);
    }
}

void cuda_patchify(backend *be, void *out, const float *x, int batch, int channels, int size,
                   int patch) {
    cuda_backend *cb = cuda_of(be);
    if (batch <= 0 || channels <= 0 || size <= 0 || !cuda_enter(cb)) return;
    if (patch <= 0 || size % patch) {
        cuda_fail(cb, "patchify: size %d is not a multiple of patch %d", size, patch);
        return;
    }
    size_t n = (size_t)batch * channels * size * size;
    OPERAND_DISPATCH(be->operand_type,
                     patchify_kernel<T><<<cuda_blocks_for(n, 256), 256, 0, cb->stream>>>(
                         (T *)out, x, channels, size, patch, n));
    cuda_check_launch(cb, "patchify_kernel");
}

__global__ void unpatchify_kernel(float *out, const float *x, int channels, int size, int patch,
                                  size_t n) {
    int grid = size / patch;
    size_t tokens = (size_t)grid * grid, patch_dim = (size_t)channels * patch * patch;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int px = (int)(i % size), py = (int)(i / size % size);
        size_t bc = i / ((size_t)size * size);
        int c = (int)(bc % channels);
        size_t b = bc / channels;
        size_t token = (size_t)(py / patch) * grid + px / patch;
        int r = py % patch, col = px % patch;
        out[i] = x[(b * tokens + token) * patch_dim + ((size_t)r * patch + col) * channels + c];
    }
}

void cuda_unpatchify(backend *be, float *out, const float *x, int batch, int channels, int size,
                     int patch) {
    cuda_backend *cb = cuda_of(be);
    if (batch <= 0 || channels <= 0 || size <= 0 || !cuda_enter(cb)) return;
    if (patch <= 0 || size % patch) {
        cuda_fail(cb, "unpatchify: size %d is not a multiple of patch %d", size, patch);
        return;
    }
    size_t n = (size_t)batch * channels * size * size;
    unpatchify_kernel<<<cuda_blocks_for(n, 256), 256, 0, cb->stream>>>(out, x, channels, size, patch,
                                                                      n);
    cuda_check_launch(cb, "unpatchify_kernel");
}
