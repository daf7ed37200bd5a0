/* error_message.h - writing "what went wrong" into a caller's buffer, the way
 * the library's internal readers and checkers report failures. */
#ifndef FPDM_ERROR_MESSAGE_H
#define FPDM_ERROR_MESSAGE_H

#include <stddef.h>

/* What the internal readers and checkers return besides 0: ERROR_REFUSED,
 * the input is malformed, inconsistent or unreadable (the message says how),
 * or ERROR_OUT_OF_MEMORY, memory ran out (the input may be fine). The public
 * functions turn them into FPDM_ERR_* statuses, so that a caller never takes
 * a shortage of memory for a broken file. */
enum { ERROR_REFUSED = -1, ERROR_OUT_OF_MEMORY = -2 };

/* printf into err (always NUL-terminated; nothing when err is NULL or empty),
 * made printable. */
void set_error(char *err, size_t err_size, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

/* Control characters become '?': messages quote names and values read from
 * files, and a damaged file's bytes should not reach the user's terminal as
 * escapes. Every message the library hands out passes through this. */
void make_printable(char *text);

#endif
