/* elementwise.cu - the pointwise ops of backend.h: gated_residual (and
 * gated_residual_to_operand), add (with row broadcast), to_operand,
 * cfg_combine and sampler_update (diffusion_apply_step's formula, see
 * diffusion.h). Grid-stride loops over size_t indices, so any size runs
 * with a bounded grid. */
#include <stdint.h>

#include "cuda_backend.cuh"
#include "operand.cuh"

#define GRID_STRIDE_LOOP(i, n)                                                             \
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < (n);               \
         i += (size_t)gridDim.x * blockDim.x)

/* x[r, :] += gate[r / tokens, :] * y[r, :], y in the operand type T: a
 * block per row at a time, so the image's gate is found once per row (no
 * 64-bit division per element), in fours where VEC4 (dim, gate_stride and
 * the pointers allow it). With `copy`, the new x also goes there rounded to
 * T (gated_residual_to_operand). */
template <bool VEC4, typename T>
__global__ void gated_residual_kernel(float *x, const T *y, const float *gate, int gate_stride,
                                      int tokens, int dim, long long rows, T *copy) {
    for (long long r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *g = gate + (size_t)(r / tokens) * (size_t)gate_stride;
        float *xr = x + (size_t)r * dim;
        const T *yr = y + (size_t)r * dim;
        T *cr = copy ? copy + (size_t)r * dim : nullptr;
        if (VEC4) {
            for (int c = threadIdx.x; c < dim / 4; c += blockDim.x) {
                float4 xv = reinterpret_cast<float4 *>(xr)[c];
                float4 yv = load4(yr + 4 * c);
                float4 gv = reinterpret_cast<const float4 *>(g)[c];
                xv.x += gv.x * yv.x;
                xv.y += gv.y * yv.y;
                xv.z += gv.z * yv.z;
                xv.w += gv.w * yv.w;
                reinterpret_cast<float4 *>(xr)[c] = xv;
                if (cr) store4(cr + 4 * c, xv.x, xv.y, xv.z, xv.w);
            }
        } else {
            for (int c = threadIdx.x; c < dim; c += blockDim.x) {
                float v = xr[c] + g[c] * operand_to_float(yr[c]);
                xr[c] = v;
                if (cr) cr[c] = operand_from_float<T>(v);
            }
        }
    }
}

template <typename T>
static void launch_gated_residual(cuda_backend *cb, float *x, const T *y, const float *gate,
                                  int gate_stride, int batch, int tokens, int dim, T *copy) {
    long long rows = (long long)batch * tokens;
    unsigned int blocks = rows < (1 << 20) ? (unsigned int)rows : (1u << 20);
    /* Four elements of T at a time from y and copy, four floats from x and gate. */
    bool vec4 = dim % 4 == 0 && gate_stride % 4 == 0 &&
                (((uintptr_t)x | (uintptr_t)gate) & 15) == 0 &&
                (((uintptr_t)y | (uintptr_t)copy) & (4 * sizeof(T) - 1)) == 0;
    if (vec4)
        gated_residual_kernel<true, T><<<blocks, 128, 0, cb->stream>>>(x, y, gate, gate_stride,
                                                                       tokens, dim, rows, copy);
    else
        gated_residual_kernel<false, T><<<blocks, 128, 0, cb->stream>>>(x, y, gate, gate_stride,
                                                                        tokens, dim, rows, copy);
    cuda_check_launch(cb, "gated_residual_kernel");
}

void cuda_gated_residual(backend *be, float *x, const void *y, const float *gate,
                         int gate_stride, int batch, int tokens, int dim) {
    cuda_backend *cb = cuda_of(be);
    if (batch <= 0 || tokens <= 0 || dim <= 0 || !cuda_enter(cb)) return;
    OPERAND_DISPATCH(be->operand_type, launch_gated_residual<T>(cb, x, (const T *)y, gate,
                                                                gate_stride, batch, tokens, dim,
                                                                (T *)nullptr));
}

void cuda_gated_residual_to_operand(backend *be, void *out, float *x, const void *y,
                                    const float *gate, int gate_stride, int batch, int tokens,
                                    int dim) {
    cuda_backend *cb = cuda_of(be);
    if (batch <= 0 || tokens <= 0 || dim <= 0 || !cuda_enter(cb)) return;
    OPERAND_DISPATCH(be->operand_type, launch_gated_residual<T>(cb, x, (const T *)y, gate,
                                                                gate_stride, batch, tokens, dim,
                                                                (T *)out));
}

__global__ void add_kernel(float *out, const float *a, const float *b, size_t b_period, size_t n) {
    GRID_STRIDE_LOOP(i, n) out[i] = a[i] + b[i % b_period];
}

