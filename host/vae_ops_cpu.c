/* vae_ops_cpu.c - the VAE decoder's operations on the CPU (see vae_ops.h):
 * float32; 3x3 convolutions as Winograd F(2x2, 3x3) products, other kernels
 * (and few input channels) as im2col + OpenBLAS GEMM, both over bands of
 * rows; elementwise work parallelised with OpenMP. The images of a batch go
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

/* ---- Winograd F(2x2, 3x3) ------------------------------------------------
 * Lavin & Gray, "Fast Algorithms for Convolutional Neural Networks" (2016).
 * Each 2x2 block of outputs comes from the 4x4 block of inputs around it: with
 * d the inputs, g a 3x3 filter and
 *   B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1],  G = [1 0 0; 1/2 1/2 1/2;
 *   1/2 -1/2 1/2; 0 0 1],  A^T = [1 1 1 0; 0 1 -1 -1],
 * the block is A^T [sum over input channels of (G g G^T) .* (B^T d B)] A. The
 * sum over channels is, for each of the 16 points of the 4x4 transform, a
 * matrix product [out, in] x [in, tiles]: 16 products where im2col does 36
 * per 2x2 block, which is what makes the decoder's 3x3 convolutions 2.25x
 * cheaper. The transforms add and halve only, so float32 results stay within a
 * few roundings of the direct sum. */
#define WINOGRAD_POINTS 16
/* Below this many input channels the products are too thin to gain. */
#define WINOGRAD_MIN_CHANNELS 8

static int use_winograd(int in_channels, int kernel) {
    return kernel == 3 && in_channels >= WINOGRAD_MIN_CHANNELS;
}

/* Tile rows per band: the band's transformed inputs and product outputs
 * together stay under CONV_BAND_FLOATS. */
static int winograd_band_rows(int in_channels, int out_channels, int height, int width) {
    int tile_rows = (height + 1) / 2, tile_cols = (width + 1) / 2;
    size_t row_floats = (size_t)WINOGRAD_POINTS * (in_channels + out_channels) * tile_cols;
    size_t rows = CONV_BAND_FLOATS / row_floats;
    if (rows < 1) rows = 1;
    if (rows > (size_t)tile_rows) rows = (size_t)tile_rows;
    return (int)rows;
}

/* Floats of one thread's row buffers: four padded input rows and their four
 * combinations (the output transform uses one row of them). */
static size_t winograd_row_floats(int width) { return (size_t)8 * (2 * ((width + 1) / 2) + 2); }

/* The transformed filters, one band's transformed inputs and product
 * outputs, and every thread's row buffers. */
static size_t winograd_scratch_floats(int in_channels, int out_channels, int height, int width,
                                      int num_threads) {
    size_t tiles = (size_t)winograd_band_rows(in_channels, out_channels, height, width) *
                   ((width + 1) / 2);
    return (size_t)WINOGRAD_POINTS *
               ((size_t)out_channels * in_channels + (size_t)(in_channels + out_channels) * tiles) +
           (size_t)num_threads * winograd_row_floats(width);
}

/* u[point, o, c] = (G g G^T)[point] for every filter g = weight[o, c]. */
static void winograd_filters(float *u, const float *weight, int out_channels, int in_channels,
                             int num_threads) {
    const size_t pairs = (size_t)out_channels * in_channels;
#pragma omp parallel for num_threads(num_threads) schedule(static)
    for (size_t pair = 0; pair < pairs; pair++) {
        const float *g = weight + pair * 9;
        float t[4][3], v[4][4];
        for (int j = 0; j < 3; j++) {
            t[0][j] = g[j];
            t[1][j] = 0.5f * (g[j] + g[3 + j] + g[6 + j]);
            t[2][j] = 0.5f * (g[j] - g[3 + j] + g[6 + j]);
            t[3][j] = g[6 + j];
        }
        for (int i = 0; i < 4; i++) {
            v[i][0] = t[i][0];
            v[i][1] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
            v[i][2] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
            v[i][3] = t[i][2];
        }
        for (int point = 0; point < WINOGRAD_POINTS; point++)
            u[(size_t)point * pairs + pair] = v[point / 4][point % 4];
    }
}

