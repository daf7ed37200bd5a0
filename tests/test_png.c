/* test_png.c - PNG output decoded back with stb_image: every pixel follows
 * the official mapping clamp(127.5 x + 128, 0, 255) truncated, for RGB and
 * gray images and for a grid whose last row is not full; and png_read_image
 * reading such files back, refusing files of another shape or format and
 * damaged ones (a changed data byte, a cut file, a chunk longer than the
 * file, a file far larger than the image).
 * Run: ctest -R test_png (from the build folder's ctest). */
#define _POSIX_C_SOURCE 200809L
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <stb_image.h>

#include "png.h"
#include "test_util.h"

static char dir[256];

/* The official mapping, written out independently of png_pixel_value. */
static int official_value(float x) {
    double v = (double)(127.5f * x + 128.0f);
    if (v < 0) v = 0;
    if (v > 255) v = 255;
    return (int)v;
}

static void test_mapping(void) {
    CHECK(png_pixel_value(-1.0f) == 0);   /* 0.5 truncates to 0 */
    CHECK(png_pixel_value(1.0f) == 255);  /* 255.5 clamps */
    CHECK(png_pixel_value(0.0f) == 128);
    CHECK(png_pixel_value(-2.0f) == 0);
    CHECK(png_pixel_value(3.0f) == 255);
    CHECK(png_pixel_value(NAN) == 0);
    CHECK(png_pixel_value(-1.0f / 127.5f) == 127); /* 127.0 exactly, or a hair under */
}

static float *ramp(int n, int channels, int height, int width, float offset) {
    size_t count = (size_t)n * channels * height * width;
    float *v = malloc(count * sizeof(float));
    for (size_t i = 0; i < count; i++) v[i] = -1.2f + 2.4f * (float)((i * 37 + 11) % 101) / 100.0f + offset;
    return v;
}

/* Pixels of an interleaved [height, width, channels] image that differ from
 * the official mapping of chw [channels, height, width]. */
static int count_mismatches(const uint8_t *pixels, const float *chw, int channels, int height,
                            int width) {
    int mismatches = 0;
    for (int y = 0; y < height; y++)
        for (int x = 0; x < width; x++)
            for (int c = 0; c < channels; c++)
                mismatches += pixels[(y * width + x) * channels + c] !=
                              official_value(chw[(c * height + y) * width + x]);
    return mismatches;
}

static void test_image(int channels) {
    const int height = 5, width = 7;
    float *chw = ramp(1, channels, height, width, 0.0f);
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/image%d.png", dir, channels);
    CHECK_MSG(png_write_image(path, chw, channels, height, width, err, sizeof err) == 0, "%s", err);
    int w, h, comp;
    unsigned char *pixels = stbi_load(path, &w, &h, &comp, 0);
    CHECK(pixels != NULL);
    if (pixels) {
        CHECK(w == width && h == height && comp == channels);
        int mismatches = count_mismatches(pixels, chw, channels, height, width);
        CHECK_MSG(mismatches == 0, "%d pixels differ", mismatches);
        stbi_image_free(pixels);
    }
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(access(tmp, F_OK) != 0);
    free(chw);
}

/* Whether two files hold the same bytes. */
static int same_file_bytes(const char *a_path, const char *b_path) {
    FILE *a = fopen(a_path, "rb"), *b = fopen(b_path, "rb");
    int same = a && b;
    while (same) {
        int ca = fgetc(a), cb = fgetc(b);
        same = ca == cb;
        if (ca == EOF) break;
    }
    if (a) fclose(a);
    if (b) fclose(b);
    return same;
}

