/* vae_ops_cuda.cu - the VAE decoder's operations (host/vae_ops.h) on a CUDA
 * backend, with the semantics of host/vae_ops_cpu.c. Activations are float32
 * and channel-major (NCHW) in fp32 precision, bf16 and pixel-major (NHWC) in
 * bf16/fp16 precision (activation_type): cuDNN's tensor-core convolutions
 * run NHWC natively and convert NCHW tensors around each call. The kernels
 * are templates over the type T and take the layout as an argument:
 *   conv2d     cuDNN (legacy convolution API, the whole batch in one call;
 *              bf16 data reads a bf16 copy of the weights that adopt_weights
 *              made at load, each 3x3 filter rearranged from KCRS to KRSC
 *              (nhwc_filter) the first time it is used, float32
 *              accumulation). A kernel first writes bias + residual into the
 *              output, and cuDNN adds the convolution to it (beta = 1), the
 *              same order as the CPU's GEMM with beta 1; this works for every
 *              algorithm, unlike cudnnConvolutionBiasActivationForward, which
 *              serves identity activations with one algorithm only. The
 *              algorithm of each shape (batch included) is chosen once by
 *              cudnnGetConvolutionForwardAlgorithm_v7 (fastest first) among
 *              those whose workspace fits the scratch conv2d_scratch_floats
 *              promised, and cached; fpdm_vae_prepare chooses them before a
 *              decode (prepare_conv2d).
 *   group_norm the group sums, then the sums of squared deviations from
 *              the mean (both accumulated in double, as the CPU does), then
 *              the affine map and SiLU. Channel-major, every group of every
 *              image is one row of the grid (up to VAE_MAX_GROUPS at a
 *              time); pixel-major, every image is, its blocks reading whole
 *              pixel rows, a thread per channel. Each block writes its own
 *              partial sum and a second kernel adds a group's partials in
 *              block order: no atomics, so a decode gives the same bits on
 *              every run (and whatever runs beside it).
 *   attention  two cuBLAS products (transposed to suit the layout) around
 *              a row softmax kernel, with tokens x tokens float32 scores as
 *              scratch that the images of a batch take in turn (in bf16, the
 *              bf16 softmax weights the second product reads follow them:
 *              1.5 times that).
 * Precision comes from the backend a decode binds to (begin): fp32 restricts
 * cuDNN to FMA kernels (CUDNN_FMA_MATH: no TF32) and cuBLAS to
 * CUBLAS_COMPUTE_32F; bf16 and fp16 run bf16 convolutions on tensor cores
 * and the attention's products on bf16 inputs, both accumulating in
 * float32 (scores and softmax stay float32). Failures are recorded on the
 * bound backend like those of its own ops (cuda_backend.cuh).
 *
 * Built only when CMake finds cuDNN (FPDM_HAVE_CUDNN); otherwise host/vae.c
 * never asks for this table. */
#ifdef FPDM_HAVE_CUDNN

#include <cudnn.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

#include <mutex>
#include <new>

#include "cuda_backend.cuh"
#include "operand.cuh"

extern "C" {
#include "vae_ops.h"
}

/* Convolution shapes whose algorithm is remembered (the SD decoder has about
 * twenty per image size). */
#define VAE_CONV_ALGOS 64
/* GroupNorm statistics live in a buffer of this many groups (two doubles
 * each): 128 images of 32 groups in one pass. */
#define VAE_MAX_GROUPS 4096
/* The blocks' partial sums of one pass: groups x blocks a group doubles
 * (8 MB; a pass takes fewer images where its blocks would need more). */
#define VAE_GROUP_PARTIALS ((size_t)1 << 20)
/* Workspace a convolution may use: its input's size, within these bounds. */
#define VAE_CONV_WORKSPACE_MIN_FLOATS ((size_t)1 << 20)
#define VAE_CONV_WORKSPACE_MAX_FLOATS ((size_t)1 << 24)
#define VAE_THREADS 256
/* The channels a pixel-major GroupNorm serves: its statistics kernel gives
 * each thread of a block one channel (so at most 1024), and its apply
 * kernel keeps 2 x channels floats of shared memory. */
#define VAE_MAX_NHWC_CHANNELS 1024
/* 3x3 filters of the bf16 copy rearranged for NHWC (the SD decoder has about
 * thirty). */
#define VAE_NHWC_FILTERS 512

typedef struct conv_algo {
    int used;
    /* key */
    int batch, in_channels, out_channels, height, width, kernel, bf16;
    /* value */
    cudnnConvolutionFwdAlgo_t algo;
    cudnnMathType_t math;
    size_t workspace_bytes;
} conv_algo;

typedef struct vae_cuda {
    int device;
    cudnnHandle_t cudnn;
    cudnnTensorDescriptor_t in_desc, out_desc;
    cudnnFilterDescriptor_t filter_desc;
    cudnnConvolutionDescriptor_t conv_desc;
    double *group_stats; /* [VAE_MAX_GROUPS] sums, then [VAE_MAX_GROUPS] squares */
    double *group_partials; /* [VAE_GROUP_PARTIALS]: [group][block] partial sums */
    /* The weights as loaded (float32) and their bf16 copy, same offsets. */
    const float *weights;
    __nv_bfloat16 *weights_bf16;
    size_t weight_floats;
    /* Offsets into the bf16 copy of the filters already rearranged KCRS ->
     * KRSC (nhwc_filter); 1x1 filters need nothing. */
    size_t nhwc_filters[VAE_NHWC_FILTERS];
    int nhwc_filter_count;
    conv_algo algos[VAE_CONV_ALGOS];
    int next_algo_victim;
    /* One decode at a time: the descriptors, the algorithm cache and the
     * statistics buffer are shared by every decode through this table. */
    std::mutex decode_lock;
    cuda_backend *bound; /* the decoding context's backend, between begin and end */
} vae_cuda;

static vae_cuda *vae_cuda_of(const vae_ops *ops) { return (vae_cuda *)ops->impl; }

