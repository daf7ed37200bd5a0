/* cli.c - strict parsing of command-line values (see cli.h). */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"

#include <errno.h>
#include <float.h>
#include <limits.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char *cli_device(const char *device_flag, const char **source)
{
    const char *from_env = getenv("FPDM_DEVICE");
    if (from_env && !from_env[0])
        from_env = NULL; /* FPDM_DEVICE= unsets it, as shells' empty values usually do */
    *source = device_flag ? "--device " : from_env ? "FPDM_DEVICE=" : "device ";
    return device_flag ? device_flag : from_env ? from_env : "auto";
}

int cli_flush_stdout(const char *program)
{
    errno = 0;
    if (fflush(stdout) == 0 && !ferror(stdout))
        return 0;
    fprintf(stderr, "%s: writing standard output failed: %s\n", program,
            errno ? strerror(errno) : "write error");
    return 1;
}

int cli_create_context(const char *program, const fpdm_context_params *params,
                       const char *device_source, fpdm_context **ctx)
{
    fpdm_status status = fpdm_context_create(params, ctx);
    if (status == FPDM_OK)
        return 0;
    fprintf(stderr, "%s: %s%s: %s\n", program, device_source, params->device,
            *ctx ? fpdm_last_error(*ctx) : "out of memory");
    const int always_wrong = status == FPDM_ERR_INVALID_ARGUMENT ||
                             (status == FPDM_ERR_UNSUPPORTED && strcmp(params->device, "cpu") == 0);
    if (!always_wrong)
        return 1;
    fprintf(stderr, "%s: try '%s --help'\n", program, program);
    return 2;
}

/* Whether text starts as a number is written: a digit, or a '-' and a digit
 * ('.' too for decimals). strtoll and strtod also skip leading whitespace and
 * take '+', which would let " 5" or "cuda: +1" through. */
static int starts_as_number(const char *text, int decimal)
{
    const char *first = text[0] == '-' ? text + 1 : text;
    return (*first >= '0' && *first <= '9') || (decimal && *first == '.');
}

/* "min..max", or "32-bit integers" for a flag whose range is checked later against
 * what it depends on (--class against the model's classes): INT_MIN..INT_MAX
 * would read as a range the flag accepts. */
static const char *allowed_range(char *text, size_t size, long long min, long long max)
{
    if (min == INT_MIN && max == INT_MAX)
        snprintf(text, size, "32-bit integers");
    else
        snprintf(text, size, "%lld..%lld", min, max);
    return text;
}

int cli_parse_int(const char *flag, const char *text, long long min, long long max, int *out,
                  char *err, size_t err_size)
{
    char range[64];
    char *end = NULL;
    errno = 0;
    long long value = strtoll(text, &end, 10);
    if (!starts_as_number(text, 0) || *end != '\0' || end == text) {
        snprintf(err, err_size, "%s: '%s' is not an integer (allowed: %s)", flag, text,
                 allowed_range(range, sizeof range, min, max));
        return -1;
    }
    if (errno == ERANGE || value < min || value > max) {
        snprintf(err, err_size, "%s: %s is out of range (allowed: %s)", flag, text,
                 allowed_range(range, sizeof range, min, max));
        return -1;
    }
    *out = (int)value;
    return 0;
}

int cli_parse_u64(const char *flag, const char *text, uint64_t *out, char *err, size_t err_size)
{
    char *end = NULL;
    errno = 0;
    /* strtoull accepts a leading '-' and wraps it around; seeds must not. */
    if (text[0] < '0' || text[0] > '9') {
        snprintf(err, err_size, "%s: '%s' is not a non-negative integer (allowed: 0..%llu)",
                 flag, text, (unsigned long long)UINT64_MAX);
        return -1;
    }
    unsigned long long value = strtoull(text, &end, 10);
    if (*end != '\0') {
        snprintf(err, err_size, "%s: '%s' is not a non-negative integer (allowed: 0..%llu)",
                 flag, text, (unsigned long long)UINT64_MAX);
        return -1;
    }
    if (errno == ERANGE) {
        snprintf(err, err_size, "%s: %s is out of range (allowed: 0..%llu)", flag, text,
                 (unsigned long long)UINT64_MAX);
        return -1;
    }
    *out = (uint64_t)value;
    return 0;
}

