/* png.c - PNG output and input through Debian's stb_image_write and
 * stb_image (libstb); see png.h. */
#define _POSIX_C_SOURCE 200809L
#include "png.h"
#include "crc32.h"
#include "support_error.h"
#include "temp_path.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>

#include <stb_image.h>
#include <stb_image_write.h>

/* Keeps every row stride and the whole canvas well inside stb's int sizes. */
#define PNG_MAX_SIDE 32768
#define PNG_MAX_BYTES ((size_t)1 << 30)

uint8_t png_pixel_value(float x) {
    float v = 127.5f * x + 128.0f;
    if (!(v > 0.0f)) return 0; /* also NaN */
    if (v >= 255.0f) return 255;
    return (uint8_t)v;
}

/* Copies one [channels, height, width] image into the interleaved canvas at
 * (top, left). */
static void place_image(uint8_t *canvas, int canvas_width, const float *chw, int channels,
                        int height, int width, int top, int left) {
    size_t plane = (size_t)height * width;
    for (int y = 0; y < height; y++) {
        uint8_t *row = canvas + ((size_t)(top + y) * canvas_width + left) * channels;
        for (int x = 0; x < width; x++)
            for (int c = 0; c < channels; c++)
                row[(size_t)x * channels + c] = png_pixel_value(chw[c * plane + (size_t)y * width + x]);
    }
}

/* Where stb_image_write hands the encoded bytes. stbi_write_png itself
 * ignores fwrite's and fclose's failures, which on a full disk would leave a
 * truncated PNG in place that a resumed run then skips as done. */
static void write_to_temp_file(void *context, void *data, int size) {
    temp_file_write(context, data, (size_t)size);
}

static int write_canvas(const char *path, const uint8_t *canvas, int channels, int height,
                        int width, char *err, size_t err_size) {
    temp_file out;
    if (temp_file_create(&out, path, err, err_size) != 0) return -1;
    if (!stbi_write_png_to_func(write_to_temp_file, &out, width, height, channels, canvas,
                                width * channels)) {
        temp_file_discard(&out);
        support_set_error(err, err_size, "%s: cannot encode the PNG (out of memory)", path);
        return -1;
    }
    return temp_file_commit(&out, path, err, err_size);
}

static int check_image_shape(const char *path, int channels, int height, int width, char *err,
                             size_t err_size) {
    if (channels != 1 && channels != 3) {
        support_set_error(err, err_size, "%s: %d channels (allowed: 1 or 3)", path, channels);
        return -1;
    }
    if (height < 1 || width < 1 || height > PNG_MAX_SIDE || width > PNG_MAX_SIDE) {
        support_set_error(err, err_size, "%s: image size %dx%d (allowed: 1..%d per side)", path, height,
                  width, PNG_MAX_SIDE);
        return -1;
    }
    return 0;
}

int png_write_image(const char *path, const float *chw, int channels, int height, int width,
                    char *err, size_t err_size) {
    return png_write_grid(path, chw, 1, channels, height, width, 1, 0, err, err_size);
}

/* The canvas of a grid, or -1 with a message in err. */
static int grid_canvas(const char *path, int n, int channels, int height, int width, int *columns,
                       int padding, long long *canvas_height, long long *canvas_width, char *err,
                       size_t err_size) {
    if (check_image_shape(path, channels, height, width, err, err_size) != 0) return -1;
    if (n < 1 || *columns < 1 || padding < 0 || padding > PNG_MAX_SIDE) {
        support_set_error(err, err_size, "%s: grid of %d images, %d columns, padding %d (allowed: n >= "
                  "1, columns >= 1, padding 0..%d)", path, n, *columns, padding, PNG_MAX_SIDE);
        return -1;
    }
    if (*columns > n) *columns = n;
    int rows = (n + *columns - 1) / *columns;
    *canvas_width = (long long)*columns * (width + padding) + padding;
    *canvas_height = (long long)rows * (height + padding) + padding;
    if (*canvas_width > PNG_MAX_SIDE || *canvas_height > PNG_MAX_SIDE ||
        (size_t)(*canvas_width * *canvas_height * channels) > PNG_MAX_BYTES) {
        support_set_error(err, err_size,
                          "%s: a grid of %d images is %lldx%lld pixels, too large (allowed: at "
                          "most %d per side and %zu MiB)",
                          path, n, *canvas_height, *canvas_width, PNG_MAX_SIDE, PNG_MAX_BYTES >> 20);
        return -1;
    }
    return 0;
}

int png_check_grid(const char *path, int n, int channels, int height, int width, int columns,
                   int padding, char *err, size_t err_size) {
    long long canvas_height, canvas_width;
    return grid_canvas(path, n, channels, height, width, &columns, padding, &canvas_height,
                       &canvas_width, err, err_size);
}

/* Copies one [height, width, channels] image (a PNG's own layout) into the
 * canvas at (top, left). */
