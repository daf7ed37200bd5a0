/* test_vector_math.c - host/vector_math.h's functions against double
 * precision: vm_exp's relative error over its whole range, vm_gelu_tanh's
 * error relative to |x| over every input where GELU is not yet x or 0, and
 * what they make of the edges (clamped arguments, infinities, NaN).
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

static void test_exp(void) {
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

static void test_gelu(void) {
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

int main(void) {
    test_exp();
    test_gelu();
    return test_finish("test_vector_math");
}
