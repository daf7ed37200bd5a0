/* philox.c - Philox-4x32-10 (Salmon et al., SC 2011) and the Box-Muller normal
 * noise built on it; see philox.h for the counter layout. */
#include "philox.h"

#include <math.h>

#define PHILOX_M0 0xD2511F53u
#define PHILOX_M1 0xCD9E8D57u
#define PHILOX_W0 0x9E3779B9u
#define PHILOX_W1 0xBB67AE85u

static void philox_round(uint32_t ctr[4], const uint32_t key[2]) {
    uint64_t p0 = (uint64_t)PHILOX_M0 * ctr[0];
    uint64_t p1 = (uint64_t)PHILOX_M1 * ctr[2];
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t c1 = ctr[1], c3 = ctr[3];
    ctr[0] = hi1 ^ c1 ^ key[0];
    ctr[1] = lo1;
    ctr[2] = hi0 ^ c3 ^ key[1];
    ctr[3] = lo0;
}

void philox4x32_10(const uint32_t ctr[4], const uint32_t key[2], uint32_t out[4]) {
    uint32_t state[4] = {ctr[0], ctr[1], ctr[2], ctr[3]};
    uint32_t round_key[2] = {key[0], key[1]};
    for (int round = 0; round < 10; round++) {
        if (round > 0) {
            round_key[0] += PHILOX_W0;
            round_key[1] += PHILOX_W1;
        }
        philox_round(state, round_key);
    }
    for (int i = 0; i < 4; i++) out[i] = state[i];
}

/* (bits + 1) / 2^32 lies in (0, 1], so the logarithm below is always finite. */
static double unit_open_closed(uint32_t bits) {
    return ((double)bits + 1.0) * (1.0 / 4294967296.0);
}

void philox_normal(uint64_t seed, uint64_t image_index, uint32_t stage, float *out, size_t n) {
    const double two_pi = 6.283185307179586476925286766559;
    const uint32_t key[2] = {(uint32_t)seed, (uint32_t)(seed >> 32)};
    for (size_t first = 0; first < n; first += 4) {
        const uint32_t ctr[4] = {(uint32_t)(first / 4), stage, (uint32_t)image_index,
                                 (uint32_t)(image_index >> 32)};
        uint32_t bits[4];
        philox4x32_10(ctr, key, bits);
        float normals[4];
        for (int pair = 0; pair < 2; pair++) {
            double radius = sqrt(-2.0 * log(unit_open_closed(bits[2 * pair])));
            double angle = two_pi * unit_open_closed(bits[2 * pair + 1]);
            normals[2 * pair] = (float)(radius * cos(angle));
            normals[2 * pair + 1] = (float)(radius * sin(angle));
        }
        for (size_t lane = 0; lane < 4 && first + lane < n; lane++) out[first + lane] = normals[lane];
    }
}
