/* json.h - a strict JSON reader for the headers of model files.
 *
 * Why not cJSON: its parser writes every parse's error position into one
 * process-wide variable, so two threads loading models at once wrote the
 * same memory (helgrind showed it), and the library promises no global
 * state. Its parse also returns the same NULL when memory runs out as when
 * the text is bad, and reads numbers as doubles, which stop naming one
 * integer above 2^53 while safetensors offsets are 64-bit.
 *
 * This reader keeps everything in the document it returns, says which of the
 * two failures happened (and, for bad text, where and why), and gives each
 * number that is a whole number from 0 to 2^64 - 1 exactly, however it is
 * written (12, 12.0, 1.2e1).
 *
 * It takes RFC 8259 text: one value with optional whitespace around it.
 * Stricter where that costs real files nothing: texts of at most
 * JSON_MAX_TEXT_BYTES, values nested at most JSON_MAX_DEPTH deep (the
 * recursion stays small on any input), strings may
 * not hold the escape \u0000 (names become C strings) or unpaired
 * surrogates. Repeated member names are kept, in order, for the caller to
 * judge. Bytes above 0x7f pass through unchecked.
 *
 * Tested by tests/test_json.c.
 */
#ifndef FPDM_JSON_H
#define FPDM_JSON_H

#include <stddef.h>
#include <stdint.h>

#define JSON_MAX_DEPTH 64
/* Longer texts are refused: within this, counts fit an int and exponents
 * beyond a billion never change an answer. */
#define JSON_MAX_TEXT_BYTES ((size_t)1 << 30)

typedef enum json_type {
    JSON_NULL,
    JSON_BOOL,
    JSON_NUMBER,
    JSON_STRING,
    JSON_ARRAY,
    JSON_OBJECT,
} json_type;

typedef struct json_value json_value;
struct json_value {
    json_type type;
    const char *name;      /* a member's name inside an object, else NULL */
    const char *string;    /* JSON_STRING: the decoded text, NUL-terminated */
    int boolean;           /* JSON_BOOL */
    int is_count;          /* JSON_NUMBER: 1 when it is a whole number in [0, 2^64) */
    uint64_t count;        /* ... and then its value */
    int num_children;      /* JSON_ARRAY, JSON_OBJECT */
    const json_value *first_child;
    const json_value *next; /* the next element or member of the parent */
};

/* Owns every value and string of a parsed text. */
typedef struct json_document {
    const json_value *root;
    struct json_block *blocks;
} json_document;

typedef enum json_result {
    JSON_OK = 0,
    JSON_BAD_TEXT,      /* *error_offset and *error_reason say where and why */
    JSON_OUT_OF_MEMORY,
} json_result;

/* Parses text[0, size) into doc. On failure doc holds nothing (json_free is
 * still safe); error_offset and error_reason may be NULL. */
json_result json_parse(const char *text, size_t size, json_document *doc, size_t *error_offset,
                       const char **error_reason);
void json_free(json_document *doc);

#endif
