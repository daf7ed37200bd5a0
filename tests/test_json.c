/* test_json.c - the JSON reader of model headers (host/json.h): every kind
 * of value, whole numbers however written (exact to 2^64 - 1), escapes to
 * UTF-8, each way text can be bad with the byte and reason given, the length
 * and depth limits, documents spanning many memory blocks, every prefix of a
 * valid text refused, and two threads parsing at once (test.sh runs this
 * test under ThreadSanitizer too). Running out of memory is walked by
 * test_out_of_memory, through model loads.
 * Run: ctest -R test_json (from the build folder's ctest). */
#define _DEFAULT_SOURCE /* MAP_ANONYMOUS, MAP_NORESERVE */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "json.h"
#include "test_util.h"

static const json_value *parse_ok(const char *text, json_document *doc) {
    size_t offset = 0;
    const char *reason = NULL;
    json_result result = json_parse(text, strlen(text), doc, &offset, &reason);
    CHECK_MSG(result == JSON_OK, "%s: result %d, byte %zu: %s", text, (int)result, offset,
              reason ? reason : "");
    return doc->root;
}

static const json_value *child(const json_value *parent, int index) {
    const json_value *value = parent ? parent->first_child : NULL;
    for (int i = 0; value && i < index; i++) value = value->next;
    return value;
}

static void test_values(void) {
    json_document doc;
    const json_value *root =
        parse_ok(" {\"list\": [1, true, false, null, \"s\", [], {}], \"empty\" : {} }\r\n", &doc);
    CHECK(root && root->type == JSON_OBJECT && root->num_children == 2 && root->name == NULL);
    const json_value *list = child(root, 0), *empty = child(root, 1);
    CHECK(list && list->type == JSON_ARRAY && strcmp(list->name, "list") == 0);
    CHECK(list && list->num_children == 7);
    CHECK(empty && empty->type == JSON_OBJECT && empty->num_children == 0 &&
          strcmp(empty->name, "empty") == 0 && empty->next == NULL);
    const json_value *one = child(list, 0), *yes = child(list, 1), *no = child(list, 2),
                     *nothing = child(list, 3), *text = child(list, 4), *array = child(list, 5),
                     *object = child(list, 6);
    CHECK(one && one->type == JSON_NUMBER && one->is_count && one->count == 1 && !one->name);
    CHECK(yes && yes->type == JSON_BOOL && yes->boolean == 1);
    CHECK(no && no->type == JSON_BOOL && no->boolean == 0);
    CHECK(nothing && nothing->type == JSON_NULL);
    CHECK(text && text->type == JSON_STRING && strcmp(text->string, "s") == 0);
    CHECK(array && array->type == JSON_ARRAY && array->num_children == 0 && !array->first_child);
    CHECK(object && object->type == JSON_OBJECT && object->num_children == 0 &&
          object->next == NULL);
    json_free(&doc);
    CHECK(doc.root == NULL && doc.blocks == NULL);

    /* Repeated names stay, in order: the caller decides what they mean. */
    root = parse_ok("{\"k\":1,\"k\":2}", &doc);
    CHECK(root && root->num_children == 2 && child(root, 1) && child(root, 1)->count == 2 &&
          strcmp(child(root, 1)->name, "k") == 0);
    json_free(&doc);

    root = parse_ok("7", &doc);
    CHECK(root && root->type == JSON_NUMBER && root->count == 7);
    json_free(&doc);

    /* The size ends the text, whatever follows it. */
    CHECK(json_parse("[1]x", 3, &doc, NULL, NULL) == JSON_OK && doc.root &&
          doc.root->num_children == 1);
    json_free(&doc);
}

