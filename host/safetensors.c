/* safetensors.c - maps a .safetensors file and validates its header before
 * anyone reads a tensor (see safetensors.h). The file may come from anywhere:
 * every length, offset and shape is checked against the mapping, with overflow
 * checks, so no input can make a later read leave the file. */
#define _POSIX_C_SOURCE 200809L

#include "safetensors.h"
#include "error_message.h"
#include "float16.h"
#include "json.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* A header larger than this is not a model file but an attack on memory. */
#define MAX_HEADER_BYTES ((uint64_t)100 * 1024 * 1024)

static char *copy_string(const char *s) {
    size_t n = strlen(s) + 1;
    char *copy = malloc(n);
    if (copy) memcpy(copy, s, n);
    return copy;
}

static const struct {
    const char *name;
    safetensors_dtype dtype;
    size_t size;
} dtype_table[] = {
    {"F32", SAFETENSORS_F32, 4}, {"F16", SAFETENSORS_F16, 2}, {"BF16", SAFETENSORS_BF16, 2},
    {"I64", SAFETENSORS_I64, 8}, {"I32", SAFETENSORS_I32, 4}, {"F64", SAFETENSORS_F64, 8},
};
#define NUM_DTYPES (sizeof(dtype_table) / sizeof(dtype_table[0]))

const char *safetensors_dtype_name(safetensors_dtype dtype) {
    for (size_t i = 0; i < NUM_DTYPES; i++)
        if (dtype_table[i].dtype == dtype) return dtype_table[i].name;
    return "?";
}

size_t safetensors_dtype_size(safetensors_dtype dtype) {
    for (size_t i = 0; i < NUM_DTYPES; i++)
        if (dtype_table[i].dtype == dtype) return dtype_table[i].size;
    return 0;
}

void safetensors_close(safetensors_file *file) {
    if (!file) return;
    for (int i = 0; i < file->num_tensors; i++) free(file->tensors[i].name);
    free(file->tensors);
    for (int i = 0; i < file->num_metadata; i++) {
        free(file->metadata_keys[i]);
        free(file->metadata_values[i]);
    }
    free(file->metadata_keys);
    free(file->metadata_values);
    if (file->mapping) munmap(file->mapping, file->file_size);
    free(file->path);
    memset(file, 0, sizeof(*file));
}

const safetensors_tensor *safetensors_find(const safetensors_file *file, const char *name) {
    for (int i = 0; i < file->num_tensors; i++)
        if (strcmp(file->tensors[i].name, name) == 0) return &file->tensors[i];
    return NULL;
}

const char *safetensors_metadata(const safetensors_file *file, const char *key) {
    for (int i = 0; i < file->num_metadata; i++)
        if (strcmp(file->metadata_keys[i], key) == 0) return file->metadata_values[i];
    return NULL;
}

/* ---- header parsing --------------------------------------------------- */

static int json_to_count(const json_value *item, uint64_t *out) {
    if (!item || item->type != JSON_NUMBER || !item->is_count) return 0;
    *out = item->count;
    return 1;
}

static int parse_dtype(const char *path, const char *name, const json_value *item,
                       safetensors_tensor *t, char *err, size_t err_size) {
    if (item->type != JSON_STRING) {
        set_error(err, err_size, "%s: tensor %s: dtype is not a string", path, name);
        return -1;
    }
    for (size_t i = 0; i < NUM_DTYPES; i++) {
        if (strcmp(item->string, dtype_table[i].name) == 0) {
            t->dtype = dtype_table[i].dtype;
            return 0;
        }
    }
    set_error(err, err_size,
              "%s: tensor %s: unsupported dtype \"%s\" (supported: F32, F16, BF16, F64, I64, I32)",
              path, name, item->string);
    return -1;
}

