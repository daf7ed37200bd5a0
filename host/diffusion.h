/* diffusion.h - Gaussian diffusion schedules, respacing and the coefficients
 * of one DDPM or DDIM step, with the official DiT / FPDM semantics
 * (facebookresearch/DiT diffusion/, lukemelas/fixed-point-diffusion-models
 * diffusion/). Schedules are computed in float64; a step's coefficients are
 * rounded to float32 once and applied elementwise (diffusion_apply_step is the
 * plain C reference every backend's sampler_update must match).
 */
#ifndef FPDM_DIFFUSION_H
#define FPDM_DIFFUSION_H

#include <stddef.h>
#include "fpdm.h"

typedef struct diffusion {
    int num_train_timesteps;
    int num_steps;            /* respaced */
    int *timesteps;           /* [num_steps] original index of respaced step i, increasing */
    double *betas;            /* [num_steps] respaced betas, from the kept alphas_cumprod */
    double *alphas_cumprod;   /* [num_steps] */
    double *alphas_cumprod_prev;
} diffusion;

/* The training schedules a sampler can run: model_config.c refuses a model
 * file outside these at load, so that it does not load and then fail to
 * sample. */
#define DIFFUSION_MIN_TRAIN_TIMESTEPS 2
#define DIFFUSION_MAX_TRAIN_TIMESTEPS 100000

/* respacing: "N" (one section of N steps, as space_timesteps("N")), a
 * comma-separated list of sections ("10,15,20"), or "ddimN". Returns 0, or
 * ERROR_REFUSED / ERROR_OUT_OF_MEMORY (error_message.h) with a message saying
 * what is wrong and what is allowed. */
int diffusion_init(diffusion *d, fpdm_noise_schedule schedule, int num_train_timesteps,
                   int zero_terminal_snr, const char *respacing, char *err, size_t err_size);
void diffusion_free(diffusion *d);

/* One step from respaced index i to i-1, for every element:
 *   m    = model_out[c]            (first `channels` channels)
 *   x0   = x0_from_x * x + x0_from_model * m
 *   eps  = eps_from_x * x + eps_from_model * m
 *   next = next_from_x0 * x0 + next_from_eps * eps + next_from_x * x + std * noise
 * where std = noise_std, or with learned_variance
 *   frac = (model_out[channels + c] + 1) / 2,
 *   std  = exp(0.5 * (frac * log_variance_max + (1 - frac) * log_variance_min)),
 * and no noise at all when add_noise is 0 (t = 0, or DDIM with eta 0). */
struct diffusion_step_coefs {
    float x0_from_x, x0_from_model;
    float eps_from_x, eps_from_model;
    float next_from_x0, next_from_eps, next_from_x;
    int learned_variance;
    float log_variance_min, log_variance_max;
    float noise_std;
    int add_noise;
};
typedef struct diffusion_step_coefs diffusion_step_coefs;

/* The coefficients of respaced step step_index (the model saw timestep
 * timesteps[step_index]). learn_sigma selects the learned-range variance for
 * DDPM (log variance between the clipped posterior one and log beta); without
 * it DDPM uses fixed_large (betas, the official default) or, if fixed_small,
 * the posterior variance. DDIM: sigma = eta sqrt((1 - ac_prev) / (1 - ac))
 * sqrt(1 - ac / ac_prev). Every prediction is turned into x0 and eps directly
 * (v: x0 = sqrt(ac) x - sqrt(1 - ac) v, eps = sqrt(ac) v + sqrt(1 - ac) x), so
 * the zero-terminal-SNR step with alphas_cumprod 0 is well defined for v and
 * x0 predictions. Computed in double, rounded to float once. Returns 0, or -1
 * for a step out of range, an unknown sampler or prediction, or eps prediction
 * at alphas_cumprod 0 (x0 is undefined there; the official code requires v
 * prediction with zero terminal SNR). */
int diffusion_step_coefs_for(const diffusion *d, int step_index, fpdm_sampler sampler,
                             float ddim_eta, fpdm_prediction prediction, int learn_sigma,
                             int fixed_small, diffusion_step_coefs *out);

void diffusion_apply_step(const diffusion_step_coefs *coefs, float *x, const float *model_out,
                          const float *noise, int batch, int channels, int hw,
                          int model_channels);

#endif