/* v[point, c, t] = (B^T d B)[point] for the tiles t of tile rows
 * first_row .. first_row + rows of channel c (zero outside the image). A tile
 * row at a time, so that each of the 16 points is written as a contiguous
 * run: the 4 input rows are copied with their zero padding (buffer index k is
 * column k - 1), combined row-wise by B^T, then by B along the tiles. Called
 * by every thread of a parallel region; rows_work holds each thread's row
 * buffers. */
static void winograd_inputs(float *v, const float *in, int in_channels, int height, int width,
                            int first_row, int rows, float *rows_work) {
    const int tile_cols = (width + 1) / 2, row_len = 2 * tile_cols + 2;
    const size_t tiles = (size_t)rows * tile_cols, stride = (size_t)in_channels * tiles;
    float *padded = rows_work + (size_t)omp_get_thread_num() * winograd_row_floats(width);
    float *combined = padded + 4 * (size_t)row_len;
#pragma omp for schedule(static) nowait
    for (int c = 0; c < in_channels; c++) {
        const float *plane = in + (size_t)c * height * width;
        for (int r = 0; r < rows; r++) {
            for (int i = 0; i < 4; i++) {
                float *row = padded + (size_t)i * row_len;
                int y = 2 * (first_row + r) - 1 + i;
                memset(row, 0, sizeof(float) * (size_t)row_len);
                if (y >= 0 && y < height)
                    memcpy(row + 1, plane + (size_t)y * width, sizeof(float) * (size_t)width);
            }
            const float *d0 = padded, *d1 = d0 + row_len, *d2 = d1 + row_len, *d3 = d2 + row_len;
            float *t0 = combined, *t1 = t0 + row_len, *t2 = t1 + row_len, *t3 = t2 + row_len;
            for (int k = 0; k < row_len; k++) {
                t0[k] = d0[k] - d2[k];
                t1[k] = d1[k] + d2[k];
                t2[k] = d2[k] - d1[k];
                t3[k] = d1[k] - d3[k];
            }
            const size_t at = (size_t)c * tiles + (size_t)r * tile_cols;
            for (int i = 0; i < 4; i++) {
                const float *t = combined + (size_t)i * row_len;
                float *p0 = v + (size_t)(4 * i) * stride + at, *p1 = p0 + stride,
                      *p2 = p1 + stride, *p3 = p2 + stride;
                for (int tc = 0; tc < tile_cols; tc++) {
                    const float a = t[2 * tc], b = t[2 * tc + 1], e = t[2 * tc + 2],
                                f = t[2 * tc + 3];
                    p0[tc] = a - e;
                    p1[tc] = b + e;
                    p2[tc] = e - b;
                    p3[tc] = b - f;
                }
            }
        }
    }
}

/* out[o] over the band's tiles = bias[o] + residual[o] + A^T m A, with m the
 * 16 product outputs m[point, o, t]; rows and columns past the image are
 * dropped. A tile row at a time: A^T combines the points' runs, A
 * interleaves them into two output rows. residual may be out (each element is
 * read before it is written). Called by every thread of a parallel region. */
