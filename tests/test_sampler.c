/* test_sampler.c - properties of fpdm_sample that golden runs do not cover:
 * early exit (--tol), carry-over, batch-size independence, cancellation,
 * the report, argument checks, that a warmed-up run allocates nothing, that
 * an unconditional model is sampled without guidance, and that latents a
 * model overflows into are refused. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "fpdm.h"
#include "test_util.h"

#define NUM_IMAGES 3
#define STEPS 6

static const char *FPDM_MODEL = "tests/golden/forward-fpdm.model.safetensors";
static const char *DIT_MODEL = "tests/golden/forward-dit-p2.model.safetensors";
static const char *UNCONDITIONAL_MODEL = "tests/golden/forward-fpdm-unconditional.model.safetensors";

typedef struct fixture {
    fpdm_context *ctx;
    fpdm_model *model;
    size_t floats;
} fixture;

static int open_fixture(fixture *f, const char *path) {
    fpdm_context_params cp = fpdm_context_default_params();
    cp.num_threads = 2;
    memset(f, 0, sizeof *f);
    CHECK(fpdm_context_create(&cp, &f->ctx) == FPDM_OK);
    fpdm_status status = fpdm_model_load(f->ctx, path, &f->model);
    CHECK_MSG(status == FPDM_OK, "%s", fpdm_last_error(f->ctx));
    f->floats = fpdm_sample_output_size(f->model, NUM_IMAGES);
    return status == FPDM_OK;
}

static void close_fixture(fixture *f) {
    fpdm_model_free(f->model);
    fpdm_context_free(f->ctx);
}

static const int LABELS[NUM_IMAGES] = {1, 7, 3};

static fpdm_sample_params base_params(const fixture *f) {
    fpdm_sample_params p = fpdm_sample_default_params(f->model);
    p.num_steps = STEPS;
    p.noise_seed = 42;
    p.iters = 5;
    p.cfg_scale = 2.0f;
    return p;
}

static float *sample(fixture *f, const fpdm_sample_params *p, fpdm_sample_report *report) {
    float *out = malloc(f->floats * sizeof(float));
    for (size_t i = 0; i < f->floats; i++) out[i] = NAN;
    fpdm_status status = fpdm_sample(f->ctx, f->model, p, NUM_IMAGES, LABELS, out, report);
    CHECK_MSG(status == FPDM_OK, "%s", fpdm_last_error(f->ctx));
    return out;
}

static void test_tolerance(fixture *f) {
    fpdm_sample_params p = base_params(f);
    fpdm_sample_report fixed_report, zero_report, loose_report;
    float *fixed = sample(f, &p, &fixed_report);
    p.tol = 0.0f;
    float *zero_tol = sample(f, &p, &zero_report);
    CHECK(memcmp(fixed, zero_tol, f->floats * sizeof(float)) == 0);
    CHECK(zero_report.fixed_point_iterations == (long long)STEPS * 5);
    /* Without tol a residual is measured (a device wait per step) only when
     * asked for; asking changes nothing else. */
    for (int k = 0; k < STEPS; k++) CHECK(zero_report.steps[k].residual == -1.0f);
    fpdm_sample_report measured_report;
    p.measure_residuals = 1;
    float *measured = sample(f, &p, &measured_report);
    p.measure_residuals = 0;
    CHECK(memcmp(fixed, measured, f->floats * sizeof(float)) == 0);
    for (int k = 0; k < STEPS; k++) CHECK(measured_report.steps[k].residual > 0);
    free(measured);
    fpdm_sample_report_free(&measured_report);

    /* A loose tolerance stops solves early: fewer iterations, a report that
     * says so, and a different (but close) result. */
    p.tol = 0.5f;
    float *loose = sample(f, &p, &loose_report);
    CHECK_MSG(loose_report.fixed_point_iterations < zero_report.fixed_point_iterations,
              "loose tol used %lld iterations, fixed %lld", loose_report.fixed_point_iterations,
              zero_report.fixed_point_iterations);
    long long summed = 0;
    for (int k = 0; k < STEPS; k++) {
        const fpdm_step_report *s = &loose_report.steps[k];
        CHECK(s->iters_used >= 1 && s->iters_used <= s->iters_planned);
        CHECK(s->residual >= 0);
        if (s->iters_used < s->iters_planned) CHECK(s->residual < 0.5f);
        summed += s->iters_used;
    }
    CHECK(summed == loose_report.fixed_point_iterations);
    CHECK(loose_report.model_evaluations == (long long)STEPS * 2 * NUM_IMAGES);

    /* Carry-over hands the saved iterations to later steps: never fewer in total. */
    fpdm_sample_report carry_report;
    p.carry_over = 1;
    float *carried = sample(f, &p, &carry_report);
    CHECK(carry_report.fixed_point_iterations >= loose_report.fixed_point_iterations);
    CHECK(carry_report.fixed_point_iterations <= (long long)STEPS * 5);

    free(fixed), free(zero_tol), free(loose), free(carried);
    fpdm_sample_report_free(&fixed_report);
    fpdm_sample_report_free(&zero_report);
    fpdm_sample_report_free(&loose_report);
    fpdm_sample_report_free(&carry_report);
}

