/* error_message.c - see error_message.h. */
#include "error_message.h"

#include <stdarg.h>
#include <stdio.h>

void set_error(char *err, size_t err_size, const char *format, ...) {
    if (!err || err_size == 0) return;
    va_list args;
    va_start(args, format);
    vsnprintf(err, err_size, format, args);
    va_end(args);
    make_printable(err);
}

void make_printable(char *text) {
    for (char *c = text; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f) *c = '?';
}
