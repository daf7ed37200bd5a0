/* test_noise.c - the CUDA normal_noise against host/philox.c (philox_normal,
 * what the CPU backend and fpdm_noise give): the same floats, except that the
 * device's double log/cos/sin may move a rare value by one float ulp. Covers
 * per-image sizes that are not multiples of 4, image indices above 2^32 and
 * seeds using both words. Exits 77 (SKIPPED) without a GPU. Run: ctest -L gpu */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "backend_cuda.h"
#include "philox.h"
#include "test_util.h"

/* Distance in representable floats (same sign assumed; otherwise large). */
static int64_t ulp_distance(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, sizeof ia);
    memcpy(&ib, &b, sizeof ib);
    if ((ia < 0) != (ib < 0)) return a == b ? 0 : INT64_MAX;
    return llabs((long long)ia - (long long)ib);
}

static void check_noise(backend *gpu, uint64_t seed, uint64_t first_image, int count,
                        uint32_t stage, size_t per_image) {
    size_t n = (size_t)count * per_image;
    float *host = malloc(n * sizeof(float)), *expected = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) host[i] = NAN;
    float *device = gpu->alloc(gpu, n);
    CHECK(device != NULL);
    if (!device) return;
    CHECK(gpu->upload(gpu, device, host, n) == 0);
    gpu->normal_noise(gpu, device, seed, first_image, count, stage, per_image);
    int status = gpu->download(gpu, host, device, n);
    CHECK_MSG(status == 0, "%s", backend_cuda_error(gpu));
    for (int i = 0; i < count; i++)
        philox_normal(seed, first_image + (uint64_t)i, stage, expected + (size_t)i * per_image,
                      per_image);
    size_t off_by_one = 0, worse = 0;
    double sum = 0, squares = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t d = ulp_distance(host[i], expected[i]);
        if (d == 1) off_by_one++;
        if (d > 1 || isnan(host[i])) worse++;
        sum += host[i];
        squares += (double)host[i] * host[i];
    }
    fprintf(stderr, "  noise seed %llx images %llu+%d stage %u x %zu: %zu off by 1 ulp, %zu worse; "
            "mean %.4f var %.4f\n", (unsigned long long)seed, (unsigned long long)first_image,
            count, stage, per_image, off_by_one, worse, sum / n, squares / n - (sum / n) * (sum / n));
    CHECK(worse == 0);
    /* One ulp may differ where a double result lies next to a float rounding
     * boundary: about one value in 10^7 at most. */
    CHECK(off_by_one <= n / 100000 + 1);
    check_close("normal_noise", host, expected, n, 1e-7);
    gpu->release(gpu, device);
    free(host);
    free(expected);
}

int main(void) {
    if (backend_cuda_device_count() == 0) {
        fprintf(stderr, "test_noise: no CUDA device, skipped\n");
        return TEST_SKIP;
    }
    char err[256];
    backend *gpu = backend_cuda_create(0, FPDM_PRECISION_FP32, err, sizeof err);
    if (!gpu) {
        fprintf(stderr, "test_noise: %s\n", err);
        return 1;
    }
    check_noise(gpu, 0, 0, 4, 0, 4 * 32 * 32);
    check_noise(gpu, 0x123456789abcdefull, 7, 3, 250, 4 * 32 * 32 + 3);
    check_noise(gpu, 42, (1ull << 32) + 5, 2, 1, 13);
    check_noise(gpu, 0xffffffffffffffffull, 1000, 64, 17, 4 * 64 * 64 + 2);
    gpu->destroy(gpu);
    return test_finish("test_noise");
}