/* An image depends on its index and the seed, not on how images are batched. */
static void test_batch_independence(fixture *f) {
    fpdm_sample_params p = base_params(f);
    p.reuse = 1;
    p.batch_size = 0;
    fpdm_sample_report together_report, one_by_one_report;
    float *together = sample(f, &p, &together_report);
    p.batch_size = 1;
    float *one_by_one = sample(f, &p, &one_by_one_report);
    check_close("batch 3 vs batch 1", one_by_one, together, f->floats, 1e-6);
    /* The report sums over the batches it counts: each batch runs every
     * planned iteration here. */
    CHECK(together_report.num_batches == 1 && one_by_one_report.num_batches == NUM_IMAGES);
    for (int k = 0; k < STEPS; k++) {
        CHECK(together_report.steps[k].iters_used == together_report.steps[k].iters_planned);
        CHECK(one_by_one_report.steps[k].iters_used ==
              NUM_IMAGES * one_by_one_report.steps[k].iters_planned);
    }
    fpdm_sample_report_free(&together_report);
    fpdm_sample_report_free(&one_by_one_report);

    /* A shard of the last image alone, with first_image_index, matches too. */
    size_t per_image = f->floats / NUM_IMAGES;
    float *shard = malloc(per_image * sizeof(float));
    p.first_image_index = NUM_IMAGES - 1;
    CHECK(fpdm_sample(f->ctx, f->model, &p, 1, &LABELS[NUM_IMAGES - 1], shard, NULL) == FPDM_OK);
    check_close("shard of the last image", shard, together + (NUM_IMAGES - 1) * per_image,
                per_image, 1e-6);

    /* With tol and carry-over each image stops (and carries) on its own
     * residual: the images of a batch stop after different counts here, and
     * each equals its run alone. */
    p.first_image_index = 0;
    p.tol = 0.2f;
    p.carry_over = 1;
    p.batch_size = 0;
    float *early_together = sample(f, &p, NULL);
    p.batch_size = 1;
    float *early_one_by_one = sample(f, &p, NULL);
    check_close("tol + carry-over, batch 3 vs batch 1", early_one_by_one, early_together, f->floats,
                1e-6);
    free(together), free(one_by_one), free(shard), free(early_together), free(early_one_by_one);
}

/* A call refused before it runs leaves the report empty, not as the
 * caller's memory held it, so that freeing it is safe. */
static void test_report_of_refused_call(fixture *f) {
    fpdm_sample_params p = base_params(f);
    const int bad_labels[NUM_IMAGES] = {1, 99, 3};
    float *out = malloc(f->floats * sizeof(float));
    fpdm_sample_report report;
    memset(&report, 0xab, sizeof report);
    CHECK(fpdm_sample(f->ctx, f->model, &p, NUM_IMAGES, bad_labels, out, &report) ==
          FPDM_ERR_INVALID_ARGUMENT);
    CHECK(report.steps == NULL && report.num_steps == 0 && report.num_batches == 0);
    fpdm_sample_report_free(&report);
    free(out);
}

static int cancel_at_three(const fpdm_progress *progress, void *user) {
    int *calls = user;
    (*calls)++;
    return progress->step == 3;
}