static int parse_shape(const char *path, const char *name, const json_value *item,
                       safetensors_tensor *t, char *err, size_t err_size) {
    if (item->type != JSON_ARRAY) {
        set_error(err, err_size, "%s: tensor %s: shape is not an array", path, name);
        return -1;
    }
    int ndim = item->num_children;
    if (ndim > SAFETENSORS_MAX_DIMS) {
        set_error(err, err_size, "%s: tensor %s: shape has %d dims, at most %d are supported",
                  path, name, ndim, SAFETENSORS_MAX_DIMS);
        return -1;
    }
    int64_t count = 1;
    int d = 0;
    for (const json_value *dim = item->first_child; dim; dim = dim->next, d++) {
        uint64_t size;
        if (!json_to_count(dim, &size)) {
            set_error(err, err_size,
                      "%s: tensor %s: shape entry %d is not a non-negative integer", path, name, d);
            return -1;
        }
        if (size != 0 && (uint64_t)count > (uint64_t)INT64_MAX / size) {
            set_error(err, err_size, "%s: tensor %s: shape's element count overflows", path, name);
            return -1;
        }
        t->shape[d] = (int64_t)size;
        count *= (int64_t)size;
    }
    t->ndim = ndim;
    t->num_elements = count;
    return 0;
}

typedef struct span {
    uint64_t begin, end;
} span;

static int parse_offsets(const char *path, const char *name, const json_value *item,
                         uint64_t data_size, span *out, char *err, size_t err_size) {
    uint64_t begin, end;
    if (item->type != JSON_ARRAY || item->num_children != 2 ||
        !json_to_count(item->first_child, &begin) ||
        !json_to_count(item->first_child->next, &end)) {
        set_error(err, err_size,
                  "%s: tensor %s: data_offsets is not a pair of non-negative integers", path, name);
        return -1;
    }
    if (end < begin) {
        set_error(err, err_size, "%s: tensor %s: data_offsets end %llu is before begin %llu",
                  path, name, (unsigned long long)end, (unsigned long long)begin);
        return -1;
    }
    if (end > data_size) {
        set_error(err, err_size,
                  "%s: tensor %s: data_offsets end %llu is out of range (data section has %llu bytes)",
                  path, name, (unsigned long long)end, (unsigned long long)data_size);
        return -1;
    }
    out->begin = begin;
    out->end = end;
    return 0;
}

/* One tensor entry: {"dtype", "shape", "data_offsets"} and nothing else. */
static int parse_tensor(const char *path, const json_value *entry, const uint8_t *data,
                        uint64_t data_size, safetensors_tensor *t, span *s, char *err,
                        size_t err_size) {
    const char *name = entry->name;
    if (entry->type != JSON_OBJECT) {
        set_error(err, err_size, "%s: tensor %s: entry is not an object", path, name);
        return -1;
    }
    const json_value *dtype = NULL, *shape = NULL, *offsets = NULL;
    for (const json_value *field = entry->first_child; field; field = field->next) {
        const json_value **slot = strcmp(field->name, "dtype") == 0          ? &dtype
                                  : strcmp(field->name, "shape") == 0        ? &shape
                                  : strcmp(field->name, "data_offsets") == 0 ? &offsets
                                                                             : NULL;
        if (!slot) {
            set_error(err, err_size, "%s: tensor %s: unexpected field \"%s\"", path, name,
                      field->name);
            return -1;
        }
        if (*slot) {
            set_error(err, err_size, "%s: tensor %s: field \"%s\" appears twice", path, name,
                      field->name);
            return -1;
        }
        *slot = field;
    }
    const char *missing = !dtype ? "dtype" : !shape ? "shape" : !offsets ? "data_offsets" : NULL;
    if (missing) {
        set_error(err, err_size, "%s: tensor %s: missing field \"%s\"", path, name, missing);
        return -1;
    }
    if (parse_dtype(path, name, dtype, t, err, err_size) ||
        parse_shape(path, name, shape, t, err, err_size) ||
        parse_offsets(path, name, offsets, data_size, s, err, err_size))
        return -1;
    uint64_t element_size = safetensors_dtype_size(t->dtype);
    uint64_t expected = (uint64_t)t->num_elements;
    /* The span is at most data_size bytes, so a count this large cannot match. */
    if (expected > data_size / element_size || expected * element_size != s->end - s->begin) {
        set_error(err, err_size,
                  "%s: tensor %s: data_offsets span %llu bytes but shape and dtype %s need %llu x %llu",
                  path, name, (unsigned long long)(s->end - s->begin), safetensors_dtype_name(t->dtype),
                  (unsigned long long)expected, (unsigned long long)element_size);
        return -1;
    }
    t->data = data + s->begin;
    t->num_bytes = (size_t)(s->end - s->begin);
    return 0;
}

