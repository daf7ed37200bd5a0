/* npz.h - writing one uint8 array as a NumPy .npz archive, streamed.
 *
 * The archive is what numpy.savez(path, array) writes and numpy.load reads:
 * a zip file whose one member, "arr_0.npy", is stored uncompressed. The
 * member is always in ZIP64 form, so 50,000 RGB images of 256x256 (9.8 GB,
 * past zip's 4 GiB limit) take the same path as a small test array. The data
 * arrives in pieces (the caller need not hold the array) and goes to
 * PATH.tmp.<pid>, renamed over PATH by npz_u8_finish: a failed or abandoned
 * archive leaves PATH as it was.
 *
 * This is the file of the official DiT sample_ddp.py (arr_0, [N, H, W, 3]
 * uint8) that the ADM evaluation suite computes FID from. */
#ifndef FPDM_NPZ_H
#define FPDM_NPZ_H

#include <stddef.h>
#include <stdint.h>

typedef struct npz_writer npz_writer;

/* Starts PATH for a C-order uint8 array of `shape` (ndim 0..8). Returns the
 * writer, or NULL with a message in err. */
npz_writer *npz_u8_create(const char *path, int ndim, const int64_t *shape, char *err,
                          size_t err_size);

/* Appends the next `count` bytes of the array. Returns 0, or -1 with a
 * message (a write failure, or more bytes than the shape holds). */
int npz_u8_append(npz_writer *writer, const uint8_t *bytes, size_t count, char *err,
                  size_t err_size);

/* Completes the archive and renames it over PATH, then frees the writer
 * whatever happens. Returns 0, or -1 with a message (fewer bytes appended
 * than the shape holds, a write failure); on failure PATH is left as it was. */
int npz_u8_finish(npz_writer *writer, char *err, size_t err_size);

/* Removes the unfinished archive and frees the writer (NULL is a no-op). */
void npz_u8_abort(npz_writer *writer);

#endif