static void test_cancel_and_progress(fixture *f) {
    fpdm_sample_params p = base_params(f);
    int calls = 0;
    p.progress_callback = cancel_at_three;
    p.progress_user_data = &calls;
    float *out = malloc(f->floats * sizeof(float));
    fpdm_sample_report report;
    fpdm_status status = fpdm_sample(f->ctx, f->model, &p, NUM_IMAGES, LABELS, out, &report);
    CHECK(status == FPDM_ERR_CANCELLED);
    CHECK(calls == 3);
    CHECK(strstr(fpdm_last_error(f->ctx), "cancelled") != NULL);
    /* The batch did not run to the end: its three steps are in the sums, but
     * it is not counted. */
    CHECK(report.num_batches == 0 && report.steps[2].iters_used > 0 &&
          report.steps[3].iters_used == 0);
    fpdm_sample_report_free(&report);
    free(out);
}

static int cancel_at_last_step(const fpdm_progress *progress, void *user) {
    (void)user;
    return progress->step == progress->num_steps;
}

/* A stop at a batch's last step keeps that batch, which is done: its images
 * are a whole run's, it is counted, and the next batch is not drawn. */
static void test_cancel_at_last_step(fixture *f) {
    fpdm_sample_params p = base_params(f);
    p.batch_size = 2;
    float *whole = malloc(f->floats * sizeof(float));
    float *stopped = malloc(f->floats * sizeof(float));
    CHECK(fpdm_sample(f->ctx, f->model, &p, NUM_IMAGES, LABELS, whole, NULL) == FPDM_OK);
    for (size_t i = 0; i < f->floats; i++) stopped[i] = NAN;
    p.progress_callback = cancel_at_last_step;
    fpdm_sample_report report;
    fpdm_status status = fpdm_sample(f->ctx, f->model, &p, NUM_IMAGES, LABELS, stopped, &report);
    CHECK_MSG(status == FPDM_ERR_CANCELLED && strstr(fpdm_last_error(f->ctx), "batch 1 (its images"),
              "status %d: %s", (int)status, fpdm_last_error(f->ctx));
    CHECK(report.num_batches == 1);
    const size_t kept = f->floats / NUM_IMAGES * 2;
    CHECK_MSG(memcmp(whole, stopped, kept * sizeof(float)) == 0,
              "the kept batch differs from the whole run's");
    size_t untouched = 0;
    for (size_t i = kept; i < f->floats; i++) untouched += isnan(stopped[i]) != 0;
    CHECK_MSG(untouched == f->floats - kept, "%zu of %zu floats of the second batch were written",
              f->floats - kept - untouched, f->floats - kept);
    fpdm_sample_report_free(&report);
    free(whole);
    free(stopped);
}

/* After one run sized the arena, the same run again allocates nothing. */
static void test_no_allocation_after_warmup(fixture *f) {
    fpdm_sample_params p = base_params(f);
    p.reuse = 1;
    float *first = sample(f, &p, NULL);
    float *arena = f->ctx->arena;
    size_t arena_floats = f->ctx->arena_floats;
    void *row_scratch = f->ctx->row_scratch;
    size_t row_scratch_bytes = f->ctx->row_scratch_bytes;
    float *second = sample(f, &p, NULL);
    CHECK(f->ctx->arena == arena && f->ctx->arena_floats == arena_floats);
    CHECK(row_scratch != NULL && f->ctx->row_scratch == row_scratch &&
          f->ctx->row_scratch_bytes == row_scratch_bytes);
    CHECK(memcmp(first, second, f->floats * sizeof(float)) == 0);
    free(first), free(second);
}

static void expect_invalid(fixture *f, const fpdm_sample_params *p, const int *labels,
                           const char *needle) {
    float *out = malloc(f->floats * sizeof(float));
    fpdm_status status = fpdm_sample(f->ctx, f->model, p, NUM_IMAGES, labels, out, NULL);
    CHECK_MSG(status == FPDM_ERR_INVALID_ARGUMENT && strstr(fpdm_last_error(f->ctx), needle),
              "expected an error mentioning \"%s\", got status %d: %s", needle, (int)status,
              fpdm_last_error(f->ctx));
    free(out);
}

