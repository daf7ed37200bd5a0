/* bench_conv.c - what the NHWC layout buys the VAE decoder: cuDNN's bf16 3x3
 * convolutions of the SD-VAE decoder's heaviest shapes (8 images; 512
 * channels at 32x32 and 64x64, 256 at 128x128, 128 at 256x256, as a 256 px
 * decode of 8 latents runs them) with the tensors and filters in NCHW and in
 * NHWC (what kernels/vae_ops_cuda.cu runs in bf16), then its few-channel
 * ends (conv_in 4 -> 512, conv_out 128 -> 3), which tensor-core NHWC kernels
 * may not serve. For each: the heuristic's first usable algorithm (what the
 * decoder picks) and the fastest cuDNN's Find measures.
 * A benchmark, run by tests/gpu/run.sh:
 *
 *   build-gpu/bench_conv
 *
 * Exits 77 without a GPU, 1 on a failure. */
#include <math.h>
#include <stdio.h>

#include <cuda_runtime.h>
#include <cudnn.h>

#define BATCH 8
#define REPEATS 10
#define WORKSPACE_BYTES ((size_t)256 << 20)

static int ok(cudnnStatus_t status, const char *what) {
    if (status == CUDNN_STATUS_SUCCESS) return 1;
    fprintf(stderr, "bench_conv: %s: %s\n", what, cudnnGetErrorString(status));
    return 0;
}

/* Mean ms of REPEATS runs of `algo` after one warm-up; NAN if it fails. */
static double time_algo(cudnnHandle_t handle, cudnnTensorDescriptor_t x_desc, const void *x,
                        cudnnFilterDescriptor_t w_desc, const void *w,
                        cudnnConvolutionDescriptor_t conv, cudnnConvolutionFwdAlgo_t algo,
                        void *workspace, cudnnTensorDescriptor_t y_desc, void *y) {
    const float one = 1.0f, zero = 0.0f;
    cudaEvent_t start, stop;
    cudaEventCreate(&start);
    cudaEventCreate(&stop);
    double ms = NAN;
    if (cudnnConvolutionForward(handle, &one, x_desc, x, w_desc, w, conv, algo, workspace,
                                WORKSPACE_BYTES, &zero, y_desc, y) == CUDNN_STATUS_SUCCESS) {
        cudaEventRecord(start, 0);
        for (int r = 0; r < REPEATS; r++)
            cudnnConvolutionForward(handle, &one, x_desc, x, w_desc, w, conv, algo, workspace,
                                    WORKSPACE_BYTES, &zero, y_desc, y);
        cudaEventRecord(stop, 0);
        float elapsed = 0.0f;
        if (cudaEventSynchronize(stop) == cudaSuccess &&
            cudaEventElapsedTime(&elapsed, start, stop) == cudaSuccess)
            ms = elapsed / REPEATS;
    }
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return ms;
}

