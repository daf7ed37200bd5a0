/* noise.c - the public fpdm_noise: the built-in generator's noise for one
 * image at one stage (philox_normal, see philox.h). */
#include "fpdm.h"
#include "philox.h"

void fpdm_noise(uint64_t noise_seed, uint64_t image_index, uint32_t stage, float *out, size_t n) {
    philox_normal(noise_seed, image_index, stage, out, n);
}