static void place_pixels(uint8_t *canvas, int canvas_width, const uint8_t *hwc, int channels,
                         int height, int width, int top, int left) {
    const size_t row_bytes = (size_t)width * channels;
    for (int y = 0; y < height; y++)
        memcpy(canvas + ((size_t)(top + y) * canvas_width + left) * channels,
               hwc + (size_t)y * row_bytes, row_bytes);
}

/* The grid of either float images (chw, [n, channels, height, width]) or
 * 8-bit ones (hwc, [n, height, width, channels]); the other is NULL. */
static int write_grid(const char *path, const float *chw, const uint8_t *hwc, int n, int channels,
                      int height, int width, int columns, int padding, char *err,
                      size_t err_size) {
    long long canvas_height, canvas_width;
    if (grid_canvas(path, n, channels, height, width, &columns, padding, &canvas_height,
                    &canvas_width, err, err_size) != 0)
        return -1;
    uint8_t *canvas = calloc((size_t)(canvas_width * canvas_height * channels), 1);
    if (!canvas) {
        support_set_error(err, err_size, "%s: out of memory", path);
        return -1;
    }
    const size_t image_values = (size_t)channels * height * width;
    for (int i = 0; i < n; i++) {
        int top = padding + (i / columns) * (height + padding);
        int left = padding + (i % columns) * (width + padding);
        if (chw)
            place_image(canvas, (int)canvas_width, chw + (size_t)i * image_values, channels,
                        height, width, top, left);
        else
            place_pixels(canvas, (int)canvas_width, hwc + (size_t)i * image_values, channels,
                         height, width, top, left);
    }
    int status = write_canvas(path, canvas, channels, (int)canvas_height, (int)canvas_width, err,
                              err_size);
    free(canvas);
    return status;
}

int png_write_grid(const char *path, const float *images, int n, int channels, int height,
                   int width, int columns, int padding, char *err, size_t err_size) {
    return write_grid(path, images, NULL, n, channels, height, width, columns, padding, err,
                      err_size);
}

int png_write_grid_pixels(const char *path, const uint8_t *pixels, int n, int channels, int height,
                          int width, int columns, int padding, char *err, size_t err_size) {
    return write_grid(path, NULL, pixels, n, channels, height, width, columns, padding, err,
                      err_size);
}

static const char *color_name(int channels) {
    return channels == 1 ? "gray" : channels == 2 ? "gray and alpha" : channels == 3 ? "RGB" : "RGBA";
}

static uint32_t big_endian32(const uint8_t *bytes) {
    return (uint32_t)bytes[0] << 24 | (uint32_t)bytes[1] << 16 | (uint32_t)bytes[2] << 8 |
           bytes[3];
}

/* The PNG framing stb_image does not check: after the signature, chunks up
 * to IEND, each inside the file and with the CRC-32 it carries. Without it a
 * bit flipped on disk in the image data decodes to other pixels, and a
 * chunk length past the end of a small file has stb allocate gigabytes. */
static int check_chunks(const char *path, const uint8_t *bytes, size_t size, char *err,
                        size_t err_size) {
    crc32_table crc_table;
    crc32_table_init(&crc_table);
    for (size_t at = 8;;) {
        if (size - at < 12) {
            support_set_error(err, err_size, "%s: truncated PNG (it ends at byte %zu without an "
                              "IEND chunk)", path, size);
            return -1;
        }
        uint32_t length = big_endian32(bytes + at);
        const uint8_t *type = bytes + at + 4;
        if (length > size - at - 12) {
            support_set_error(err, err_size, "%s: truncated PNG (chunk '%.4s' at byte %zu holds "
                              "%u bytes, the file %zu more)", path, (const char *)type, at,
                              length, size - at - 12);
            return -1;
        }
        if (crc32_update(&crc_table, 0, type, 4 + (size_t)length) !=
            big_endian32(type + 4 + length)) {
            support_set_error(err, err_size, "%s: damaged PNG (chunk '%.4s' at byte %zu fails its "
                              "CRC-32 check)", path, (const char *)type, at);
            return -1;
        }
        at += 12 + (size_t)length;
        if (memcmp(type, "IEND", 4) == 0) return 0;
    }
}

/* The whole file, when it is a PNG no larger than max_bytes; NULL after
 * setting err. */