static int compare_string(const void *a, const void *b) {
    const char *const *x = a, *const *y = b;
    return strcmp(*x, *y);
}

/* Sets *repeated to a string that occurs twice in names (or NULL), sorting a
 * copy so that a hostile header with millions of keys stays O(n log n).
 * Returns -1 only when memory runs out. */
static int find_repeated(char *const *names, int n, const char **repeated) {
    *repeated = NULL;
    if (n < 2) return 0;
    const char **sorted = malloc((size_t)n * sizeof(*sorted));
    if (!sorted) return -1;
    memcpy(sorted, names, (size_t)n * sizeof(*sorted));
    qsort(sorted, (size_t)n, sizeof(*sorted), compare_string);
    for (int i = 1; i < n && !*repeated; i++)
        if (strcmp(sorted[i - 1], sorted[i]) == 0) *repeated = sorted[i];
    free(sorted);
    return 0;
}

static int parse_metadata(const char *path, const json_value *meta, safetensors_file *file,
                          char *err, size_t err_size) {
    if (meta->type != JSON_OBJECT) {
        set_error(err, err_size, "%s: __metadata__ is not an object", path);
        return -1;
    }
    int n = meta->num_children;
    if (n == 0) return 0;
    file->metadata_keys = calloc((size_t)n, sizeof(char *));
    file->metadata_values = calloc((size_t)n, sizeof(char *));
    if (!file->metadata_keys || !file->metadata_values) {
        set_error(err, err_size, "%s: out of memory reading metadata", path);
        return ERROR_OUT_OF_MEMORY;
    }
    for (const json_value *item = meta->first_child; item; item = item->next) {
        if (item->type != JSON_STRING) {
            set_error(err, err_size, "%s: __metadata__ value of key %s is not a string", path,
                      item->name);
            return -1;
        }
        int i = file->num_metadata;
        file->metadata_keys[i] = copy_string(item->name);
        file->metadata_values[i] = copy_string(item->string);
        file->num_metadata++;
        if (!file->metadata_keys[i] || !file->metadata_values[i]) {
            set_error(err, err_size, "%s: out of memory reading metadata", path);
            return ERROR_OUT_OF_MEMORY;
        }
    }
    const char *repeated = NULL;
    if (find_repeated(file->metadata_keys, n, &repeated)) {
        set_error(err, err_size, "%s: out of memory checking metadata keys", path);
        return ERROR_OUT_OF_MEMORY;
    }
    if (repeated) {
        set_error(err, err_size, "%s: __metadata__ key %s appears twice", path, repeated);
        return -1;
    }
    return 0;
}

static int compare_span(const void *a, const void *b) {
    const span *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->end != y->end) return x->end < y->end ? -1 : 1;
    return 0;
}

/* Names must be unique (the JSON reader keeps repeated names) and non-empty byte spans
 * must be disjoint, or one tensor's bytes would be read as another's. */
static int check_unique(const char *path, safetensors_file *file, span *spans, char *err,
                        size_t err_size) {
    int n = file->num_tensors;
    if (n < 2) return 0;
    char **names = malloc((size_t)n * sizeof(*names));
    if (!names) {
        set_error(err, err_size, "%s: out of memory checking tensor names", path);
        return ERROR_OUT_OF_MEMORY;
    }
    for (int i = 0; i < n; i++) names[i] = file->tensors[i].name;
    const char *repeated = NULL;
    int status = find_repeated(names, n, &repeated);
    if (status)
        set_error(err, err_size, "%s: out of memory checking tensor names", path);
    else if (repeated)
        set_error(err, err_size, "%s: tensor %s appears twice in the header", path, repeated);
    free(names);
    if (status) return ERROR_OUT_OF_MEMORY;
    if (repeated) return ERROR_REFUSED;

    qsort(spans, (size_t)n, sizeof(*spans), compare_span);
    uint64_t covered_to = 0;
    for (int i = 0; i < n; i++) {
        if (spans[i].begin == spans[i].end) continue;
        if (spans[i].begin < covered_to) {
            set_error(err, err_size,
                      "%s: tensor data overlaps: bytes [%llu, %llu) are shared by two tensors", path,
                      (unsigned long long)spans[i].begin,
                      (unsigned long long)(spans[i].end < covered_to ? spans[i].end : covered_to));
            return -1;
        }
        covered_to = spans[i].end;
    }
    return 0;
}

