/* test_npy.c - .npy round trips and every rejection: each bad file is written
 * by hand and the message must say what was found.
 * Run: ctest -R test_npy (from the build folder's ctest). */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "npy.h"
#include "test_util.h"

static char dir[256];

static void path_for(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", dir, name);
}

/* Writes magic, version, a padded header of dict's len bytes (which may hold
 * NULs) and data_bytes of data. */
static void write_raw_bytes(const char *path, int major, const char *dict, size_t len,
                            size_t data_bytes) {
    FILE *f = fopen(path, "wb");
    size_t prefix = major == 1 ? 10 : 12;
    size_t header_len = (prefix + len + 1 + 63) / 64 * 64 - prefix;
    unsigned char head[12] = {0x93, 'N', 'U', 'M', 'P', 'Y', (unsigned char)major, 0,
                              (unsigned char)(header_len & 0xff),
                              (unsigned char)(header_len >> 8), 0, 0};
    fwrite(head, 1, prefix, f);
    fwrite(dict, 1, len, f);
    for (size_t i = len; i + 1 < header_len; i++) fputc(' ', f);
    fputc('\n', f);
    for (size_t i = 0; i < data_bytes; i++) fputc(0, f);
    fclose(f);
}

static void write_raw(const char *path, int major, const char *dict, size_t data_bytes) {
    write_raw_bytes(path, major, dict, strlen(dict), data_bytes);
}

static void expect_reject(const char *name, const char *expected_fragment) {
    char path[512], err[512] = "";
    path_for(path, sizeof path, name);
    float *data = (float *)1;
    int ndim;
    int64_t shape[NPY_MAX_DIMS];
    int status = npy_read_f32(path, &data, &ndim, shape, err, sizeof err);
    CHECK_MSG(status == -1, "%s was accepted", name);
    CHECK_MSG(data == NULL, "%s: data not NULL on failure", name);
    CHECK_MSG(strstr(err, expected_fragment) != NULL, "%s: message \"%s\" lacks \"%s\"", name,
              err, expected_fragment);
    CHECK_MSG(strstr(err, path) != NULL, "%s: message \"%s\" lacks the path", name, err);
}

static void test_round_trip(void) {
    char path[512], err[512];
    path_for(path, sizeof path, "round.npy");
    const int64_t shape[3] = {2, 3, 5};
    float values[30];
    for (int i = 0; i < 30; i++) values[i] = (float)i * 0.37f - 4.0f;
    values[7] = -0.0f;
    CHECK(npy_write_f32(path, values, 3, shape, err, sizeof err) == 0);
    float *back;
    int ndim;
    int64_t back_shape[NPY_MAX_DIMS];
    CHECK_MSG(npy_read_f32(path, &back, &ndim, back_shape, err, sizeof err) == 0, "%s", err);
    CHECK(ndim == 3 && back_shape[0] == 2 && back_shape[1] == 3 && back_shape[2] == 5);
    CHECK(back && memcmp(back, values, sizeof values) == 0);
    free(back);
    /* No temporary file is left behind. */
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(access(tmp, F_OK) != 0);

    /* 1-D, 0-D and empty arrays. */
    const int64_t one[1] = {4}, empty[2] = {0, 3};
    CHECK(npy_write_f32(path, values, 1, one, err, sizeof err) == 0);
    CHECK(npy_read_f32(path, &back, &ndim, back_shape, err, sizeof err) == 0);
    CHECK(ndim == 1 && back_shape[0] == 4 && memcmp(back, values, 16) == 0);
    free(back);
    CHECK(npy_write_f32(path, values + 3, 0, NULL, err, sizeof err) == 0);
    CHECK(npy_read_f32(path, &back, &ndim, back_shape, err, sizeof err) == 0);
    CHECK(ndim == 0 && back[0] == values[3]);
    free(back);
    CHECK(npy_write_f32(path, values, 2, empty, err, sizeof err) == 0);
    CHECK(npy_read_f32(path, &back, &ndim, back_shape, err, sizeof err) == 0);
    CHECK(ndim == 2 && back_shape[0] == 0 && back_shape[1] == 3);
    free(back);

    /* Versions 2.0 and 3.0, a header without the trailing comma, double quotes. */
    char v2[512];
    path_for(v2, sizeof v2, "v2.npy");
    write_raw(v2, 2, "{\"descr\": \"<f4\", \"fortran_order\": False, \"shape\": (2,)}", 8);
    CHECK_MSG(npy_read_f32(v2, &back, &ndim, back_shape, err, sizeof err) == 0, "%s", err);
    CHECK(ndim == 1 && back_shape[0] == 2 && back[0] == 0.0f);
    free(back);
    write_raw(v2, 3, "{'shape': (1, 1), 'fortran_order': False, 'descr': '<f4', }", 4);
    CHECK_MSG(npy_read_f32(v2, &back, &ndim, back_shape, err, sizeof err) == 0, "%s", err);
    free(back);

    /* A failed write leaves the old file alone. */
    char missing[600];
    path_for(missing, sizeof missing, "no/such/dir/x.npy");
    CHECK(npy_write_f32(missing, values, 1, one, err, sizeof err) == -1);
    CHECK(strstr(err, "no/such/dir/x.npy") != NULL);
}

