/* vector_math.h - element-wise float functions in plain arithmetic (no
 * library calls, no branches), so that a loop of them vectorises: the CPU
 * backend's GELU ran through libm's scalar tanhf, a quarter of a DiT-S/2
 * forward on two cores. tests/test_vector_math.c measures their error
 * against double precision over the whole float range that matters.
 *
 *   vm_exp(x)        e^x, relative error under 2e-7 for x in [-87, 88]
 *                    (clamped there: 0-ish below, 1.6e38 above); NaN stays NaN.
 *   vm_gelu_tanh(x)  0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))), the
 *                    tanh-approximated GELU of DiT's MLP, within 2e-7 |x| of
 *                    the exact value (the tanh inside to 1.5e-7 absolute:
 *                    what the product with 0.5 x needs, as in float32
 *                    PyTorch, whose 1 + tanh cancels the same way).
 *
 * and, in vector_math.c, the reductions both backends' softmax and GroupNorm
 * need, written in independent lanes so they vectorise (a single running sum
 * is a chain of dependent additions the compiler may not reorder):
 *
 *   vm_sum(x, n)                        sum of n floats, in double
 *   vm_sum_squared_deviations(x, n, m)  sum of (x - m)^2, in double
 *   vm_softmax_rows(rows, count, cols)  softmax of each row in place, the
 *                                       sum in double */
#ifndef FPDM_VECTOR_MATH_H
#define FPDM_VECTOR_MATH_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

/* For a function whose loops call these: GCC compiles it twice on x86-64,
 * for the portable baseline (SSE2) and for AVX2, and the loader picks the one
 * the CPU runs (an ifunc: glibc's). Both give the same bits, since nothing is
 * contracted into FMAs (-ffp-contract=off, CMakeLists.txt); on an EPYC the
 * GELU takes 3.1 ns an element in SSE2 and 1.25 in AVX2. VM_NO_CLONES keeps
 * the baseline only (tests/test_vector_math.c is built both ways). */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__) && defined(__GLIBC__) && \
    !defined(VM_NO_CLONES)
#define VM_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define VM_CLONES
#endif

static inline float vm_exp(float x) {
    /* x = n ln2 + r, |r| <= ln2 / 2; e^x = 2^n e^r. */
    const float log2e = 1.44269504088896341f;
    const float ln2_hi = 0.693145751953125f, ln2_lo = 1.428606765330187e-06f;
    /* Adding and taking away 1.5 * 2^23 rounds to the nearest integer. */
    const float round_magic = 12582912.0f;
    x = x < -87.0f ? -87.0f : x;
    x = x > 88.0f ? 88.0f : x;
    float n_magic = x * log2e + round_magic;
    float n = n_magic - round_magic;
    float r = (x - n * ln2_hi) - n * ln2_lo;
    /* e^r by its Taylor series to r^7 / 7!: relative error under 1e-7 on |r| <= 0.347. */
    float p = 1.0f / 5040.0f;
    p = p * r + 1.0f / 720.0f;
    p = p * r + 1.0f / 120.0f;
    p = p * r + 1.0f / 24.0f;
    p = p * r + 1.0f / 6.0f;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    /* 2^n from its exponent bits, n in [-126, 127] after the clamp. n_magic's
     * low mantissa bits hold 2^22 + n; adding 127 and shifting by 23 leaves
     * n + 127 in the exponent. (An integer conversion of n would do, but
     * compilers do not vectorise a conversion that may trap.) */
    uint32_t bits;
    memcpy(&bits, &n_magic, sizeof bits);
    bits = (bits + 127u) << 23;
    float scale;
    memcpy(&scale, &bits, sizeof scale);
    return p * scale;
}

static inline float vm_gelu_tanh(float x) {
    const float k = 0.7978845608028654f; /* sqrt(2 / pi) */
    float u = k * (x + 0.044715f * x * x * x);
    /* tanh(u) = sign(u) (1 - e) / (1 + e) with e = e^(-2|u|) in (0, 1]: no
     * overflow; past |u| = 9 the quotient is 1 in float. */
    float a = u < 0.0f ? -u : u;
    a = a > 9.0f ? 9.0f : a;
    float e = vm_exp(-2.0f * a);
    float t = (1.0f - e) / (1.0f + e);
    t = u < 0.0f ? -t : t;
    return 0.5f * x * (1.0f + t);
}

double vm_sum(const float *x, size_t n);
double vm_sum_squared_deviations(const float *x, size_t n, double mean);
void vm_softmax_rows(float *rows, size_t count, size_t cols);

#endif
