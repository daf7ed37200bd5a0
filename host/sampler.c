/* sampler.c - the sampling loop: batches of images, DDPM or DDIM steps over a
 * respaced schedule, classifier-free guidance the way the official DiT code
 * does it, and the FPDM fixed-point solver's per-step iteration plan, solution
 * reuse and early exit.
 *
 * With guidance the network sees 2B rows: the B conditional rows, then the
 * same B latents again with the null class (the official forward_with_cfg
 * feeds cat([half, half])), so only the conditional rows carry state and draw
 * noise. Reused fixed-point solutions are kept per row, null rows included.
 */
#define _POSIX_C_SOURCE 200809L /* clock_gettime */

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "context.h"
#include "diffusion.h"
#include "error_message.h"
#include "iteration_plan.h"
#include "model.h"
#include "network.h"

fpdm_sample_params fpdm_sample_default_params(const fpdm_model *model) {
    fpdm_sample_params p;
    memset(&p, 0, sizeof p);
    p.num_steps = 250;
    p.sampler = FPDM_SAMPLER_DDPM;
    /* The official default; an unconditional model has no trained null
     * class to guide with. */
    p.cfg_scale = model && model->config.unconditional ? 1.0f : 4.0f;
    p.iters = -1;
    p.iteration_schedule = FPDM_ITERS_FIXED;
    return p;
}

size_t fpdm_sample_output_size(const fpdm_model *model, int num_images) {
    if (!model || num_images <= 0) return 0;
    const model_config *c = &model->config;
    return (size_t)num_images * c->in_channels * c->input_size * c->input_size;
}

void fpdm_sample_report_free(fpdm_sample_report *report) {
    if (!report) return;
    free(report->steps);
    memset(report, 0, sizeof *report);
}

static fpdm_status check_params(fpdm_context *ctx, const fpdm_model *model,
                                const fpdm_sample_params *p) {
    const model_config *c = &model->config;
    if (p->num_steps < 1 || p->num_steps > c->num_train_timesteps)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "steps must be in 1..%d, got %d",
                            c->num_train_timesteps, p->num_steps);
    if (p->sampler != FPDM_SAMPLER_DDPM && p->sampler != FPDM_SAMPLER_DDIM)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "unknown sampler %d", (int)p->sampler);
    /* Past 1, DDIM's sigma^2 exceeds 1 - alpha_cumprod_prev at some steps and
     * the update takes the root of a negative number (as the official one). */
    if (!(p->ddim_eta >= 0.0f && p->ddim_eta <= 1.0f))
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "ddim eta must be in 0..1, got %g",
                            p->ddim_eta);
    /* The upper bound keeps the updates finite: a scale of 1e30 (or infinity)
     * passed ">= 1" and gave NaN latents. */
    if (!(p->cfg_scale >= 1.0f && p->cfg_scale <= FPDM_MAX_SCALE))
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "cfg scale must be in 1..%g (1 disables guidance), got %g",
                            FPDM_MAX_SCALE, p->cfg_scale);
    if (c->unconditional && p->cfg_scale > 1.0f)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "cfg scale %g: this model is unconditional (trained without class "
                            "dropout, so its null class is untrained): guidance needs cfg scale 1",
                            p->cfg_scale);
    if (p->batch_size < 0)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "batch size must be >= 0, got %d", p->batch_size);
    if (!(p->tol >= 0.0f) || isinf(p->tol))
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "tol must be finite and >= 0, got %g",
                            p->tol);
    if (p->budget < 0)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "budget must be >= 0, got %d", p->budget);
    if (p->iters < -1 || p->iters > FPDM_MAX_ITERS)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "iters must be in 0..%d (or -1 for the model's default), got %d",
                            FPDM_MAX_ITERS, p->iters);
    if (p->first_image_index < 0)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "first image index must be >= 0, got %d", p->first_image_index);
    return FPDM_OK;
}