static void test_rejections(void) {
    char path[512];
    path_for(path, sizeof path, "f8.npy");
    write_raw(path, 1, "{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", 16);
    expect_reject("f8.npy", "'<f8'");
    path_for(path, sizeof path, "i8.npy");
    write_raw(path, 1, "{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }", 16);
    expect_reject("i8.npy", "'<i8'");
    /* A dtype with an escape sequence and a bell is quoted as '?'s. */
    path_for(path, sizeof path, "escape.npy");
    write_raw(path, 1, "{'descr': '\033[2J\a', 'fortran_order': False, 'shape': (2,), }", 8);
    expect_reject("escape.npy", "'?[2J?'");
    path_for(path, sizeof path, "bigendian.npy");
    write_raw(path, 1, "{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", 8);
    expect_reject("bigendian.npy", "'>f4'");
    path_for(path, sizeof path, "fortran.npy");
    write_raw(path, 1, "{'descr': '<f4', 'fortran_order': True, 'shape': (2, 2), }", 16);
    expect_reject("fortran.npy", "fortran_order is True");
    path_for(path, sizeof path, "truncated.npy");
    write_raw(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", 20);
    expect_reject("truncated.npy", "truncated");
    path_for(path, sizeof path, "long.npy");
    write_raw(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 12);
    expect_reject("long.npy", "data section is 12 bytes");
    path_for(path, sizeof path, "extra_key.npy");
    write_raw(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}", 8);
    expect_reject("extra_key.npy", "'x'");
    path_for(path, sizeof path, "repeated.npy");
    write_raw(path, 1, "{'descr': '<f4', 'descr': '<f4', 'fortran_order': False, 'shape': (2,)}",
              8);
    expect_reject("repeated.npy", "repeated");
    path_for(path, sizeof path, "no_shape.npy");
    write_raw(path, 1, "{'descr': '<f4', 'fortran_order': False}", 4);
    expect_reject("no_shape.npy", "lacks 'shape'");
    path_for(path, sizeof path, "bad_shape.npy");
    write_raw(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2, -1), }", 8);
    expect_reject("bad_shape.npy", "malformed");
    /* numpy refuses these too: a dimension with a leading zero, a NUL inside a
     * key or a dtype (strcmp would stop at it and match). */
    path_for(path, sizeof path, "leading_zero.npy");
    write_raw(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (02,), }", 8);
    expect_reject("leading_zero.npy", "malformed");
    const char nul_in_key[] = "{'descr\0x': '<f4', 'fortran_order': False, 'shape': (2,), }";
    path_for(path, sizeof path, "nul_key.npy");
    write_raw_bytes(path, 1, nul_in_key, sizeof nul_in_key - 1, 8);
    expect_reject("nul_key.npy", "malformed");
    const char nul_in_dtype[] = "{'descr': '<f4\0i8', 'fortran_order': False, 'shape': (2,), }";
    path_for(path, sizeof path, "nul_dtype.npy");
    write_raw_bytes(path, 1, nul_in_dtype, sizeof nul_in_dtype - 1, 8);
    expect_reject("nul_dtype.npy", "malformed");
    path_for(path, sizeof path, "huge_dim.npy");
    write_raw(path, 1,
              "{'descr': '<f4', 'fortran_order': False, 'shape': (99999999999999999999,), }", 8);
    expect_reject("huge_dim.npy", "dimension 0 of the shape is too large");
    path_for(path, sizeof path, "not_tuple.npy");
    write_raw(path, 1, "{'descr': '<f4', 'fortran_order': False, 'shape': (2), }", 8);
    expect_reject("not_tuple.npy", "malformed");
    path_for(path, sizeof path, "version.npy");
    write_raw(path, 4, "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), }", 8);
    expect_reject("version.npy", "version 4.0");
    path_for(path, sizeof path, "nine_dims.npy");
    write_raw(path, 1, "{'descr': '<f4', 'fortran_order': False, "
                       "'shape': (1, 1, 1, 1, 1, 1, 1, 1, 1), }", 4);
    expect_reject("nine_dims.npy", "more than 8 dimensions");
    path_for(path, sizeof path, "magic.npy");
    FILE *f = fopen(path, "wb");
    fputs("PK\003\004 this is a zip file", f);
    fclose(f);
    expect_reject("magic.npy", "magic");
    path_for(path, sizeof path, "short.npy");
    f = fopen(path, "wb");
    fwrite("\x93NUMPY\x01\x00\x40", 1, 9, f);
    fclose(f);
    expect_reject("short.npy", "preamble");
    path_for(path, sizeof path, "cut_header.npy");
    f = fopen(path, "wb");
    fwrite("\x93NUMPY\x01\x00\x76\x00{'descr'", 1, 17, f);
    fclose(f);
    expect_reject("cut_header.npy", "truncated header");
    expect_reject("missing.npy", "cannot open");
}

int main(void) {
    if (test_make_temp_dir(dir, sizeof dir, "test_npy") != 0) return 1;
    test_round_trip();
    test_rejections();
    test_remove_temp_dir(dir);
    return test_finish("test_npy");
}
