/* json.c - a strict JSON reader (see json.h): recursive descent over the
 * text, values and decoded strings carved from blocks the document owns. */
#include "json.h"

#include <stdalign.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

/* A run of memory values and strings are carved from; blocks grow from
 * FIRST_BLOCK_BYTES to LARGEST_BLOCK_BYTES so that a small header costs one
 * allocation and a huge one not millions. */
struct json_block {
    struct json_block *next;
    size_t used, capacity;
    max_align_t bytes[];
};
#define FIRST_BLOCK_BYTES ((size_t)16 << 10)
#define LARGEST_BLOCK_BYTES ((size_t)1 << 20)

typedef struct parser {
    const char *text, *at, *end;
    json_document *doc;
    size_t next_block_bytes;
    const char *error_at; /* where the first failure was found */
    const char *error_reason;
    int out_of_memory;
} parser;

static int fail(parser *p, const char *at, const char *reason) {
    if (!p->error_reason && !p->out_of_memory) {
        p->error_at = at;
        p->error_reason = reason;
    }
    return -1;
}

static void *allocate(parser *p, size_t size) {
    size = (size + alignof(json_value) - 1) / alignof(json_value) * alignof(json_value);
    struct json_block *block = p->doc->blocks;
    if (!block || block->capacity - block->used < size) {
        size_t capacity = size > p->next_block_bytes ? size : p->next_block_bytes;
        block = malloc(sizeof(*block) + capacity);
        if (!block) {
            p->out_of_memory = 1;
            return NULL;
        }
        block->next = p->doc->blocks;
        block->used = 0;
        block->capacity = capacity;
        p->doc->blocks = block;
        if (p->next_block_bytes < LARGEST_BLOCK_BYTES) p->next_block_bytes *= 2;
    }
    void *memory = (char *)block->bytes + block->used;
    block->used += size;
    return memory;
}

static json_value *new_value(parser *p) {
    json_value *value = allocate(p, sizeof(*value));
    if (value) memset(value, 0, sizeof(*value));
    return value;
}

static void skip_whitespace(parser *p) {
    while (p->at < p->end && (*p->at == ' ' || *p->at == '\t' || *p->at == '\n' || *p->at == '\r'))
        p->at++;
}

static int next_is(const parser *p, char c) { return p->at < p->end && *p->at == c; }

static int is_digit(const char *at, const char *end) {
    return at < end && *at >= '0' && *at <= '9';
}

/* ---- strings ------------------------------------------------------------ */

static int read_hex4(const char *at, const char *end, unsigned *out) {
    if (end - at < 4) return 0;
    unsigned value = 0;
    for (int i = 0; i < 4; i++) {
        char c = at[i];
        unsigned digit = c >= '0' && c <= '9'   ? (unsigned)(c - '0')
                         : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                         : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                                : 16;
        if (digit == 16) return 0;
        value = value << 4 | digit;
    }
    *out = value;
    return 1;
}

static char *put_utf8(char *out, unsigned code) {
    if (code < 0x80) {
        *out++ = (char)code;
    } else if (code < 0x800) {
        *out++ = (char)(0xc0 | code >> 6);
        *out++ = (char)(0x80 | (code & 0x3f));
    } else if (code < 0x10000) {
        *out++ = (char)(0xe0 | code >> 12);
        *out++ = (char)(0x80 | (code >> 6 & 0x3f));
        *out++ = (char)(0x80 | (code & 0x3f));
    } else {
        *out++ = (char)(0xf0 | code >> 18);
        *out++ = (char)(0x80 | (code >> 12 & 0x3f));
        *out++ = (char)(0x80 | (code >> 6 & 0x3f));
        *out++ = (char)(0x80 | (code & 0x3f));
    }
    return out;
}

/* A \u escape at `escape` (one code unit, or a surrogate pair); *after is
 * where the text goes on. */
static int read_code_point(parser *p, const char *escape, const char *end, unsigned *code,
                           const char **after) {
    if (!read_hex4(escape + 2, end, code))
        return fail(p, escape, "a \\u escape without four hex digits");
    *after = escape + 6;
    if (*code >= 0xdc00 && *code < 0xe000)
        return fail(p, escape, "an unpaired surrogate in a \\u escape");
    if (*code >= 0xd800 && *code < 0xdc00) {
        unsigned low;
        if (end - *after < 6 || (*after)[0] != '\\' || (*after)[1] != 'u' ||
            !read_hex4(*after + 2, end, &low) || low < 0xdc00 || low >= 0xe000)
            return fail(p, escape, "an unpaired surrogate in a \\u escape");
        *code = 0x10000 + ((*code - 0xd800) << 10) + (low - 0xdc00);
        *after += 6;
    }
    if (*code == 0)
        return fail(p, escape, "the escape \\u0000 (names and values must be C strings)");
    return 0;
}

