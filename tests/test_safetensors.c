/* test_safetensors.c - the safetensors reader: a valid file round-trips (F32,
 * F16 subnormals/inf/nan, BF16, unaligned data, metadata), and every kind of
 * malformed file is rejected with a message naming the problem; then a bounded
 * mutation loop over a valid file's bytes checks that nothing crashes or lets a
 * span leave the file. Files are written byte by byte into a mkdtemp folder.
 * Run: ctest -R test_safetensors (or valgrind --error-exitcode=1 on the binary). */
#define _POSIX_C_SOURCE 200809L

#include <fcntl.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "safetensors.h"
#include "test_util.h"

static char temp_dir[64];

static void temp_path(char *out, size_t size, const char *name) {
    snprintf(out, size, "%s/%s", temp_dir, name);
}

static void write_bytes(const char *path, const void *bytes, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
    if (n && fwrite(bytes, 1, n, f) != n) exit(1);
    fclose(f);
}

/* An 8-byte little-endian length (declared_length, normally strlen(header)),
 * the header text, then the data section. */
static size_t build_file(uint8_t *out, size_t capacity, uint64_t declared_length,
                         const char *header, const void *data, size_t data_size) {
    size_t header_size = strlen(header);
    size_t total = 8 + header_size + data_size;
    if (total > capacity) exit(1);
    for (int i = 0; i < 8; i++) out[i] = (uint8_t)(declared_length >> (8 * i));
    memcpy(out + 8, header, header_size);
    if (data_size) memcpy(out + 8 + header_size, data, data_size);
    return total;
}

static void write_file(const char *name, const char *header, const void *data, size_t data_size) {
    static uint8_t buffer[8192];
    char path[128];
    temp_path(path, sizeof(path), name);
    size_t n = build_file(buffer, sizeof(buffer), strlen(header), header, data, data_size);
    write_bytes(path, buffer, n);
}

/* Opening must fail, leave the file empty, and say what is wrong after the
 * path. */
static void expect_failure(const char *what, const char *path, const char *keyword) {
    safetensors_file file;
    char err[512];
    memset(err, 'x', sizeof(err));
    int rc = safetensors_open(path, &file, err, sizeof(err));
    CHECK_MSG(rc == -1, "%s: opened", what);
    CHECK_MSG(memchr(err, '\0', sizeof(err)) != NULL, "%s: message not terminated", what);
    CHECK_MSG(strncmp(err, path, strlen(path)) == 0, "%s: message \"%s\" lacks the path", what, err);
    CHECK_MSG(strstr(err, keyword) != NULL, "%s: message \"%s\" lacks \"%s\"", what, err, keyword);
    CHECK_MSG(file.num_tensors == 0 && file.tensors == NULL && file.mapping == NULL &&
                  file.num_metadata == 0 && file.path == NULL,
              "%s: file not left empty", what);
    safetensors_close(&file);
}

/* Writes a file with a header and 64 zero data bytes and expects rejection. */
static void expect_header_failure(const char *what, const char *header, const char *keyword) {
    static const uint8_t zeros[64];
    char path[128];
    write_file("bad.safetensors", header, zeros, sizeof(zeros));
    temp_path(path, sizeof(path), "bad.safetensors");
    expect_failure(what, path, keyword);
}

/* ---- the valid file ---------------------------------------------------------- */

/* Whole numbers may be written any way JSON allows (w's shape, b's offsets),
 * and strings may hold escapes (the note). */
static const char valid_header[] =
    "{\"__metadata__\":{\"format\":\"pt\",\"fpdm.note\":\"h\\u0065llo\"},"
    "\"h\":{\"dtype\":\"F16\",\"shape\":[2,4],\"data_offsets\":[0,16]},"
    "\"w\":{\"dtype\":\"F32\",\"shape\":[2.0,3e0],\"data_offsets\":[16,40]},"
    "\"b\":{\"dtype\":\"BF16\",\"shape\":[3],\"data_offsets\":[0.4e2,46]},"
    "\"u\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[47,51]},"
    "\"i\":{\"dtype\":\"I64\",\"shape\":[2],\"data_offsets\":[51,67]},"
    "\"e\":{\"dtype\":\"F32\",\"shape\":[0,5],\"data_offsets\":[67,67]},"
    "\"s\":{\"dtype\":\"F64\",\"shape\":[],\"data_offsets\":[67,75]}}   ";