/* bf16 activations while bound to a bf16 or fp16 backend. */
static int bound_bf16(const vae_cuda *vc) {
    return vc->bound && vc->bound->base.operand_type != BACKEND_F32 && vc->weights_bf16;
}

/* Activations are pixel-major exactly when they are bf16: the bf16
 * convolutions run on tensor cores, whose cuDNN kernels are NHWC. */
static int bound_nhwc(const vae_cuda *vc) { return bound_bf16(vc); }

static backend_dtype cuda_vae_activation_type(const vae_ops *ops) {
    return bound_bf16(vae_cuda_of(ops)) ? BACKEND_BF16 : BACKEND_F32;
}

/* Runs `statement` with T the bound activation type. */
#define ACTIVATION_DISPATCH(vc, ...)                      \
    do {                                                  \
        if (bound_bf16(vc)) {                             \
            typedef __nv_bfloat16 T;                      \
            __VA_ARGS__;                                  \
        } else {                                          \
            typedef float T;                              \
            __VA_ARGS__;                                  \
        }                                                 \
    } while (0)

template <typename From, typename To>
__global__ void convert_kernel(To *out, const From *in, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x)
        out[i] = operand_from_float<To>(operand_to_float(in[i]));
}

template <typename From, typename To>
static void convert(cuda_backend *cb, To *out, const From *in, size_t n) {
    convert_kernel<From, To><<<cuda_blocks_for(n, VAE_THREADS), VAE_THREADS, 0, cb->stream>>>(
        out, in, n);
    cuda_check_launch(cb, "convert_kernel");
}

/* Between [batch, channels, pixels] channel-major and the activations'
 * layout: out[i] from in[source] where, for out index i,
 *   TO_PIXEL_MAJOR:   i = (b P + p) C + c, source = (b C + c) P + p
 *   FROM_PIXEL_MAJOR: i = (b C + c) P + p, source = (b P + p) C + c
 *   SAME_LAYOUT:      source = i.
 * Latents and images have three or four channels: nothing here needs speed. */
enum layout_change { SAME_LAYOUT, TO_PIXEL_MAJOR, FROM_PIXEL_MAJOR };

template <typename From, typename To, int CHANGE>
__global__ void convert_layout_kernel(To *out, const From *in, int channels, size_t pixels,
                                      size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t source = i;
        if (CHANGE == TO_PIXEL_MAJOR) {
            size_t c = i % channels, bp = i / channels, p = bp % pixels, b = bp / pixels;
            source = (b * channels + c) * pixels + p;
        } else if (CHANGE == FROM_PIXEL_MAJOR) {
            size_t p = i % pixels, bc = i / pixels, c = bc % channels, b = bc / channels;
            source = (b * pixels + p) * channels + c;
        }
        out[i] = operand_from_float<To>(operand_to_float(in[source]));
    }
}

template <typename From, typename To, int CHANGE>
static void convert_layout(cuda_backend *cb, To *out, const From *in, int batch, int channels,
                           int pixels) {
    size_t n = (size_t)batch * channels * pixels;
    convert_layout_kernel<From, To, CHANGE>
        <<<cuda_blocks_for(n, VAE_THREADS), VAE_THREADS, 0, cb->stream>>>(out, in, channels,
                                                                          (size_t)pixels, n);
    cuda_check_launch(cb, "convert_layout_kernel");
}

static void cuda_vae_to_activation(const vae_ops *ops, float *out, const float *in, int batch,
                                   int channels, int pixels) {
    vae_cuda *vc = vae_cuda_of(ops);
    if (!cuda_enter(vc->bound)) return;
    if (bound_nhwc(vc))
        ACTIVATION_DISPATCH(vc, convert_layout<float, T, TO_PIXEL_MAJOR>(
                                    vc->bound, (T *)out, in, batch, channels, pixels));
    else
        ACTIVATION_DISPATCH(vc, convert_layout<float, T, SAME_LAYOUT>(vc->bound, (T *)out, in,
                                                                      batch, channels, pixels));
}

static void cuda_vae_from_activation(const vae_ops *ops, float *out, const float *in, int batch,
                                     int channels, int pixels) {
    vae_cuda *vc = vae_cuda_of(ops);
    if (!cuda_enter(vc->bound)) return;
    if (bound_nhwc(vc))
        ACTIVATION_DISPATCH(vc, convert_layout<T, float, FROM_PIXEL_MAJOR>(
                                    vc->bound, out, (const T *)in, batch, channels, pixels));
    else
        ACTIVATION_DISPATCH(vc, convert_layout<T, float, SAME_LAYOUT>(
                                    vc->bound, out, (const T *)in, batch, channels, pixels));
}

/* The bf16 copy of the weights, converted once on the loading context's
 * stream (the float32 ones stay for fp32 decodes). */
static int cuda_vae_adopt_weights(const vae_ops *ops, backend *be, const float *weights,
                                  size_t floats, char *err, size_t err_size) {
    vae_cuda *vc = vae_cuda_of(ops);
    cuda_backend *cb = cuda_of(be);
    if (!cuda_enter(cb)) {
        snprintf(err, err_size, "%s", cb->error);
        return -1;
    }
    cudaError_t status = cudaMalloc((void **)&vc->weights_bf16, floats * sizeof(__nv_bfloat16));
    if (status != cudaSuccess) {
        cudaGetLastError();
        vc->weights_bf16 = NULL;
        snprintf(err, err_size, "cannot allocate %zu MB for the bf16 copy of the VAE weights: %s",
                 floats * sizeof(__nv_bfloat16) >> 20, cudaGetErrorString(status));
        return -1;
    }
    vc->weights = weights;
    vc->weight_floats = floats;
    convert<float, __nv_bfloat16>(cb, vc->weights_bf16, weights, floats);
    if (be->synchronize(be) != 0) {
        snprintf(err, err_size, "converting the VAE weights to bf16: %s", cb->error);
        return -1;
    }
    return 0;
}

static int cudnn_check(cuda_backend *cb, cudnnStatus_t status, const char *what) {
    if (status == CUDNN_STATUS_SUCCESS) return 0;
    cuda_fail(cb, "%s: %s", what, cudnnGetErrorString(status));
    return -1;
}

