/* philox.h - counter-based normal noise: Philox-4x32-10 keyed by the seed, with
 * the counter built from (block, stage, image index), and a Box-Muller
 * transform. The noise of one image at one stage is a pure function of
 * (seed, image index, stage), whatever the batch, thread count or device.
 *
 * The scheme, which every backend must reproduce bit for bit:
 *   key     = (seed & 0xffffffff, seed >> 32)
 *   counter = (block, stage, image_index & 0xffffffff, image_index >> 32)
 *   block b gives the 32-bit words w0..w3, which become the floats 4b..4b+3:
 *     u(w)   = (w + 1) / 2^32                      in (0, 1], never 0
 *     r      = sqrt(-2 ln u(w0)), a = 2 pi u(w1)   (and w2, w3 likewise)
 *     4b + 0 = r cos a, 4b + 1 = r sin a           (4b + 2, 4b + 3 from w2, w3)
 *   computed in double and rounded to float once. Asking for fewer floats gives
 *   a prefix of a longer request. Stage 0 is the initial noise, stage s >= 1
 *   the noise added by sampling step s.
 */
#ifndef FPDM_PHILOX_H
#define FPDM_PHILOX_H

#include <stddef.h>
#include <stdint.h>

/* One Philox-4x32-10 block: counter ctr[4], key key[2] -> out[4]. */
void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]);

/* n standard normal floats for (seed, image_index, stage). */
void philox_normal(uint64_t seed, uint64_t image_index, uint32_t stage, float *out, size_t n);

#endif
