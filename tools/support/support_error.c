/* support_error.c - see support_error.h. */
#include "support_error.h"

#include <stdarg.h>
#include <stdio.h>

void support_set_error(char *err, size_t err_size, const char *format, ...) {
    if (!err || err_size == 0) return;
    va_list args;
    va_start(args, format);
    vsnprintf(err, err_size, format, args);
    va_end(args);
    /* Messages quote fields read from files: control characters become '?'
     * so a damaged file cannot send escapes to the terminal. */
    for (char *c = err; *c; c++)
        if ((unsigned char)*c < 0x20 || *c == 0x7f)
            *c = '?';
}