static void winograd_outputs(float *out, const float *m, const float *bias, const float *residual,
                             int out_channels, int height, int width, int first_row, int rows,
                             float *rows_work) {
    const int tile_cols = (width + 1) / 2;
    const size_t tiles = (size_t)rows * tile_cols, stride = (size_t)out_channels * tiles;
    const size_t plane = (size_t)height * width;
    float *line = rows_work + (size_t)omp_get_thread_num() * winograd_row_floats(width);
#pragma omp for schedule(static)
    for (int o = 0; o < out_channels; o++) {
        const float b = bias ? bias[o] : 0.0f;
        for (int r = 0; r < rows; r++) {
            const float *p = m + (size_t)o * tiles + (size_t)r * tile_cols;
            for (int i = 0; i < 2; i++) {
                const int y = 2 * (first_row + r) + i;
                if (y >= height) break;
                /* Row i of A^T: points (0 + 1 + 2) or (1 - 2 - 3), a point
                 * row at a time; then A along the tiles. */
                for (int tc = 0; tc < tile_cols; tc++) {
                    float s_col[4];
                    for (int j = 0; j < 4; j++) {
                        const float m0 = p[(size_t)j * stride + tc],
                                    m1 = p[(size_t)(4 + j) * stride + tc],
                                    m2 = p[(size_t)(8 + j) * stride + tc],
                                    m3 = p[(size_t)(12 + j) * stride + tc];
                        s_col[j] = i ? m1 - m2 - m3 : m0 + m1 + m2;
                    }
                    line[2 * tc] = s_col[0] + s_col[1] + s_col[2];
                    line[2 * tc + 1] = s_col[1] - s_col[2] - s_col[3];
                }
                float *dst = out + (size_t)o * plane + (size_t)y * width;
                const float *res = residual ? residual + (size_t)o * plane + (size_t)y * width : NULL;
                if (res)
                    for (int x = 0; x < width; x++) dst[x] = line[x] + b + res[x];
                else
                    for (int x = 0; x < width; x++) dst[x] = line[x] + b;
            }
        }
    }
}

/* One image's 3x3 convolution from filters already transformed into u. */
static void winograd_image(const vae_ops *ops, float *out, const float *in, const float *u,
                           const float *bias, const float *residual, int in_channels,
                           int out_channels, int height, int width, float *scratch) {
    const int nt = ops->num_threads;
    const int tile_rows = (height + 1) / 2, tile_cols = (width + 1) / 2;
    const int band = winograd_band_rows(in_channels, out_channels, height, width);
    float *v = scratch, *m = v + (size_t)WINOGRAD_POINTS * in_channels * band * tile_cols;
    float *rows_work = m + (size_t)WINOGRAD_POINTS * out_channels * band * tile_cols;
    for (int first_row = 0; first_row < tile_rows; first_row += band) {
        const int rows = tile_rows - first_row < band ? tile_rows - first_row : band;
        const int tiles = rows * tile_cols;
#pragma omp parallel num_threads(nt)
        winograd_inputs(v, in, in_channels, height, width, first_row, rows, rows_work);
        for (int point = 0; point < WINOGRAD_POINTS; point++)
            cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, out_channels, tiles,
                        in_channels, 1.0f, u + (size_t)point * out_channels * in_channels,
                        in_channels, v + (size_t)point * in_channels * tiles, tiles, 0.0f,
                        m + (size_t)point * out_channels * tiles, tiles);
#pragma omp parallel num_threads(nt)
        winograd_outputs(out, m, bias, residual, out_channels, height, width, first_row, rows,
                         rows_work);
    }
}

static size_t cpu_conv2d_scratch_floats(const vae_ops *ops, int batch, int in_channels,
                                        int out_channels, int height, int width, int kernel) {
    (void)batch;
    if (kernel == 1) return 0;
    if (use_winograd(in_channels, kernel))
        return winograd_scratch_floats(in_channels, out_channels, height, width,
                                       ops->num_threads);
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
    if (use_winograd(in_channels, kernel)) {
        /* The filters are transformed once per call, into the scratch's
         * head; the images share the rest. */
        float *u = scratch;
        winograd_filters(u, weight, out_channels, in_channels, ops->num_threads);
        float *image_scratch = scratch + (size_t)WINOGRAD_POINTS * out_channels * in_channels;
        for (int b = 0; b < batch; b++) {
            size_t out_offset = (size_t)b * out_channels * plane;
            winograd_image(ops, out + out_offset, in + (size_t)b * in_channels * plane, u, bias,
                           residual ? residual + out_offset : NULL, in_channels, out_channels,
                           height, width, image_scratch);
        }
        return;
    }
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

static void cpu_upsample_nearest2x(const vae_ops *ops, float *out, const float *in, int batch,
                                   int channels, int height, int width) {
    int nt = ops->num_threads;
    /* Channel-major: the images' channel planes one after another. */
    long planes = (long)batch * channels;
    int out_width = 2 * width;
#pragma omp parallel for num_threads(nt) schedule(static)
    for (long cy = 0; cy < planes * height; cy++) {
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
