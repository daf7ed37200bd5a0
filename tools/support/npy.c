/* npy.c - strict .npy float32 reading and atomic writing (see npy.h). */
#define _POSIX_C_SOURCE 200809L
#include "npy.h"
#include "support_error.h"
#include "temp_path.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

static int host_is_little_endian(void) {
    const uint32_t one = 1;
    unsigned char first;
    memcpy(&first, &one, 1);
    return first == 1;
}

static void swap_words(unsigned char *bytes, size_t count) {
    for (size_t i = 0; i < count; i++) {
        unsigned char *w = bytes + 4 * i, t;
        t = w[0], w[0] = w[3], w[3] = t;
        t = w[1], w[1] = w[2], w[2] = t;
    }
}

/* ---- the header dictionary --------------------------------------------- */

typedef struct header_cursor {
    const char *p, *end;
} header_cursor;

static void skip_spaces(header_cursor *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t')) c->p++;
}

static int accept_char(header_cursor *c, char ch) {
    skip_spaces(c);
    if (c->p < c->end && *c->p == ch) {
        c->p++;
        return 1;
    }
    return 0;
}

/* A quoted Python string literal without escapes, copied into out. */
static int parse_string(header_cursor *c, char *out, size_t out_size) {
    skip_spaces(c);
    if (c->p >= c->end || (*c->p != '\'' && *c->p != '"')) return -1;
    char quote = *c->p++;
    size_t len = 0;
    while (c->p < c->end && *c->p != quote) {
        /* A NUL would end the C string early: "'<f4\0i8'" would read as '<f4'. */
        if (*c->p == '\\' || *c->p == '\0' || len + 1 >= out_size) return -1;
        out[len++] = *c->p++;
    }
    if (c->p >= c->end) return -1;
    c->p++;
    out[len] = '\0';
    return 0;
}

static int accept_word(header_cursor *c, const char *word) {
    skip_spaces(c);
    size_t len = strlen(word);
    if ((size_t)(c->end - c->p) >= len && memcmp(c->p, word, len) == 0) {
        c->p += len;
        return 1;
    }
    return 0;
}

/* A tuple of non-negative integers as Python writes them (no leading
 * zeros): (), (3,), (2, 3) or (2, 3,). Returns 0, -1 when malformed, -2 for
 * too many dimensions, -3 for a dimension over INT64_MAX (in *ndim). */
static int parse_shape(header_cursor *c, int *ndim, int64_t shape[NPY_MAX_DIMS]) {
    if (!accept_char(c, '(')) return -1;
    *ndim = 0;
    if (accept_char(c, ')')) return 0;
    for (;;) {
        skip_spaces(c);
        if (c->p >= c->end || *c->p < '0' || *c->p > '9') return -1;
        if (*c->p == '0' && c->end - c->p > 1 && c->p[1] >= '0' && c->p[1] <= '9') return -1;
        int64_t value = 0;
        while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
            int digit = *c->p++ - '0';
            if (value > (INT64_MAX - digit) / 10) return -3;
            value = value * 10 + digit;
        }
        if (*ndim >= NPY_MAX_DIMS) return -2;
        shape[(*ndim)++] = value;
        int comma = accept_char(c, ',');
        if (accept_char(c, ')')) return (*ndim == 1 && !comma) ? -1 : 0;
        if (!comma) return -1;
    }
}