static void put_le(uint8_t *p, uint64_t v, int n) {
    for (int i = 0; i < n; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static void put_f32(uint8_t *p, float f) {
    uint32_t bits;
    memcpy(&bits, &f, 4);
    put_le(p, bits, 4);
}

/* Data for valid_header: byte 46 is a hole (allowed), so "u" and "i" sit at
 * odd offsets. */
static size_t valid_data(uint8_t *d) {
    memset(d, 0, 75);
    /* F16: 1, -2, smallest subnormal, largest subnormal, +inf, -inf, nan, 65504 */
    const uint16_t halves[8] = {0x3c00, 0xc000, 0x0001, 0x03ff, 0x7c00, 0xfc00, 0x7e00, 0x7bff};
    for (int i = 0; i < 8; i++) put_le(d + 2 * i, halves[i], 2);
    const float w[6] = {0.0f, -1.5f, 3.25f, 1e-30f, -1e30f, 7.0f};
    for (int i = 0; i < 6; i++) put_f32(d + 16 + 4 * i, w[i]);
    /* BF16: 1, -3.5, 3.140625 */
    put_le(d + 40, 0x3f80, 2);
    put_le(d + 42, 0xc060, 2);
    put_le(d + 44, 0x4049, 2);
    d[46] = 0xee;
    put_f32(d + 47, -0.125f);
    put_le(d + 51, (uint64_t)-7, 8);
    put_le(d + 59, 5, 8);
    double s = 2.5;
    uint64_t sbits;
    memcpy(&sbits, &s, 8);
    put_le(d + 67, sbits, 8);
    return 75;
}

static void test_valid_file(void) {
    uint8_t data[75];
    size_t n = valid_data(data);
    write_file("valid.safetensors", valid_header, data, n);
    char path[128], err[256];
    temp_path(path, sizeof(path), "valid.safetensors");
    safetensors_file file;
    int rc = safetensors_open(path, &file, err, sizeof(err));
    CHECK_MSG(rc == 0, "valid file rejected: %s", err);
    if (rc != 0) return;
    CHECK(file.num_tensors == 7);
    CHECK(strcmp(file.tensors[0].name, "h") == 0 && strcmp(file.tensors[6].name, "s") == 0);
    CHECK(strcmp(file.path, path) == 0);
    CHECK(file.file_size == 8 + strlen(valid_header) + 75);
    CHECK(safetensors_metadata(&file, "format") && !strcmp(safetensors_metadata(&file, "format"), "pt"));
    CHECK(safetensors_metadata(&file, "fpdm.note") &&
          !strcmp(safetensors_metadata(&file, "fpdm.note"), "hello"));
    CHECK(safetensors_metadata(&file, "missing") == NULL);
    CHECK(safetensors_find(&file, "nope") == NULL);

    const safetensors_tensor *h = safetensors_find(&file, "h");
    CHECK(h && h->dtype == SAFETENSORS_F16 && h->ndim == 2 && h->shape[0] == 2 &&
          h->shape[1] == 4 && h->num_elements == 8 && h->num_bytes == 16);
    if (h) {
        float out[8];
        safetensors_to_f32(h, out);
        CHECK(out[0] == 1.0f && out[1] == -2.0f);
        CHECK(out[2] == ldexpf(1.0f, -24));
        CHECK(out[3] == 1023.0f * ldexpf(1.0f, -24));
        CHECK(isinf(out[4]) && out[4] > 0);
        CHECK(isinf(out[5]) && out[5] < 0);
        CHECK(isnan(out[6]));
        CHECK(out[7] == 65504.0f);
    }
    const safetensors_tensor *w = safetensors_find(&file, "w");
    CHECK(w && w->dtype == SAFETENSORS_F32 && w->num_elements == 6);
    if (w) {
        float out[6];
        safetensors_to_f32(w, out);
        CHECK(out[0] == 0.0f && out[1] == -1.5f && out[2] == 3.25f && out[3] == 1e-30f &&
              out[4] == -1e30f && out[5] == 7.0f);
    }
    const safetensors_tensor *b = safetensors_find(&file, "b");
    CHECK(b && b->dtype == SAFETENSORS_BF16 && b->num_elements == 3);
    if (b) {
        float out[3];
        safetensors_to_f32(b, out);
        CHECK(out[0] == 1.0f && out[1] == -3.5f && out[2] == 3.140625f);
    }
    const safetensors_tensor *u = safetensors_find(&file, "u");
    CHECK(u && u->data == (const uint8_t *)file.mapping + 8 + strlen(valid_header) + 47);
    if (u) {
        float out[1];
        safetensors_to_f32(u, out);
        CHECK(out[0] == -0.125f);
    }
    const safetensors_tensor *i = safetensors_find(&file, "i");
    CHECK(i && i->dtype == SAFETENSORS_I64);
    if (i) {
        float out[2];
        safetensors_to_f32(i, out);
        CHECK(out[0] == -7.0f && out[1] == 5.0f);
    }
    const safetensors_tensor *e = safetensors_find(&file, "e");
    CHECK(e && e->num_elements == 0 && e->num_bytes == 0 && e->ndim == 2);
    const safetensors_tensor *s = safetensors_find(&file, "s");
    CHECK(s && s->dtype == SAFETENSORS_F64 && s->ndim == 0 && s->num_elements == 1);
    if (s) {
        float out[1];
        safetensors_to_f32(s, out);
        CHECK(out[0] == 2.5f);
    }
    safetensors_close(&file);
    CHECK(file.mapping == NULL && file.tensors == NULL);
    safetensors_close(&file); /* closing twice is harmless */
}

static void test_dtype_helpers(void) {
    CHECK(safetensors_dtype_size(SAFETENSORS_F32) == 4 && safetensors_dtype_size(SAFETENSORS_F16) == 2 &&
          safetensors_dtype_size(SAFETENSORS_BF16) == 2 && safetensors_dtype_size(SAFETENSORS_F64) == 8 &&
          safetensors_dtype_size(SAFETENSORS_I64) == 8 && safetensors_dtype_size(SAFETENSORS_I32) == 4);
    CHECK(!strcmp(safetensors_dtype_name(SAFETENSORS_BF16), "BF16"));
    CHECK(!strcmp(safetensors_dtype_name(SAFETENSORS_I32), "I32"));
}

/* An empty header object is a valid file with nothing in it, and a tiny error
 * buffer still gets a terminated (truncated) message. */
static void test_edges(void) {
    char path[128], err[8];
    write_file("empty_object.safetensors", "{}", NULL, 0);
    temp_path(path, sizeof(path), "empty_object.safetensors");
    safetensors_file file;
    CHECK(safetensors_open(path, &file, err, sizeof(err)) == 0);
    CHECK(file.num_tensors == 0 && file.num_metadata == 0);
    safetensors_close(&file);

    temp_path(path, sizeof(path), "does_not_exist.safetensors");
    memset(err, 'x', sizeof(err));
    CHECK(safetensors_open(path, &file, err, sizeof(err)) == -1);
    CHECK(err[sizeof(err) - 1] == '\0');
    CHECK(safetensors_open(path, &file, NULL, 0) == -1);
}

/* ---- malformed files ------------------------------------------------------------ */

static void test_length_failures(void) {
    char path[128];
    uint8_t buffer[256];
    temp_path(path, sizeof(path), "short.safetensors");

    write_bytes(path, buffer, 0);
    expect_failure("empty file", path, "too short");
    write_bytes(path, "\x02\0\0\0\0", 5);
    expect_failure("5-byte file", path, "too short");

    size_t n = build_file(buffer, sizeof(buffer), 100, "{}", NULL, 0);
    write_bytes(path, buffer, n);
    expect_failure("header length past the end", path, "header length 100");
    n = build_file(buffer, sizeof(buffer), (uint64_t)1 << 63, "{}", NULL, 0);
    write_bytes(path, buffer, n);
    expect_failure("header length 2^63", path, "header length 9223372036854775808");
    n = build_file(buffer, sizeof(buffer), UINT64_MAX, "{}", NULL, 0);
    write_bytes(path, buffer, n);
    expect_failure("header length 2^64-1", path, "header length");
    n = build_file(buffer, sizeof(buffer), 1, "{}", NULL, 0);
    write_bytes(path, buffer, n);
    expect_failure("header length 1", path, "header length 1 ");
    n = build_file(buffer, sizeof(buffer), 0, "", NULL, 0);
    write_bytes(path, buffer, n);
    expect_failure("header length 0", path, "header length 0");

    /* A header over the 100 MB cap, in a sparse file that really is that long. */
    uint64_t huge = (uint64_t)100 * 1024 * 1024 + 1;
    n = build_file(buffer, sizeof(buffer), huge, "{}", NULL, 0);
    write_bytes(path, buffer, n);
    CHECK(truncate(path, (off_t)(8 + huge)) == 0);
    expect_failure("header over the cap", path, "limit");
    write_bytes(path, buffer, 0);

    expect_failure("directory", temp_dir, "not a regular file");
    temp_path(path, sizeof(path), "missing.safetensors");
    expect_failure("missing file", path, "cannot open");
}

#define T(dtype, shape, offsets) "{\"dtype\":\"" dtype "\",\"shape\":" shape ",\"data_offsets\":" offsets "}"

static void test_header_failures(void) {
    expect_header_failure("not JSON", "{\"a\": nope}", "not valid JSON: expected a value (byte 6 of 11)");
    expect_header_failure("truncated JSON", "{\"a\":{\"dtype\":", "not valid JSON");
    expect_header_failure("JSON array", "[1, 2, 3]", "not a JSON object");
    expect_header_failure("JSON string", "\"text\"", "not a JSON object");
    expect_header_failure("text after object", "{}  x", "after the JSON");
    expect_header_failure("two objects", "{}{}", "after the JSON");
    expect_header_failure("entry not object", "{\"a\": 5}", "tensor a: entry is not an object");
    /* A name with an escape sequence and a bell reaches the message as '?'s. */
    expect_header_failure("control characters in a name", "{\"a\\u001b[2J\\u0007\": 5}",
                          "tensor a?[2J?: entry is not an object");

    expect_header_failure("unknown dtype", "{\"a\":" T("U8", "[4]", "[0,4]") "}", "\"U8\"");
    expect_header_failure("dtype not string", "{\"a\":{\"dtype\":4,\"shape\":[1],\"data_offsets\":[0,4]}}",
                          "dtype is not a string");
    expect_header_failure("missing dtype", "{\"a\":{\"shape\":[1],\"data_offsets\":[0,4]}}",
                          "missing field \"dtype\"");
    expect_header_failure("missing offsets", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}",
                          "missing field \"data_offsets\"");
    expect_header_failure("extra field", "{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],\"x\":1}}",
                          "unexpected field \"x\"");
    expect_header_failure("repeated field",
                          "{\"a\":{\"dtype\":\"F32\",\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                          "appears twice");

    expect_header_failure("negative dim", "{\"a\":" T("F32", "[-1]", "[0,4]") "}", "shape entry 0");
    expect_header_failure("fractional dim", "{\"a\":" T("F32", "[2, 1.5]", "[0,12]") "}", "shape entry 1");
    expect_header_failure("string dim", "{\"a\":" T("F32", "[\"2\"]", "[0,8]") "}", "shape entry 0");
    expect_header_failure("null dim", "{\"a\":" T("F32", "[null]", "[0,8]") "}", "shape entry 0");
    expect_header_failure("huge dim", "{\"a\":" T("F32", "[1e300]", "[0,8]") "}", "shape entry 0");
    expect_header_failure("shape not array", "{\"a\":" T("F32", "4", "[0,16]") "}", "shape is not an array");
    expect_header_failure("nine dims", "{\"a\":" T("F32", "[1,1,1,1,1,1,1,1,1]", "[0,4]") "}", "9 dims");
    expect_header_failure("element count overflow",
                          "{\"a\":" T("F32", "[4294967296, 4294967296]", "[0,4]") "}", "overflows");
    expect_header_failure("byte count overflow",
                          "{\"a\":" T("F64", "[2147483648, 2147483648]", "[0,8]") "}", "data_offsets span");

    expect_header_failure("offsets past data", "{\"a\":" T("F32", "[20]", "[0,80]") "}", "out of range");
    expect_header_failure("end before begin", "{\"a\":" T("F32", "[1]", "[8,4]") "}", "before begin");
    expect_header_failure("size mismatch", "{\"a\":" T("F32", "[2,2]", "[0,12]") "}", "data_offsets span 12 bytes");
    /* Offsets are read exactly up to 2^64 - 1 (a double would round them). */
    expect_header_failure("offsets 2^64-1", "{\"a\":" T("F32", "[1]", "[0,18446744073709551615]") "}",
                          "end 18446744073709551615 is out of range");
    expect_header_failure("offsets 2^53+1", "{\"a\":" T("F32", "[1]", "[9007199254740989,9007199254740993]") "}",
                          "end 9007199254740993 is out of range");
    expect_header_failure("offsets 2^64", "{\"a\":" T("F32", "[1]", "[0,18446744073709551616]") "}",
                          "data_offsets is not a pair");
    expect_header_failure("negative offset", "{\"a\":" T("F32", "[1]", "[-4,0]") "}", "data_offsets is not a pair");
    expect_header_failure("three offsets", "{\"a\":" T("F32", "[1]", "[0,4,8]") "}", "data_offsets is not a pair");
    expect_header_failure("offsets not array", "{\"a\":" T("F32", "[1]", "4") "}", "data_offsets is not a pair");
    expect_header_failure("overlap", "{\"a\":" T("F32", "[4]", "[0,16]") ",\"b\":" T("F32", "[2]", "[12,20]") "}",
                          "overlaps");
    expect_header_failure("contained overlap",
                          "{\"a\":" T("F32", "[2]", "[24,32]") ",\"b\":" T("F32", "[8]", "[16,48]") "}",
                          "overlaps");
    expect_header_failure("duplicate names", "{\"a\":" T("F32", "[1]", "[0,4]") ",\"a\":" T("F32", "[1]", "[4,8]") "}",
                          "tensor a appears twice");

    expect_header_failure("metadata value not string", "{\"__metadata__\":{\"k\":1}}", "k is not a string");
    expect_header_failure("metadata not object", "{\"__metadata__\":[\"k\"]}", "__metadata__ is not an object");
    expect_header_failure("metadata twice", "{\"__metadata__\":{},\"__metadata__\":{}}", "__metadata__ appears twice");
    expect_header_failure("metadata key twice", "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"}}", "key k appears twice");

    /* A NUL inside the header would make a C-string name differ from the
     * name the file holds. */
    char path[128];
    uint8_t buffer[64];
    const char with_nul[] = "{\"a\0b\":{}}";
    size_t header_size = sizeof(with_nul) - 1;
    for (int i = 0; i < 8; i++) buffer[i] = (uint8_t)((uint64_t)header_size >> (8 * i));
    memcpy(buffer + 8, with_nul, header_size);
    temp_path(path, sizeof(path), "nul.safetensors");
    write_bytes(path, buffer, 8 + header_size);
    expect_failure("NUL in header", path, "NUL");
}

/* ---- mutations ------------------------------------------------------------------- */

/* Either a clean failure, or a file whose every span lies in its data section
 * and converts without reading outside it (valgrind would see that). */
static int check_outcome(const char *path, int *opened) {
    safetensors_file file;
    char err[256];
    err[0] = 'x';
    if (safetensors_open(path, &file, err, sizeof(err)) != 0) {
        int ok = strncmp(err, path, strlen(path)) == 0 && file.mapping == NULL && file.num_tensors == 0;
        safetensors_close(&file);
        return ok;
    }
    (*opened)++;
    const uint8_t *begin = file.mapping, *end = begin + file.file_size;
    int ok = 1;
    for (int i = 0; i < file.num_tensors && ok; i++) {
        const safetensors_tensor *t = &file.tensors[i];
        ok = t->data >= begin + 8 && t->num_bytes <= (size_t)(end - t->data) &&
             (uint64_t)t->num_elements * safetensors_dtype_size(t->dtype) == t->num_bytes;
        if (ok && t->num_elements > 0) {
            float *out = malloc((size_t)t->num_elements * sizeof(float));
            if (out) safetensors_to_f32(t, out);
            free(out);
        }
    }
    safetensors_close(&file);
    return ok;
}

/* Bytes are changed in place (pwrite, ftruncate) so that thousands of cases
 * cost no file rewrites. */
static void test_mutations(void) {
    uint8_t data[75], original[1024];
    size_t data_size = valid_data(data);
    size_t n = build_file(original, sizeof(original), strlen(valid_header), valid_header, data, data_size);
    char path[128];
    temp_path(path, sizeof(path), "mutated.safetensors");
    write_bytes(path, original, n);
    int fd = open(path, O_RDWR);
    if (fd < 0) {
        perror(path);
        test_failures++;
        return;
    }
    static const uint8_t values[] = {0x00, '"', '{', '}', '[', ']', ',', ':', '9', '-', '.', 'e', 0xff};
    int cases = 0, opened = 0, bad = 0;
    size_t limit = n < 300 ? n : 300;
    for (size_t pos = 0; pos < limit; pos++) {
        for (size_t v = 0; v <= sizeof(values); v++) {
            uint8_t byte = v < sizeof(values) ? values[v] : (uint8_t)(original[pos] ^ 0x01);
            if (byte == original[pos]) continue;
            if (pwrite(fd, &byte, 1, (off_t)pos) != 1) test_failures++;
            cases++;
            if (!check_outcome(path, &opened)) {
                bad++;
                if (bad < 5) fprintf(stderr, "  mutation at byte %zu to 0x%02x misbehaved\n", pos, byte);
            }
            if (pwrite(fd, &original[pos], 1, (off_t)pos) != 1) test_failures++;
        }
    }
    int mutations_opened = opened;
    /* The last tensor ends at the last byte, so every truncation must fail. */
    for (size_t length = n; length-- > 0;) {
        if (ftruncate(fd, (off_t)length) != 0) test_failures++;
        cases++;
        if (!check_outcome(path, &opened)) {
            bad++;
            if (bad < 5) fprintf(stderr, "  truncation to %zu bytes misbehaved\n", length);
        }
    }
    close(fd);
    fprintf(stderr, "  mutations: %d cases, %d opened cleanly, %d misbehaved\n", cases, opened, bad);
    CHECK(bad == 0);
    CHECK(opened == mutations_opened);
    /* Some mutations (in a metadata value, say) keep the file valid, so the
     * loop exercises the success path too. */
    CHECK(mutations_opened > 0);
}

static void remove_temp_dir(void) {
    static const char *const names[] = {"valid.safetensors", "bad.safetensors", "short.safetensors",
                                        "nul.safetensors", "mutated.safetensors",
                                        "empty_object.safetensors"};
    char path[128];
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        temp_path(path, sizeof(path), names[i]);
        unlink(path);
    }
    rmdir(temp_dir);
}

int main(void) {
    snprintf(temp_dir, sizeof(temp_dir), "/tmp/test_safetensors_XXXXXX");
    if (!mkdtemp(temp_dir)) {
        perror("mkdtemp");
        return 1;
    }
    test_dtype_helpers();
    test_valid_file();
    test_edges();
    test_length_failures();
    test_header_failures();
    test_mutations();
    remove_temp_dir();
    return test_finish("test_safetensors");
}
