/* vae_ops.h - the operations the VAE decoder (vae.c) is written over, as a
 * table of function pointers so another backend (CUDA/cuDNN) can implement the
 * same table. The CPU implementation (vae_ops_cpu.c, float32, OpenBLAS,
 * OpenMP) is the reference.
 *
 * Activations are a batch of images in the backend's memory, in the table's
 * layout and activation type: channel-major [batch, channels, height, width]
 * float32 (a [channels, tokens] matrix per image for attention) unless the
 * table says otherwise. The CUDA table in bf16/fp16 precision keeps them in
 * bf16 and pixel-major, [batch, height, width, channels] ([tokens, channels]
 * per image), the layout cuDNN's tensor-core convolutions run without
 * converting; the `float *` of an activation then points at 16-bit elements,
 * and sizes stay counted in elements. vae.c only sizes activations, never
 * indexes them: the table converts at the ends (to_activation and
 * from_activation), and the ops below take the shapes they need. Weights use PyTorch's layouts,
 * float32. Operations never allocate:
 * an operation that needs room takes a `scratch` pointer of at least the size
 * its *_scratch_floats function reports, so the caller can take all memory
 * from the context arena once per decode size.
 */
#ifndef FPDM_VAE_OPS_H
#define FPDM_VAE_OPS_H

#include <stddef.h>

#include "backend.h"

typedef struct vae_ops vae_ops;
struct vae_ops {
    const char *name;
    void *impl;               /* backend state (streams, handles); NULL on the CPU */
    int num_threads;          /* CPU threads for the parallel loops */

    /* Optional (NULL: float32 activations, as on the CPU). The type the
     * activations hold while the table is bound (see begin). */
    backend_dtype (*activation_type)(const vae_ops *ops);
    /* Needed where activation_type can answer other than float32 (and the
     * layout with it): [batch, channels, pixels] float32 channel-major, as
     * latents come and images go, into the activations' type and layout, and
     * back. */
    void (*to_activation)(const vae_ops *ops, float *out, const float *in, int batch,
                          int channels, int pixels);
    void (*from_activation)(const vae_ops *ops, float *out, const float *in, int batch,
                            int channels, int pixels);
    /* Optional: called once the weights are in place (on be's device), for
     * a table that keeps its own copy of them (the CUDA table's bf16 copy,
     * which its 16-bit convolutions read); 0, or -1 with a message in err. */
    int (*adopt_weights)(const vae_ops *ops, backend *be, const float *weights, size_t floats,
                         char *err, size_t err_size);

    /* Floats of scratch conv2d needs for these sizes. */
    size_t (*conv2d_scratch_floats)(const vae_ops *ops, int batch, int in_channels,
                                    int out_channels, int height, int width, int kernel);
    /* Per image (indices as channel, row, column, whatever the layout):
     * out[o, y, x] = bias[o] + residual[o, y, x] + sum_{c, i, j}
     *     weight[o, c, i, j] * in[c, y + i - kernel/2, x + j - kernel/2]
     * with zero padding (stride 1, odd kernel, output as big as the input).
     * weight is [out_channels, in_channels, kernel, kernel]; residual may be
     * NULL or equal to out (accumulate in place); in must not overlap out. */
    void (*conv2d)(const vae_ops *ops, float *out, const float *in, const float *weight,
                   const float *bias, const float *residual, int batch, int in_channels,
                   int out_channels, int height, int width, int kernel, float *scratch);
    /* Per image: out = GroupNorm(in) * gamma[c] + beta[c] over `groups`
     * groups of channels / groups channels (statistics in double, biased
     * variance), followed by SiLU when `silu` is set. out may equal in. */
    void (*group_norm)(const vae_ops *ops, float *out, const float *in, const float *gamma,
                       const float *beta, int batch, int channels, int pixels, int groups,
                       float eps, int silu);
    /* out [batch, channels, 2h, 2w] = nearest-neighbour 2x upsampling of in
     * [batch, channels, h, w] (each in the table's layout). */
    void (*upsample_nearest2x)(const vae_ops *ops, float *out, const float *in, int batch,
                               int channels, int height, int width);

    /* Floats of scratch attention needs for these sizes (one image's worth:
     * the images of a batch take turns with it). */
    size_t (*attention_scratch_floats)(const vae_ops *ops, int channels, int tokens);
    /* Single-head attention over each image's tokens: q, k, v, out are
     * [batch, channels, tokens] (pixel-major: [batch, tokens, channels]);
     * out[:, i] = sum_j softmax_j(q[:, i] . k[:, j] / sqrt(channels)) v[:, j].
     * out must not overlap q, k or v. */
    void (*attention)(const vae_ops *ops, float *out, const float *q, const float *k,
                      const float *v, int batch, int channels, int tokens, float *scratch);

    /* Optional (NULL where conv2d has nothing to choose, as on the CPU):
     * chooses and keeps what conv2d will use for these sizes (on CUDA, the
     * cuDNN algorithm) without running anything, so fpdm_vae_prepare can do
     * it before a decode. Failures are recorded like conv2d's. */
    void (*prepare_conv2d)(const vae_ops *ops, int batch, int in_channels, int out_channels,
                           int height, int width, int kernel);

    /* Optional (NULL on the CPU, whose table is built per decode). A decode
     * runs its operations between begin and end: begin binds the table to
     * the backend of the decoding context (its stream, where failures are
     * recorded) and holds off other decodes through the same table until end;
     * 0, or -1 with a message in err. destroy frees the table's state. */
    int (*begin)(const vae_ops *ops, backend *be, char *err, size_t err_size);
    void (*end)(const vae_ops *ops);
    void (*destroy)(vae_ops *ops);
};

/* Fills the table with the CPU implementation using num_threads OpenMP
 * threads (0: OpenMP's default). */
void vae_ops_cpu_init(vae_ops *ops, int num_threads);

/* Fills the table with the CUDA implementation (kernels/vae_ops_cuda.cu,
 * built when cuDNN is found: FPDM_HAVE_CUDNN) for the device of the CUDA
 * backend be: convolutions through cuDNN, attention through cuBLAS, the rest
 * in its own kernels. Precision follows the backend a decode binds to: fp32
 * keeps activations and every product in float32; bf16 and fp16 keep the
 * activations in bf16 and run convolutions and attention products on bf16
 * tensor cores with float32 accumulation (bf16 for fp16 too: SD VAE decoders are
 * known to overflow fp16 in places, and bf16 has float32's range). 0, or -1 with a message
 * in err. */
int vae_ops_cuda_init(vae_ops *ops, backend *be, char *err, size_t err_size);

#endif