void cuda_add(backend *be, float *out, const float *a, const float *b, int batch, int tokens,
              int dim, int broadcast_rows) {
    cuda_backend *cb = cuda_of(be);
    size_t per_image = (size_t)tokens * (size_t)dim;
    size_t n = (size_t)batch * per_image;
    if (batch <= 0 || tokens <= 0 || dim <= 0 || !cuda_enter(cb)) return;
    add_kernel<<<cuda_blocks_for(n, 256), 256, 0, cb->stream>>>(out, a, b,
                                                               broadcast_rows ? per_image : n, n);
    cuda_check_launch(cb, "add_kernel");
}

template <typename T> __global__ void to_operand_kernel(T *out, const float *in, size_t n) {
    GRID_STRIDE_LOOP(i, n) out[i] = operand_from_float<T>(in[i]);
}

void cuda_to_operand(backend *be, void *out, const float *in, size_t n) {
    cuda_backend *cb = cuda_of(be);
    if (!n || !cuda_enter(cb)) return;
    OPERAND_DISPATCH(be->operand_type,
                     to_operand_kernel<T><<<cuda_blocks_for(n, 256), 256, 0, cb->stream>>>(
                         (T *)out, in, n));
    cuda_check_launch(cb, "to_operand_kernel");
}

__global__ void cfg_combine_kernel(float *out, int half, size_t image_floats, size_t guided_floats,
                                   float scale) {
    size_t n = (size_t)half * guided_floats;
    GRID_STRIDE_LOOP(i, n) {
        size_t image = i / guided_floats, e = i % guided_floats;
        float *cond = out + image * image_floats + e;
        const float *uncond = out + (image + (size_t)half) * image_floats + e;
        *cond = *uncond + scale * (*cond - *uncond);
    }
}

void cuda_cfg_combine(backend *be, float *out, int half, int channels, int hw,
                      int guided_channels, float scale) {
    cuda_backend *cb = cuda_of(be);
    if (half <= 0 || hw <= 0 || guided_channels <= 0 || !cuda_enter(cb)) return;
    if (guided_channels > channels) {
        cuda_fail(cb, "cfg_combine: %d guided channels of %d", guided_channels, channels);
        return;
    }
    size_t image_floats = (size_t)channels * hw, guided_floats = (size_t)guided_channels * hw;
    cfg_combine_kernel<<<cuda_blocks_for((size_t)half * guided_floats, 256), 256, 0, cb->stream>>>(
        out, half, image_floats, guided_floats, scale);
    cuda_check_launch(cb, "cfg_combine_kernel");
}

/* The coefficients travel by value: the host struct is plain data. */
__global__ void sampler_update_kernel(float *x, const float *model_out, const float *noise,
                                      diffusion_step_coefs c, size_t image_floats,
                                      size_t model_image_floats, size_t n) {
    GRID_STRIDE_LOOP(i, n) {
        size_t image = i / image_floats, e = i % image_floats;
        const float *mb = model_out + image * model_image_floats;
        float xv = x[i], m = mb[e];
        float x0 = c.x0_from_x * xv + c.x0_from_model * m;
        float eps = c.eps_from_x * xv + c.eps_from_model * m;
        float next = c.next_from_x0 * x0 + c.next_from_eps * eps + c.next_from_x * xv;
        if (c.add_noise) {
            float std = c.noise_std;
            if (c.learned_variance) {
                float frac = (mb[image_floats + e] + 1.0f) * 0.5f;
                std = expf(0.5f * (frac * c.log_variance_max + (1.0f - frac) * c.log_variance_min));
            }
            next += std * noise[i];
        }
        x[i] = next;
    }
}

void cuda_sampler_update(backend *be, float *x, const float *model_out, const float *noise,
                         const diffusion_step_coefs *coefs, int batch, int channels, int hw,
                         int model_channels) {
    cuda_backend *cb = cuda_of(be);
    if (batch <= 0 || channels <= 0 || hw <= 0 || !cuda_enter(cb)) return;
    if (coefs->add_noise && !noise) {
        cuda_fail(cb, "sampler_update: the step adds noise but none was given");
        return;
    }
    if (model_channels < (coefs->learned_variance ? 2 * channels : channels)) {
        cuda_fail(cb, "sampler_update: %d model channels for %d channels%s", model_channels,
                  channels, coefs->learned_variance ? " with learned variance" : "");
        return;
    }
    size_t image_floats = (size_t)channels * hw;
    size_t n = (size_t)batch * image_floats;
    sampler_update_kernel<<<cuda_blocks_for(n, 256), 256, 0, cb->stream>>>(
        x, model_out, noise, *coefs, image_floats, (size_t)model_channels * hw, n);
    cuda_check_launch(cb, "sampler_update_kernel");
}
