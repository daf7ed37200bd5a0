/* png.h - writing images in [-1, 1] as 8-bit PNG files with the official
 * mapping of DiT / FPDM sample.py: clamp(127.5 x + 128, 0, 255) computed in
 * float32 and truncated to uint8 (NaN becomes 0). Files are written to
 * PATH.tmp.<pid> and renamed over PATH, so nothing half-written is left.
 * And reading such files back, for archives built from a folder of them. */
#ifndef FPDM_PNG_H
#define FPDM_PNG_H

#include <stddef.h>
#include <stdint.h>

/* The 8-bit value of one sample. */
uint8_t png_pixel_value(float x);

/* chw [channels, height, width], channels 1 (gray) or 3 (RGB). Returns 0, or
 * -1 with a message in err. */
int png_write_image(const char *path, const float *chw, int channels, int height, int width,
                    char *err, size_t err_size);

/* images [n, channels, height, width] tiled row-major in a grid of `columns`
 * columns (clamped to n) and ceil(n / columns) rows, with `padding` black
 * pixels around and between the tiles; unused cells of the last row stay
 * black. Returns 0, or -1 with a message in err. */
int png_write_grid(const char *path, const float *images, int n, int channels, int height,
                   int width, int columns, int padding, char *err, size_t err_size);

/* png_write_grid for 8-bit pixels [n, height, width, channels], as
 * png_read_images gives them: the same grid as the float images the files
 * were written from. */
int png_write_grid_pixels(const char *path, const uint8_t *pixels, int n, int channels, int height,
                          int width, int columns, int padding, char *err, size_t err_size);

/* What png_write_grid checks before it writes, so a program can refuse a
 * grid too large to write before it computes the images. */
int png_check_grid(const char *path, int n, int channels, int height, int width, int columns,
                   int padding, char *err, size_t err_size);

/* png_write_image for n images [n, channels, height, width] to paths[0..n-1],
 * several at once on OpenMP's threads: encoding one 256 px RGB PNG takes
 * ~15 ms, as long as a few sampling steps of a whole batch on a GPU. Returns
 * 0, or -1 with the message of the lowest-numbered image that failed (each
 * file is whole or absent). */
int png_write_images(const char *const *paths, const float *images, int n, int channels,
                     int height, int width, char *err, size_t err_size);

/* Reads PATH, an 8-bit PNG of exactly `channels` channels (1 gray, 3 RGB)
 * and height x width pixels, into pixels [height, width, channels]. Returns
 * 0, or -1 with a message in err that says what was found. */
int png_read_image(const char *path, int channels, int height, int width, uint8_t *pixels,
                   char *err, size_t err_size);

/* png_read_image for paths[0..n-1] into pixels [n, height, width, channels],
 * several at once on OpenMP's threads. Returns 0, or -1 with the message of
 * the lowest-numbered file that failed. */
int png_read_images(const char *const *paths, int n, int channels, int height, int width,
                    uint8_t *pixels, char *err, size_t err_size);

#endif