/* ---- convolution ------------------------------------------------------- */

static size_t conv_workspace_floats(int in_channels, int height, int width) {
    size_t floats = (size_t)in_channels * height * width;
    if (floats < VAE_CONV_WORKSPACE_MIN_FLOATS) floats = VAE_CONV_WORKSPACE_MIN_FLOATS;
    if (floats > VAE_CONV_WORKSPACE_MAX_FLOATS) floats = VAE_CONV_WORKSPACE_MAX_FLOATS;
    return floats;
}

static size_t cuda_vae_conv2d_scratch_floats(const vae_ops *ops, int batch, int in_channels,
                                             int out_channels, int height, int width, int kernel) {
    (void)ops;
    (void)out_channels;
    (void)kernel;
    return conv_workspace_floats(batch * in_channels, height, width);
}

/* out = bias[o] + residual, element by element (o the element's channel:
 * the fastest index in NHWC); either may be absent, and residual may be out
 * itself (each element is read before it is written). */
template <typename T>
__global__ void conv_init_kernel(T *out, const float *bias, const T *residual, size_t plane,
                                 int out_channels, size_t n, int nhwc) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t channel = nhwc ? i % out_channels : (i / plane) % out_channels;
        float value = bias ? bias[channel] : 0.0f;
        if (residual) value += operand_to_float(residual[i]);
        out[i] = operand_from_float<T>(value);
    }
}

/* Tensors in float32 NCHW or bf16 NHWC (filters KCRS or KRSC to match); the
 * convolution accumulates in float32 either way. */
static int set_conv_descriptors(vae_cuda *vc, cuda_backend *cb, int batch, int in_channels,
                                int out_channels, int height, int width, int kernel, int bf16) {
    int pad = kernel / 2;
    cudnnDataType_t type = bf16 ? CUDNN_DATA_BFLOAT16 : CUDNN_DATA_FLOAT;
    cudnnTensorFormat_t format = bf16 ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    return cudnn_check(cb, cudnnSetTensor4dDescriptor(vc->in_desc, format, type, batch,
                                                      in_channels, height, width),
                       "cudnnSetTensor4dDescriptor") ||
           cudnn_check(cb, cudnnSetTensor4dDescriptor(vc->out_desc, format, type, batch,
                                                      out_channels, height, width),
                       "cudnnSetTensor4dDescriptor") ||
           cudnn_check(cb, cudnnSetFilter4dDescriptor(vc->filter_desc, type, format,
                                                      out_channels, in_channels, kernel, kernel),
                       "cudnnSetFilter4dDescriptor") ||
           cudnn_check(cb, cudnnSetConvolution2dDescriptor(vc->conv_desc, pad, pad, 1, 1, 1, 1,
                                                           CUDNN_CROSS_CORRELATION,
                                                           CUDNN_DATA_FLOAT),
                       "cudnnSetConvolution2dDescriptor");
}

/* Float32 data takes FMA kernels only (no TF32: FPDM_PRECISION_FP32 is for
 * checking); bf16 data any cuDNN offers. */
static int math_allowed(cudnnMathType_t math, int bf16) {
    return bf16 || math == CUDNN_FMA_MATH;
}

/* The cached algorithm for a shape (descriptors already set), choosing it
 * on first use; NULL after recording a failure. */
static const conv_algo *conv_algo_for(vae_cuda *vc, cuda_backend *cb, int batch,
                                      int in_channels, int out_channels, int height, int width,
                                      int kernel, int bf16) {
    for (int i = 0; i < VAE_CONV_ALGOS; i++) {
        const conv_algo *a = &vc->algos[i];
        if (a->used && a->batch == batch && a->in_channels == in_channels &&
            a->out_channels == out_channels &&
            a->height == height && a->width == width && a->kernel == kernel && a->bf16 == bf16)
            return a;
    }
    if (cudnn_check(cb, cudnnSetConvolutionMathType(vc->conv_desc, bf16 ? CUDNN_TENSOR_OP_MATH
                                                                         : CUDNN_FMA_MATH),
                    "cudnnSetConvolutionMathType"))
        return NULL;
    cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    int returned = 0;
    if (cudnn_check(cb, cudnnGetConvolutionForwardAlgorithm_v7(
                            vc->cudnn, vc->in_desc, vc->filter_desc, vc->conv_desc, vc->out_desc,
                            CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf),
                    "cudnnGetConvolutionForwardAlgorithm_v7"))
        return NULL;
    size_t budget = conv_workspace_floats(batch * in_channels, height, width) * sizeof(float);
    for (int i = 0; i < returned; i++) {
        if (perf[i].status != CUDNN_STATUS_SUCCESS || !math_allowed(perf[i].mathType, bf16))
            continue;
        /* The heuristic's figure is an estimate: ask again under its math type. */
        size_t bytes = 0;
        if (cudnnSetConvolutionMathType(vc->conv_desc, perf[i].mathType) != CUDNN_STATUS_SUCCESS ||
            cudnnGetConvolutionForwardWorkspaceSize(vc->cudnn, vc->in_desc, vc->filter_desc,
                                                    vc->conv_desc, vc->out_desc, perf[i].algo,
                                                    &bytes) != CUDNN_STATUS_SUCCESS ||
            bytes > budget)
            continue;
        conv_algo *a = &vc->algos[vc->next_algo_victim];
        vc->next_algo_victim = (vc->next_algo_victim + 1) % VAE_CONV_ALGOS;
        a->used = 1;
        a->batch = batch;
        a->in_channels = in_channels;
        a->out_channels = out_channels;
        a->height = height;
        a->width = width;
        a->kernel = kernel;
        a->bf16 = bf16;
        a->algo = perf[i].algo;
        a->math = perf[i].mathType;
        a->workspace_bytes = bytes;
        return a;
    }
    cuda_fail(cb,
              "cuDNN has no forward convolution%s for %d images of %d -> %d channels at %dx%d, "
              "kernel %d, within %zu MB of workspace",
              bf16 ? " in bf16" : " in float32 (FMA)", batch, in_channels, out_channels, height,
              width, kernel, budget >> 20);
    return NULL;
}

