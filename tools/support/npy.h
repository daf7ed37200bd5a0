/* npy.h - reading and writing float32 arrays as NumPy .npy files.
 *
 * Only what the programs exchange is accepted: dtype '<f4' (little-endian
 * float32), C order, format versions 1.0, 2.0 and 3.0, at most 8 dimensions,
 * and a data section of exactly prod(shape) * 4 bytes. The header dictionary
 * is checked strictly: exactly the keys 'descr', 'fortran_order' and 'shape',
 * each once. Messages start with the path and say what was found and what is
 * allowed. Writes go to PATH.tmp.<pid> and are renamed over PATH, so a reader
 * never sees a half-written file.
 */
#ifndef FPDM_NPY_H
#define FPDM_NPY_H

#include <stddef.h>
#include <stdint.h>

#define NPY_MAX_DIMS 8
/* Room for the longest header npy_header writes (8 dimensions of 19 digits). */
#define NPY_MAX_HEADER 320

/* Reads PATH into *data (malloc'd, the caller frees it; at least one float is
 * allocated even for an empty array), *ndim and shape[0..ndim-1]. Returns 0,
 * or -1 with a message in err and *data NULL. */
int npy_read_f32(const char *path, float **data, int *ndim, int64_t shape[NPY_MAX_DIMS],
                 char *err, size_t err_size);

/* Writes data [shape[0], ..., shape[ndim-1]] (ndim 0..8) as a version 1.0
 * file (its header always fits). Returns 0, or -1 with a message; on failure
 * PATH is left as it was. */
int npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape,
                  char *err, size_t err_size);

/* The version 1.0 preamble and header of a C-order array of dtype `descr`
 * ('<f4', '|u1') and `shape`, padded so the data starts at a multiple of 64
 * bytes, into `header`; *count gets prod(shape). Returns the header's length,
 * or 0 with a message in err (ndim outside 0..8, a negative dimension). */
size_t npy_header(const char *path, const char *descr, int ndim, const int64_t *shape,
                  char header[NPY_MAX_HEADER], int64_t *count, char *err, size_t err_size);

#endif
