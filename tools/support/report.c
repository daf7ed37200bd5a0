/* report.c - JSON run reports with cJSON (see report.h). */
#define _POSIX_C_SOURCE 200809L
#include "report.h"
#include "cli.h"
#include "temp_path.h"

#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct report {
    cJSON *root;
};

report *report_create(const char *tool)
{
    report *r = calloc(1, sizeof *r);
    if (!r)
        return NULL;
    r->root = cJSON_CreateObject();
    if (!r->root) {
        free(r);
        return NULL;
    }
    cJSON_AddStringToObject(r->root, "tool", tool);
    cJSON_AddStringToObject(r->root, "version", FPDM_VERSION);
    return r;
}

void report_free(report *r)
{
    if (!r)
        return;
    cJSON_Delete(r->root);
    free(r);
}

static cJSON *section_object(report *r, const char *section)
{
    if (!section)
        return r->root;
    cJSON *object = cJSON_GetObjectItemCaseSensitive(r->root, section);
    if (!object)
        object = cJSON_AddObjectToObject(r->root, section);
    return object;
}

/* Replaces any earlier value, so setting a key twice keeps the last one. */
static void set_item(report *r, const char *section, const char *key, cJSON *item)
{
    cJSON *object = section_object(r, section);
    if (!object || !item) {
        cJSON_Delete(item);
        return;
    }
    if (cJSON_GetObjectItemCaseSensitive(object, key))
        cJSON_ReplaceItemInObjectCaseSensitive(object, key, item);
    else
        cJSON_AddItemToObject(object, key, item);
}

void report_set_string(report *r, const char *section, const char *key, const char *value)
{
    set_item(r, section, key, value ? cJSON_CreateString(value) : cJSON_CreateNull());
}

void report_set_number(report *r, const char *section, const char *key, double value)
{
    set_item(r, section, key, cJSON_CreateNumber(value));
}

void report_set_uint64(report *r, const char *section, const char *key, uint64_t value)
{
    char digits[24];
    snprintf(digits, sizeof digits, "%llu", (unsigned long long)value);
    set_item(r, section, key, cJSON_CreateRaw(digits));
}

void report_set_context(report *r, const char *section, const fpdm_context *ctx)
{
    report_set_string(r, section, "device", fpdm_context_device_name(ctx));
    report_set_string(r, section, "precision", cli_precision_name(fpdm_context_precision(ctx)));
    report_set_number(r, section, "threads", fpdm_context_num_threads(ctx));
}

void report_set_bool(report *r, const char *section, const char *key, int value)
{
    set_item(r, section, key, cJSON_CreateBool(value));
}

void report_set_int_array(report *r, const char *section, const char *key, const int *values,
                          int count)
{
    set_item(r, section, key, cJSON_CreateIntArray(values, count));
}

void report_set_sample(report *r, const fpdm_sample_report *run, int num_images)
{
    cJSON *steps = cJSON_CreateArray();
    for (int i = 0; steps && i < run->num_steps; i++) {
        const fpdm_step_report *step = &run->steps[i];
        cJSON *entry = cJSON_CreateObject();
        if (!entry)
            break;
        cJSON_AddNumberToObject(entry, "step", i);
        cJSON_AddNumberToObject(entry, "timestep", step->timestep);
        cJSON_AddNumberToObject(entry, "iters_planned", step->iters_planned);
        cJSON_AddNumberToObject(entry, "iters_used", step->iters_used);
        if (step->residual >= 0)
            cJSON_AddNumberToObject(entry, "residual", step->residual);
        else
            cJSON_AddNullToObject(entry, "residual");
        cJSON_AddItemToArray(steps, entry);
    }
    set_item(r, NULL, "steps", steps);
    report_set_number(r, "totals", "images", num_images);
    report_set_number(r, "totals", "seconds", run->seconds);
    report_set_number(r, "totals", "images_per_second",
                      run->seconds > 0 ? num_images / run->seconds : 0);
    report_set_number(r, "totals", "model_evaluations", (double)run->model_evaluations);
    report_set_number(r, "totals", "fixed_point_iterations",
                      (double)run->fixed_point_iterations);
    report_set_number(r, "totals", "batches", run->num_batches);
}

void report_add_row(report *r, const char *array, const report_field *fields, int count)
{
    cJSON *rows = cJSON_GetObjectItemCaseSensitive(r->root, array);
    if (!rows)
        rows = cJSON_AddArrayToObject(r->root, array);
    cJSON *row = cJSON_CreateObject();
    if (!rows || !row) {
        cJSON_Delete(row);
        return;
    }
    for (int i = 0; i < count; i++) {
        if (fields[i].text)
            cJSON_AddStringToObject(row, fields[i].key, fields[i].text);
        else
            cJSON_AddNumberToObject(row, fields[i].key, fields[i].number);
    }
    cJSON_AddItemToArray(rows, row);
}

char *report_to_string(const report *r)
{
    char *printed = cJSON_Print(r->root);
    if (!printed)
        return NULL;
    char *copy = strdup(printed);
    cJSON_free(printed);
    return copy;
}

int report_write(const report *r, const char *path, char *err, size_t err_size)
{
    char *text = report_to_string(r);
    if (!text) {
        snprintf(err, err_size, "%s: out of memory while formatting the report", path);
        return -1;
    }
    temp_file out;
    int rc = temp_file_create(&out, path, err, err_size);
    if (rc == 0) {
        temp_file_write(&out, text, strlen(text));
        temp_file_write(&out, "\n", 1);
        rc = temp_file_commit(&out, path, err, err_size);
    }
    free(text);
    return rc;
}