/* Sets the descriptors for a shape and returns its algorithm for the bound
 * activation type; NULL after recording a failure. */
static const conv_algo *conv_ready(vae_cuda *vc, cuda_backend *cb, int batch, int in_channels,
                                   int out_channels, int height, int width, int kernel) {
    int bf16 = bound_bf16(vc);
    if (set_conv_descriptors(vc, cb, batch, in_channels, out_channels, height, width, kernel, bf16))
        return NULL;
    return conv_algo_for(vc, cb, batch, in_channels, out_channels, height, width, kernel, bf16);
}

static void cuda_vae_prepare_conv2d(const vae_ops *ops, int batch, int in_channels,
                                    int out_channels, int height, int width, int kernel) {
    vae_cuda *vc = vae_cuda_of(ops);
    if (cuda_enter(vc->bound))
        conv_ready(vc, vc->bound, batch, in_channels, out_channels, height, width, kernel);
}

/* out[k, r, s, c] = in[k, c, r, s] in bf16: a filter from PyTorch's KCRS to
 * the KRSC an NHWC convolution reads. */
__global__ void filter_krsc_kernel(__nv_bfloat16 *out, const float *in, int in_channels,
                                   int taps, size_t n) {
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t c = i % in_channels, kt = i / in_channels, tap = kt % taps, k = kt / taps;
        out[i] = __float2bfloat16_rn(in[(k * in_channels + c) * taps + tap]);
    }
}

/* The bf16 filter an NHWC convolution reads for `weight` (float32, in the
 * adopted weights): its place in the bf16 copy, rearranged to KRSC the first
 * time a filter wider than 1x1 comes by (the copy serves NHWC convolutions
 * only). NULL after recording a failure. */
static const void *nhwc_filter(vae_cuda *vc, cuda_backend *cb, const float *weight,
                               int out_channels, int in_channels, int kernel) {
    size_t floats = (size_t)out_channels * in_channels * kernel * kernel;
    if (weight < vc->weights || weight + floats > vc->weights + vc->weight_floats) {
        cuda_fail(cb, "VAE conv2d: a weight outside the adopted weights");
        return NULL;
    }
    size_t offset = (size_t)(weight - vc->weights);
    __nv_bfloat16 *filter = vc->weights_bf16 + offset;
    if (kernel == 1) return filter;
    for (int i = 0; i < vc->nhwc_filter_count; i++)
        if (vc->nhwc_filters[i] == offset) return filter;
    if (vc->nhwc_filter_count == VAE_NHWC_FILTERS) {
        cuda_fail(cb, "VAE conv2d: more than %d filters wider than 1x1", VAE_NHWC_FILTERS);
        return NULL;
    }
    filter_krsc_kernel<<<cuda_blocks_for(floats, VAE_THREADS), VAE_THREADS, 0, cb->stream>>>(
        filter, weight, in_channels, kernel * kernel, floats);
    cuda_check_launch(cb, "filter_krsc_kernel");
    if (cb->failed) return NULL;
    vc->nhwc_filters[vc->nhwc_filter_count++] = offset;
    return filter;
}

static void cuda_vae_conv2d(const vae_ops *ops, float *out, const float *in, const float *weight,
                            const float *bias, const float *residual, int batch, int in_channels,
                            int out_channels, int height, int width, int kernel, float *scratch) {
    vae_cuda *vc = vae_cuda_of(ops);
    cuda_backend *cb = vc->bound;
    if (!cuda_enter(cb)) return;
    int bf16 = bound_bf16(vc);
    size_t plane = (size_t)height * width, n = (size_t)batch * out_channels * plane;
    /* beta 0: cuDNN does not read out, whatever it holds. */
    float beta = bias || residual ? 1.0f : 0.0f;
    if (bias || (residual && residual != out)) {
        ACTIVATION_DISPATCH(vc, conv_init_kernel<T><<<cuda_blocks_for(n, VAE_THREADS), VAE_THREADS,
                                                      0, cb->stream>>>(
                                    (T *)out, bias, (const T *)residual, plane, out_channels, n,
                                    bound_nhwc(vc)));
        cuda_check_launch(cb, "conv_init_kernel");
    }
    const conv_algo *a =
        conv_ready(vc, cb, batch, in_channels, out_channels, height, width, kernel);
    if (!a) return;
    const void *filter =
        bf16 ? nhwc_filter(vc, cb, weight, out_channels, in_channels, kernel) : weight;
    if (!filter) return;
    const float one = 1.0f;
    if (cudnn_check(cb, cudnnSetConvolutionMathType(vc->conv_desc, a->math),
                    "cudnnSetConvolutionMathType"))
        return;
    cudnn_check(cb, cudnnConvolutionForward(vc->cudnn, &one, vc->in_desc, in, vc->filter_desc,
                                            filter, vc->conv_desc, a->algo, scratch,
                                            a->workspace_bytes, &beta, vc->out_desc, out),
                "cudnnConvolutionForward");
}

/* ---- GroupNorm ---------------------------------------------------------- */

__device__ double block_sum_double(double value) {
    __shared__ double warp_sums[VAE_THREADS / 32];
    for (int offset = 16; offset > 0; offset >>= 1)
        value += __shfl_down_sync(0xffffffffu, value, offset);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) warp_sums[warp] = value;
    __syncthreads();
    double total = 0.0;
    if (threadIdx.x == 0)
        for (int w = 0; w < (int)(blockDim.x / 32); w++) total += warp_sums[w];
    return total; /* meaningful in thread 0 */
}

/* Block (chunk, g) sums its share of group g's values (centered on the
 * group's mean when `sums` is given) into partials[g * chunks + chunk]
 * (channel-major: a group's values are group_floats in a row). */
