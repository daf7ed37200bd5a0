/* report.h - the JSON run reports of fpdm-sample (--report) and fpdm-bench
 * (--json), built with cJSON.
 *
 * A report is one JSON object. Values go at the top level (section NULL) or
 * into a named sub-object ("settings", "totals"), created on first use;
 * fpdm-bench appends one object per measurement to a named array. */
#ifndef FPDM_REPORT_H
#define FPDM_REPORT_H

#include <stddef.h>
#include <stdint.h>

#include "fpdm.h"

typedef struct report report;

/* NULL if memory ran out. "tool" and "version" are set from the arguments. */
report *report_create(const char *tool);
void report_free(report *r);

void report_set_string(report *r, const char *section, const char *key, const char *value);
void report_set_number(report *r, const char *section, const char *key, double value);
/* An integer written digit for digit (a double holds only 53 bits: seeds). */
void report_set_uint64(report *r, const char *section, const char *key, uint64_t value);
void report_set_bool(report *r, const char *section, const char *key, int value);
/* The device, precision and CPU threads the context resolved. */
void report_set_context(report *r, const char *section, const fpdm_context *ctx);
void report_set_int_array(report *r, const char *section, const char *key, const int *values,
                          int count);

/* "steps": one object per sampling step (timestep, iters_planned, iters_used
 * summed over the batches, residual or null when not measured) and "totals"
 * (images, seconds, images_per_second, model_evaluations,
 * fixed_point_iterations, batches: what the sums are over). */
void report_set_sample(report *r, const fpdm_sample_report *run, int num_images);

typedef struct report_field {
    const char *key;
    const char *text;         /* a string field when not NULL */
    double number;            /* otherwise this number */
} report_field;

/* Appends {fields...} to the top-level array `array` (created on first use). */
void report_add_row(report *r, const char *array, const report_field *fields, int count);

/* The report as indented JSON text (malloc'd; free with free()), or NULL. */
char *report_to_string(const report *r);

/* Writes the report to path through a temporary file renamed into place, so
 * readers never see half a report. 0, or -1 with a message. */
int report_write(const report *r, const char *path, char *err, size_t err_size);

#endif
