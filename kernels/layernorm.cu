/* layernorm.cu - backend.h's `layernorm_modulate`: LayerNorm without affine
 * (eps 1e-6) followed by the adaLN modulation x * (1 + scale) + shift, and
 * `residual_layernorm_modulate`, which first adds a gated residual to x
 * (gated_residual's x += gate * y, y in the operand type) in the same pass. One warp per row; mean
 * and variance are accumulated in double in two passes, like the CPU oracle,
 * and the row is normalised in float. Rows of up to 128 * CACHED_VECTORS
 * floats whose pointers allow 16-byte access (DiT's) are read once, in
 * float4s kept in registers for the three passes; others go through the plain
 * kernel, which reads x three times (after the residual pass, if any).
 *
 * The cached kernel comes in two variants (backend_cuda.h), checked against
 * the CPU by tests/gpu/test_ops.c and timed by tests/gpu/bench_layernorm.c:
 * 0 reads every row's shift, scale and gate (the image's modulation, 3 x dim
 * floats) from global memory, 1 stages the rows of the block's image in
 * shared memory once, so that the eight rows of a block read them from there
 * instead of eight times through L2 (at DiT-XL/2's width that is 13.8 KB a
 * row, as many bytes as the row itself moves to and from device memory). The
 * backend runs FPDM_LAYERNORM_VARIANT. */
#include "cuda_backend.cuh"
#include "operand.cuh"

#define LAYERNORM_WARPS 8

