/* crc32.c - see crc32.h. */
#include "crc32.h"

void crc32_table_init(crc32_table *table) {
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) c = c & 1 ? 0xedb88320u ^ (c >> 1) : c >> 1;
        table->entry[n] = c;
    }
}

uint32_t crc32_update(const crc32_table *table, uint32_t crc, const uint8_t *bytes, size_t count) {
    uint32_t c = ~crc;
    for (size_t i = 0; i < count; i++) c = table->entry[(c ^ bytes[i]) & 0xff] ^ (c >> 8);
    return ~c;
}