static void test_grid(void) {
    const int n = 5, channels = 3, height = 4, width = 3, columns = 3, padding = 2;
    float *images = ramp(n, channels, height, width, 0.1f);
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/grid.png", dir);
    CHECK_MSG(png_write_grid(path, images, n, channels, height, width, columns, padding, err,
                             sizeof err) == 0, "%s", err);
    int w, h, comp;
    unsigned char *pixels = stbi_load(path, &w, &h, &comp, 0);
    CHECK(pixels != NULL);
    if (!pixels) {
        free(images);
        return;
    }
    const int grid_width = columns * (width + padding) + padding;
    const int grid_height = 2 * (height + padding) + padding;
    CHECK(w == grid_width && h == grid_height && comp == channels);
    int mismatches = 0;
    for (int y = 0; y < grid_height && w == grid_width && h == grid_height; y++) {
        for (int x = 0; x < grid_width; x++) {
            int cell_y = (y - padding) / (height + padding), in_y = (y - padding) % (height + padding);
            int cell_x = (x - padding) / (width + padding), in_x = (x - padding) % (width + padding);
            int image = cell_y * columns + cell_x;
            int inside = y >= padding && x >= padding && in_y < height && in_x < width &&
                         image < n;
            for (int c = 0; c < channels; c++) {
                int expected = inside ? official_value(images[(((size_t)image * channels + c) *
                                                                height + in_y) * width + in_x])
                                      : 0;
                mismatches += pixels[(y * grid_width + x) * channels + c] != expected;
            }
        }
    }
    CHECK_MSG(mismatches == 0, "%d grid pixels differ", mismatches);
    stbi_image_free(pixels);

    /* The grid of the images' PNG files read back is the same file, byte
     * for byte (fpdm-sample tiles --grid from the PNGs in --out). */
    char names[5][600], pixel_grid[600];
    const char *paths[5];
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "%s/tile%d.png", dir, i);
        paths[i] = names[i];
    }
    uint8_t *hwc = malloc((size_t)n * channels * height * width);
    snprintf(pixel_grid, sizeof pixel_grid, "%s/grid-pixels.png", dir);
    CHECK_MSG(png_write_images(paths, images, n, channels, height, width, err, sizeof err) == 0 &&
              png_read_images(paths, n, channels, height, width, hwc, err, sizeof err) == 0 &&
              png_write_grid_pixels(pixel_grid, hwc, n, channels, height, width, columns, padding,
                                    err, sizeof err) == 0, "%s", err);
    CHECK(same_file_bytes(path, pixel_grid));
    free(hwc);

    /* More columns than images: the grid narrows to the images. */
    CHECK(png_write_grid(path, images, 2, channels, height, width, 8, 0, err, sizeof err) == 0);
    pixels = stbi_load(path, &w, &h, &comp, 0);
    CHECK(pixels && w == 2 * width && h == height);
    stbi_image_free(pixels);
    free(images);
}

static void test_rejections(void) {
    float pixel[4] = {0};
    char path[512], err[512] = "";
    snprintf(path, sizeof path, "%s/bad.png", dir);
    CHECK(png_write_image(path, pixel, 2, 1, 2, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "2 channels") != NULL, "%s", err);
    CHECK(png_write_image(path, pixel, 1, 0, 2, err, sizeof err) == -1);
    CHECK(png_write_grid(path, pixel, 0, 1, 1, 1, 1, 0, err, sizeof err) == -1);
    CHECK(png_write_grid(path, pixel, 1, 1, 1, 1, 0, 0, err, sizeof err) == -1);
    CHECK(access(path, F_OK) != 0);
    /* The size rule, checkable before there are images: 16 RGB images of
     * 256 px make a 1 MB canvas; 5400 of them pass the 1 GiB cap (each side
     *  stays under 32768); 200 x 200 one-pixel images stay within both, but
     * 130 x 1 with a padding of 300 makes a side past 32768. */
    CHECK(png_check_grid(path, 16, 3, 256, 256, 4, 2, err, sizeof err) == 0);
    CHECK(png_check_grid(path, 5400, 3, 256, 256, 74, 2, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "5400 images") && strstr(err, "too large"), "%s", err);
    CHECK(png_check_grid(path, 40000, 1, 1, 1, 200, 0, err, sizeof err) == 0);
    CHECK(png_check_grid(path, 130, 1, 1, 1, 130, 300, err, sizeof err) == -1);
    snprintf(path, sizeof path, "%s/no/such/dir.png", dir);
    CHECK(png_write_image(path, pixel, 1, 2, 2, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "no/such/dir.png") != NULL, "%s", err);
}