__device__ __forceinline__ double warp_sum(double v) {
    for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

/* residual == NULL: x is only read. Otherwise x += gate * residual first
 * (written back), gate sharing mod_stride with shift and scale; the residual
 * is in the operand type T, like out. */
template <typename T>
__global__ void layernorm_modulate_kernel(T *out, float *x, const T *residual,
                                          const float *gate, const float *shift,
                                          const float *scale, int mod_stride, int tokens, int dim,
                                          long long rows) {
    long long row = (long long)blockIdx.x * LAYERNORM_WARPS + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    /* Whole warps leave together, and the kernel has no block barrier. */
    if (row >= rows) return;
    float *xr = x + row * dim;
    T *o = out + row * dim;
    const float *sh = shift + (size_t)(row / tokens) * mod_stride;
    const float *sc = scale + (size_t)(row / tokens) * mod_stride;
    if (residual) {
        const float *g = gate + (size_t)(row / tokens) * mod_stride;
        const T *yr = residual + row * dim;
        for (int i = lane; i < dim; i += 32) xr[i] += g[i] * operand_to_float(yr[i]);
        __syncwarp();
    }
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

#define CACHED_VECTORS 12
#ifndef FPDM_LAYERNORM_VARIANT
#define FPDM_LAYERNORM_VARIANT 1
#endif
#define LAYERNORM_VARIANTS 2
static_assert(FPDM_LAYERNORM_VARIANT >= 0 && FPDM_LAYERNORM_VARIANT < LAYERNORM_VARIANTS,
              "FPDM_LAYERNORM_VARIANT names no variant");

/* STAGED: variant 1 (see the top of the file). A block's rows may reach into
 * the next image (tokens not a multiple of LAYERNORM_WARPS); those rows read
 * their own image's modulation from global memory. */
template <typename T, bool STAGED>
__global__ void __launch_bounds__(LAYERNORM_WARPS * 32)
layernorm_modulate_cached_kernel(T *out, float *x, const T *residual, const float *gate,
                                 const float *shift, const float *scale, int mod_stride,
                                 int tokens, int dim, long long rows) {
    __shared__ float4 staged[STAGED ? 3 * 32 * CACHED_VECTORS : 1];
    const long long first_row = (long long)blockIdx.x * LAYERNORM_WARPS;
    const long long block_image = first_row / tokens;
    long long row = first_row + threadIdx.x / 32;
    int lane = threadIdx.x % 32;
    const int vectors = dim / 4;
    if (STAGED) {
        /* [vectors] shift, then scale, then gate (with a residual). */
        const int parts = residual ? 3 : 2;
        const size_t image_offset = (size_t)block_image * mod_stride;
        for (int i = threadIdx.x; i < parts * vectors; i += blockDim.x) {
            const int part = i / vectors;
            const float *source = part == 0 ? shift : part == 1 ? scale : gate;
            staged[i] = reinterpret_cast<const float4 *>(source + image_offset)[i % vectors];
        }
        __syncthreads();
    }
    /* Whole warps leave together, after the block's only barrier. */
    if (row >= rows) return;
    float4 *xr = reinterpret_cast<float4 *>(x + row * dim);
    const long long image = row / tokens;
    const bool from_stage = STAGED && image == block_image;
    const size_t image_offset = (size_t)image * mod_stride;
    const float4 *sh = from_stage ? staged : reinterpret_cast<const float4 *>(shift + image_offset);
    const float4 *sc = from_stage ? staged + vectors
                                  : reinterpret_cast<const float4 *>(scale + image_offset);
    const float4 *g4 = !residual  ? nullptr
                       : from_stage ? staged + 2 * vectors
                                    : reinterpret_cast<const float4 *>(gate + image_offset);
    const T *yr = residual ? residual + row * dim : nullptr;
    float4 v[CACHED_VECTORS];
    double sum = 0;
#pragma unroll
    for (int k = 0; k < CACHED_VECTORS; k++) {
        int i = lane + 32 * k;
        if (i < vectors) {
            v[k] = xr[i];
            if (residual) {
                float4 g = g4[i], y = load4(yr + 4 * i);
                v[k].x += g.x * y.x;
                v[k].y += g.y * y.y;
                v[k].z += g.z * y.z;
                v[k].w += g.w * y.w;
                xr[i] = v[k];
            }
            sum += ((double)v[k].x + v[k].y) + ((double)v[k].z + v[k].w);
        }
    }
    double mean = warp_sum(sum) / dim;
    double squares = 0;
#pragma unroll
    for (int k = 0; k < CACHED_VECTORS; k++) {
        if (lane + 32 * k < vectors) {
            double a = v[k].x - mean, b = v[k].y - mean, c = v[k].z - mean, d = v[k].w - mean;
            squares += (a * a + b * b) + (c * c + d * d);
        }
    }
    double var = warp_sum(squares) / dim;
    float inv = (float)(1.0 / sqrt(var + 1e-6));
    float m = (float)mean;
    T *o = out + row * dim;
#pragma unroll
    for (int k = 0; k < CACHED_VECTORS; k++) {
        int i = lane + 32 * k;
        if (i < vectors) {
            float4 h = sh[i], g = sc[i];
            store4(o + 4 * i, ((v[k].x - m) * inv) * (1.0f + g.x) + h.x,
                   ((v[k].y - m) * inv) * (1.0f + g.y) + h.y,
                   ((v[k].z - m) * inv) * (1.0f + g.z) + h.z,
                   ((v[k].w - m) * inv) * (1.0f + g.w) + h.w);
        }
    }
}

static bool aligned16(const void *pointer) { return (reinterpret_cast<uintptr_t>(pointer) & 15) == 0; }

/* The kernels of a warp a row, which share their parameters and launch
 * shape: the cached kernel's variant 0 or 1, or (variant -1) the plain one. */
template <typename T>
static void launch_warp_rows(cudaStream_t stream, int variant, unsigned int blocks, T *out,
                             float *x, const T *residual, const float *gate, const float *shift,
                             const float *scale, int mod_stride, int tokens, int dim,
                             long long rows) {
    auto kernel = variant < 0    ? layernorm_modulate_kernel<T>
                  : variant == 1 ? layernorm_modulate_cached_kernel<T, true>
                                 : layernorm_modulate_cached_kernel<T, false>;
    kernel<<<blocks, LAYERNORM_WARPS * 32, 0, stream>>>(out, x, residual, gate, shift, scale,
                                                        mod_stride, tokens, dim, rows);
}

/* Both ops; residual and gate NULL for plain layernorm_modulate (x is then
 * only read, though the kernels take it writable). */
static void launch_layernorm(backend *be, int variant, void *out, float *x, const void *residual,
                             const float *gate, const float *shift, const float *scale,
                             int mod_stride, int batch, int tokens, int dim) {
    cuda_backend *cb = cuda_of(be);
    long long rows = (long long)batch * tokens;
    if (rows <= 0 || dim <= 0 || !cuda_enter(cb)) return;
    long long blocks = (rows + LAYERNORM_WARPS - 1) / LAYERNORM_WARPS;
    if (blocks > 0x7fffffffLL) {
        cuda_fail(cb, "layernorm_modulate: %lld rows is too many", rows);
        return;
    }
    /* out and residual rows start 4 elements apart, so 8-byte (16-bit) or
     * 16-byte (float) aligned when out and residual are. */
    size_t operand_alignment = 4 * backend_dtype_bytes(be->operand_type);
    bool cached = dim % 4 == 0 && dim <= 128 * CACHED_VECTORS && mod_stride % 4 == 0 &&
                  aligned16(x) && aligned16(shift) && aligned16(scale) &&
                  (!residual || (reinterpret_cast<uintptr_t>(residual) % operand_alignment == 0 &&
                                 aligned16(gate))) &&
                  reinterpret_cast<uintptr_t>(out) % operand_alignment == 0;
    OPERAND_DISPATCH(be->operand_type,
                     launch_warp_rows<T>(cb->stream, cached ? variant : -1, (unsigned int)blocks,
                                         (T *)out, x, (const T *)residual, gate, shift, scale,
                                         mod_stride, tokens, dim, rows));
    cuda_check_launch(cb, residual ? "residual_layernorm_modulate_kernel" : "layernorm_modulate_kernel");
}

void cuda_layernorm_modulate(backend *be, void *out, const float *x, const float *shift,
                             const float *scale, int mod_stride, int batch, int tokens, int dim) {
    launch_layernorm(be, FPDM_LAYERNORM_VARIANT, out, const_cast<float *>(x), NULL, NULL, shift,
                     scale, mod_stride, batch, tokens, dim);
}

void cuda_residual_layernorm_modulate(backend *be, void *out, float *x, const void *y,
                                      const float *gate, const float *shift, const float *scale,
                                      int mod_stride, int batch, int tokens, int dim) {
    launch_layernorm(be, FPDM_LAYERNORM_VARIANT, out, x, y, gate, shift, scale, mod_stride, batch,
                     tokens, dim);
}

int backend_cuda_layernorm_variant_count(void) { return LAYERNORM_VARIANTS; }

void backend_cuda_layernorm_variant(backend *be, int variant, void *out, float *x, const void *y,
                                    const float *gate, const float *shift, const float *scale,
                                    int mod_stride, int batch, int tokens, int dim) {
    if (variant < 0 || variant >= LAYERNORM_VARIANTS) {
        cuda_fail(cuda_of(be), "layernorm: no variant %d (there are %d)", variant,
                  LAYERNORM_VARIANTS);
        return;
    }
    launch_layernorm(be, variant, out, x, y, gate, shift, scale, mod_stride, batch, tokens, dim);
}
