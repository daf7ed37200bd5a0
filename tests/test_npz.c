/* test_npz.c - the .npz writer's failure paths: too many or too few bytes,
 * a folder that does not exist, abandoning an archive; each leaves neither
 * the archive nor its temporary file. (Its contents are checked by an
 * independent reader, Python's zipfile and numpy, in
 * tests/cli/test_sample_run.sh.)
 * Run: ctest -R test_npz (from the build folder's ctest). */
#define _POSIX_C_SOURCE 200809L
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "npz.h"
#include "test_util.h"

static char dir[256];

/* Neither PATH nor PATH's temporary file exists. */
static int nothing_left(const char *path) {
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    return access(path, F_OK) != 0 && access(tmp, F_OK) != 0;
}

static long file_size(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return -1;
    fseek(f, 0, SEEK_END);
    long size = ftell(f);
    fclose(f);
    return size;
}

static void test_complete(void) {
    char path[512], err[512];
    snprintf(path, sizeof path, "%s/ok.npz", dir);
    const int64_t shape[3] = {2, 3, 4};
    uint8_t bytes[24];
    for (int i = 0; i < 24; i++) bytes[i] = (uint8_t)(i * 11);
    npz_writer *w = npz_u8_create(path, 3, shape, err, sizeof err);
    CHECK_MSG(w != NULL, "%s", err);
    if (!w) return;
    CHECK(npz_u8_append(w, bytes, 10, err, sizeof err) == 0);
    CHECK(access(path, F_OK) != 0); /* not there until finished */
    CHECK(npz_u8_append(w, bytes + 10, 14, err, sizeof err) == 0);
    CHECK_MSG(npz_u8_finish(w, err, sizeof err) == 0, "%s", err);
    /* Local header 59 + .npy header 128 (its dictionary passes 54 bytes) +
     * data 24 + central directory 83 + ZIP64 end record 56 + locator 20 +
     * end record 22. */
    CHECK_MSG(file_size(path) == 59 + 128 + 24 + 83 + 56 + 20 + 22, "%ld bytes", file_size(path));
    char tmp[600];
    snprintf(tmp, sizeof tmp, "%s.tmp.%ld", path, (long)getpid());
    CHECK(access(tmp, F_OK) != 0);
}

static void test_refusals(void) {
    char path[512], err[512] = "";
    const int64_t shape[2] = {2, 3};
    uint8_t bytes[8] = {0};

    snprintf(path, sizeof path, "%s/too-many.npz", dir);
    npz_writer *w = npz_u8_create(path, 2, shape, err, sizeof err);
    CHECK(w != NULL);
    CHECK(npz_u8_append(w, bytes, 4, err, sizeof err) == 0);
    CHECK(npz_u8_append(w, bytes, 4, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "8 bytes appended past the array's 6"), "%s", err);
    npz_u8_abort(w);
    CHECK(nothing_left(path));

    snprintf(path, sizeof path, "%s/too-few.npz", dir);
    w = npz_u8_create(path, 2, shape, err, sizeof err);
    CHECK(w != NULL);
    CHECK(npz_u8_append(w, bytes, 5, err, sizeof err) == 0);
    CHECK(npz_u8_finish(w, err, sizeof err) == -1);
    CHECK_MSG(strstr(err, "5 of the array's 6 bytes were written"), "%s", err);
    CHECK(nothing_left(path));

    snprintf(path, sizeof path, "%s/abandoned.npz", dir);
    w = npz_u8_create(path, 2, shape, err, sizeof err);
    CHECK(w != NULL);
    CHECK(npz_u8_append(w, bytes, 6, err, sizeof err) == 0);
    npz_u8_abort(w);
    CHECK(nothing_left(path));
    npz_u8_abort(NULL);

    snprintf(path, sizeof path, "%s/no/such/dir.npz", dir);
    CHECK(npz_u8_create(path, 2, shape, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "no/such/dir.npz: cannot create"), "%s", err);

    const int64_t negative[2] = {2, -3};
    snprintf(path, sizeof path, "%s/negative.npz", dir);
    CHECK(npz_u8_create(path, 2, negative, err, sizeof err) == NULL);
    CHECK_MSG(strstr(err, "negative dimension -3"), "%s", err);
    CHECK(nothing_left(path));
}

int main(void) {
    if (test_make_temp_dir(dir, sizeof dir, "test_npz") != 0) return 1;
    test_complete();
    test_refusals();
    test_remove_temp_dir(dir);
    return test_finish("test_npz");
}