/* The string whose opening quote is at p->at, decoded into the document. */
static int parse_string(parser *p, const char **out) {
    const char *begin = p->at + 1, *close = begin;
    while (close < p->end && *close != '"') {
        if ((unsigned char)*close < 0x20)
            return fail(p, close, "a control character inside a string (JSON needs it escaped)");
        close += *close == '\\' && p->end - close > 1 ? 2 : 1;
    }
    if (close >= p->end) return fail(p, p->at, "a string without its closing quote");
    /* Every escape decodes to fewer bytes than it takes. */
    char *decoded = allocate(p, (size_t)(close - begin) + 1), *write = decoded;
    if (!decoded) return -1;
    for (const char *read = begin; read < close;) {
        if (*read != '\\') {
            *write++ = *read++;
            continue;
        }
        const char *escape = read;
        static const char escaped[] = "\"\\/bfnrt", meant[] = "\"\\/\b\f\n\r\t";
        const char *which = read[1] ? strchr(escaped, read[1]) : NULL;
        if (which) {
            *write++ = meant[which - escaped];
            read += 2;
        } else if (read[1] == 'u') {
            unsigned code;
            if (read_code_point(p, escape, close, &code, &read)) return -1;
            write = put_utf8(write, code);
        } else {
            return fail(p, escape, "an unknown escape in a string");
        }
    }
    *write = '\0';
    p->at = close + 1;
    *out = decoded;
    return 0;
}

/* ---- numbers -------------------------------------------------------------- */

typedef struct decimal {
    const char *integer, *fraction; /* the digits before and after the point */
    size_t num_integer, num_fraction;
    long long exponent;
    int negative;
} decimal;

static char digit_at(const decimal *d, size_t i) {
    return i < d->num_integer ? d->integer[i] : d->fraction[i - d->num_integer];
}

/* Whether the number is a whole number in [0, 2^64), found from its digits
 * rather than a double so that every such number is exact. */
static int whole_number(const decimal *d, uint64_t *out) {
    size_t num_digits = d->num_integer + d->num_fraction, first = 0, last = num_digits;
    while (first < num_digits && digit_at(d, first) == '0') first++;
    if (first == num_digits) {
        *out = 0;
        return 1;
    }
    if (d->negative) return 0;
    while (digit_at(d, last - 1) == '0') last--;
    /* The value is digits [first, last) times 10^scale. */
    long long scale = d->exponent - (long long)d->num_fraction + (long long)(num_digits - last);
    if (scale < 0) return 0;
    if ((long long)(last - first) + scale > 20) return 0; /* at least 10^20 */
    uint64_t value = 0;
    for (size_t i = first; i < last; i++) {
        unsigned digit = (unsigned)(digit_at(d, i) - '0');
        if (value > (UINT64_MAX - digit) / 10) return 0;
        value = value * 10 + digit;
    }
    for (long long i = 0; i < scale; i++) {
        if (value > UINT64_MAX / 10) return 0;
        value *= 10;
    }
    *out = value;
    return 1;
}

static int parse_number(parser *p, json_value *number) {
    const char *at = p->at, *end = p->end;
    decimal d = {0};
    if (at < end && *at == '-') {
        d.negative = 1;
        at++;
    }
    d.integer = at;
    if (at < end && *at == '0')
        at++;
    else if (is_digit(at, end))
        while (is_digit(at, end)) at++;
    else
        return fail(p, p->at, "a '-' without digits after it");
    d.num_integer = (size_t)(at - d.integer);
    if (at < end && *at == '.') {
        d.fraction = ++at;
        while (is_digit(at, end)) at++;
        if (at == d.fraction) return fail(p, at, "a number without digits after its '.'");
        d.num_fraction = (size_t)(at - d.fraction);
    }
    if (at < end && (*at == 'e' || *at == 'E')) {
        at++;
        int exponent_negative = at < end && *at == '-';
        if (at < end && (*at == '-' || *at == '+')) at++;
        if (!is_digit(at, end)) return fail(p, at, "a number without digits in its exponent");
        /* Beyond a billion every answer is the same: zero, a fraction or too large. */
        for (; is_digit(at, end); at++)
            if (d.exponent < 1000000000) d.exponent = d.exponent * 10 + (*at - '0');
        if (exponent_negative) d.exponent = -d.exponent;
    }
    number->type = JSON_NUMBER;
    number->is_count = whole_number(&d, &number->count);
    p->at = at;
    return 0;
}

/* ---- values --------------------------------------------------------------- */

static int parse_value(parser *p, json_value *value, int depth);