static int parse_header(const char *header, size_t header_size, const uint8_t *data,
                        uint64_t data_size, safetensors_file *file, char *err, size_t err_size) {
    const char *path = file->path;
    if (memchr(header, '\0', header_size)) {
        set_error(err, err_size, "%s: header contains a NUL byte", path);
        return -1;
    }
    json_document document;
    size_t error_offset = 0;
    const char *error_reason = NULL;
    json_result parsed = json_parse(header, header_size, &document, &error_offset, &error_reason);
    if (parsed == JSON_OUT_OF_MEMORY) {
        set_error(err, err_size, "%s: out of memory reading the %zu-byte header", path,
                  header_size);
        return ERROR_OUT_OF_MEMORY;
    }
    if (parsed != JSON_OK) {
        set_error(err, err_size, "%s: header is not valid JSON: %s (byte %zu of %zu)", path,
                  error_reason, error_offset, header_size);
        return -1;
    }
    const json_value *root = document.root;
    int status = ERROR_REFUSED;
    span *spans = NULL;
    if (root->type != JSON_OBJECT) {
        set_error(err, err_size, "%s: header is not a JSON object", path);
        goto done;
    }
    int num_entries = root->num_children;
    const json_value *meta = NULL;
    for (const json_value *item = root->first_child; item; item = item->next) {
        if (strcmp(item->name, "__metadata__") != 0) continue;
        if (meta) {
            set_error(err, err_size, "%s: __metadata__ appears twice", path);
            goto done;
        }
        meta = item;
    }
    if (meta && (status = parse_metadata(path, meta, file, err, err_size)) != 0) goto done;
    status = ERROR_REFUSED;

    int num_tensors = num_entries - (meta ? 1 : 0);
    if (num_tensors > 0) {
        file->tensors = calloc((size_t)num_tensors, sizeof(*file->tensors));
        spans = calloc((size_t)num_tensors, sizeof(*spans));
        if (!file->tensors || !spans) {
            set_error(err, err_size, "%s: out of memory for %d tensors", path, num_tensors);
            status = ERROR_OUT_OF_MEMORY;
            goto done;
        }
    }
    for (const json_value *item = root->first_child; item; item = item->next) {
        if (item == meta) continue;
        int i = file->num_tensors;
        safetensors_tensor *t = &file->tensors[i];
        if (parse_tensor(path, item, data, data_size, t, &spans[i], err, err_size)) goto done;
        t->name = copy_string(item->name);
        if (!t->name) {
            set_error(err, err_size, "%s: out of memory for tensor names", path);
            status = ERROR_OUT_OF_MEMORY;
            goto done;
        }
        file->num_tensors++;
    }
    status = check_unique(path, file, spans, err, err_size);
done:
    free(spans);
    json_free(&document);
    return status;
}

/* ---- opening ------------------------------------------------------------ */

static void set_errno_error(char *err, size_t err_size, const char *path, const char *what,
                            int error_number) {
    char reason[128];
    if (strerror_r(error_number, reason, sizeof(reason)) != 0)
        snprintf(reason, sizeof(reason), "error %d", error_number);
    set_error(err, err_size, "%s: %s: %s", path, what, reason);
}