int main(void) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
        fprintf(stderr, "bench_conv: no CUDA device, skipped\n");
        return 77;
    }
    /* The first four are the heavy ones the totals add up. */
    const struct { int in_channels, out_channels, size; } shapes[] = {
        {512, 512, 32}, {512, 512, 64}, {256, 256, 128}, {128, 128, 256}, {4, 512, 32},
        {128, 3, 256}};
    const int heavy = 4;
    const cudnnTensorFormat_t formats[2] = {CUDNN_TENSOR_NCHW, CUDNN_TENSOR_NHWC};
    const char *format_names[2] = {"NCHW", "NHWC"};
    cudnnHandle_t handle;
    cudnnTensorDescriptor_t x_desc, y_desc;
    cudnnFilterDescriptor_t w_desc;
    cudnnConvolutionDescriptor_t conv;
    if (!ok(cudnnCreate(&handle), "cudnnCreate") ||
        !ok(cudnnCreateTensorDescriptor(&x_desc), "tensor descriptor") ||
        !ok(cudnnCreateTensorDescriptor(&y_desc), "tensor descriptor") ||
        !ok(cudnnCreateFilterDescriptor(&w_desc), "filter descriptor") ||
        !ok(cudnnCreateConvolutionDescriptor(&conv), "convolution descriptor"))
        return 1;
    size_t largest = (size_t)BATCH * 128 * 256 * 256 * 2;
    void *x = NULL, *y = NULL, *w = NULL, *workspace = NULL;
    if (cudaMalloc(&x, largest) != cudaSuccess || cudaMalloc(&y, largest) != cudaSuccess ||
        cudaMalloc(&w, (size_t)512 * 512 * 9 * 2) != cudaSuccess ||
        cudaMalloc(&workspace, WORKSPACE_BYTES) != cudaSuccess) {
        fprintf(stderr, "bench_conv: out of device memory\n");
        return 1;
    }
    /* Zeros: a bf16 0 is a valid value whatever the layout. */
    cudaMemset(x, 0, largest);
    cudaMemset(w, 0, (size_t)512 * 512 * 9 * 2);
    printf("cuDNN %zu, bf16 3x3 convolutions, %d images (ms: mean of %d after a warm-up)\n",
           cudnnGetVersion(), BATCH, REPEATS);
    printf("%11s %5s %6s %14s %12s\n", "channels", "size", "layout", "heuristic ms",
           "fastest ms");
    int failed = 0;
    double totals[2][2] = {{0, 0}, {0, 0}};
    for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
        int c_in = shapes[s].in_channels, c_out = shapes[s].out_channels, size = shapes[s].size;
        for (int f = 0; f < 2; f++) {
            cudnnConvolutionFwdAlgoPerf_t perf[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
            int returned = 0;
            double heuristic_ms = NAN, fastest_ms = NAN;
            if (ok(cudnnSetTensor4dDescriptor(x_desc, formats[f], CUDNN_DATA_BFLOAT16, BATCH,
                                              c_in, size, size), "x descriptor") &&
                ok(cudnnSetTensor4dDescriptor(y_desc, formats[f], CUDNN_DATA_BFLOAT16, BATCH,
                                              c_out, size, size), "y descriptor") &&
                ok(cudnnSetFilter4dDescriptor(w_desc, CUDNN_DATA_BFLOAT16, formats[f], c_out, c_in,
                                              3, 3),
                   "filter descriptor") &&
                ok(cudnnSetConvolution2dDescriptor(conv, 1, 1, 1, 1, 1, 1,
                                                   CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT),
                   "convolution descriptor") &&
                ok(cudnnSetConvolutionMathType(conv, CUDNN_TENSOR_OP_MATH), "math type") &&
                ok(cudnnGetConvolutionForwardAlgorithm_v7(handle, x_desc, w_desc, conv, y_desc,
                                                          CUDNN_CONVOLUTION_FWD_ALGO_COUNT,
                                                          &returned, perf),
                   "heuristic")) {
                for (int i = 0; i < returned && isnan(heuristic_ms); i++) {
                    size_t bytes = 0;
                    if (perf[i].status != CUDNN_STATUS_SUCCESS ||
                        cudnnSetConvolutionMathType(conv, perf[i].mathType) != CUDNN_STATUS_SUCCESS ||
                        cudnnGetConvolutionForwardWorkspaceSize(handle, x_desc, w_desc, conv, y_desc,
                                                                perf[i].algo, &bytes) !=
                            CUDNN_STATUS_SUCCESS ||
                        bytes > WORKSPACE_BYTES)
                        continue;
                    heuristic_ms = time_algo(handle, x_desc, x, w_desc, w, conv, perf[i].algo,
                                             workspace, y_desc, y);
                }
                cudnnSetConvolutionMathType(conv, CUDNN_TENSOR_OP_MATH);
                if (ok(cudnnFindConvolutionForwardAlgorithmEx(
                           handle, x_desc, x, w_desc, w, conv, y_desc, y,
                           CUDNN_CONVOLUTION_FWD_ALGO_COUNT, &returned, perf, workspace,
                           WORKSPACE_BYTES), "find"))
                    for (int i = 0; i < returned; i++)
                        if (perf[i].status == CUDNN_STATUS_SUCCESS &&
                            (isnan(fastest_ms) || perf[i].time < fastest_ms))
                            fastest_ms = perf[i].time;
            }
            /* The few-channel shapes are there to find out whether cuDNN
             * serves them: a gap there is a finding, not a failure. */
            if ((int)s < heavy && (isnan(heuristic_ms) || isnan(fastest_ms))) failed = 1;
            if ((int)s < heavy) {
                totals[f][0] += heuristic_ms;
                totals[f][1] += fastest_ms;
            }
            printf("%4d -> %4d %5d %6s %14.3f %12.3f\n", c_in, c_out, size, format_names[f],
                   heuristic_ms, fastest_ms);
            fflush(stdout);
        }
    }
    printf("the heavy four: NCHW %.3f / %.3f ms, NHWC %.3f / %.3f ms (heuristic / fastest);"
           " NHWC / NCHW %.2f / %.2f\n",
           totals[0][0], totals[0][1], totals[1][0], totals[1][1], totals[1][0] / totals[0][0],
           totals[1][1] / totals[0][1]);
    cudaFree(x);
    cudaFree(y);
    cudaFree(w);
    cudaFree(workspace);
    cudnnDestroyConvolutionDescriptor(conv);
    cudnnDestroyFilterDescriptor(w_desc);
    cudnnDestroyTensorDescriptor(x_desc);
    cudnnDestroyTensorDescriptor(y_desc);
    cudnnDestroy(handle);
    return failed;
}