static int parse_header(const char *path, const char *text, size_t len, int *ndim,
                        int64_t shape[NPY_MAX_DIMS], char *err, size_t err_size) {
    header_cursor c = {text, text + len};
    int have_descr = 0, have_order = 0, have_shape = 0;
    if (!accept_char(&c, '{')) goto malformed;
    while (!accept_char(&c, '}')) {
        char key[32], descr[32];
        if (parse_string(&c, key, sizeof key) != 0 || !accept_char(&c, ':')) goto malformed;
        if (strcmp(key, "descr") == 0 && !have_descr) {
            if (parse_string(&c, descr, sizeof descr) != 0) goto malformed;
            if (strcmp(descr, "<f4") != 0) {
                support_set_error(err, err_size, "%s: dtype '%s' is not supported (allowed: '<f4', "
                          "little-endian float32)", path, descr);
                return -1;
            }
            have_descr = 1;
        } else if (strcmp(key, "fortran_order") == 0 && !have_order) {
            if (accept_word(&c, "True")) {
                support_set_error(err, err_size, "%s: fortran_order is True (allowed: False, C order)",
                          path);
                return -1;
            }
            if (!accept_word(&c, "False")) goto malformed;
            have_order = 1;
        } else if (strcmp(key, "shape") == 0 && !have_shape) {
            int status = parse_shape(&c, ndim, shape);
            if (status == -2) {
                support_set_error(err, err_size, "%s: more than %d dimensions (allowed: 0..%d)", path,
                          NPY_MAX_DIMS, NPY_MAX_DIMS);
                return -1;
            }
            if (status == -3) {
                support_set_error(err, err_size, "%s: dimension %d of the shape is too large", path,
                                  *ndim);
                return -1;
            }
            if (status != 0) goto malformed;
            have_shape = 1;
        } else {
            support_set_error(err, err_size, "%s: unexpected or repeated header key '%s' (allowed: "
                      "'descr', 'fortran_order', 'shape', once each)", path, key);
            return -1;
        }
        if (!accept_char(&c, ',')) {
            if (!accept_char(&c, '}')) goto malformed;
            break;
        }
    }
    while (c.p < c.end && *c.p == ' ') c.p++;
    if (c.p != c.end - 1 || *c.p != '\n') goto malformed;
    if (!have_descr || !have_order || !have_shape) {
        support_set_error(err, err_size, "%s: header lacks %s (required: 'descr', 'fortran_order', "
                  "'shape')", path,
                  !have_descr ? "'descr'" : !have_order ? "'fortran_order'" : "'shape'");
        return -1;
    }
    return 0;
malformed:
    support_set_error(err, err_size, "%s: malformed header dictionary near offset %ld: \"%.*s\" "
              "(expected {'descr': '<f4', 'fortran_order': False, 'shape': (...), })",
              path, (long)(c.p - text), (int)(len > 120 ? 120 : len), text);
    return -1;
}

/* ---- reading ------------------------------------------------------------ */

int npy_read_f32(const char *path, float **data, int *ndim, int64_t shape[NPY_MAX_DIMS],
                 char *err, size_t err_size) {
    *data = NULL;
    *ndim = 0;
    FILE *f = fopen(path, "rb");
    if (!f) {
        support_set_error(err, err_size, "%s: cannot open: %s", path, strerror(errno));
        return -1;
    }
    char *header = NULL;
    float *values = NULL;
    unsigned char prefix[12];
    size_t got = fread(prefix, 1, 10, f);
    if (got < 10 && ferror(f) && errno == EISDIR) {
        support_set_error(err, err_size, "%s: is a folder (allowed: a .npy file)", path);
        goto fail;
    }
    if (got < 10 || memcmp(prefix, "\x93NUMPY", 6) != 0) {
        support_set_error(err, err_size, "%s: not a .npy file (%s)", path,
                  got < 10 ? "shorter than the 10-byte preamble" : "no \\x93NUMPY magic");
        goto fail;
    }
    int major = prefix[6], minor = prefix[7];
    uint32_t header_len;
    long data_start;
    if (major == 1 && minor == 0) {
        header_len = (uint32_t)prefix[8] | (uint32_t)prefix[9] << 8;
        data_start = 10 + (long)header_len;
    } else if ((major == 2 || major == 3) && minor == 0) {
        if (fread(prefix + 10, 1, 2, f) != 2) {
            support_set_error(err, err_size, "%s: truncated header length", path);
            goto fail;
        }
        header_len = (uint32_t)prefix[8] | (uint32_t)prefix[9] << 8 |
                     (uint32_t)prefix[10] << 16 | (uint32_t)prefix[11] << 24;
        if (header_len > (1u << 24)) {
            support_set_error(err, err_size, "%s: header length %u is implausibly large", path,
                      (unsigned)header_len);
            goto fail;
        }
        data_start = 12 + (long)header_len;
    } else {
        support_set_error(err, err_size, "%s: format version %d.%d (allowed: 1.0, 2.0, 3.0)", path,
                  major, minor);
        goto fail;
    }
    header = malloc((size_t)header_len + 1);
    if (!header) {
        support_set_error(err, err_size, "%s: out of memory", path);
        goto fail;
    }
    if (fread(header, 1, header_len, f) != header_len) {
        support_set_error(err, err_size, "%s: truncated header (%u bytes announced)", path,
                  (unsigned)header_len);
        goto fail;
    }
    header[header_len] = '\0';
    if (parse_header(path, header, header_len, ndim, shape, err, err_size) != 0) goto fail;

    int64_t count = 1;
    for (int d = 0; d < *ndim; d++) {
        if (shape[d] != 0 && count > INT64_MAX / 4 / shape[d]) {
            support_set_error(err, err_size, "%s: shape too large", path);
            goto fail;
        }
        count *= shape[d];
    }
    if (fseek(f, 0, SEEK_END) != 0) {
        support_set_error(err, err_size, "%s: cannot seek: %s", path, strerror(errno));
        goto fail;
    }
    long file_size = ftell(f);
    int64_t expected = count * 4;
    if (file_size < 0 || (int64_t)file_size - data_start != expected) {
        support_set_error(err, err_size, "%s: data section is %ld bytes, the shape needs %lld (%lld "
                  "float32 values)%s", path, file_size - data_start, (long long)expected,
                  (long long)count,
                  (int64_t)file_size - data_start < expected ? ": truncated file" : "");
        goto fail;
    }
    values = malloc((size_t)(count ? count : 1) * sizeof(float));
    if (!values) {
        support_set_error(err, err_size, "%s: out of memory for %lld floats", path, (long long)count);
        goto fail;
    }
    if (fseek(f, data_start, SEEK_SET) != 0 ||
        fread(values, 4, (size_t)count, f) != (size_t)count) {
        support_set_error(err, err_size, "%s: read error", path);
        goto fail;
    }
    if (!host_is_little_endian()) swap_words((unsigned char *)values, (size_t)count);
    fclose(f);
    free(header);
    *data = values;
    return 0;
fail:
    fclose(f);
    free(header);
    free(values);
    *ndim = 0;
    return -1;
}