fpdm_status fpdm_plan_iterations(fpdm_context *ctx, const fpdm_model *model,
                                 const fpdm_sample_params *params, int *iters_out) {
    if (!ctx) return FPDM_ERR_INVALID_ARGUMENT;
    fpdm_status status = context_check_model(ctx, model);
    if (status != FPDM_OK) return status;
    if (!params || !iters_out)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "fpdm_plan_iterations: NULL argument");
    if ((status = check_params(ctx, model, params)) != FPDM_OK) return status;
    int steps = params->num_steps;
    if (!model->config.fixed_point) {
        memset(iters_out, 0, (size_t)steps * sizeof(int));
        return FPDM_OK;
    }
    if (params->iters_per_step) {
        /* All checked before any is written: a refused list leaves iters_out as it was. */
        for (int k = 0; k < steps; k++)
            if (params->iters_per_step[k] < 0 || params->iters_per_step[k] > FPDM_MAX_ITERS)
                return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                                    "iterations of step %d must be in 0..%d, got %d", k,
                                    FPDM_MAX_ITERS, params->iters_per_step[k]);
        memcpy(iters_out, params->iters_per_step, (size_t)steps * sizeof(int));
        return FPDM_OK;
    }
    int iters = params->iters >= 0 ? params->iters : model->info.default_iters;
    /* steps x iters is at most 1000 x FPDM_MAX_ITERS, the plan's limit. */
    int budget = params->budget > 0 ? params->budget : steps * iters;
    if (budget > ITERATION_PLAN_MAX_BUDGET)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "a budget of %d iterations is more than the %d a plan spreads",
                            budget, ITERATION_PLAN_MAX_BUDGET);
    char err[512];
    if (iteration_plan(params->iteration_schedule, steps, budget, iters_out, err, sizeof err) != 0)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "%s", err);
    return FPDM_OK;
}

/* Everything one run keeps in the arena besides the network's own buffers. */
typedef struct sample_buffers {
    network_state net;
    float *latents;   /* [B, C, H, W] the sampler's state */
    float *noise;     /* [B, C, H, W] */
    float *solution;  /* [rows, T, D] reused fixed-point solutions (FPDM with reuse) */
} sample_buffers;

static double seconds_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

typedef struct run {
    fpdm_context *ctx;
    const fpdm_model *model;
    const fpdm_sample_params *params;
    diffusion schedule;
    int *plan;
    int num_images, batch, rows, guided;
    size_t image_floats;     /* C * H * W */
    sample_buffers buf;
    int *row_labels;
    float *row_timesteps;
    /* Carry-over, per row: the iterations a row left unused, its limit for
     * this step and what it used (each row carries its own, so its result
     * does not depend on the rows batched with it). */
    int *row_carried, *row_limits, *row_used;
    fpdm_sample_report *report;
    /* The callback asked to stop at a batch's last step: the batch is done,
     * so it is kept (downloaded and counted) before the run stops. */
    int stop_after_batch;
} run;

static fpdm_status upload_noise(run *r, float *device_dst, const float *host_noise, int first,
                                int count, uint32_t stage) {
    backend *be = r->ctx->be;
    if (host_noise) {
        if (be->upload(be, device_dst, host_noise + (size_t)first * r->image_floats,
                       (size_t)count * r->image_floats) != 0)
            return context_device_fail(r->ctx, "%s: upload", r->ctx->device_name);
        return FPDM_OK;
    }
    be->normal_noise(be, device_dst, r->params->noise_seed,
                     (uint64_t)r->params->first_image_index + (uint64_t)first, count, stage,
                     r->image_floats);
    return FPDM_OK;
}

