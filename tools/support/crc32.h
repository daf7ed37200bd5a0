/* crc32.h - CRC-32 as zip and PNG define it (polynomial 0xedb88320,
 * reflected, inverted before and after), from a table the caller keeps, so
 * that nothing is global: npz.c checksums the archive member it writes,
 * png.c the chunks of the files it reads back. */
#ifndef FPDM_CRC32_H
#define FPDM_CRC32_H

#include <stddef.h>
#include <stdint.h>

typedef struct crc32_table {
    uint32_t entry[256];
} crc32_table;

void crc32_table_init(crc32_table *table);

/* The CRC-32 of the bytes whose CRC-32 is `crc` (0 for none) followed by
 * `bytes`: a stream's checksum can be built a piece at a time. */
uint32_t crc32_update(const crc32_table *table, uint32_t crc, const uint8_t *bytes, size_t count);

#endif
