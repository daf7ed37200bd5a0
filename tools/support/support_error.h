/* support_error.h - how the programs' support code reports failures: printf
 * into a caller's buffer. (The library has its own, internal, twin.) */
#ifndef FPDM_SUPPORT_ERROR_H
#define FPDM_SUPPORT_ERROR_H

#include <stddef.h>

/* Always NUL-terminates; does nothing when err is NULL or err_size is 0. */
void support_set_error(char *err, size_t err_size, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

#endif