static void append(json_value *parent, json_value **last, json_value *child) {
    if (*last)
        (*last)->next = child;
    else
        parent->first_child = child;
    *last = child;
    parent->num_children++;
}

/* Consumes the opening character of an array or object: 1 when an element
 * follows, 0 when `close` ends it at once. */
static int first_element(parser *p, char close) {
    p->at++;
    skip_whitespace(p);
    if (!next_is(p, close)) return 1;
    p->at++;
    return 0;
}

/* After an element: 1 on a comma (another follows), 0 on `close`, else -1. */
static int next_element(parser *p, char close, const char *expected) {
    skip_whitespace(p);
    if (next_is(p, ',') || next_is(p, close)) return *p->at++ == ',';
    return fail(p, p->at, expected);
}

static int parse_array(parser *p, json_value *array, int depth) {
    array->type = JSON_ARRAY;
    json_value *last = NULL;
    int more = first_element(p, ']');
    for (; more > 0; more = next_element(p, ']', "expected ',' or ']' after an array element")) {
        json_value *element = new_value(p);
        if (!element || parse_value(p, element, depth)) return -1;
        append(array, &last, element);
    }
    return more;
}

static int parse_object(parser *p, json_value *object, int depth) {
    object->type = JSON_OBJECT;
    json_value *last = NULL;
    int more = first_element(p, '}');
    for (; more > 0; more = next_element(p, '}', "expected ',' or '}' after an object member")) {
        skip_whitespace(p);
        if (!next_is(p, '"')) return fail(p, p->at, "expected a member name in double quotes");
        const char *name;
        if (parse_string(p, &name)) return -1;
        skip_whitespace(p);
        if (!next_is(p, ':')) return fail(p, p->at, "expected ':' after a member name");
        p->at++;
        json_value *member = new_value(p);
        if (!member || parse_value(p, member, depth)) return -1;
        member->name = name;
        append(object, &last, member);
    }
    return more;
}

static int parse_literal(parser *p, const char *word, json_value *value, json_type type,
                         int boolean) {
    size_t length = strlen(word);
    if ((size_t)(p->end - p->at) < length || memcmp(p->at, word, length) != 0)
        return fail(p, p->at, "expected a value");
    value->type = type;
    value->boolean = boolean;
    p->at += length;
    return 0;
}

_Static_assert(JSON_MAX_DEPTH == 64 && JSON_MAX_TEXT_BYTES == (size_t)1 << 30,
               "the messages name the limits");

/* depth: how many arrays and objects enclose the value. */
static int parse_value(parser *p, json_value *value, int depth) {
    skip_whitespace(p);
    if (p->at >= p->end) return fail(p, p->at, "the text ends where a value should be");
    switch (*p->at) {
    case '{':
    case '[':
        if (depth >= JSON_MAX_DEPTH)
            return fail(p, p->at, "arrays and objects nested more than 64 deep");
        return *p->at == '{' ? parse_object(p, value, depth + 1) : parse_array(p, value, depth + 1);
    case '"':
        value->type = JSON_STRING;
        return parse_string(p, &value->string);
    case 't': return parse_literal(p, "true", value, JSON_BOOL, 1);
    case 'f': return parse_literal(p, "false", value, JSON_BOOL, 0);
    case 'n': return parse_literal(p, "null", value, JSON_NULL, 0);
    default:
        if (*p->at == '-' || is_digit(p->at, p->end)) return parse_number(p, value);
        return fail(p, p->at, "expected a value");
    }
}

json_result json_parse(const char *text, size_t size, json_document *doc, size_t *error_offset,
                       const char **error_reason) {
    memset(doc, 0, sizeof(*doc));
    parser p = {.text = text, .at = text, .end = text + size, .doc = doc,
                .next_block_bytes = FIRST_BLOCK_BYTES};
    json_value *root = NULL;
    int failed;
    if (size > JSON_MAX_TEXT_BYTES)
        failed = fail(&p, text, "a text longer than 1 GiB");
    else
        failed = !(root = new_value(&p)) || parse_value(&p, root, 0);
    if (!failed) {
        skip_whitespace(&p);
        if (p.at < p.end) failed = fail(&p, p.at, "text after the JSON value");
    }
    if (!failed) {
        doc->root = root;
        return JSON_OK;
    }
    json_free(doc);
    if (p.out_of_memory) return JSON_OUT_OF_MEMORY;
    if (error_offset) *error_offset = (size_t)(p.error_at - text);
    if (error_reason) *error_reason = p.error_reason;
    return JSON_BAD_TEXT;
}

void json_free(json_document *doc) {
    struct json_block *block = doc->blocks;
    while (block) {
        struct json_block *next = block->next;
        free(block);
        block = next;
    }
    memset(doc, 0, sizeof(*doc));
}