template <typename T>
__global__ void __launch_bounds__(VAE_THREADS)
group_reduce_kernel(double *partials, const double *sums, const T *in, size_t group_floats) {
    int g = blockIdx.y;
    const T *src = in + (size_t)g * group_floats;
    double mean = sums ? sums[g] / (double)group_floats : 0.0;
    double partial = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < group_floats;
         i += (size_t)gridDim.x * blockDim.x) {
        double d = (double)operand_to_float(src[i]) - mean;
        partial += sums ? d * d : d;
    }
    double total = block_sum_double(partial);
    if (threadIdx.x == 0) partials[(size_t)g * gridDim.x + blockIdx.x] = total;
}

/* target[i] = the sum of partials[i * chunks ...] in chunk order. */
__global__ void group_partials_sum_kernel(double *target, const double *partials, int targets,
                                          int chunks) {
    int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= targets) return;
    double total = 0.0;
    for (int c = 0; c < chunks; c++) total += partials[(size_t)i * chunks + c];
    target[i] = total;
}

/* Block (chunk, plane) normalises a share of one channel plane of the
 * batch (plane = image * channels + channel). */
template <typename T>
__global__ void __launch_bounds__(VAE_THREADS)
group_apply_kernel(T *out, const T *in, const double *sums, const double *squares,
                   const float *gamma, const float *beta, int channels, int pixels,
                   int per_group, float eps, int silu) {
    __shared__ float scale_shift[2];
    int plane = blockIdx.y, c = plane % channels, g = plane / per_group;
    if (threadIdx.x == 0) {
        double n = (double)per_group * pixels;
        double mean = sums[g] / n;
        double rstd = 1.0 / sqrt(squares[g] / n + (double)eps);
        scale_shift[0] = (float)(rstd * gamma[c]);
        scale_shift[1] = (float)(beta[c] - mean * rstd * gamma[c]);
    }
    __syncthreads();
    float scale = scale_shift[0], shift = scale_shift[1];
    const T *x = in + (size_t)plane * pixels;
    T *y = out + (size_t)plane * pixels;
    for (int p = blockIdx.x * blockDim.x + threadIdx.x; p < pixels; p += gridDim.x * blockDim.x) {
        float v = operand_to_float(x[p]) * scale + shift;
        y[p] = operand_from_float<T>(silu ? v / (1.0f + expf(-v)) : v);
    }
}

/* Pixel-major statistics: block (chunk, image) reads a share of the image's
 * pixels whole rows at a time (a block is a whole number of rows, so thread
 * t always meets channel t % channels), adds its values (centered on their
 * group's mean when `sums` is given) in a double of its own, and thread g of
 * the block then adds up group g's threads in thread order (shared memory,
 * a double a thread) into partials[(image * groups + g) * chunks + chunk]. */
template <typename T>
__global__ void __launch_bounds__(VAE_MAX_NHWC_CHANNELS)
group_reduce_nhwc_kernel(double *partials, const double *sums, const T *in, int groups,
                         int channels, int pixels, int per_group) {
    extern __shared__ double thread_sums[];
    const int image = blockIdx.y, c = threadIdx.x % channels, g = c / per_group;
    const size_t image_floats = (size_t)pixels * channels;
    const T *src = in + (size_t)image * image_floats;
    const double mean =
        sums ? sums[image * groups + g] / ((double)per_group * pixels) : 0.0;
    double partial = 0.0;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < image_floats;
         i += (size_t)gridDim.x * blockDim.x) {
        double d = (double)operand_to_float(src[i]) - mean;
        partial += sums ? d * d : d;
    }
    thread_sums[threadIdx.x] = partial;
    __syncthreads();
    for (int group = threadIdx.x; group < groups; group += blockDim.x) {
        double total = 0.0;
        for (int row = 0; row < (int)blockDim.x; row += channels)
            for (int k = 0; k < per_group; k++) total += thread_sums[row + group * per_group + k];
        partials[((size_t)image * groups + group) * gridDim.x + blockIdx.x] = total;
    }
}

/* Threads of a pixel-major statistics block: a whole number of channel
 * rows, about 256 (channels <= VAE_MAX_NHWC_CHANNELS). */
static int nhwc_reduce_threads(int channels) {
    return channels >= VAE_THREADS ? channels : (VAE_THREADS / channels) * channels;
}

/* Blocks along one image for it: about 16 values a thread, up to 1024, so a
 * single large image still fills the GPU (the channel-major kernel has a
 * grid row per group instead). */
static unsigned int nhwc_reduce_chunks(size_t image_floats, int threads) {
    size_t chunks = image_floats / (16 * (size_t)threads);
    if (chunks > 1024) chunks = 1024;
    return (unsigned int)(chunks ? chunks : 1);
}

/* Pixel-major: block (chunk, image) normalises a share of one image's
 * pixels x channels values, with every channel's scale and shift worked out
 * once per block into shared memory (2 x channels floats). */
template <typename T>
__global__ void __launch_bounds__(VAE_THREADS)
group_apply_nhwc_kernel(T *out, const T *in, const double *sums, const double *squares,
                        const float *gamma, const float *beta, int groups, int channels,
                        int pixels, int per_group, float eps, int silu) {
    extern __shared__ float affine[]; /* [channels] scales, then [channels] shifts */
    int image = blockIdx.y;
    for (int c = threadIdx.x; c < channels; c += blockDim.x) {
        int g = image * groups + c / per_group;
        double n = (double)per_group * pixels;
        double mean = sums[g] / n;
        double rstd = 1.0 / sqrt(squares[g] / n + (double)eps);
        affine[c] = (float)(rstd * gamma[c]);
        affine[channels + c] = (float)(beta[c] - mean * rstd * gamma[c]);
    }
    __syncthreads();
    size_t image_floats = (size_t)pixels * channels;
    const T *x = in + (size_t)image * image_floats;
    T *y = out + (size_t)image * image_floats;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < image_floats;
         i += (size_t)gridDim.x * blockDim.x) {
        int c = (int)(i % channels);
        float v = operand_to_float(x[i]) * affine[c] + affine[channels + c];
        y[i] = operand_from_float<T>(silu ? v / (1.0f + expf(-v)) : v);
    }
}

/* Blocks along a stretch of `floats`, about 8 values a thread, at most 256. */
static unsigned int chunks_for(size_t floats) {
    size_t chunks = (floats + 8 * VAE_THREADS - 1) / (8 * VAE_THREADS);
    if (chunks > 256) chunks = 256;
    return (unsigned int)(chunks ? chunks : 1);
}

