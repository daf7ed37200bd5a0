/* vae_ops_cpu.c - the VAE decoder's operations on the CPU (see vae_ops.h):
 * float32, convolutions as im2col + OpenBLAS GEMM over bands of rows,
 * elementwise work parallelised with OpenMP. The images of a batch go
 * through convolutions and attention one after another (sharing one image's
 * scratch): BLAS is as busy with one image as with several. */
#include "vae_ops.h"
#include "vector_math.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <string.h>

/* The im2col buffer of one band of output rows stays under this many floats
 * (32 MiB), so a 512-channel convolution at 256x256 needs no 600 MB copy,
 * while a band still gives the GEMM thousands of columns. */
#define CONV_BAND_FLOATS ((size_t)8 << 20)

static int conv_band_rows(int in_channels, int height, int width, int kernel) {
    size_t row_floats = (size_t)in_channels * kernel * kernel * width;
    size_t rows = CONV_BAND_FLOATS / (row_floats ? row_floats : 1);
    if (rows < 1) rows = 1;
    if (rows > (size_t)height) rows = (size_t)height;
    return (int)rows;
}

static size_t cpu_conv2d_scratch_floats(const vae_ops *ops, int batch, int in_channels,
                                        int height, int width, int kernel) {
    (void)ops;
    (void)batch;
    if (kernel == 1) return 0;
    return (size_t)in_channels * kernel * kernel * width *
           conv_band_rows(in_channels, height, width, kernel);
}

/* col[(c, i, j), (r, x)] = in[c, row0 + r + i - pad, x + j - pad], zero
 * outside the image. Called by every thread of a parallel region. */
static void im2col_band(float *col, const float *in, int in_channels, int height, int width,
                        int kernel, int row0, int rows) {
    int pad = kernel / 2;
    int taps = kernel * kernel;
    size_t band_pixels = (size_t)rows * width;
#pragma omp for schedule(static) nowait
    for (int ct = 0; ct < in_channels * taps; ct++) {
        int c = ct / taps, i = (ct % taps) / kernel, j = ct % kernel;
        const float *plane = in + (size_t)c * height * width;
        float *dst_rows = col + (size_t)ct * band_pixels;
        /* Columns x with 0 <= x + j - pad < width. */
        int x_begin = pad - j > 0 ? pad - j : 0;
        int x_end = width + pad - j < width ? width + pad - j : width;
        for (int r = 0; r < rows; r++) {
            float *dst = dst_rows + (size_t)r * width;
            int y = row0 + r + i - pad;
            if (y < 0 || y >= height || x_end <= x_begin) {
                memset(dst, 0, sizeof(float) * (size_t)width);
                continue;
            }
            const float *src = plane + (size_t)y * width;
            for (int x = 0; x < x_begin; x++) dst[x] = 0.0f;
            memcpy(dst + x_begin, src + x_begin + j - pad,
                   sizeof(float) * (size_t)(x_end - x_begin));
            for (int x = x_end; x < width; x++) dst[x] = 0.0f;
        }
    }
}

/* out[:, first..first+count) = bias (+ residual) before the GEMM adds to it.
 * Called by every thread of a parallel region. */
static void init_output(float *out, const float *bias, const float *residual, int out_channels,
                        size_t plane, size_t first, size_t count) {
#pragma omp for schedule(static)
    for (int o = 0; o < out_channels; o++) {
        float *dst = out + (size_t)o * plane + first;
        const float *res = residual ? residual + (size_t)o * plane + first : NULL;
        float b = bias ? bias[o] : 0.0f;
        if (res == dst) {
            for (size_t p = 0; p < count; p++) dst[p] += b;
        } else if (res) {
            for (size_t p = 0; p < count; p++) dst[p] = res[p] + b;
        } else {
            for (size_t p = 0; p < count; p++) dst[p] = b;
        }
    }
}

static void conv2d_image(const vae_ops *ops, float *out, const float *in, const float *weight,
                         const float *bias, const float *residual, int in_channels,
                         int out_channels, int height, int width, int kernel, float *scratch) {
    size_t plane = (size_t)height * width;
    int nt = ops->num_threads;
    if (kernel == 1) {
#pragma omp parallel num_threads(nt)
        init_output(out, bias, residual, out_channels, plane, 0, plane);
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out_channels, (int)plane,
                    in_channels, 1.0f, weight, in_channels, in, (int)plane, 1.0f, out,
                    (int)plane);
        return;
    }
    int depth = in_channels * kernel * kernel;
    int band = conv_band_rows(in_channels, height, width, kernel);
    for (int row0 = 0; row0 < height; row0 += band) {
        int rows = height - row0 < band ? height - row0 : band;
        int band_pixels = rows * width;
        size_t first = (size_t)row0 * width;
        /* One parallel region per band: every region start and end is a
         * hand-over between OpenMP's and OpenBLAS's threads. */
#pragma omp parallel num_threads(nt)
        {
            im2col_band(scratch, in, in_channels, height, width, kernel, row0, rows);
            init_output(out, bias, residual, out_channels, plane, first, (size_t)band_pixels);
        }
        cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out_channels, band_pixels, depth,
                    1.0f, weight, depth, scratch, band_pixels, 1.0f, out + first, (int)plane);
    }
}

