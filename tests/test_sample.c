/* test_sample.c - the public fpdm_sample on the CPU against every golden run
 * tests/golden/sample-<case>.safetensors (the official sampling loop in
 * float64, tools/reference_sampling.py via tests/golden/make_sampling_golden.py):
 * the same labels, initial noise, step noise and iteration plan must give the
 * same final latents within relative L2 1e-4; with the plan, the report must
 * list it, and one image per network batch must give the same result.
 * Run: ctest -R test_sample (from the build folder's ctest). */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fpdm.h"
#include "safetensors.h"
#include "test_util.h"

#define GOLDEN_DIR "tests/golden"
#define TOLERANCE 1e-4

static int metadata_true(const safetensors_file *file, const char *key) {
    const char *v = safetensors_metadata(file, key);
    return v && strcmp(v, "true") == 0;
}

static double metadata_double(const safetensors_file *file, const char *key) {
    const char *v = safetensors_metadata(file, key);
    return v ? atof(v) : 0.0;
}

static void run_case(fpdm_context *ctx, const char *path) {
    safetensors_file file;
    char err[512];
    if (safetensors_open(path, &file, err, sizeof err) != 0) {
        CHECK_MSG(0, "%s", err);
        return;
    }
    const char *model_name = safetensors_metadata(&file, "model");
    const char *sampler = safetensors_metadata(&file, "sampler");
    int steps = golden_int(&file, "steps", 0);
    char model_path[512];
    snprintf(model_path, sizeof model_path, "%s/%s", GOLDEN_DIR, model_name ? model_name : "?");
    fpdm_model *model = NULL;
    size_t num_labels = 0, num_latents = 0, num_plan = 0;
    float *labels_f = golden_tensor(&file, "labels", &num_labels);
    float *init_noise = golden_tensor(&file, "init_noise", NULL);
    float *step_noise = golden_tensor(&file, "step_noise", NULL);
    float *expected = golden_tensor(&file, "latents", &num_latents);
    float *plan_f = safetensors_find(&file, "iters_plan") ? golden_tensor(&file, "iters_plan", &num_plan)
                                                         : NULL;
    int *labels = NULL, *plan = NULL;
    float *latents = NULL;
    if (!labels_f || !init_noise || !step_noise || !expected || !sampler || steps < 1) {
        CHECK_MSG(0, "%s: incomplete golden file", path);
        goto done;
    }
    if (fpdm_model_load(ctx, model_path, &model) != FPDM_OK) {
        CHECK_MSG(0, "%s: %s", model_path, fpdm_last_error(ctx));
        goto done;
    }
    int n = (int)num_labels;
    labels = malloc((size_t)n * sizeof(int));
    for (int i = 0; i < n; i++) labels[i] = (int)labels_f[i];
    if (plan_f) {
        CHECK_MSG((int)num_plan == steps, "%s: plan of %zu entries for %d steps", path, num_plan,
                  steps);
        plan = malloc((size_t)steps * sizeof(int));
        for (int k = 0; k < steps; k++) plan[k] = (int)plan_f[k];
    }
    CHECK(fpdm_sample_output_size(model, n) == num_latents);
    latents = malloc(num_latents * sizeof(float));

    fpdm_sample_params params = fpdm_sample_default_params(model);
    params.num_steps = steps;
    params.sampler = strcmp(sampler, "ddim") == 0 ? FPDM_SAMPLER_DDIM : FPDM_SAMPLER_DDPM;
    params.ddim_eta = (float)metadata_double(&file, "eta");
    params.cfg_scale = (float)metadata_double(&file, "cfg_scale");
    params.cfg_all_channels = metadata_true(&file, "cfg_all_channels");
    params.reuse = metadata_true(&file, "reuse");
    params.iters_per_step = plan;
    params.init_noise = init_noise;
    params.step_noise = step_noise;
    params.batch_size = 0;

    const char *name = strrchr(path, '/') ? strrchr(path, '/') + 1 : path;
    fpdm_sample_report report;
    memset(&report, 0, sizeof report);
    if (fpdm_sample(ctx, model, &params, n, labels, latents, &report) != FPDM_OK) {
        CHECK_MSG(0, "%s: fpdm_sample failed: %s", name, fpdm_last_error(ctx));
        goto done;
    }
    check_close(name, latents, expected, num_latents, TOLERANCE);
    CHECK(report.num_steps == steps);
    for (int k = 0; plan && report.steps && k < steps; k++)
        CHECK_MSG(report.steps[k].iters_planned == plan[k], "%s: step %d planned %d, expected %d",
                  name, k, report.steps[k].iters_planned, plan[k]);
    for (int k = 1; report.steps && k < steps; k++)
        CHECK_MSG(report.steps[k].timestep < report.steps[k - 1].timestep,
                  "%s: timesteps do not decrease at step %d", name, k);
    fpdm_sample_report_free(&report);

    /* One image per network batch: the external noise is per image, so the
     * result must not change. */
    if (n > 1) {
        params.batch_size = 1;
        if (fpdm_sample(ctx, model, &params, n, labels, latents, NULL) != FPDM_OK) {
            CHECK_MSG(0, "%s: fpdm_sample (batch 1) failed: %s", name, fpdm_last_error(ctx));
        } else {
            char what[600];
            snprintf(what, sizeof what, "%s, batch 1", name);
            check_close(what, latents, expected, num_latents, TOLERANCE);
        }
    }
done:
    fpdm_model_free(model);
    free(labels_f);
    free(init_noise);
    free(step_noise);
    free(expected);
    free(plan_f);
    free(labels);
    free(plan);
    free(latents);
    safetensors_close(&file);
}

static int is_case_file(const char *name) {
    size_t len = strlen(name);
    const char *suffix = ".safetensors";
    return strncmp(name, "sample-", 7) == 0 && strncmp(name, "sample-model-", 13) != 0 &&
           len > strlen(suffix) && strcmp(name + len - strlen(suffix), suffix) == 0;
}

static int compare_names(const void *a, const void *b) {
    return strcmp(*(char *const *)a, *(char *const *)b);
}

int main(void) {
    DIR *dir = opendir(GOLDEN_DIR);
    if (!dir) {
        fprintf(stderr, "cannot open %s (run from the repository root)\n", GOLDEN_DIR);
        return 1;
    }
    char *names[256];
    int count = 0;
    for (struct dirent *entry; (entry = readdir(dir)) != NULL && count < 256;)
        if (is_case_file(entry->d_name)) names[count++] = strdup(entry->d_name);
    closedir(dir);
    qsort(names, (size_t)count, sizeof names[0], compare_names);
    CHECK_MSG(count >= 10, "only %d golden sampling runs in %s", count, GOLDEN_DIR);

    fpdm_context_params cp = fpdm_context_default_params();
    cp.device = "cpu";
    fpdm_context *ctx = NULL;
    if (fpdm_context_create(&cp, &ctx) != FPDM_OK) {
        fprintf(stderr, "context: %s\n", ctx ? fpdm_last_error(ctx) : "out of memory");
        fpdm_context_free(ctx);
        return 1;
    }
    for (int i = 0; i < count; i++) {
        char path[512];
        snprintf(path, sizeof path, "%s/%s", GOLDEN_DIR, names[i]);
        run_case(ctx, path);
        free(names[i]);
    }
    fpdm_context_free(ctx);
    return test_finish("test_sample");
}
