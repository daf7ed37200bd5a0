/* embedding.cu - the conditioning inputs of backend.h: timestep_frequencies
 * (the sinusoidal timestep features) and embedding_rows (class-label rows of a
 * table). Their host arrays reach the GPU through the backend's pinned staging
 * slots, without waiting for the stream. */
#include <math.h>
#include <string.h>

#include "cuda_backend.cuh"
#include "operand.cuh"

/* staged = [timesteps (batch floats), frequencies (half floats)]. The phase can
 * reach ~1000 rad, so it and its cos/sin are taken in double, as on the CPU. */
template <typename T>
__global__ void timestep_frequencies_kernel(T *out, const float *staged, int batch, int dim) {
    int half = dim / 2;
    const float *freqs = staged + batch;
    size_t n = (size_t)batch * (size_t)dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        int b = (int)(i / (size_t)dim), k = (int)(i % (size_t)dim);
        float value = 0.0f; /* the last column of an odd dim */
        if (k < 2 * half) {
            double phase = (double)staged[b] * (double)freqs[k % half];
            value = (float)(k < half ? cos(phase) : sin(phase));
        }
        out[i] = operand_from_float<T>(value);
    }
}

void cuda_timestep_frequencies(backend *be, void *out, const float *host_timesteps, int batch,
                               int dim) {
    cuda_backend *cb = cuda_of(be);
    if (batch <= 0 || dim <= 0 || !cuda_enter(cb)) return;
    int half = dim / 2;
    size_t count = (size_t)batch + (size_t)half;
    /* The frequencies are float32 as in the official code, computed on the
     * host with the very expression of the CPU backend so they match it bit
     * for bit. */
    int slot;
    float *staged = (float *)cuda_stage_host(cb, count * sizeof(float), &slot);
    if (!staged) return;
    memcpy(staged, host_timesteps, (size_t)batch * sizeof(float));
    for (int k = 0; k < half; k++)
        staged[batch + k] = expf(-logf(10000.0f) * (float)k / (float)half);
    const float *device_staged = (const float *)cuda_stage_upload(cb, slot, count * sizeof(float));
    if (!device_staged) return;
    size_t n = (size_t)batch * (size_t)dim;
    OPERAND_DISPATCH(be->operand_type,
                     timestep_frequencies_kernel<T><<<cuda_blocks_for(n, 256), 256, 0, cb->stream>>>(
                         (T *)out, device_staged, batch, dim));
    cuda_check_launch(cb, "timestep_frequencies_kernel");
}

__global__ void embedding_rows_kernel(float *out, const float *table, const int *labels, int batch,
                                      int dim) {
    size_t n = (size_t)batch * (size_t)dim;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t b = i / (size_t)dim, d = i % (size_t)dim;
        out[i] = table[(size_t)labels[b] * (size_t)dim + d];
    }
}

void cuda_embedding_rows(backend *be, float *out, const float *table, const int *host_labels,
                         int batch, int dim) {
    cuda_backend *cb = cuda_of(be);
    if (batch <= 0 || dim <= 0 || !cuda_enter(cb)) return;
    for (int b = 0; b < batch; b++)
        if (host_labels[b] < 0) {
            cuda_fail(cb, "embedding_rows: label %d at %d", host_labels[b], b);
            return;
        }
    const int *labels = (const int *)cuda_stage(cb, host_labels, (size_t)batch * sizeof(int));
    if (!labels) return;
    size_t n = (size_t)batch * (size_t)dim;
    embedding_rows_kernel<<<cuda_blocks_for(n, 256), 256, 0, cb->stream>>>(out, table, labels,
                                                                          batch, dim);
    cuda_check_launch(cb, "embedding_rows_kernel");
}
