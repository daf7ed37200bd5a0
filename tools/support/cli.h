/* cli.h - strict parsing of command-line values for the fpdm programs.
 *
 * Every parser takes the flag's name for its message, rejects empty text,
 * trailing garbage, overflow and out-of-range values, and on failure writes
 * "FLAG: what is wrong (allowed: ...)" into err and returns -1. */
#ifndef FPDM_CLI_H
#define FPDM_CLI_H

#include <stddef.h>
#include <stdint.h>

#include "fpdm.h"

/* A decimal integer in [min, max]. */
int cli_parse_int(const char *flag, const char *text, long long min, long long max, int *out,
                  char *err, size_t err_size);

/* A non-negative decimal integer up to 2^64 - 1 (seeds). */
int cli_parse_u64(const char *flag, const char *text, uint64_t *out, char *err, size_t err_size);

/* A finite number in [min, max]. */
int cli_parse_float(const char *flag, const char *text, double min, double max, float *out,
                    char *err, size_t err_size);

/* A comma-separated list of integers in [min, max], at least one. *values is
 * malloc'd (the caller frees it). */
int cli_parse_int_list(const char *flag, const char *text, long long min, long long max,
                       int **values, int *count, char *err, size_t err_size);

/* One of the NULL-terminated choices; *index receives its position. */
int cli_parse_choice(const char *flag, const char *text, const char *const *choices, int *index,
                     char *err, size_t err_size);

/* --precision: fp32 | bf16 | fp16, into *precision. */
int cli_parse_precision(const char *flag, const char *text, fpdm_precision *precision, char *err,
                        size_t err_size);

/* "fp32", "bf16" or "fp16" (a resolved precision, not FPDM_PRECISION_DEFAULT). */
const char *cli_precision_name(fpdm_precision precision);

/* The device a program runs on: the --device value (device_flag, NULL when
 * not given), else $FPDM_DEVICE (unless empty), else "auto". *source
 * receives where it came from, as a message prefix: "--device ",
 * "FPDM_DEVICE=" or, for the default, "device " (so a message never names a
 * flag nobody typed). */
const char *cli_device(const char *device_flag, const char **source);

/* Whether everything printed to stdout reached it: 0, or 1 after printing
 * "PROGRAM: writing standard output failed: ..." (a full disk under
 * `> results.json` would otherwise leave a cut file and exit 0). */
int cli_flush_stdout(const char *program);

/* fpdm_context_create, with the failure printed as "PROGRAM: <source><device>:
 * <why>". Returns 0; 2 (a usage error, followed by a pointer to --help) for
 * arguments no machine takes: a malformed device string, or a 16-bit
 * precision on "cpu"; 1 for what another machine or build could do (no GPU,
 * a build without CUDA, auto falling back to the CPU), a failed device, or
 * no memory. */
int cli_create_context(const char *program, const fpdm_context_params *params,
                       const char *device_source, fpdm_context **ctx);

/* --threads N for the whole program (nothing when N is 0): the library's own
 * loops take the context's num_threads, but OpenBLAS's matrix products take
 * the calling thread's OpenMP setting, which belongs to the program (the
 * library changing it per call raced between contexts). Call before any
 * OpenMP or BLAS work. */
void cli_use_threads(int threads);

/* Splits "--flag=value" style arguments: if arg starts with name followed by
 * '=', returns the text after '='; otherwise NULL. */
const char *cli_inline_value(const char *arg, const char *name);

#endif
