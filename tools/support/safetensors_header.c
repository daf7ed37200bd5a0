/* safetensors_header.c - see safetensors_header.h. */
#include "safetensors_header.h"

#include <stdint.h>
#include <string.h>

int write_safetensors_header(FILE *f, const char *json_header) {
    size_t header_len = strlen(json_header);
    size_t padded_len = (header_len + 7) / 8 * 8;
    uint8_t length_bytes[8];
    for (int i = 0; i < 8; i++) length_bytes[i] = (uint8_t)((uint64_t)padded_len >> (8 * i));
    int ok = fwrite(length_bytes, 1, 8, f) == 8 &&
             fwrite(json_header, 1, header_len, f) == header_len;
    for (size_t i = header_len; ok && i < padded_len; i++) ok = fputc(' ', f) != EOF;
    return ok ? 0 : -1;
}
