/* npz.c - a one-member, stored, ZIP64 zip archive holding a uint8 .npy
 * (see npz.h). The layout, in order: the member's local header (its CRC-32
 * is patched in at the end, when it is known; the sizes are known from the
 * shape at the start), the .npy header and data, the central directory, the
 * ZIP64 end record and its locator, and the classic end record with its
 * fields saturated to say "see ZIP64". Field layouts: PKWARE's APPNOTE.TXT,
 * sections 4.3.7 (local header), 4.3.12 (central header), 4.3.14-15 (ZIP64
 * end record, locator), 4.3.16 (end record), 4.5.3 (ZIP64 extra field). */
#define _POSIX_C_SOURCE 200809L
#include "npz.h"
#include "crc32.h"
#include "npy.h"
#include "support_error.h"
#include "temp_path.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MEMBER_NAME "arr_0.npy"
#define MEMBER_NAME_LEN (sizeof MEMBER_NAME - 1)
#define ZIP_VERSION 45 /* 4.5: ZIP64 */
#define ZIP64_EXTRA_ID 0x0001
#define SATURATED32 0xffffffffu
/* 1980-01-01 00:00, the earliest DOS date: the archive's bytes depend on
 * its contents only. */
#define DOS_TIME 0
#define DOS_DATE ((0 << 9) | (1 << 5) | 1)
#define LOCAL_HEADER_SIZE (30 + MEMBER_NAME_LEN + 20)
#define CRC_OFFSET 14 /* of the CRC-32 field in the local header */

struct npz_writer {
    temp_file out;
    char *path;
    uint64_t member_size;  /* .npy header + data */
    uint64_t data_bytes;   /* the array's bytes: prod(shape) */
    uint64_t data_written;
    uint32_t crc;          /* CRC-32 of the member so far */
    crc32_table crc_table;
};

/* Little-endian fields, appended at *p. */
static void put16(uint8_t **p, uint32_t v) {
    (*p)[0] = (uint8_t)v, (*p)[1] = (uint8_t)(v >> 8);
    *p += 2;
}
static void put32(uint8_t **p, uint32_t v) {
    for (int i = 0; i < 4; i++) (*p)[i] = (uint8_t)(v >> (8 * i));
    *p += 4;
}
static void put64(uint8_t **p, uint64_t v) {
    for (int i = 0; i < 8; i++) (*p)[i] = (uint8_t)(v >> (8 * i));
    *p += 8;
}
static void put_bytes(uint8_t **p, const void *bytes, size_t count) {
    memcpy(*p, bytes, count);
    *p += count;
}

/* The fields the local and central headers share, from "version needed" to
 * the name and extra lengths. */
static void put_common_fields(uint8_t **p, uint32_t crc, uint16_t extra_len) {
    put16(p, ZIP_VERSION);
    put16(p, 0); /* flags */
    put16(p, 0); /* method: stored */
    put16(p, DOS_TIME);
    put16(p, DOS_DATE);
    put32(p, crc);
    put32(p, SATURATED32); /* compressed size: in the ZIP64 extra field */
    put32(p, SATURATED32); /* uncompressed size: likewise */
    put16(p, MEMBER_NAME_LEN);
    put16(p, extra_len);
}

static size_t local_header(uint8_t *out, uint32_t crc, uint64_t member_size) {
    uint8_t *p = out;
    put32(&p, 0x04034b50);
    put_common_fields(&p, crc, 20);
    put_bytes(&p, MEMBER_NAME, MEMBER_NAME_LEN);
    put16(&p, ZIP64_EXTRA_ID);
    put16(&p, 16);
    put64(&p, member_size); /* uncompressed */
    put64(&p, member_size); /* compressed: the same, stored */
    return (size_t)(p - out);
}

/* The central directory, the ZIP64 end record and locator, and the end
 * record: everything after the member's data, which ends at cd_offset. */