int cli_parse_float(const char *flag, const char *text, double min, double max, float *out,
                    char *err, size_t err_size)
{
    char *end = NULL;
    errno = 0;
    double value = strtod(text, &end);
    int underflow = errno == ERANGE && !isinf(value);
    /* Decimal only: strtod also reads hex ("0x10" is 16) and "inf". */
    if (!starts_as_number(text, 1) || strpbrk(text, "xX") || *end != '\0' || end == text ||
        isnan(value)) {
        snprintf(err, err_size, "%s: '%s' is not a number (allowed: %g..%g)", flag, text, min,
                 max);
        return -1;
    }
    if (isinf((float)value) || value < min || value > max) {
        snprintf(err, err_size, "%s: %s is out of range (allowed: %g..%g)", flag, text, min, max);
        return -1;
    }
    /* A value a float rounds to 0 would change meaning silently (--tol 1e-50
     * would turn early stopping off). */
    if (underflow || (value != 0.0 && (float)value == 0.0f)) {
        snprintf(err, err_size, "%s: %s is too close to 0 for a float (allowed: 0, or a "
                 "magnitude of at least %g)", flag, text, (double)FLT_TRUE_MIN);
        return -1;
    }
    *out = value == 0.0 ? 0.0f : (float)value; /* "-0" is 0 */
    return 0;
}

int cli_parse_int_list(const char *flag, const char *text, long long min, long long max,
                       int **values, int *count, char *err, size_t err_size)
{
    size_t capacity = 1;
    for (const char *c = text; *c; c++)
        capacity += (*c == ',');
    int *parsed = malloc(capacity * sizeof(int));
    char *copy = strdup(text);
    if (!parsed || !copy) {
        free(parsed);
        free(copy);
        snprintf(err, err_size, "%s: out of memory", flag);
        return -1;
    }
    int n = 0;
    char *item = copy;
    for (;;) {
        char *comma = strchr(item, ',');
        if (comma)
            *comma = '\0';
        if (item[0] == '\0') {
            char range[64];
            snprintf(err, err_size, "%s: '%s' has an empty entry (allowed: comma-separated %s)",
                     flag, text, allowed_range(range, sizeof range, min, max));
            goto fail;
        }
        if (cli_parse_int(flag, item, min, max, &parsed[n], err, err_size) != 0)
            goto fail;
        n++;
        if (!comma)
            break;
        item = comma + 1;
    }
    free(copy);
    *values = parsed;
    *count = n;
    return 0;
fail:
    free(copy);
    free(parsed);
    return -1;
}

int cli_parse_choice(const char *flag, const char *text, const char *const *choices, int *index,
                     char *err, size_t err_size)
{
    for (int i = 0; choices[i]; i++) {
        if (strcmp(text, choices[i]) == 0) {
            *index = i;
            return 0;
        }
    }
    size_t used = (size_t)snprintf(err, err_size, "%s: '%s' is not one of", flag, text);
    for (int i = 0; choices[i] && used < err_size; i++)
        used += (size_t)snprintf(err + used, err_size - used, "%s%s", i ? "|" : " ", choices[i]);
    return -1;
}

const char *cli_inline_value(const char *arg, const char *name)
{
    size_t len = strlen(name);
    if (strncmp(arg, name, len) == 0 && arg[len] == '=')
        return arg + len + 1;
    return NULL;
}

void cli_use_threads(int threads)
{
    if (threads > 0)
        omp_set_num_threads(threads);
}

static const char *const precision_names[] = {"fp32", "bf16", "fp16", NULL};
static const fpdm_precision precision_values[] = {FPDM_PRECISION_FP32, FPDM_PRECISION_BF16,
                                                  FPDM_PRECISION_FP16};

int cli_parse_precision(const char *flag, const char *text, fpdm_precision *precision, char *err,
                        size_t err_size)
{
    int index = 0;
    if (cli_parse_choice(flag, text, precision_names, &index, err, err_size) != 0)
        return -1;
    *precision = precision_values[index];
    return 0;
}

const char *cli_precision_name(fpdm_precision precision)
{
    for (int i = 0; precision_names[i]; i++)
        if (precision_values[i] == precision)
            return precision_names[i];
    return "default";
}