static uint8_t *read_png_file(const char *path, size_t max_bytes, size_t *size, char *err,
                              size_t err_size) {
    FILE *f = fopen(path, "rb");
    if (!f) {
        support_set_error(err, err_size, "%s: cannot open: %s", path, strerror(errno));
        return NULL;
    }
    uint8_t *bytes = NULL;
    long length = fseek(f, 0, SEEK_END) == 0 ? ftell(f) : -1;
    if (length < 0 || fseek(f, 0, SEEK_SET) != 0) {
        support_set_error(err, err_size, "%s: cannot read: %s", path, strerror(errno));
    } else if ((size_t)length > max_bytes) {
        support_set_error(err, err_size, "%s: %ld bytes, more than a PNG of the expected size "
                          "takes (at most %zu)", path, length, max_bytes);
    } else if (!(bytes = malloc(length ? (size_t)length : 1))) {
        support_set_error(err, err_size, "%s: out of memory reading %ld bytes", path, length);
    } else if (fread(bytes, 1, (size_t)length, f) != (size_t)length) {
        support_set_error(err, err_size, "%s: cannot read: %s", path,
                          ferror(f) ? strerror(errno) : "the file shrank while being read");
        free(bytes);
        bytes = NULL;
    }
    fclose(f);
    *size = (size_t)(length > 0 ? length : 0);
    return bytes;
}

/* Decodes a whole file's bytes into pixels [height, width, channels]: 0, or
 * -1 after saying in err what the file holds. */
static int decode_png(const char *path, const uint8_t *bytes, size_t size, int channels,
                      int height, int width, uint8_t *pixels, char *err, size_t err_size) {
    static const unsigned char signature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1a, '\n'};
    if (size < 8 || memcmp(bytes, signature, 8) != 0) {
        support_set_error(err, err_size, "%s: not a PNG file", path);
        return -1;
    }
    if (check_chunks(path, bytes, size, err, err_size) != 0) return -1;
    int file_width, file_height, file_channels;
    if (!stbi_info_from_memory(bytes, (int)size, &file_width, &file_height, &file_channels)) {
        support_set_error(err, err_size, "%s: not a PNG file: %s", path, stbi_failure_reason());
        return -1;
    }
    const int file_bits = stbi_is_16_bit_from_memory(bytes, (int)size) ? 16 : 8;
    if (file_bits != 8 || file_channels != channels || file_height != height ||
        file_width != width) {
        support_set_error(err, err_size, "%s: a PNG of %dx%d pixels, %d-bit %s (expected: "
                          "%dx%d pixels, 8-bit %s)", path, file_height, file_width, file_bits,
                          color_name(file_channels), height, width, color_name(channels));
        return -1;
    }
    uint8_t *decoded = stbi_load_from_memory(bytes, (int)size, &file_width, &file_height,
                                             &file_channels, channels);
    if (!decoded) {
        support_set_error(err, err_size, "%s: cannot decode the PNG: %s", path,
                          stbi_failure_reason());
        return -1;
    }
    memcpy(pixels, decoded, (size_t)height * width * channels);
    stbi_image_free(decoded);
    return 0;
}

int png_read_image(const char *path, int channels, int height, int width, uint8_t *pixels,
                   char *err, size_t err_size) {
    /* Even stored without compression, the pixels take about their own size;
     * a megabyte more leaves room for other tools' metadata chunks. stb takes
     * an int size. */
    size_t max_bytes = 2 * (size_t)height * width * channels + ((size_t)1 << 20);
    if (max_bytes > INT_MAX) max_bytes = INT_MAX;
    size_t size;
    uint8_t *bytes = read_png_file(path, max_bytes, &size, err, err_size);
    if (!bytes) return -1;
    int rc = decode_png(path, bytes, size, channels, height, width, pixels, err, err_size);
    free(bytes);
    return rc;
}

/* The failure of a parallel loop with the lowest index, so that the message
 * does not depend on how the threads ran. */
typedef struct first_failure {
    int index; /* -1: none */
    char message[512];
} first_failure;

static void note_failure(first_failure *failure, int index, const char *message) {
#pragma omp critical(png_first_failure)
    if (failure->index < 0 || index < failure->index) {
        failure->index = index;
        snprintf(failure->message, sizeof failure->message, "%s", message);
    }
}

static int report_failure(const first_failure *failure, char *err, size_t err_size) {
    if (failure->index < 0) return 0;
    support_set_error(err, err_size, "%s", failure->message);
    return -1;
}

int png_write_images(const char *const *paths, const float *images, int n, int channels,
                     int height, int width, char *err, size_t err_size) {
    first_failure failure = {.index = -1};
    const size_t image_floats = (size_t)channels * height * width;
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; i++) {
        char message[512];
        if (png_write_image(paths[i], images + (size_t)i * image_floats, channels, height, width,
                            message, sizeof message) != 0)
            note_failure(&failure, i, message);
    }
    return report_failure(&failure, err, err_size);
}

int png_read_images(const char *const *paths, int n, int channels, int height, int width,
                    uint8_t *pixels, char *err, size_t err_size) {
    first_failure failure = {.index = -1};
    const size_t image_bytes = (size_t)channels * height * width;
#pragma omp parallel for schedule(dynamic, 1)
    for (int i = 0; i < n; i++) {
        char message[512];
        if (png_read_image(paths[i], channels, height, width, pixels + (size_t)i * image_bytes,
                           message, sizeof message) != 0)
            note_failure(&failure, i, message);
    }
    return report_failure(&failure, err, err_size);
}
