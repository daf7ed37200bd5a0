/* vector_math.c - the reductions of vector_math.h: sums and the softmax of
 * attention rows, each kept in LANES independent partial results so the
 * loops vectorise. tests/test_vector_math.c checks them against plain loops
 * in double on lengths that are and are not multiples of LANES. */
#include "vector_math.h"

#define LANES 8

VM_CLONES double vm_sum(const float *x, size_t n) {
    double lanes[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) lanes[l] += x[i + l];
    double sum = 0.0;
    for (; i < n; i++) sum += x[i];
    for (int l = 0; l < LANES; l++) sum += lanes[l];
    return sum;
}

VM_CLONES double vm_sum_squared_deviations(const float *x, size_t n, double mean) {
    double lanes[LANES] = {0};
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) {
            double d = x[i + l] - mean;
            lanes[l] += d * d;
        }
    double sum = 0.0;
    for (; i < n; i++) sum += (x[i] - mean) * (x[i] - mean);
    for (int l = 0; l < LANES; l++) sum += lanes[l];
    return sum;
}

/* The largest of n >= 1 floats. */
static inline float row_max(const float *x, size_t n) {
    float lanes[LANES];
    for (int l = 0; l < LANES; l++) lanes[l] = x[0];
    size_t i = 0;
    for (; i + LANES <= n; i += LANES)
        for (int l = 0; l < LANES; l++) lanes[l] = x[i + l] > lanes[l] ? x[i + l] : lanes[l];
    float max = lanes[0];
    for (; i < n; i++) max = x[i] > max ? x[i] : max;
    for (int l = 1; l < LANES; l++) max = lanes[l] > max ? lanes[l] : max;
    return max;
}

VM_CLONES void vm_softmax_rows(float *rows, size_t count, size_t cols) {
    for (size_t r = 0; r < count; r++) {
        float *row = rows + r * cols;
        float max = row_max(row, cols);
        for (size_t j = 0; j < cols; j++) row[j] = vm_exp(row[j] - max);
        float inv = (float)(1.0 / vm_sum(row, cols));
        for (size_t j = 0; j < cols; j++) row[j] *= inv;
    }
}
