/* test_philox.c - the noise generator: Philox-4x32-10 known answers from
 * Random123's kat_vectors, independence of the noise from how images are
 * grouped, and loose moments of the normal output.
 * Run: ctest -R test_philox (from the build folder's ctest). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "fpdm.h"
#include "philox.h"
#include "test_util.h"

static void check_block(const uint32_t ctr[4], const uint32_t key[2], const uint32_t expected[4]) {
    uint32_t out[4];
    philox4x32_10(ctr, key, out);
    for (int i = 0; i < 4; i++)
        CHECK_MSG(out[i] == expected[i], "word %d: got %08x, expected %08x", i, out[i],
                  expected[i]);
}

static void test_known_answers(void) {
    const uint32_t zero_ctr[4] = {0, 0, 0, 0}, zero_key[2] = {0, 0};
    const uint32_t zero_out[4] = {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8};
    check_block(zero_ctr, zero_key, zero_out);
    const uint32_t ones_ctr[4] = {0xffffffff, 0xffffffff, 0xffffffff, 0xffffffff};
    const uint32_t ones_key[2] = {0xffffffff, 0xffffffff};
    const uint32_t ones_out[4] = {0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd};
    check_block(ones_ctr, ones_key, ones_out);
    const uint32_t pi_ctr[4] = {0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344};
    const uint32_t pi_key[2] = {0xa4093822, 0x299f31d0};
    const uint32_t pi_out[4] = {0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1};
    check_block(pi_ctr, pi_key, pi_out);
}

/* The documented scheme, evaluated independently for one float. */
static void test_scheme(void) {
    const uint64_t seed = 0x0123456789abcdefull, image = 0x500000007ull;
    const uint32_t stage = 9;
    float noise[11];
    philox_normal(seed, image, stage, noise, 11);
    const uint32_t key[2] = {0x89abcdef, 0x01234567};
    const uint32_t ctr[4] = {2, stage, 7, 5};
    uint32_t words[4];
    philox4x32_10(ctr, key, words);
    double radius = sqrt(-2.0 * log((words[0] + 1.0) / 4294967296.0));
    double angle = 2.0 * 3.14159265358979323846 * ((words[1] + 1.0) / 4294967296.0);
    CHECK(noise[8] == (float)(radius * cos(angle)));
    CHECK(noise[9] == (float)(radius * sin(angle)));
    float shorter[3];
    philox_normal(seed, image, stage, shorter, 3);
    CHECK(memcmp(shorter, noise, sizeof shorter) == 0);
}

/* Images 0..7 in one backend call, one by one from the public API, and in
 * shards of three (one backend call each) all give the same floats. */
static void test_grouping(void) {
    enum { IMAGES = 8, PER_IMAGE = 2 * 4 * 5 + 3 };
    const uint64_t seed = 42;
    static float together[IMAGES * PER_IMAGE], separately[IMAGES * PER_IMAGE],
        sharded[IMAGES * PER_IMAGE];
    backend *be = backend_cpu_create(2);
    CHECK(be != NULL);
    if (!be) return;
    be->normal_noise(be, together, seed, 0, IMAGES, 3, PER_IMAGE);
    for (int i = IMAGES - 1; i >= 0; i--)
        fpdm_noise(seed, (uint64_t)i, 3, separately + (size_t)i * PER_IMAGE, PER_IMAGE);
    for (int shard_start = 0; shard_start < IMAGES; shard_start += 3) {
        float shard[3 * PER_IMAGE];
        int count = IMAGES - shard_start < 3 ? IMAGES - shard_start : 3;
        be->normal_noise(be, shard, seed, (uint64_t)shard_start, count, 3, PER_IMAGE);
        memcpy(sharded + (size_t)shard_start * PER_IMAGE, shard,
               (size_t)count * PER_IMAGE * sizeof(float));
    }
    CHECK(memcmp(together, separately, sizeof together) == 0);
    CHECK(memcmp(together, sharded, sizeof together) == 0);
    /* Different images, stages and seeds give different noise. */
    float other[PER_IMAGE];
    fpdm_noise(seed, 0, 4, other, PER_IMAGE);
    CHECK(memcmp(other, together, sizeof other) != 0);
    fpdm_noise(seed + 1, 0, 3, other, PER_IMAGE);
    CHECK(memcmp(other, together, sizeof other) != 0);
    CHECK(memcmp(together, together + PER_IMAGE, PER_IMAGE * sizeof(float)) != 0);
    be->destroy(be);
}

static void test_moments(void) {
    enum { N = 100000 };
    float *noise = malloc(N * sizeof(float));
    philox_normal(7, 3, 1, noise, N);
    double sum = 0, sum_sq = 0, sum_4 = 0;
    int finite = 1, beyond_two = 0;
    for (int i = 0; i < N; i++) {
        double v = noise[i];
        if (!isfinite(v)) finite = 0;
        sum += v;
        sum_sq += v * v;
        sum_4 += v * v * v * v;
        beyond_two += fabs(v) > 2.0;
    }
    double mean = sum / N, variance = sum_sq / N - mean * mean, kurtosis = sum_4 / N;
    CHECK(finite);
    CHECK_MSG(fabs(mean) < 0.02, "mean %g", mean);
    CHECK_MSG(fabs(variance - 1.0) < 0.03, "variance %g", variance);
    CHECK_MSG(fabs(kurtosis - 3.0) < 0.15, "fourth moment %g", kurtosis);
    /* P(|z| > 2) = 0.0455 */
    CHECK_MSG(fabs(beyond_two / (double)N - 0.0455) < 0.004, "tail fraction %g",
              beyond_two / (double)N);
    free(noise);
}

int main(void) {
    test_known_answers();
    test_scheme();
    test_grouping();
    test_moments();
    return test_finish("test_philox");
}