static void test_read_back(int channels) {
    const int height = 6, width = 5;
    float *chw = ramp(1, channels, height, width, 0.05f);
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/read%d.png", dir, channels);
    CHECK_MSG(png_write_image(path, chw, channels, height, width, err, sizeof err) == 0, "%s", err);
    uint8_t pixels[6 * 5 * 3];
    memset(pixels, 0xab, sizeof pixels);
    CHECK_MSG(png_read_image(path, channels, height, width, pixels, err, sizeof err) == 0, "%s",
              err);
    int mismatches = count_mismatches(pixels, chw, channels, height, width);
    CHECK_MSG(mismatches == 0, "%d pixels read back differ", mismatches);

    /* Another channel count or size is refused, saying what the file holds. */
    const int other = channels == 1 ? 3 : 1;
    CHECK(png_read_image(path, other, height, width, pixels, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, channels == 1 ? "6x5 pixels, 8-bit gray (expected: 6x5 pixels, 8-bit RGB)"
                                        : "6x5 pixels, 8-bit RGB (expected: 6x5 pixels, 8-bit gray)"),
              "%s", err);
    CHECK(png_read_image(path, channels, height, width + 1, pixels, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "(expected: 6x6 pixels, "), "%s", err);
    free(chw);
}

static void test_read_rejections(void) {
    char path[512], err[512] = "";
    uint8_t pixels[16] = {0};
    snprintf(path, sizeof path, "%s/missing.png", dir);
    CHECK(png_read_image(path, 1, 4, 4, pixels, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "missing.png: cannot open"), "%s", err);
    /* Not a PNG: a 4x4 gray PGM, which stb_image itself would decode. */
    snprintf(path, sizeof path, "%s/pgm.png", dir);
    FILE *f = fopen(path, "wb");
    fputs("P5\n4 4\n255\n", f);
    fwrite(pixels, 1, 16, f);
    fclose(f);
    CHECK(png_read_image(path, 1, 4, 4, pixels, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "pgm.png: not a PNG file"), "%s", err);
    /* A PNG signature over a broken file. */
    snprintf(path, sizeof path, "%s/truncated.png", dir);
    f = fopen(path, "wb");
    fwrite("\x89PNG\r\n\x1a\n\0\0", 1, 10, f);
    fclose(f);
    CHECK(png_read_image(path, 1, 4, 4, pixels, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "truncated.png: truncated PNG (it ends at byte 10"), "%s", err);
}

static uint32_t big_endian32(const uint8_t *bytes) {
    return (uint32_t)bytes[0] << 24 | (uint32_t)bytes[1] << 16 | (uint32_t)bytes[2] << 8 |
           bytes[3];
}

/* Damage stb_image does not notice, or not well: a changed byte in the
 * image data (here in its zlib checksum, which stb skips, so that without
 * the CRC check the file read as whole; elsewhere it can decode to other
 * pixels), the file cut before IEND, a chunk that claims more bytes than the
 * file has (stb reserved them all first), and a file far larger than the
 * image asked for. */
