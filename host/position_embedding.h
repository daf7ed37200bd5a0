/* position_embedding.h - DiT's fixed 2-D sin-cos position embedding. */
#ifndef FPDM_POSITION_EMBEDDING_H
#define FPDM_POSITION_EMBEDDING_H

/* out[T = grid * grid, dim]: for the token in row r, column c, the first half
 * of the channels encodes the column and the second half the row (the
 * official table puts w first), each half as [sin(pos * w_k), cos(pos * w_k)]
 * with w_k = 10000^(-k / (dim / 4)). dim must be a multiple of 4. */
void position_embedding_2d(int dim, int grid, float *out);

#endif