static void test_invalid_arguments(fixture *f) {
    fpdm_sample_params p = base_params(f);
    p.num_steps = 0;
    expect_invalid(f, &p, LABELS, "steps");
    p = base_params(f);
    p.num_steps = 1001;
    expect_invalid(f, &p, LABELS, "steps");
    p = base_params(f);
    p.cfg_scale = 0.5f;
    expect_invalid(f, &p, LABELS, "cfg scale");
    p = base_params(f);
    p.tol = -1.0f;
    expect_invalid(f, &p, LABELS, "tol");
    p = base_params(f);
    p.iteration_schedule = FPDM_ITERS_INCREASING;
    p.budget = STEPS - 1;
    expect_invalid(f, &p, LABELS, "budget");
    p = base_params(f);
    p.budget = 100000001;
    expect_invalid(f, &p, LABELS, "a budget of 100000001 iterations is more than the 100000000");
    /* Bounds that keep a step short enough to cancel and the updates finite. */
    p = base_params(f);
    p.iters = FPDM_MAX_ITERS + 1;
    expect_invalid(f, &p, LABELS, "iters must be in 0..100000");
    p = base_params(f);
    int too_many[STEPS] = {0};
    too_many[STEPS - 1] = FPDM_MAX_ITERS + 1;
    p.iters_per_step = too_many;
    expect_invalid(f, &p, LABELS, "iterations of step");
    p = base_params(f);
    p.cfg_scale = INFINITY;
    expect_invalid(f, &p, LABELS, "cfg scale must be in 1..1e+06");
    p = base_params(f);
    p.cfg_scale = 1e30f;
    expect_invalid(f, &p, LABELS, "cfg scale");
    p = base_params(f);
    p.sampler = FPDM_SAMPLER_DDIM;
    p.ddim_eta = INFINITY;
    expect_invalid(f, &p, LABELS, "ddim eta must be in 0..1");
    /* Past 1 the DDIM update takes the root of a negative number. */
    p.ddim_eta = 1.01f;
    expect_invalid(f, &p, LABELS, "ddim eta must be in 0..1, got 1.01");
    p.ddim_eta = 1.0f;
    float *largest_eta = sample(f, &p, NULL);
    for (size_t i = 0; i < f->floats; i++) CHECK(isfinite(largest_eta[i]));
    free(largest_eta);
    p = base_params(f);
    p.tol = INFINITY;
    expect_invalid(f, &p, LABELS, "tol must be finite");
    p = base_params(f);
    p.first_image_index = -1;
    expect_invalid(f, &p, LABELS, "first image index must be >= 0");
    p = base_params(f);
    int bad_labels[NUM_IMAGES] = {1, 10, 2};
    expect_invalid(f, &p, bad_labels, "class 10");
    /* Noise from outside must be finite, in every value. */
    size_t step_floats = (size_t)STEPS * f->floats;
    float *noise = calloc(step_floats, sizeof(float));
    noise[f->floats - 1] = NAN;
    p.init_noise = noise;
    expect_invalid(f, &p, LABELS, "init_noise[");
    noise[f->floats - 1] = 0.0f;
    noise[step_floats - 1] = INFINITY;
    p.init_noise = NULL;
    p.step_noise = noise;
    expect_invalid(f, &p, LABELS, "step_noise[");
    free(noise);
    /* A refused iteration list leaves the plan as it was, not half written. */
    p = base_params(f);
    const int listed[STEPS] = {1, 2, 3, -7, 5, 6};
    p.iters_per_step = listed;
    expect_invalid(f, &p, LABELS, "iterations of step 3");
    int plan[STEPS] = {40, 41, 42, 43, 44, 45};
    CHECK(fpdm_plan_iterations(f->ctx, f->model, &p, plan) == FPDM_ERR_INVALID_ARGUMENT);
    CHECK(plan[0] == 40 && plan[2] == 42 && plan[5] == 45);
}

