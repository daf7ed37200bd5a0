/* noise.cu - backend.h's `normal_noise`: the generator of host/philox.c run on
 * the device, one thread per Philox-4x32-10 block (four normals). It mirrors
 * philox.c step for step - key (seed lo, seed hi), counter (block, stage,
 * image lo, image hi), Box-Muller in double on (bits + 1) / 2^32 - with
 * explicitly rounded double operations so that no fused multiply-add changes
 * a result; the floats equal the host's unless the device's log/cos/sin
 * (within 2 ulp of double) move a value across a float rounding boundary. */
#include "cuda_backend.cuh"

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

__device__ __forceinline__ void philox4x32_10_device(uint32_t ctr[4], uint32_t key0, uint32_t key1) {
#pragma unroll
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            key0 += PHILOX_W0;
            key1 += PHILOX_W1;
        }
        uint32_t hi0 = __umulhi(PHILOX_M0, ctr[0]), lo0 = PHILOX_M0 * ctr[0];
        uint32_t hi1 = __umulhi(PHILOX_M1, ctr[2]), lo1 = PHILOX_M1 * ctr[2];
        uint32_t c1 = ctr[1], c3 = ctr[3];
        ctr[0] = hi1 ^ c1 ^ key0;
        ctr[1] = lo1;
        ctr[2] = hi0 ^ c3 ^ key1;
        ctr[3] = lo0;
    }
}

/* (bits + 1) / 2^32, exact in double. */
__device__ __forceinline__ double unit_open_closed(uint32_t bits) {
    return __dmul_rn(__dadd_rn((double)bits, 1.0), 1.0 / 4294967296.0);
}

__global__ void normal_noise_kernel(float *out, uint32_t key0, uint32_t key1,
                                    unsigned long long first_image, uint32_t stage,
                                    size_t per_image, size_t blocks_per_image, size_t total_blocks) {
    const double two_pi = 6.283185307179586476925286766559;
    for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < total_blocks;
         i += (size_t)gridDim.x * blockDim.x) {
        size_t image = i / blocks_per_image, block = i % blocks_per_image;
        unsigned long long image_index = first_image + image;
        uint32_t bits[4] = {(uint32_t)block, stage, (uint32_t)image_index,
                            (uint32_t)(image_index >> 32)};
        philox4x32_10_device(bits, key0, key1);
        float normals[4];
#pragma unroll
        for (int pair = 0; pair < 2; pair++) {
            double radius = sqrt(__dmul_rn(-2.0, log(unit_open_closed(bits[2 * pair]))));
            double angle = __dmul_rn(two_pi, unit_open_closed(bits[2 * pair + 1]));
            normals[2 * pair] = (float)__dmul_rn(radius, cos(angle));
            normals[2 * pair + 1] = (float)__dmul_rn(radius, sin(angle));
        }
        float *o = out + image * per_image;
        size_t first = block * 4;
#pragma unroll
        for (int lane = 0; lane < 4; lane++)
            if (first + lane < per_image) o[first + lane] = normals[lane];
    }
}

void cuda_normal_noise(backend *be, float *out, uint64_t noise_seed, uint64_t first_image,
                       int count, uint32_t stage, size_t per_image) {
    cuda_backend *cb = cuda_of(be);
    if (count <= 0 || !per_image || !cuda_enter(cb)) return;
    /* philox.c numbers the blocks of an image with a 32-bit counter word. */
    size_t blocks_per_image = (per_image + 3) / 4;
    if (blocks_per_image > 0xffffffffull) {
        cuda_fail(cb, "normal_noise: %zu floats per image is too many", per_image);
        return;
    }
    size_t total_blocks = blocks_per_image * (size_t)count;
    normal_noise_kernel<<<cuda_blocks_for(total_blocks, 256), 256, 0, cb->stream>>>(
        out, (uint32_t)noise_seed, (uint32_t)(noise_seed >> 32), (unsigned long long)first_image,
        stage, per_image, blocks_per_image, total_blocks);
    cuda_check_launch(cb, "normal_noise_kernel");
}