template <typename T>
static void group_norm(vae_cuda *vc, T *out, const T *in, const float *gamma, const float *beta,
                       int batch, int channels, int pixels, int groups, float eps, int silu) {
    cuda_backend *cb = vc->bound;
    if (!cuda_enter(cb)) return;
    if (groups > VAE_MAX_GROUPS) {
        cuda_fail(cb, "GroupNorm with %d groups (the CUDA VAE decoder serves up to %d)", groups,
                  VAE_MAX_GROUPS);
        return;
    }
    const int nhwc = bound_nhwc(vc);
    /* The pixel-major statistics kernel gives each thread of a block one channel. */
    if (nhwc && channels > VAE_MAX_NHWC_CHANNELS) {
        cuda_fail(cb, "GroupNorm over %d channels (the CUDA VAE decoder serves up to %d in bf16)",
                  channels, VAE_MAX_NHWC_CHANNELS);
        return;
    }
    int per_group = channels / groups;
    size_t group_floats = (size_t)per_group * pixels, image_floats = (size_t)channels * pixels;
    double *sums = vc->group_stats, *squares = vc->group_stats + VAE_MAX_GROUPS;
    /* Blocks a group's (channel-major) or an image's (pixel-major) statistics
     * take, and the threads of the pixel-major ones. */
    const int nhwc_threads = nhwc ? nhwc_reduce_threads(channels) : 0;
    const unsigned int chunks = nhwc ? nhwc_reduce_chunks(image_floats, nhwc_threads)
                                     : chunks_for(group_floats);
    /* Bounded by the statistics buffer, the partial sums' and the apply
     * grid's y dimension (at most 65535 channel planes). */
    int images_per_pass = VAE_MAX_GROUPS / groups;
    if (images_per_pass > 65535 / channels) images_per_pass = 65535 / channels;
    const size_t partials_per_image = (size_t)groups * chunks;
    if ((size_t)images_per_pass * partials_per_image > VAE_GROUP_PARTIALS)
        images_per_pass = (int)(VAE_GROUP_PARTIALS / partials_per_image);
    if (images_per_pass < 1) {
        cuda_fail(cb, "GroupNorm over %d channels (the CUDA VAE decoder serves up to 65535)",
                  channels);
        return;
    }
    for (int first = 0; first < batch; first += images_per_pass) {
        int images = batch - first < images_per_pass ? batch - first : images_per_pass;
        const T *src = in + first * image_floats;
        T *dst = out + first * image_floats;
        const int targets = images * groups;
        const unsigned int sum_blocks = (unsigned int)((targets + VAE_THREADS - 1) / VAE_THREADS);
        /* The sums first: the second pass centres on their means. */
        for (int pass = 0; pass < 2; pass++) {
            double *target = pass ? squares : sums;
            const double *means = pass ? sums : NULL;
            if (nhwc) {
                dim3 reduce_grid(chunks, (unsigned int)images);
                group_reduce_nhwc_kernel<T>
                    <<<reduce_grid, nhwc_threads, nhwc_threads * sizeof(double), cb->stream>>>(
                        vc->group_partials, means, src, groups, channels, pixels, per_group);
                cuda_check_launch(cb, "group_reduce_nhwc_kernel");
            } else {
                dim3 reduce_grid(chunks, (unsigned int)targets);
                group_reduce_kernel<T><<<reduce_grid, VAE_THREADS, 0, cb->stream>>>(
                    vc->group_partials, means, src, group_floats);
                cuda_check_launch(cb, "group_reduce_kernel");
            }
            group_partials_sum_kernel<<<sum_blocks, VAE_THREADS, 0, cb->stream>>>(
                target, vc->group_partials, targets, (int)chunks);
            cuda_check_launch(cb, "group_partials_sum_kernel");
        }
        if (nhwc) {
            dim3 apply_grid(chunks_for(image_floats), (unsigned int)images);
            group_apply_nhwc_kernel<T><<<apply_grid, VAE_THREADS, 2 * channels * sizeof(float),
                                         cb->stream>>>(dst, src, sums, squares, gamma, beta,
                                                       groups, channels, pixels, per_group, eps,
                                                       silu);
            cuda_check_launch(cb, "group_apply_nhwc_kernel");
        } else {
            dim3 apply_grid(chunks_for((size_t)pixels), (unsigned int)(images * channels));
            group_apply_kernel<T><<<apply_grid, VAE_THREADS, 0, cb->stream>>>(
                dst, src, sums, squares, gamma, beta, channels, pixels, per_group, eps, silu);
            cuda_check_launch(cb, "group_apply_kernel");
        }
    }
}

static void cuda_vae_group_norm(const vae_ops *ops, float *out, const float *in,
                                const float *gamma, const float *beta, int batch, int channels,
                                int pixels, int groups, float eps, int silu) {
    vae_cuda *vc = vae_cuda_of(ops);
    ACTIVATION_DISPATCH(vc, group_norm<T>(vc, (T *)out, (const T *)in, gamma, beta, batch,
                                          channels, pixels, groups, eps, silu));
}

/* ---- upsampling --------------------------------------------------------- */

/* Channel-major, element i of out is (plane, y, x) with plane = image x
 * channels + channel; pixel-major (NHWC) it is (image, y, x, channel). */
template <typename T, bool NHWC>
__global__ void upsample_nearest2x_kernel(T *out, const T *in, int channels, int height,
                                          int width, size_t n) {
    int out_width = 2 * width, out_height = 2 * height;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t pixel = NHWC ? i / channels : i;
        int x = (int)(pixel % out_width);
        size_t row = pixel / out_width;
        int y = (int)(row % out_height);
        size_t plane = row / out_height; /* NHWC: the image */
        size_t source = (plane * height + y / 2) * width + x / 2;
        out[i] = NHWC ? in[source * channels + i % channels] : in[source];
    }
}