static void test_dit_ignores_solver(void) {
    fixture f;
    if (!open_fixture(&f, DIT_MODEL)) return;
    fpdm_sample_params p = base_params(&f);
    fpdm_sample_report report;
    float *out = sample(&f, &p, &report);
    for (size_t i = 0; i < f.floats; i++) CHECK(isfinite(out[i]));
    CHECK(report.fixed_point_iterations == 0);
    int plan[STEPS];
    CHECK(fpdm_plan_iterations(f.ctx, f.model, &p, plan) == FPDM_OK && plan[0] == 0);
    free(out);
    fpdm_sample_report_free(&report);
    close_fixture(&f);
}

/* The official train.py --unsupervised trains no null class: guidance would
 * mix in an untrained row, so it is refused, and the default is unguided. A
 * class-conditional model keeps the official default of 4. */
static void test_unconditional(void) {
    fixture f;
    if (!open_fixture(&f, UNCONDITIONAL_MODEL)) return;
    const fpdm_model_info *info = fpdm_model_get_info(f.model);
    CHECK(info->unconditional == 1 && info->num_classes == 1);
    fpdm_sample_params p = fpdm_sample_default_params(f.model);
    CHECK(p.cfg_scale == 1.0f);
    p.num_steps = 2;
    const int labels[2] = {0, 0};
    float *out = malloc(fpdm_sample_output_size(f.model, 2) * sizeof(float));
    CHECK(fpdm_sample(f.ctx, f.model, &p, 2, labels, out, NULL) == FPDM_OK);
    p.cfg_scale = 1.5f;
    CHECK(fpdm_sample(f.ctx, f.model, &p, 2, labels, out, NULL) == FPDM_ERR_INVALID_ARGUMENT);
    CHECK_MSG(strstr(fpdm_last_error(f.ctx), "unconditional"), "%s", fpdm_last_error(f.ctx));
    int plan[2];
    CHECK(fpdm_plan_iterations(f.ctx, f.model, &p, plan) == FPDM_ERR_INVALID_ARGUMENT);
    free(out);
    close_fixture(&f);

    if (!open_fixture(&f, FPDM_MODEL)) return;
    CHECK(fpdm_model_get_info(f.model)->unconditional == 0);
    CHECK(fpdm_sample_default_params(f.model).cfg_scale == 4.0f);
    close_fixture(&f);
}

/* Finite weights that overflow (a bias of 3e38) give FPDM_ERR_NOT_FINITE,
 * naming the image, rather than NaN latents with FPDM_OK. */
static void test_overflowing_model(void) {
    char dir[256], copy[512];
    if (test_make_temp_dir(dir, sizeof dir, "test_sampler") != 0) return;
    snprintf(copy, sizeof copy, "%s/overflow.safetensors", dir);
    fixture f;
    int written = test_write_model_with_value(DIT_MODEL, copy, "final_layer.linear.bias", 0, 3e38f) == 0;
    CHECK(written);
    if (written && open_fixture(&f, copy)) {
        fpdm_sample_params p = fpdm_sample_default_params(f.model);
        p.num_steps = 3;
        float *out = malloc(f.floats * sizeof(float));
        fpdm_status status = fpdm_sample(f.ctx, f.model, &p, NUM_IMAGES, LABELS, out, NULL);
        CHECK_MSG(status == FPDM_ERR_NOT_FINITE && strstr(fpdm_last_error(f.ctx), "image 0's latents") &&
                      strstr(fpdm_last_error(f.ctx), "past float32's range"),
                  "status %d: %s", (int)status, fpdm_last_error(f.ctx));
        CHECK(strcmp(fpdm_status_name(FPDM_ERR_NOT_FINITE), "not finite") == 0);
        free(out);
        close_fixture(&f);
    }
    test_remove_temp_dir(dir);
}

int main(void) {
    fixture f;
    if (open_fixture(&f, FPDM_MODEL)) {
        test_tolerance(&f);
        test_batch_independence(&f);
        test_cancel_and_progress(&f);
        test_cancel_at_last_step(&f);
        test_report_of_refused_call(&f);
        test_no_allocation_after_warmup(&f);
        test_invalid_arguments(&f);
        close_fixture(&f);
    }
    test_dit_ignores_solver();
    test_unconditional();
    test_overflowing_model();
    return test_finish("test_sampler");
}