/* Samples images first..first+count-1 into latents_out. */
static fpdm_status sample_batch(run *r, int batch_index, int num_batches, int first, int count,
                                const int *labels, float *latents_out) {
    const fpdm_sample_params *p = r->params;
    const model_config *cfg = &r->model->config;
    backend *be = r->ctx->be;
    int rows = p->cfg_scale > 1.0f ? 2 * count : count;
    size_t hw = (size_t)cfg->input_size * cfg->input_size;
    sample_buffers *b = &r->buf;
    b->net.batch = rows;
    fpdm_status status = upload_noise(r, b->latents, p->init_noise, first, count, 0);
    if (status != FPDM_OK) return status;
    for (int i = 0; i < rows; i++) r->row_labels[i] = i < count ? labels[first + i] : cfg->num_classes;

    int carry_over = cfg->fixed_point && p->carry_over && p->tol > 0;
    for (int i = 0; i < rows; i++) r->row_carried[i] = 0;
    for (int k = 0; k < p->num_steps; k++) {
        int step_index = p->num_steps - 1 - k; /* respaced index, noisiest first */
        for (int i = 0; i < rows; i++) r->row_timesteps[i] = (float)r->schedule.timesteps[step_index];
        be->copy(be, b->net.x, b->latents, (size_t)count * r->image_floats);
        if (rows > count) be->copy(be, b->net.x + (size_t)count * r->image_floats, b->latents,
                                   (size_t)count * r->image_floats);
        for (int i = 0; i < rows; i++) r->row_limits[i] = r->plan[k] + r->row_carried[i];
        network_solve solve = {r->plan[k], p->tol, p->measure_residuals,
                               p->reuse && k > 0 ? b->solution : NULL,
                               p->reuse ? b->solution : NULL, 0, -1.0f,
                               carry_over ? r->row_limits : NULL, carry_over ? r->row_used : NULL};
        status = network_forward(r->ctx, r->model, &b->net, r->row_timesteps, r->row_labels, &solve);
        if (status != FPDM_OK) return status;
        if (carry_over)
            for (int i = 0; i < rows; i++) r->row_carried[i] = r->row_limits[i] - r->row_used[i];
        if (rows > count)
            be->cfg_combine(be, b->net.out, count, cfg->out_channels, (int)hw, r->guided, p->cfg_scale);

        diffusion_step_coefs coefs;
        if (diffusion_step_coefs_for(&r->schedule, step_index, p->sampler, p->ddim_eta,
                                     cfg->prediction, cfg->learn_sigma, 0, &coefs) != 0)
            return context_fail(r->ctx, FPDM_ERR_INVALID_ARGUMENT, "no sampler step %d", step_index);
        const float *host_step_noise = p->step_noise
                                           ? p->step_noise + (size_t)k * r->num_images * r->image_floats
                                           : NULL;
        if (coefs.add_noise &&
            (status = upload_noise(r, b->noise, host_step_noise, first, count, (uint32_t)k + 1)) != FPDM_OK)
            return status;
        be->sampler_update(be, b->latents, b->net.out, coefs.add_noise ? b->noise : NULL, &coefs,
                           count, cfg->in_channels, (int)hw, cfg->out_channels);

        if (r->report) {
            fpdm_step_report *s = &r->report->steps[k];
            s->iters_used += solve.iters_used;
            if (solve.residual > s->residual) s->residual = solve.residual;
            r->report->model_evaluations += rows;
            r->report->fixed_point_iterations += solve.iters_used;
        }
        if (p->progress_callback) {
            fpdm_progress progress = {k + 1, p->num_steps, batch_index, num_batches, first,
                                      r->num_images, r->schedule.timesteps[step_index],
                                      solve.iters_used, solve.residual};
            if (p->progress_callback(&progress, p->progress_user_data) != 0) {
                if (k + 1 < p->num_steps)
                    return context_fail(r->ctx, FPDM_ERR_CANCELLED,
                                        "sampling cancelled at step %d of batch %d", k + 1,
                                        batch_index + 1);
                r->stop_after_batch = 1;
            }
        }
    }
    float *batch_out = latents_out + (size_t)first * r->image_floats;
    if (be->download(be, batch_out, b->latents, (size_t)count * r->image_floats) != 0)
        return context_device_fail(r->ctx, "%s: download", r->ctx->device_name);
    /* Finite weights and settings can still overflow (a bias of 1e38): say
     * so rather than hand back latents that decode to black images. */
    const size_t bad = context_first_non_finite(batch_out, (size_t)count * r->image_floats);
    if (bad < (size_t)count * r->image_floats)
        return context_fail(r->ctx, FPDM_ERR_NOT_FINITE,
                            "image %zu's latents hold %g after sampling: the model's weights or "
                            "the settings took the arithmetic past float32's range",
                            (size_t)first + bad / r->image_floats, (double)batch_out[bad]);
    return FPDM_OK;
}