static void cuda_vae_upsample_nearest2x(const vae_ops *ops, float *out, const float *in,
                                        int batch, int channels, int height, int width) {
    vae_cuda *vc = vae_cuda_of(ops);
    cuda_backend *cb = vc->bound;
    if (!cuda_enter(cb)) return;
    size_t n = (size_t)batch * channels * 4 * height * width;
    unsigned int blocks = cuda_blocks_for(n, VAE_THREADS);
    if (bound_nhwc(vc))
        ACTIVATION_DISPATCH(vc, upsample_nearest2x_kernel<T, true>
                                <<<blocks, VAE_THREADS, 0, cb->stream>>>(
                                    (T *)out, (const T *)in, channels, height, width, n));
    else
        ACTIVATION_DISPATCH(vc, upsample_nearest2x_kernel<T, false>
                                <<<blocks, VAE_THREADS, 0, cb->stream>>>(
                                    (T *)out, (const T *)in, channels, height, width, n));
    cuda_check_launch(cb, "upsample_nearest2x_kernel");
}

/* ---- attention ---------------------------------------------------------- */

/* Where the softmax weights go in the scratch: after the float32 scores,
 * on a 256-byte boundary (bf16 activations; float32 ones overwrite the
 * scores in place). */
static size_t probs_offset_floats(int tokens) {
    return ((size_t)tokens * tokens + 63) / 64 * 64;
}

static size_t cuda_vae_attention_scratch_floats(const vae_ops *ops, int channels, int tokens) {
    (void)channels;
    size_t scores = (size_t)tokens * tokens;
    if (!bound_bf16(vae_cuda_of(ops))) return scores;
    return probs_offset_floats(tokens) + backend_dtype_floats(BACKEND_BF16, scores);
}

/* Each block turns one row of float32 scores into softmax weights in P
 * (probs may be scores itself when P is float). */
template <typename P>
__global__ void __launch_bounds__(VAE_THREADS) softmax_rows_kernel(P *probs, float *scores,
                                                                   int tokens) {
    __shared__ float warp_max[VAE_THREADS / 32];
    __shared__ float row_max;
    __shared__ float row_inverse;
    float *row = scores + (size_t)blockIdx.x * tokens;
    P *out = probs + (size_t)blockIdx.x * tokens;
    float max = -INFINITY;
    for (int j = threadIdx.x; j < tokens; j += blockDim.x) max = fmaxf(max, row[j]);
    for (int offset = 16; offset > 0; offset >>= 1)
        max = fmaxf(max, __shfl_down_sync(0xffffffffu, max, offset));
    if (threadIdx.x % 32 == 0) warp_max[threadIdx.x / 32] = max;
    __syncthreads();
    if (threadIdx.x == 0) {
        float m = warp_max[0];
        for (int w = 1; w < (int)(blockDim.x / 32); w++) m = fmaxf(m, warp_max[w]);
        row_max = m;
    }
    __syncthreads();
    double partial = 0.0;
    for (int j = threadIdx.x; j < tokens; j += blockDim.x) {
        float e = expf(row[j] - row_max);
        row[j] = e;
        partial += e;
    }
    double total = block_sum_double(partial);
    if (threadIdx.x == 0) row_inverse = (float)(1.0 / total);
    __syncthreads();
    for (int j = threadIdx.x; j < tokens; j += blockDim.x)
        out[j] = operand_from_float<P>(row[j] * row_inverse);
}

/* In cuBLAS's column-major view the row-major scores S[query, key] are
 * key x query. A channel-major image ([channels, tokens] row-major) is
 * tokens x channels with leading dimension tokens:
 *   S^T = K Q^T * scale     (tokens x tokens, reduction over channels)
 *   out = P^T V             (tokens x channels, reduction over keys);
 * a pixel-major one ([tokens, channels]) is channels x tokens with leading
 * dimension channels:
 *   S^T = K^T Q * scale,  out = V P^T   (out channels x tokens).
 * Scores are float32 either way; with bf16 activations the products take
 * bf16 inputs (P rounded to bf16, as a bf16 framework would) and
 * accumulate in float32. */
template <typename T>
static void attention_image(cuda_backend *cb, T *out, const T *q, const T *k, const T *v,
                            int channels, int tokens, float *scratch, int nhwc) {
    const int is_float = sizeof(T) == sizeof(float);
    const cudaDataType_t type = is_float ? CUDA_R_32F : CUDA_R_16BF;
    const cublasComputeType_t compute = is_float ? cb->compute_type : CUBLAS_COMPUTE_32F;
    T *probs = is_float ? (T *)scratch : (T *)(scratch + probs_offset_floats(tokens));
    const float scale = (float)(1.0 / sqrt((double)channels)), one = 1.0f, zero = 0.0f;
    const int ld = nhwc ? channels : tokens;
    if (cublas_check(cb, cublasGemmEx(cb->blas, nhwc ? CUBLAS_OP_T : CUBLAS_OP_N,
                                      nhwc ? CUBLAS_OP_N : CUBLAS_OP_T, tokens, tokens, channels,
                                      &scale, k, type, ld, q, type, ld, &zero, scratch, CUDA_R_32F,
                                      tokens, compute, CUBLAS_GEMM_DEFAULT),
                     "cublasGemmEx (attention scores)"))
        return;
    softmax_rows_kernel<T><<<tokens, VAE_THREADS, 0, cb->stream>>>(probs, scratch, tokens);
    cuda_check_launch(cb, "softmax_rows_kernel");
    if (nhwc)
        cublas_check(cb, cublasGemmEx(cb->blas, CUBLAS_OP_N, CUBLAS_OP_N, channels, tokens, tokens,
                                      &one, v, type, channels, probs, type, tokens, &zero, out,
                                      type, channels, compute, CUBLAS_GEMM_DEFAULT),
                     "cublasGemmEx (attention output)");
    else
        cublas_check(cb, cublasGemmEx(cb->blas, CUBLAS_OP_T, CUBLAS_OP_N, tokens, channels, tokens,
                                      &one, probs, type, tokens, v, type, tokens, &zero, out, type,
                                      tokens, compute, CUBLAS_GEMM_DEFAULT),
                     "cublasGemmEx (attention output)");
}

