/* test_vector_math.c - host/vector_math.h's functions against double
 * precision: vm_exp's relative error over its whole range, vm_gelu_tanh's
 * error relative to |x| over every input where GELU is not yet x or 0, and
 * what they make of the edges (clamped arguments, infinities, NaN); and
 * the lane-wise reductions (vm_sum, vm_sum_squared_deviations,
 * vm_softmax_rows) against plain loops in double, on lengths around their
 * 8 lanes with the largest value placed in each lane and in the tail.
 *
 * The sweeps are compiled as the library's loops are (VM_CLONES: on x86-64
 * the AVX2 variant where the CPU has it); test_vector_math_baseline is this
 * file and host/vector_math.c built with VM_NO_CLONES, for the portable
 * variant.
 *
 *   ./build/test_vector_math      (prints the largest errors found)
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "test_util.h"
#include "vector_math.h"

static double gelu_exact(double x) {
    return 0.5 * x * (1.0 + tanh(sqrt(2.0 / 3.14159265358979323846) * (x + 0.044715 * x * x * x)));
}

/* The float `step` representable floats above x (x > 0: the bit patterns of
 * positive floats count up with their values). */
static float step_float(float x, uint32_t step) {
    uint32_t bits;
    memcpy(&bits, &x, sizeof bits);
    bits += step;
    memcpy(&x, &bits, sizeof x);
    return x;
}

VM_CLONES static void test_exp(void) {
    double worst = 0.0;
    float worst_at = 0.0f;
    /* Three million points evenly over the range, and their neighbours. */
    const int points = 3000000;
    for (int i = 0; i <= points; i++) {
        float x = -87.0f + 175.0f * (float)i / (float)points;
        x = x > 88.0f ? 88.0f : x;
        double exact = exp((double)x);
        double error = fabs((double)vm_exp(x) - exact) / exact;
        if (error > worst) {
            worst = error;
            worst_at = x;
        }
    }
    printf("vm_exp: largest relative error %.3g at x = %.9g\n", worst, worst_at);
    CHECK_MSG(worst < 2e-7, "vm_exp's relative error %.3g at %.9g is over 2e-7", worst, worst_at);
    CHECK(vm_exp(0.0f) == 1.0f);
    CHECK(vm_exp(-1000.0f) == vm_exp(-87.0f) && vm_exp(-87.0f) > 0.0f);
    CHECK(vm_exp(1000.0f) == vm_exp(88.0f) && isfinite(vm_exp(INFINITY)));
    CHECK(vm_exp(-INFINITY) == vm_exp(-87.0f));
    CHECK(isnan(vm_exp(NAN)));
}

VM_CLONES static void test_gelu(void) {
    /* Past |x| = 10 GELU is x or 0 to float precision; in between, every
     * 97th float (so each binade, down to the smallest normal, gets its
     * share) of both signs. */
    double worst = 0.0;
    float worst_at = 0.0f;
    for (float magnitude = 1.17549435e-38f; magnitude <= 10.0f;
         magnitude = step_float(magnitude, 97)) {
        for (int sign = -1; sign <= 1; sign += 2) {
            float x = sign * magnitude;
            double error = fabs((double)vm_gelu_tanh(x) - gelu_exact(x)) / fabs((double)x);
            if (error > worst) {
                worst = error;
                worst_at = x;
            }
        }
    }
    printf("vm_gelu_tanh: largest error %.3g |x| at x = %.9g\n", worst, worst_at);
    CHECK_MSG(worst < 2e-7, "vm_gelu_tanh's error %.3g |x| at %.9g is over 2e-7 |x|", worst, worst_at);
    CHECK(vm_gelu_tanh(0.0f) == 0.0f);
    CHECK(vm_gelu_tanh(20.0f) == 20.0f && vm_gelu_tanh(3e30f) == 3e30f);
    CHECK(vm_gelu_tanh(-20.0f) == 0.0f && vm_gelu_tanh(-3e30f) == 0.0f);
    CHECK(vm_gelu_tanh(INFINITY) == INFINITY);
    CHECK(isnan(vm_gelu_tanh(NAN)));
}

/* Each length from 1 to 40, then 259 (a DiT-S attention row and a tail);
 * values from a fixed generator with one large value moved through every
 * position, so a lane or tail the sums skip changes the result. (The row
 * maximum only keeps vm_exp's argument in range: softmax does not depend on
 * it, so no output can show a maximum taken over fewer values.) */
VM_CLONES static void test_reductions(void) {
    enum { MAX_LENGTH = 259 };
    float x[MAX_LENGTH], row[MAX_LENGTH];
    double worst_sum = 0.0, worst_squares = 0.0, worst_softmax = 0.0;
    uint32_t state = 12345u;
    for (int i = 0; i < MAX_LENGTH; i++) {
        state = state * 1664525u + 1013904223u;
        x[i] = (float)(state >> 8) / 16777216.0f * 4.0f - 1.0f;
    }
    for (int n = 1; n <= MAX_LENGTH; n = n == 40 ? MAX_LENGTH : n + 1) {
        for (int peak = 0; peak < n; peak++) {
            float saved = x[peak];
            x[peak] = 9.0f;
            double sum = 0.0;
            for (int i = 0; i < n; i++) sum += x[i];
            double mean = sum / n, squares = 0.0, exp_sum = 0.0;
            for (int i = 0; i < n; i++) squares += (x[i] - mean) * (x[i] - mean);
            for (int i = 0; i < n; i++) exp_sum += exp((double)x[i] - 9.0);
            double error = fabs(vm_sum(x, (size_t)n) - sum) / fabs(sum);
            worst_sum = error > worst_sum ? error : worst_sum;
            error = fabs(vm_sum_squared_deviations(x, (size_t)n, mean) - squares) /
                    (squares > 0.0 ? squares : 1.0);
            worst_squares = error > worst_squares ? error : worst_squares;
            memcpy(row, x, sizeof(float) * (size_t)n);
            vm_softmax_rows(row, 1, (size_t)n);
            for (int i = 0; i < n; i++) {
                double expected = exp((double)x[i] - 9.0) / exp_sum;
                error = fabs(row[i] - expected) / expected;
                worst_softmax = error > worst_softmax ? error : worst_softmax;
            }
            x[peak] = saved;
        }
    }
    printf("vm_sum %.3g, vm_sum_squared_deviations %.3g, vm_softmax_rows %.3g (largest relative errors)\n",
           worst_sum, worst_squares, worst_softmax);
    CHECK_MSG(worst_sum < 1e-12, "vm_sum's relative error %.3g", worst_sum);
    CHECK_MSG(worst_squares < 1e-12, "vm_sum_squared_deviations' relative error %.3g", worst_squares);
    CHECK_MSG(worst_softmax < 1e-6, "vm_softmax_rows' relative error %.3g", worst_softmax);
    /* Several rows in one call: each normalised on its own. */
    float rows[3 * 5] = {0, 1, 2, 3, 4, -50, 0, 0, 0, 0, 7, 7, 7, 7, 7};
    vm_softmax_rows(rows, 3, 5);
    for (int r = 0; r < 3; r++) {
        double total = 0.0;
        for (int i = 0; i < 5; i++) total += rows[r * 5 + i];
        CHECK_MSG(fabs(total - 1.0) < 1e-6, "row %d of a 3-row softmax sums to %.9g", r, total);
    }
    CHECK(rows[10] == rows[14] && fabs(rows[10] - 0.2f) < 1e-7);
}

int main(void) {
    test_exp();
    test_gelu();
    test_reductions();
    return test_finish("test_vector_math");
}