/* ---- writing ------------------------------------------------------------ */

size_t npy_header(const char *path, const char *descr, int ndim, const int64_t *shape,
                  char header[NPY_MAX_HEADER], int64_t *count, char *err, size_t err_size) {
    if (ndim < 0 || ndim > NPY_MAX_DIMS) {
        support_set_error(err, err_size, "%s: %d dimensions (allowed: 0..%d)", path, ndim, NPY_MAX_DIMS);
        return 0;
    }
    if (strlen(descr) > 8) {
        support_set_error(err, err_size, "%s: dtype '%s' (allowed: at most 8 characters)", path, descr);
        return 0;
    }
    const size_t preamble = 10;
    char *dict = header + preamble;
    const size_t room = NPY_MAX_HEADER - preamble;
    size_t len = (size_t)snprintf(dict, room, "{'descr': '%s', 'fortran_order': False, 'shape': (",
                                  descr);
    *count = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) {
            support_set_error(err, err_size, "%s: negative dimension %lld", path, (long long)shape[d]);
            return 0;
        }
        *count *= shape[d];
        len += (size_t)snprintf(dict + len, room - len, "%lld%s", (long long)shape[d],
                                ndim == 1 ? "," : d + 1 < ndim ? ", " : "");
    }
    len += (size_t)snprintf(dict + len, room - len, "), }");
    /* Pad with spaces and a newline so the data starts at a multiple of 64. */
    size_t padded = (preamble + len + 1 + 63) / 64 * 64;
    size_t dict_len = padded - preamble;
    memset(dict + len, ' ', dict_len - 1 - len);
    dict[dict_len - 1] = '\n';
    const unsigned char magic[8] = {0x93, 'N', 'U', 'M', 'P', 'Y', 1, 0};
    memcpy(header, magic, 8);
    header[8] = (char)(dict_len & 0xff);
    header[9] = (char)(dict_len >> 8);
    return padded;
}

int npy_write_f32(const char *path, const float *data, int ndim, const int64_t *shape,
                  char *err, size_t err_size) {
    char header[NPY_MAX_HEADER];
    int64_t count;
    size_t header_len = npy_header(path, "<f4", ndim, shape, header, &count, err, err_size);
    if (!header_len) return -1;

    temp_file out;
    if (temp_file_create(&out, path, err, err_size) != 0) return -1;
    int ok = temp_file_write(&out, header, header_len);
    if (ok && host_is_little_endian()) {
        ok = temp_file_write(&out, data, (size_t)count * 4);
    } else if (ok) {
        for (int64_t i = 0; ok && i < count; i++) {
            unsigned char word[4];
            memcpy(word, data + i, 4);
            swap_words(word, 1);
            ok = temp_file_write(&out, word, 4);
        }
    }
    return temp_file_commit(&out, path, err, err_size);
}