int safetensors_open(const char *path, safetensors_file *file, char *err, size_t err_size) {
    memset(file, 0, sizeof(*file));
    if (err && err_size) err[0] = '\0';
    if (!path) {
        set_error(err, err_size, "(null): no path given");
        return -1;
    }
    /* O_NONBLOCK keeps a FIFO from hanging the open; fstat then rejects it. */
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        set_errno_error(err, err_size, path, "cannot open", errno);
        return -1;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        set_errno_error(err, err_size, path, "cannot stat", errno);
        close(fd);
        return -1;
    }
    if (!S_ISREG(st.st_mode)) {
        set_error(err, err_size, "%s: not a regular file", path);
        close(fd);
        return -1;
    }
    if (st.st_size < 8) {
        set_error(err, err_size, "%s: file has %lld bytes, too short for the 8-byte header length",
                  path, (long long)st.st_size);
        close(fd);
        return -1;
    }
    if ((uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        set_error(err, err_size, "%s: file is too large to map", path);
        close(fd);
        return -1;
    }
    size_t file_size = (size_t)st.st_size;
    void *mapping = mmap(NULL, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
    int map_errno = errno;
    close(fd);
    if (mapping == MAP_FAILED) {
        set_errno_error(err, err_size, path, "cannot map", map_errno);
        return map_errno == ENOMEM ? ERROR_OUT_OF_MEMORY : ERROR_REFUSED;
    }
    file->path = copy_string(path);
    file->mapping = mapping;
    file->file_size = file_size;
    if (!file->path) {
        set_error(err, err_size, "%s: out of memory", path);
        safetensors_close(file);
        return ERROR_OUT_OF_MEMORY;
    }

    const uint8_t *bytes = mapping;
    uint64_t header_size = 0;
    for (int i = 7; i >= 0; i--) header_size = header_size << 8 | bytes[i];
    if (header_size < 2 || header_size > (uint64_t)file_size - 8 || header_size > MAX_HEADER_BYTES) {
        set_error(err, err_size,
                  "%s: header length %llu is invalid (file has %zu bytes after the length, limit %llu)",
                  path, (unsigned long long)header_size, file_size - 8,
                  (unsigned long long)MAX_HEADER_BYTES);
        safetensors_close(file);
        return -1;
    }
    const uint8_t *data = bytes + 8 + header_size;
    uint64_t data_size = (uint64_t)file_size - 8 - header_size;
    int status = parse_header((const char *)bytes + 8, (size_t)header_size, data, data_size, file,
                              err, err_size);
    if (status != 0) safetensors_close(file);
    return status;
}

fpdm_status safetensors_failure_status(int open_result, const char *path) {
    if (open_result == ERROR_OUT_OF_MEMORY) return FPDM_ERR_OUT_OF_MEMORY;
    FILE *probe = path ? fopen(path, "rb") : NULL;
    if (!probe) return FPDM_ERR_IO;
    fclose(probe);
    return FPDM_ERR_BAD_FILE;
}

/* ---- conversion ------------------------------------------------------------ */

/* Little-endian loads from possibly unaligned bytes. */
static uint64_t load_le(const uint8_t *p, int num_bytes) {
    uint64_t v = 0;
    for (int i = num_bytes - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

void safetensors_to_f32(const safetensors_tensor *tensor, float *dst) {
    const uint8_t *src = tensor->data;
    int64_t n = tensor->num_elements;
    switch (tensor->dtype) {
    case SAFETENSORS_F32:
        for (int64_t i = 0; i < n; i++) {
            uint32_t bits = (uint32_t)load_le(src + 4 * i, 4);
            memcpy(&dst[i], &bits, sizeof(float));
        }
        break;
    case SAFETENSORS_F16:
        for (int64_t i = 0; i < n; i++) dst[i] = f16_to_f32((uint16_t)load_le(src + 2 * i, 2));
        break;
    case SAFETENSORS_BF16:
        for (int64_t i = 0; i < n; i++) dst[i] = bf16_to_f32((uint16_t)load_le(src + 2 * i, 2));
        break;
    case SAFETENSORS_F64:
        for (int64_t i = 0; i < n; i++) {
            uint64_t bits = load_le(src + 8 * i, 8);
            double d;
            memcpy(&d, &bits, sizeof(d));
            dst[i] = (float)d;
        }
        break;
    case SAFETENSORS_I64:
        for (int64_t i = 0; i < n; i++) dst[i] = (float)(int64_t)load_le(src + 8 * i, 8);
        break;
    case SAFETENSORS_I32:
        for (int64_t i = 0; i < n; i++) dst[i] = (float)(int32_t)(uint32_t)load_le(src + 4 * i, 4);
        break;
    }
}