/* The images take turns with one image's scratch (a batch's scores at
 * 512 px would take 64 MB each); the launches are few next to the
 * convolutions'. */
static void cuda_vae_attention(const vae_ops *ops, float *out, const float *q, const float *k,
                               const float *v, int batch, int channels, int tokens,
                               float *scratch) {
    vae_cuda *vc = vae_cuda_of(ops);
    cuda_backend *cb = vc->bound;
    if (!cuda_enter(cb)) return;
    size_t image = (size_t)channels * tokens;
    ACTIVATION_DISPATCH(vc, for (int b = 0; b < batch && !cb->failed; b++)
                                attention_image<T>(cb, (T *)out + b * image, (const T *)q + b * image,
                                                   (const T *)k + b * image,
                                                   (const T *)v + b * image, channels, tokens,
                                                   scratch, bound_nhwc(vc)));
}

/* ---- lifetime ----------------------------------------------------------- */

static int cuda_vae_begin(const vae_ops *ops, backend *be, char *err, size_t err_size) {
    vae_cuda *vc = vae_cuda_of(ops);
    cuda_backend *cb = cuda_of(be);
    if (cb->device != vc->device) {
        snprintf(err, err_size, "the VAE lives on cuda:%d, the context on cuda:%d", vc->device,
                 cb->device);
        return -1;
    }
    vc->decode_lock.lock();
    if (!cuda_enter(cb) || cudnn_check(cb, cudnnSetStream(vc->cudnn, cb->stream), "cudnnSetStream")) {
        snprintf(err, err_size, "%s", cb->error);
        vc->decode_lock.unlock();
        return -1;
    }
    vc->bound = cb;
    return 0;
}

static void cuda_vae_end(const vae_ops *ops) {
    vae_cuda *vc = vae_cuda_of(ops);
    /* The next decode may come from another context, on another stream: it
     * reuses the GroupNorm statistics buffers and reads the filters this one
     * rearranged, so this one's kernels must be done first (after a download
     * they are; not after a failure).
     * A failure here is the decode's own, already recorded or to come at its
     * download. */
    cudaStreamSynchronize(vc->bound->stream);
    vc->bound = NULL;
    vc->decode_lock.unlock();
}

static void cuda_vae_destroy(vae_ops *ops) {
    vae_cuda *vc = vae_cuda_of(ops);
    if (!vc) return;
    cudaSetDevice(vc->device);
    if (vc->conv_desc) cudnnDestroyConvolutionDescriptor(vc->conv_desc);
    if (vc->filter_desc) cudnnDestroyFilterDescriptor(vc->filter_desc);
    if (vc->out_desc) cudnnDestroyTensorDescriptor(vc->out_desc);
    if (vc->in_desc) cudnnDestroyTensorDescriptor(vc->in_desc);
    if (vc->cudnn) cudnnDestroy(vc->cudnn);
    if (vc->group_stats) cudaFree(vc->group_stats);
    if (vc->group_partials) cudaFree(vc->group_partials);
    if (vc->weights_bf16) cudaFree(vc->weights_bf16);
    delete vc;
    ops->impl = NULL;
}

static int init_failed(vae_ops *ops, char *err, size_t err_size, const char *what,
                       const char *why) {
    snprintf(err, err_size, "CUDA VAE decoder: %s: %s", what, why);
    cuda_vae_destroy(ops);
    return -1;
}

extern "C" int vae_ops_cuda_init(vae_ops *ops, backend *be, char *err, size_t err_size) {
    memset(ops, 0, sizeof *ops);
    vae_cuda *vc = new (std::nothrow) vae_cuda();
    if (!vc) {
        snprintf(err, err_size, "CUDA VAE decoder: out of host memory");
        return -1;
    }
    vc->device = cuda_of(be)->device;
    ops->name = "cuda";
    ops->impl = vc;
    ops->conv2d_scratch_floats = cuda_vae_conv2d_scratch_floats;
    ops->activation_type = cuda_vae_activation_type;
    ops->to_activation = cuda_vae_to_activation;
    ops->from_activation = cuda_vae_from_activation;
    ops->adopt_weights = cuda_vae_adopt_weights;
    ops->conv2d = cuda_vae_conv2d;
    ops->prepare_conv2d = cuda_vae_prepare_conv2d;
    ops->group_norm = cuda_vae_group_norm;
    ops->upsample_nearest2x = cuda_vae_upsample_nearest2x;
    ops->attention_scratch_floats = cuda_vae_attention_scratch_floats;
    ops->attention = cuda_vae_attention;
    ops->begin = cuda_vae_begin;
    ops->end = cuda_vae_end;
    ops->destroy = cuda_vae_destroy;

    cudaError_t cuda_status = cudaSetDevice(vc->device);
    if (cuda_status == cudaSuccess)
        cuda_status = cudaMalloc((void **)&vc->group_stats, 2 * VAE_MAX_GROUPS * sizeof(double));
    if (cuda_status == cudaSuccess)
        cuda_status = cudaMalloc((void **)&vc->group_partials, VAE_GROUP_PARTIALS * sizeof(double));
    if (cuda_status != cudaSuccess) {
        cudaGetLastError();
        return init_failed(ops, err, err_size, "device memory", cudaGetErrorString(cuda_status));
    }
    cudnnStatus_t status = cudnnCreate(&vc->cudnn);
    if (status == CUDNN_STATUS_SUCCESS) status = cudnnCreateTensorDescriptor(&vc->in_desc);
    if (status == CUDNN_STATUS_SUCCESS) status = cudnnCreateTensorDescriptor(&vc->out_desc);
    if (status == CUDNN_STATUS_SUCCESS) status = cudnnCreateFilterDescriptor(&vc->filter_desc);
    if (status == CUDNN_STATUS_SUCCESS) status = cudnnCreateConvolutionDescriptor(&vc->conv_desc);
    if (status != CUDNN_STATUS_SUCCESS)
        return init_failed(ops, err, err_size, "cuDNN setup", cudnnGetErrorString(status));
    return 0;
}

#endif
