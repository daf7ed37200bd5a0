/* position_embedding.c - see position_embedding.h; computed in double as the
 * official numpy code does. */
#include "position_embedding.h"

#include <math.h>
#include <stddef.h>

void position_embedding_2d(int dim, int grid, float *out) {
    int quarter = dim / 4;
    for (int r = 0; r < grid; r++) {
        for (int c = 0; c < grid; c++) {
            float *row = out + ((size_t)r * grid + c) * dim;
            for (int k = 0; k < quarter; k++) {
                double omega = 1.0 / pow(10000.0, (double)k / quarter);
                row[k] = (float)sin(c * omega);
                row[quarter + k] = (float)cos(c * omega);
                row[2 * quarter + k] = (float)sin(r * omega);
                row[3 * quarter + k] = (float)cos(r * omega);
            }
        }
    }
}