static void test_numbers(void) {
    static const struct {
        const char *text;
        int is_count;
        uint64_t count;
    } cases[] = {
        {"0", 1, 0},
        {"-0", 1, 0},
        {"-0.0e7", 1, 0},
        {"0e999999999999999999999", 1, 0},
        {"12", 1, 12},
        {"12.0", 1, 12},
        {"1.2e1", 1, 12},
        {"1.2E+1", 1, 12},
        {"1200e-2", 1, 12},
        {"0.000120e5", 1, 12},
        {"9007199254740993", 1, 9007199254740993ull}, /* a double would say ...992 */
        {"18446744073709551615", 1, UINT64_MAX},
        {"1.8446744073709551615e19", 1, UINT64_MAX},
        {"10000000000000000000", 1, 10000000000000000000ull},
        {"1e19", 1, 10000000000000000000ull},
        {"18446744073709551616", 0, 0},
        {"1e20", 0, 0},
        {"1e999999999999999999999", 0, 0},
        {"1e300", 0, 0},
        {"0.5", 0, 0},
        {"1.25e1", 0, 0},
        {"12e-1", 0, 0},
        {"1e-999999999999999999", 0, 0},
        {"-1", 0, 0},
        {"-12e0", 0, 0},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_document doc;
        const json_value *number = parse_ok(cases[i].text, &doc);
        CHECK_MSG(number && number->type == JSON_NUMBER && number->is_count == cases[i].is_count &&
                      (!cases[i].is_count || number->count == cases[i].count),
                  "%s: is_count %d, count %llu", cases[i].text, number ? number->is_count : -1,
                  number ? (unsigned long long)number->count : 0ull);
        json_free(&doc);
    }
}