static fpdm_status prepare(run *r) {
    fpdm_context *ctx = r->ctx;
    const fpdm_sample_params *p = r->params;
    const model_config *cfg = &r->model->config;
    char err[512];
    /* The official samplers respace with str(num_steps) for DDPM and DDIM alike. */
    char respacing[32];
    snprintf(respacing, sizeof respacing, "%d", p->num_steps);
    int init_result = diffusion_init(&r->schedule, cfg->noise_schedule, cfg->num_train_timesteps,
                                     cfg->zero_terminal_snr, respacing, err, sizeof err);
    if (init_result != 0)
        return context_fail(ctx, init_result == ERROR_OUT_OF_MEMORY ? FPDM_ERR_OUT_OF_MEMORY
                                                                    : FPDM_ERR_INVALID_ARGUMENT,
                            "%s", err);
    r->plan = malloc((size_t)p->num_steps * sizeof(int));
    if (!r->plan) return context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "out of memory");
    fpdm_status status = fpdm_plan_iterations(ctx, r->model, p, r->plan);
    if (status != FPDM_OK) return status;

    r->batch = p->batch_size > 0 && p->batch_size < r->num_images ? p->batch_size : r->num_images;
    r->rows = p->cfg_scale > 1.0f ? 2 * r->batch : r->batch;
    /* Official guidance covers model_out[:, :3], whatever the channel count. */
    r->guided = p->cfg_all_channels ? cfg->in_channels
                                    : (cfg->out_channels < 3 ? cfg->out_channels : 3);
    r->image_floats = (size_t)cfg->in_channels * cfg->input_size * cfg->input_size;
    size_t net_floats = network_arena_floats(ctx, cfg, r->rows);
    size_t latent_floats = (size_t)r->batch * r->image_floats;
    size_t solution_floats = cfg->fixed_point && p->reuse
                                 ? (size_t)r->rows * cfg->num_tokens * cfg->hidden_size : 0;
    float *arena = context_arena(ctx, net_floats + 2 * latent_floats + solution_floats);
    if (!arena || !context_row_scratch(ctx, network_row_scratch_bytes(r->rows)))
        return FPDM_ERR_OUT_OF_MEMORY;
    network_layout(ctx, cfg, r->rows, arena, &r->buf.net);
    r->buf.latents = arena + net_floats;
    r->buf.noise = r->buf.latents + latent_floats;
    r->buf.solution = solution_floats ? r->buf.noise + latent_floats : NULL;
    r->row_labels = malloc((size_t)r->rows * sizeof(int));
    r->row_timesteps = malloc((size_t)r->rows * sizeof(float));
    r->row_carried = malloc((size_t)r->rows * sizeof(int));
    r->row_limits = malloc((size_t)r->rows * sizeof(int));
    r->row_used = malloc((size_t)r->rows * sizeof(int));
    if (!r->row_labels || !r->row_timesteps || !r->row_carried || !r->row_limits || !r->row_used)
        return context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "out of memory");
    if (r->report) {
        memset(r->report, 0, sizeof *r->report);
        r->report->num_steps = p->num_steps;
        r->report->steps = calloc((size_t)p->num_steps, sizeof(fpdm_step_report));
        if (!r->report->steps) return context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "out of memory");
        for (int k = 0; k < p->num_steps; k++) {
            r->report->steps[k].timestep = r->schedule.timesteps[p->num_steps - 1 - k];
            r->report->steps[k].iters_planned = r->plan[k];
            r->report->steps[k].residual = -1.0f;
        }
    }
    return FPDM_OK;
}

fpdm_status fpdm_sample(fpdm_context *ctx, const fpdm_model *model, const fpdm_sample_params *params,
                        int num_images, const int *labels, float *latents_out,
                        fpdm_sample_report *report) {
    /* Set before any check, so that a failed call leaves an empty report to
     * free rather than whatever the caller's memory held. */
    if (report) memset(report, 0, sizeof *report);
    if (!ctx) return FPDM_ERR_INVALID_ARGUMENT;
    fpdm_status status = context_check_model(ctx, model);
    if (status != FPDM_OK) return status;
    if (!params || !labels || !latents_out || num_images <= 0)
        return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT,
                            "fpdm_sample: num_images must be positive and params, labels, latents_out non-NULL");
    if ((status = check_params(ctx, model, params)) != FPDM_OK) return status;
    for (int i = 0; i < num_images; i++)
        if (labels[i] < 0 || labels[i] >= model->config.num_classes)
            return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "class %d of image %d is outside 0..%d",
                                labels[i], i, model->config.num_classes - 1);
    size_t image_floats = (size_t)model->config.in_channels * model->config.input_size *
                          model->config.input_size;
    if ((status = context_check_finite(ctx, "init_noise", params->init_noise,
                                       (size_t)num_images * image_floats)) != FPDM_OK ||
        (status = context_check_finite(ctx, "step_noise", params->step_noise,
                                       (size_t)params->num_steps * num_images * image_floats)) !=
            FPDM_OK)
        return status;

    double start = seconds_now();
    run r;
    memset(&r, 0, sizeof r);
    r.ctx = ctx;
    r.model = model;
    r.params = params;
    r.num_images = num_images;
    r.report = report;
    status = prepare(&r);
    int num_batches = r.batch ? (num_images + r.batch - 1) / r.batch : 0;
    for (int bi = 0; status == FPDM_OK && bi < num_batches; bi++) {
        int first = bi * r.batch;
        int count = num_images - first < r.batch ? num_images - first : r.batch;
        status = sample_batch(&r, bi, num_batches, first, count, labels, latents_out);
        if (report && status == FPDM_OK) report->num_batches++;
        if (status == FPDM_OK && r.stop_after_batch)
            status = context_fail(ctx, FPDM_ERR_CANCELLED,
                                  "sampling cancelled after the last step of batch %d (its images "
                                  "are kept)", bi + 1);
    }
    if (report) report->seconds = seconds_now() - start;
    diffusion_free(&r.schedule);
    free(r.plan);
    free(r.row_labels);
    free(r.row_timesteps);
    free(r.row_carried);
    free(r.row_limits);
    free(r.row_used);
    return status;
}