static void test_read_damaged(void) {
    const int height = 4, width = 4;
    float *chw = ramp(1, 1, height, width, 0.1f);
    char path[512], err[512] = "";
    snprintf(path, sizeof path, "%s/whole.png", dir);
    CHECK_MSG(png_write_image(path, chw, 1, height, width, err, sizeof err) == 0, "%s", err);
    free(chw);
    uint8_t file[4096], pixels[16];
    FILE *f = fopen(path, "rb");
    size_t size = f ? fread(file, 1, sizeof file, f) : 0;
    if (f) fclose(f);
    CHECK(size > 57 && size < sizeof file);
    if (size <= 57 || size >= sizeof file) return;
    size_t idat = 0; /* the IDAT chunk's length field */
    for (size_t at = 8; at + 8 <= size && !idat; at += 12 + big_endian32(file + at))
        if (memcmp(file + at + 4, "IDAT", 4) == 0) idat = at;
    CHECK(idat > 0);

    const struct {
        const char *name, *expected;
        size_t offset, length; /* the byte changed (XORed with 0xff), the file's length */
    } cases[] = {
        {"flipped.png", "flipped.png: damaged PNG (chunk 'IDAT' at byte",
         idat + 8 + big_endian32(file + idat) - 1, size},
        {"cut.png", "cut.png: truncated PNG (it ends at byte", 0, size - 12},
        {"long_chunk.png", "long_chunk.png: truncated PNG (chunk 'IDAT' at byte", idat, size},
    };
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        uint8_t damaged[4096];
        memcpy(damaged, file, size);
        if (cases[i].offset) damaged[cases[i].offset] ^= 0xff;
        snprintf(path, sizeof path, "%s/%s", dir, cases[i].name);
        f = fopen(path, "wb");
        fwrite(damaged, 1, cases[i].length, f);
        fclose(f);
        CHECK(png_read_image(path, 1, height, width, pixels, err, sizeof err) == -1);
        CHECK_MSG(strstr(err, cases[i].expected), "%s: %s", cases[i].name, err);
    }

    /* A megabyte and more past what the 4x4 image could take. */
    snprintf(path, sizeof path, "%s/huge.png", dir);
    f = fopen(path, "wb");
    fwrite(file, 1, size, f);
    fclose(f);
    CHECK(truncate(path, (off_t)(2 << 20)) == 0);
    CHECK(png_read_image(path, 1, height, width, pixels, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "huge.png: 2097152 bytes, more than a PNG of the expected size takes"),
              "%s", err);
}

/* Several images at once, written and read on OpenMP's threads; a failure
 * is reported for the lowest-numbered image that failed. */
static void test_many(void) {
    enum { n = 7, channels = 3, height = 4, width = 6 };
    float *images = ramp(n, channels, height, width, -0.02f);
    char names[n][512], err[512];
    const char *paths[n];
    for (int i = 0; i < n; i++) {
        snprintf(names[i], sizeof names[i], "%s/many%d.png", dir, i);
        paths[i] = names[i];
    }
    CHECK_MSG(png_write_images(paths, images, n, channels, height, width, err, sizeof err) == 0,
              "%s", err);
    uint8_t *pixels = malloc((size_t)n * height * width * channels);
    CHECK_MSG(png_read_images(paths, n, channels, height, width, pixels, err, sizeof err) == 0,
              "%s", err);
    int mismatches = 0;
    for (int i = 0; i < n; i++)
        mismatches += count_mismatches(pixels + (size_t)i * height * width * channels,
                                       images + (size_t)i * channels * height * width, channels,
                                       height, width);
    CHECK_MSG(mismatches == 0, "%d pixels differ", mismatches);

    /* Images 2 and 5 cannot be written (no such folder), and files 1 and 4
     * cannot be read: the message names 2, then 1, whichever thread ran first. */
    snprintf(names[5], sizeof names[5], "%s/no-dir/many5.png", dir);
    snprintf(names[2], sizeof names[2], "%s/no-dir/many2.png", dir);
    CHECK(png_write_images(paths, images, n, channels, height, width, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "no-dir/many2.png"), "%s", err);
    snprintf(names[1], sizeof names[1], "%s/absent1.png", dir);
    snprintf(names[4], sizeof names[4], "%s/absent4.png", dir);
    CHECK(png_read_images(paths, n, channels, height, width, pixels, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "absent1.png: cannot open"), "%s", err);
    free(pixels);
    free(images);
}

int main(void) {
    if (test_make_temp_dir(dir, sizeof dir, "test_png") != 0) return 1;
    test_mapping();
    test_image(3);
    test_image(1);
    test_grid();
    test_rejections();
    test_read_back(1);
    test_read_back(3);
    test_read_rejections();
    test_read_damaged();
    test_many();
    test_remove_temp_dir(dir);
    return test_finish("test_png");
}