static size_t archive_tail(uint8_t *out, uint32_t crc, uint64_t member_size, uint64_t cd_offset) {
    uint8_t *p = out;
    put32(&p, 0x02014b50);
    put16(&p, ZIP_VERSION); /* made by */
    put_common_fields(&p, crc, 28);
    put16(&p, 0);            /* comment length */
    put16(&p, 0);            /* disk number */
    put16(&p, 0);            /* internal attributes */
    put32(&p, 0);            /* external attributes */
    put32(&p, SATURATED32);  /* local header offset: in the ZIP64 extra field */
    put_bytes(&p, MEMBER_NAME, MEMBER_NAME_LEN);
    put16(&p, ZIP64_EXTRA_ID);
    put16(&p, 24);
    put64(&p, member_size);
    put64(&p, member_size);
    put64(&p, 0); /* the local header starts the file */
    const uint64_t cd_size = (uint64_t)(p - out);
    const uint64_t end64_offset = cd_offset + cd_size;

    put32(&p, 0x06064b50);
    put64(&p, 44); /* this record's size after this field */
    put16(&p, ZIP_VERSION);
    put16(&p, ZIP_VERSION);
    put32(&p, 0); /* this disk */
    put32(&p, 0); /* the central directory's disk */
    put64(&p, 1); /* entries on this disk */
    put64(&p, 1); /* entries */
    put64(&p, cd_size);
    put64(&p, cd_offset);

    put32(&p, 0x07064b50);
    put32(&p, 0); /* the ZIP64 end record's disk */
    put64(&p, end64_offset);
    put32(&p, 1); /* disks */

    put32(&p, 0x06054b50);
    put16(&p, 0);
    put16(&p, 0);
    put16(&p, 1);
    put16(&p, 1);
    put32(&p, (uint32_t)cd_size);
    put32(&p, SATURATED32); /* central directory offset: in the ZIP64 end record */
    put16(&p, 0);           /* comment length */
    return (size_t)(p - out);
}

static int write_all(npz_writer *w, const void *bytes, size_t count, char *err, size_t err_size) {
    if (temp_file_write(&w->out, bytes, count)) return 0;
    support_set_error(err, err_size, "%s: write failed: %s", w->path,
                      strerror(w->out.write_errno));
    return -1;
}

npz_writer *npz_u8_create(const char *path, int ndim, const int64_t *shape, char *err,
                          size_t err_size) {
    char header[NPY_MAX_HEADER];
    int64_t count;
    size_t header_len = npy_header(path, "|u1", ndim, shape, header, &count, err, err_size);
    if (!header_len) return NULL;
    npz_writer *w = calloc(1, sizeof *w);
    if (w) w->path = strdup(path);
    if (!w || !w->path) {
        support_set_error(err, err_size, "%s: out of memory", path);
        npz_u8_abort(w);
        return NULL;
    }
    if (temp_file_create(&w->out, path, err, err_size) != 0) {
        npz_u8_abort(w);
        return NULL;
    }
    w->data_bytes = (uint64_t)count;
    w->member_size = header_len + w->data_bytes;
    crc32_table_init(&w->crc_table);
    uint8_t local[LOCAL_HEADER_SIZE];
    size_t local_len = local_header(local, 0, w->member_size);
    w->crc = crc32_update(&w->crc_table, 0, (const uint8_t *)header, header_len);
    if (write_all(w, local, local_len, err, err_size) != 0 ||
        write_all(w, header, header_len, err, err_size) != 0) {
        npz_u8_abort(w);
        return NULL;
    }
    return w;
}

int npz_u8_append(npz_writer *w, const uint8_t *bytes, size_t count, char *err, size_t err_size) {
    if (count > w->data_bytes - w->data_written) {
        support_set_error(err, err_size, "%s: %llu bytes appended past the array's %llu", w->path,
                          (unsigned long long)(w->data_written + count),
                          (unsigned long long)w->data_bytes);
        return -1;
    }
    w->crc = crc32_update(&w->crc_table, w->crc, bytes, count);
    w->data_written += count;
    return write_all(w, bytes, count, err, err_size);
}

int npz_u8_finish(npz_writer *w, char *err, size_t err_size) {
    if (w->data_written != w->data_bytes) {
        support_set_error(err, err_size, "%s: %llu of the array's %llu bytes were written", w->path,
                          (unsigned long long)w->data_written, (unsigned long long)w->data_bytes);
        npz_u8_abort(w);
        return -1;
    }
    const uint32_t crc = w->crc;
    uint8_t tail[256], crc_field[4], *p = crc_field;
    size_t tail_len = archive_tail(tail, crc, w->member_size, LOCAL_HEADER_SIZE + w->member_size);
    put32(&p, crc);
    temp_file_write(&w->out, tail, tail_len);
    /* The seek flushes what stdio buffered: a failure here may be the data's. */
    if (fseek(w->out.file, CRC_OFFSET, SEEK_SET) != 0)
        temp_file_failed(&w->out, errno);
    else
        temp_file_write(&w->out, crc_field, 4);
    int rc = temp_file_commit(&w->out, w->path, err, err_size);
    npz_u8_abort(w);
    return rc;
}

void npz_u8_abort(npz_writer *w) {
    if (!w) return;
    temp_file_discard(&w->out);
    free(w->path);
    free(w);
}