static void cpu_conv2d(const vae_ops *ops, float *out, const float *in, const float *weight,
                       const float *bias, const float *residual, int batch, int in_channels,
                       int out_channels, int height, int width, int kernel, float *scratch) {
    size_t plane = (size_t)height * width;
    for (int b = 0; b < batch; b++) {
        size_t out_offset = (size_t)b * out_channels * plane;
        conv2d_image(ops, out + out_offset, in + (size_t)b * in_channels * plane, weight, bias,
                     residual ? residual + out_offset : NULL, in_channels, out_channels, height,
                     width, kernel, scratch);
    }
}

/* The groups of all images are consecutive stretches of the batch, so one
 * loop runs over batch x groups of them. */
static void cpu_group_norm(const vae_ops *ops, float *out, const float *in, const float *gamma,
                           const float *beta, int batch, int channels, int pixels, int groups,
                           float eps, int silu) {
    int per_group = channels / groups;
    size_t group_floats = (size_t)per_group * pixels;
    int nt = ops->num_threads;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int bg = 0; bg < batch * groups; bg++) {
        int g = bg % groups;
        const float *src = in + (size_t)bg * group_floats;
        double mean = vm_sum(src, group_floats) / (double)group_floats;
        double variance = vm_sum_squared_deviations(src, group_floats, mean) / (double)group_floats;
        double rstd = 1.0 / sqrt(variance + (double)eps);
        for (int cg = 0; cg < per_group; cg++) {
            int c = g * per_group + cg;
            /* y = x * scale + shift folds the mean, rstd and affine into two floats. */
            float scale = (float)(rstd * gamma[c]);
            float shift = (float)(beta[c] - mean * rstd * gamma[c]);
            const float *x = src + (size_t)cg * pixels;
            float *y = out + (size_t)bg * group_floats + (size_t)cg * pixels;
            if (silu) {
                /* libm's expf: vm_exp's loop measured 5.0 ns an element in
                 * SSE2 and 2.6 in AVX2 against expf's 3.0 (EPYC). */
                for (int p = 0; p < pixels; p++) {
                    float v = x[p] * scale + shift;
                    y[p] = v / (1.0f + expf(-v));
                }
            } else {
                for (int p = 0; p < pixels; p++) y[p] = x[p] * scale + shift;
            }
        }
    }
}

static void cpu_upsample_nearest2x(const vae_ops *ops, float *out, const float *in, int planes,
                                   int height, int width) {
    int nt = ops->num_threads;
    int out_width = 2 * width;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long cy = 0; cy < (long)planes * height; cy++) {
        const float *src = in + (size_t)cy * width;
        float *dst = out + (size_t)cy * 2 * out_width;
        for (int x = 0; x < width; x++) dst[2 * x] = dst[2 * x + 1] = src[x];
        memcpy(dst + out_width, dst, sizeof(float) * (size_t)out_width);
    }
}

static size_t cpu_attention_scratch_floats(const vae_ops *ops, int channels, int tokens) {
    (void)ops;
    (void)channels;
    return (size_t)tokens * tokens;
}

static void attention_image(const vae_ops *ops, float *out, const float *q, const float *k,
                            const float *v, int channels, int tokens, float *scratch) {
    float *scores = scratch; /* [tokens (query), tokens (key)] */
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, tokens, tokens, channels,
                (float)(1.0 / sqrt((double)channels)), q, tokens, k, tokens, 0.0f, scores,
                tokens);
    int nt = ops->num_threads;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (int i = 0; i < tokens; i++) vm_softmax_rows(scores + (size_t)i * tokens, 1, (size_t)tokens);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, channels, tokens, tokens, 1.0f, v,
                tokens, scores, tokens, 0.0f, out, tokens);
}

static void cpu_attention(const vae_ops *ops, float *out, const float *q, const float *k,
                          const float *v, int batch, int channels, int tokens, float *scratch) {
    size_t image = (size_t)channels * tokens;
    for (int b = 0; b < batch; b++)
        attention_image(ops, out + b * image, q + b * image, k + b * image, v + b * image,
                        channels, tokens, scratch);
}

void vae_ops_cpu_init(vae_ops *ops, int num_threads) {
    memset(ops, 0, sizeof *ops);
    ops->name = "cpu";
    ops->num_threads = num_threads > 0 ? num_threads : omp_get_max_threads();
    ops->conv2d_scratch_floats = cpu_conv2d_scratch_floats;
    ops->conv2d = cpu_conv2d;
    ops->group_norm = cpu_group_norm;
    ops->upsample_nearest2x = cpu_upsample_nearest2x;
    ops->attention_scratch_floats = cpu_attention_scratch_floats;
    ops->attention = cpu_attention;
}