static void test_strings(void) {
    static const struct {
        const char *text, *decoded;
    } cases[] = {
        {"\"\"", ""},
        {"\"plain\"", "plain"},
        {"\"\\\"\\\\\\/\\b\\f\\n\\r\\t\"", "\"\\/\b\f\n\r\t"},
        {"\"\\u0041\\u00e9\\u20AC\"", "A\xc3\xa9\xe2\x82\xac"},
        {"\"\\ud83d\\ude00!\"", "\xf0\x9f\x98\x80!"},
        {"\"\\uDBFF\\uDFFF\"", "\xf4\x8f\xbf\xbf"},
        {"\"caf\xc3\xa9\"", "caf\xc3\xa9"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        json_document doc;
        const json_value *string = parse_ok(cases[i].text, &doc);
        CHECK_MSG(string && string->type == JSON_STRING &&
                      strcmp(string->string, cases[i].decoded) == 0,
                  "%s decoded to \"%s\"", cases[i].text, string ? string->string : "(none)");
        json_free(&doc);
    }
}

static void expect_bad(const char *text, size_t size, size_t offset, const char *reason) {
    json_document doc;
    size_t got_offset = (size_t)-1;
    const char *got_reason = NULL;
    json_result result = json_parse(text, size, &doc, &got_offset, &got_reason);
    CHECK_MSG(result == JSON_BAD_TEXT && got_offset == offset && got_reason &&
                  strstr(got_reason, reason) != NULL,
              "%.*s: result %d, byte %zu (expected %zu), reason \"%s\" (expected \"%s\")",
              (int)size, text, (int)result, got_offset, offset, got_reason ? got_reason : "",
              reason);
    CHECK(doc.root == NULL && doc.blocks == NULL);
    json_free(&doc);
}

static void test_bad_text(void) {
    static const struct {
        const char *text;
        size_t offset;
        const char *reason;
    } cases[] = {
        {"", 0, "ends where a value should be"},
        {"   ", 3, "ends where a value should be"},
        {"[", 1, "ends where a value should be"},
        {"[1", 2, "expected ',' or ']'"},
        {"[1 2]", 3, "expected ',' or ']'"},
        {"[1,]", 3, "expected a value"},
        {"[,1]", 1, "expected a value"},
        {"{", 1, "member name in double quotes"},
        {"{\"a\" 1}", 5, "expected ':'"},
        {"{\"a\":1,}", 7, "member name in double quotes"},
        {"{\"a\":1 \"b\":2}", 7, "expected ',' or '}'"},
        {"{a:1}", 1, "member name in double quotes"},
        {"{\"a\":}", 5, "expected a value"},
        {"{} x", 3, "text after the JSON value"},
        {"{}{}", 2, "text after the JSON value"},
        {"01", 1, "text after the JSON value"},
        {"+1", 0, "expected a value"},
        {".5", 0, "expected a value"},
        {"-", 0, "'-' without digits"},
        {"-a", 0, "'-' without digits"},
        {"1.", 2, "without digits after its '.'"},
        {"1.e3", 2, "without digits after its '.'"},
        {"1e", 2, "without digits in its exponent"},
        {"1e+", 3, "without digits in its exponent"},
        {"tru", 0, "expected a value"},
        {"nul", 0, "expected a value"},
        {"True", 0, "expected a value"},
        {"\"abc", 0, "without its closing quote"},
        {"\"abc\\\"", 0, "without its closing quote"},
        {"\"a\nb\"", 2, "control character"},
        {"\"a\tb\"", 2, "control character"},
        {"\"\\x\"", 1, "unknown escape"},
        {"\"\\u12\"", 1, "four hex digits"},
        {"\"\\u12g4\"", 1, "four hex digits"},
        {"\"ab\\ud800\"", 3, "unpaired surrogate"},
        {"\"\\udc00\"", 1, "unpaired surrogate"},
        {"\"\\ud800\\u0041\"", 1, "unpaired surrogate"},
        {"\"\\ud800\\n\"", 1, "unpaired surrogate"},
        {"\"\\u0000\"", 1, "\\u0000"},
        {"{\"\\u0000\":1}", 2, "\\u0000"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
        expect_bad(cases[i].text, strlen(cases[i].text), cases[i].offset, cases[i].reason);

    /* The length, not a NUL, ends the text; a NUL inside it is a bad byte. */
    expect_bad("[1,\0]", 5, 3, "expected a value");
    expect_bad("\"a\0\"", 4, 2, "control character");
}

/* Every proper prefix of a valid text is refused, never read past. */
static void test_prefixes(void) {
    const char *text = "{\"__metadata__\":{\"format\":\"pt\"},\"w\":{\"dtype\":\"F32\","
                       "\"shape\":[2,3],\"data_offsets\":[0,24]},\"s\":\"\\u00e9\\ud83d\\ude00\","
                       "\"n\":[-1.5e-3,true,false,null]}";
    size_t length = strlen(text);
    for (size_t n = 0; n < length; n++) {
        char *copy = malloc(n ? n : 1); /* exactly n bytes: ASan sees any read past them */
        memcpy(copy, text, n);
        json_document doc;
        size_t offset = (size_t)-1;
        json_result result = json_parse(copy, n, &doc, &offset, NULL);
        CHECK_MSG(result == JSON_BAD_TEXT && offset <= n,
                  "prefix of %zu bytes: result %d, byte %zu", n, (int)result, offset);
        free(copy);
    }
    json_document doc;
    CHECK(parse_ok(text, &doc) != NULL);
    json_free(&doc);
}

static char *nested(int depth) {
    char *text = malloc((size_t)depth * 2 + 1);
    for (int i = 0; i < depth; i++) {
        text[i] = '[';
        text[depth + i] = ']';
    }
    text[2 * depth] = '\0';
    return text;
}

/* A text over JSON_MAX_TEXT_BYTES is refused unread: it lies in a reserved
 * (never touched, so never backed) mapping of zero pages. */
static void test_length_limit(void) {
    size_t size = JSON_MAX_TEXT_BYTES + 1;
    void *text = mmap(NULL, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(text != MAP_FAILED);
    if (text == MAP_FAILED) return;
    expect_bad(text, size, 0, "longer than 1 GiB");
    munmap(text, size);
}

static void test_depth(void) {
    char *deepest = nested(JSON_MAX_DEPTH), *too_deep = nested(JSON_MAX_DEPTH + 1);
    json_document doc;
    const json_value *value = parse_ok(deepest, &doc);
    int depth = 0;
    for (; value && value->type == JSON_ARRAY; value = value->first_child) depth++;
    CHECK(depth == JSON_MAX_DEPTH);
    json_free(&doc);
    expect_bad(too_deep, strlen(too_deep), JSON_MAX_DEPTH, "nested more than 64 deep");
    free(deepest);
    free(too_deep);

    /* A million opening brackets stop at the limit, not at the stack's end. */
    size_t many = 1000000;
    char *brackets = malloc(many);
    memset(brackets, '[', many);
    expect_bad(brackets, many, JSON_MAX_DEPTH, "nested more than 64 deep");
    free(brackets);
}

/* Values and strings spread over many memory blocks, one string larger than
 * any block. */
static void test_large(void) {
    const int count = 200000;
    size_t long_string = (size_t)3 << 20;
    size_t size = (size_t)count * 8 + long_string + 16;
    char *text = malloc(size), *at = text;
    at += sprintf(at, "[\"");
    memset(at, 'x', long_string);
    at += long_string;
    at += sprintf(at, "\"");
    for (int i = 0; i < count; i++) at += sprintf(at, ",%d", i);
    at += sprintf(at, "]");
    json_document doc;
    size_t offset = 0;
    CHECK(json_parse(text, (size_t)(at - text), &doc, &offset, NULL) == JSON_OK);
    const json_value *array = doc.root;
    CHECK(array && array->num_children == count + 1);
    const json_value *value = array ? array->first_child : NULL;
    CHECK(value && value->type == JSON_STRING && strlen(value->string) == long_string);
    uint64_t sum = 0;
    int seen = 0;
    for (value = value ? value->next : NULL; value; value = value->next, seen++)
        sum += value->is_count ? value->count : 0;
    CHECK(seen == count && sum == (uint64_t)count * (count - 1) / 2);
    json_free(&doc);
    free(text);
}

/* Two threads parse at once, each a good and a bad text in turn; each gets
 * its own answers and its own errors. */
typedef struct parse_job {
    const char *good, *bad;
    uint64_t count;           /* the good text's first element */
    size_t offset;            /* where the bad text went wrong */
    const char *reason;
    int wrong;                /* rounds with another answer than the first */
} parse_job;

static void *parse_repeatedly(void *argument) {
    parse_job *job = argument;
    for (int round = 0; round < 2000; round++) {
        json_document doc;
        size_t offset = 0;
        const char *reason = NULL;
        int good_ok = json_parse(job->good, strlen(job->good), &doc, NULL, NULL) == JSON_OK;
        uint64_t count = good_ok && doc.root->first_child ? doc.root->first_child->count : 0;
        json_free(&doc);
        int bad_refused = json_parse(job->bad, strlen(job->bad), &doc, &offset, &reason) ==
                          JSON_BAD_TEXT;
        if (round == 0) {
            job->count = count;
            job->offset = offset;
            job->reason = reason;
        }
        job->wrong += !good_ok || !bad_refused || count != job->count || offset != job->offset ||
                      reason != job->reason;
    }
    return NULL;
}

static void test_threads(void) {
    parse_job first = {.good = "[41]", .bad = "[1,,]"};
    parse_job second = {.good = "[7]", .bad = "{\"a\" 1}"};
    pthread_t threads[2];
    CHECK(pthread_create(&threads[0], NULL, parse_repeatedly, &first) == 0);
    CHECK(pthread_create(&threads[1], NULL, parse_repeatedly, &second) == 0);
    pthread_join(threads[0], NULL);
    pthread_join(threads[1], NULL);
    CHECK(first.wrong == 0 && second.wrong == 0);
    CHECK(first.count == 41 && first.offset == 3 && first.reason &&
          strstr(first.reason, "expected a value"));
    CHECK(second.count == 7 && second.offset == 5 && second.reason &&
          strstr(second.reason, "expected ':'"));
}

int main(void) {
    test_values();
    test_numbers();
    test_strings();
    test_bad_text();
    test_prefixes();
    test_length_limit();
    test_depth();
    test_large();
    test_threads();
    return test_finish("test_json");
}
