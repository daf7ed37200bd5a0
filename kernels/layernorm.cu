/* layernorm.cu - backend.h's `layernorm_modulate`: LayerNorm without affine
 * (eps 1e-6) followed by the adaLN modulation x * (1 + scale) + shift. One warp
 * per row; mean and variance are accumulated in double in two passes, like the
 * CPU oracle, and the row is normalised in float. */
#include "cuda_backend.cuh"
#include "operand.cuh"

#define LAYERNORM_WARPS 8

__device__ __forceinline__ double warp_sum(double v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

template <typename T>
__global__ void layernorm_modulate_kernel(T *out, const float *x, const float *shift,
                                          const float *scale, int mod_stride, int tokens, int dim,
                                          long long rows) {
    long long row = (long long)blockIdx.x * LAYERNORM_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    /* Whole warps leave together, and the kernel has no block barrier. */
    if (row >= rows) return;
    const float *xr = x + row * dim;
    T *o = out + row * dim;
    const float *sh = shift + (size_t)(row / tokens) * mod_stride;
    const float *sc = scale + (size_t)(row / tokens) * mod_stride;
    double sum = 0;
    for (int i = lane; i < dim; i += 32) sum += xr[i];
    double mean = warp_sum(sum) / dim;
    double squares = 0;
    for (int i = lane; i < dim; i += 32) {
        double d = xr[i] - mean;
        squares += d * d;
    }
    double var = warp_sum(squares) / dim;
    float inv = (float)(1.0 / sqrt(var + 1e-6));
    float m = (float)mean;
    /* Each lane reads x[i] before writing out[i], so with float32 operands
     * out may alias x. */
    for (int i = lane; i < dim; i += 32)
        o[i] = operand_from_float<T>(((xr[i] - m) * inv) * (1.0f + sc[i]) + sh[i]);
}

void cuda_layernorm_modulate(backend *be, void *out, const float *x, const float *shift,
                             const float *scale, int mod_stride, int batch, int tokens, int dim) {
    cuda_backend *cb = cuda_of(be);
    long long rows = (long long)batch * tokens;
    if (rows <= 0 || dim <= 0 || !cuda_enter(cb)) return;
    long long blocks = (rows + LAYERNORM_WARPS - 1) / LAYERNORM_WARPS;
    if (blocks > 0x7fffffffLL) {
        cuda_fail(cb, "layernorm_modulate: %lld rows is too many", rows);
        return;
    }
    OPERAND_DISPATCH(be->operand_type,
                     layernorm_modulate_kernel<T>
                     <<<(unsigned int)blocks, LAYERNORM_WARPS * 32, 0, cb->stream>>>(
                         (T *)out, x, shift, scale, mod_stride, tokens, dim, rows));
    cuda_check_launch(cb, "layernorm_modulate_kernel");
}
