/* decimal.h - plain decimals ("4", "2.5", "0.3333333333333333") read from
 * model metadata into the nearest double, whatever the caller's locale.
 *
 * strtod reads the decimal point of the program's LC_NUMERIC locale: in a
 * program that called setlocale(LC_ALL, "") under de_DE, "0.18215" stops at
 * the '.' and is refused. Metadata is written by Python, which always uses
 * '.', so the library reads it itself. Tested through test_model_config's
 * mlp_ratio cases and test_vae's scaling factor. */
#ifndef FPDM_DECIMAL_H
#define FPDM_DECIMAL_H

/* Python writes a float's shortest round-trip digits, up to 17 significant. */
#define DECIMAL_MAX_SIGNIFICANT_DIGITS 17
/* 5^27 < 2^63, so decimal_parse's doubled remainder fits in 64 bits. */
#define DECIMAL_MAX_FRACTION_DIGITS 27

/* Digits with at most one '.', nothing else (no sign, exponent or spaces),
 * within the two limits above: 1 and *out set to the nearest double (the
 * one Python's float() gives), else 0. */
int decimal_parse(const char *text, double *out);

#endif
