/* diffusion.c - beta schedules, zero-terminal-SNR rescaling, timestep
 * respacing and the linear coefficients of one DDPM / DDIM step, following
 * the official GaussianDiffusion / SpacedDiffusion (see diffusion.h). All
 * schedule arithmetic is float64, in the order the official numpy code uses,
 * so the tables agree with it to rounding. */
#include "diffusion.h"
#include "error_message.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* get_named_beta_schedule: linear (numpy linspace: start + i * step, the last
 * entry exactly end) or squaredcos_cap_v2 (betas_for_alpha_bar, max 0.999). */
static void base_betas(fpdm_noise_schedule schedule, int num_train_timesteps, double *betas) {
    int n = num_train_timesteps;
    if (schedule == FPDM_SCHEDULE_LINEAR) {
        double scale = 1000.0 / n;
        double start = scale * 0.0001, end = scale * 0.02;
        if (n == 1) {
            betas[0] = start;
            return;
        }
        double step = (end - start) / (n - 1);
        for (int i = 0; i < n; i++) betas[i] = i * step + start;
        betas[n - 1] = end;
        return;
    }
    const double pi = 3.14159265358979323846;
    for (int i = 0; i < n; i++) {
        double t1 = (double)i / n, t2 = (double)(i + 1) / n;
        double a1 = cos((t1 + 0.008) / 1.008 * pi / 2), a2 = cos((t2 + 0.008) / 1.008 * pi / 2);
        double beta = 1 - (a2 * a2) / (a1 * a1);
        betas[i] = beta < 0.999 ? beta : 0.999;
    }
}

/* Lin et al. 2024, as the FPDM repository's enforce_zero_terminal_snr: shift
 * sqrt(alphas_cumprod) so the last is 0, scale so the first is unchanged, and
 * turn the result back into betas (the last beta becomes 1). */
static void enforce_zero_terminal_snr(double *betas, int n) {
    double *sqrt_bar = malloc((size_t)n * sizeof(double));
    double cumprod = 1.0;
    for (int i = 0; i < n; i++) {
        cumprod *= 1 - betas[i];
        sqrt_bar[i] = sqrt(cumprod);
    }
    double first = sqrt_bar[0], last = sqrt_bar[n - 1];
    double scale = first / (first - last);
    for (int i = 0; i < n; i++) {
        double s = (sqrt_bar[i] - last) * scale;
        sqrt_bar[i] = s * s;
    }
    betas[0] = 1 - sqrt_bar[0];
    for (int i = 1; i < n; i++) betas[i] = 1 - sqrt_bar[i] / sqrt_bar[i - 1];
    free(sqrt_bar);
}

/* Parses a positive decimal integer filling [begin, end) exactly. */
static int parse_count(const char *begin, const char *end, long *value) {
    if (begin == end) return -1;
    for (const char *p = begin; p < end; p++)
        if (!isdigit((unsigned char)*p)) return -1;
    if (end - begin > 9) return -1;
    long v = 0;
    for (const char *p = begin; p < end; p++) v = v * 10 + (*p - '0');
    if (v < 1) return -1;
    *value = v;
    return 0;
}

/* space_timesteps: marks keep[t] for the kept original timesteps. Sections
 * are strided with Python's round (half to even, which rint does in the
 * default rounding mode) of a float64 running index, as the official code. */
static int space_timesteps(int num_train_timesteps, const char *respacing, unsigned char *keep,
                           char *err, size_t err_size) {
    int n = num_train_timesteps;
    memset(keep, 0, (size_t)n);
    if (strncmp(respacing, "ddim", 4) == 0) {
        long desired;
        const char *digits = respacing + 4;
        if (parse_count(digits, digits + strlen(digits), &desired) != 0) {
            set_error(err, err_size, "respacing \"%s\": expected ddimN with N a positive integer",
                      respacing);
            return -1;
        }
        for (int stride = 1; stride < n; stride++) {
            if ((n + stride - 1) / stride == desired) {
                for (int t = 0; t < n; t += stride) keep[t] = 1;
                return 0;
            }
        }
        set_error(err, err_size,
                  "respacing \"%s\": no integer stride gives exactly %ld of %d timesteps",
                  respacing, desired, n);
        return -1;
    }
    int num_sections = 1;
    for (const char *p = respacing; *p; p++) num_sections += *p == ',';
    int size_per = n / num_sections, extra = n % num_sections;
    int start = 0;
    const char *section = respacing;
    for (int s = 0; s < num_sections; s++) {
        const char *comma = strchr(section, ',');
        const char *section_end = comma ? comma : section + strlen(section);
        long count;
        if (parse_count(section, section_end, &count) != 0) {
            set_error(err, err_size,
                      "respacing \"%s\": section %d is not a positive integer; expected N, "
                      "N1,N2,... or ddimN",
                      respacing, s + 1);
            return -1;
        }
        int size = size_per + (s < extra ? 1 : 0);
        if (size < count) {
            set_error(err, err_size,
                      "respacing \"%s\": cannot divide a section of %d timesteps into %ld steps",
                      respacing, size, count);
            return -1;
        }
        double stride = count <= 1 ? 1.0 : (double)(size - 1) / (double)(count - 1);
        double position = 0.0;
        for (long k = 0; k < count; k++) {
            keep[start + (int)rint(position)] = 1;
            position += stride;
        }
        start += size;
        section = section_end + 1;
    }
    return 0;
}

int diffusion_init(diffusion *d, fpdm_noise_schedule schedule, int num_train_timesteps,
                   int zero_terminal_snr, const char *respacing, char *err, size_t err_size) {
    memset(d, 0, sizeof(*d));
    if (num_train_timesteps < DIFFUSION_MIN_TRAIN_TIMESTEPS ||
        num_train_timesteps > DIFFUSION_MAX_TRAIN_TIMESTEPS) {
        set_error(err, err_size, "num_train_timesteps %d: expected %d..%d", num_train_timesteps,
                  DIFFUSION_MIN_TRAIN_TIMESTEPS, DIFFUSION_MAX_TRAIN_TIMESTEPS);
        return -1;
    }
    if (schedule != FPDM_SCHEDULE_LINEAR && schedule != FPDM_SCHEDULE_SQUAREDCOS_CAP_V2) {
        set_error(err, err_size, "noise schedule %d: expected linear or squaredcos_cap_v2",
                  (int)schedule);
        return -1;
    }
    if (!respacing || !respacing[0]) {
        set_error(err, err_size, "empty respacing: expected N, N1,N2,... or ddimN");
        return -1;
    }
    int n = num_train_timesteps;
    double *betas = malloc((size_t)n * sizeof(double));
    unsigned char *keep = malloc((size_t)n);
    if (!betas || !keep) {
        free(betas);
        free(keep);
        set_error(err, err_size, "out of memory");
        return ERROR_OUT_OF_MEMORY;
    }
    if (space_timesteps(n, respacing, keep, err, err_size) != 0) {
        free(betas);
        free(keep);
        return -1;
    }
    base_betas(schedule, n, betas);
    if (zero_terminal_snr) enforce_zero_terminal_snr(betas, n);

    int kept = 0;
    for (int t = 0; t < n; t++) kept += keep[t];
    d->num_train_timesteps = n;
    d->num_steps = kept;
    d->timesteps = malloc((size_t)kept * sizeof(int));
    d->betas = malloc((size_t)kept * sizeof(double));
    d->alphas_cumprod = malloc((size_t)kept * sizeof(double));
    d->alphas_cumprod_prev = malloc((size_t)kept * sizeof(double));
    if (!d->timesteps || !d->betas || !d->alphas_cumprod || !d->alphas_cumprod_prev) {
        free(betas);
        free(keep);
        diffusion_free(d);
        set_error(err, err_size, "out of memory");
        return ERROR_OUT_OF_MEMORY;
    }
    /* The respaced betas come from the kept alphas_cumprod; the respaced
     * alphas_cumprod is then the cumulative product of the new betas, as
     * GaussianDiffusion recomputes it. */
    double base_cumprod = 1.0, last_kept = 1.0, cumprod = 1.0;
    int i = 0;
    for (int t = 0; t < n; t++) {
        base_cumprod *= 1.0 - betas[t];
        if (!keep[t]) continue;
        d->timesteps[i] = t;
        d->betas[i] = 1 - base_cumprod / last_kept;
        last_kept = base_cumprod;
        d->alphas_cumprod_prev[i] = cumprod;
        cumprod *= 1.0 - d->betas[i];
        d->alphas_cumprod[i] = cumprod;
        i++;
    }
    free(betas);
    free(keep);
    return 0;
}

void diffusion_free(diffusion *d) {
    free(d->timesteps);
    free(d->betas);
    free(d->alphas_cumprod);
    free(d->alphas_cumprod_prev);
    memset(d, 0, sizeof(*d));
}

/* posterior_variance[i] = beta (1 - ac_prev) / (1 - ac). */
static double posterior_variance(const diffusion *d, int i) {
    return d->betas[i] * (1.0 - d->alphas_cumprod_prev[i]) / (1.0 - d->alphas_cumprod[i]);
}

int diffusion_step_coefs_for(const diffusion *d, int step_index, fpdm_sampler sampler,
                             float ddim_eta, fpdm_prediction prediction, int learn_sigma,
                             int fixed_small, diffusion_step_coefs *out) {
    memset(out, 0, sizeof(*out));
    int i = step_index;
    if (!d || i < 0 || i >= d->num_steps) return -1;
    double ac = d->alphas_cumprod[i], ac_prev = d->alphas_cumprod_prev[i];
    double beta = d->betas[i];

    /* x0 and eps as linear functions of (x, model output). For v the direct
     * forms are used (the official code derives eps through x0 and 1/sqrt(ac),
     * which is the same expression except at ac == 0, zero terminal SNR,
     * where only the direct form is defined and the official code uses it). */
    double x0_x, x0_m, eps_x, eps_m;
    switch (prediction) {
    case FPDM_PREDICT_EPS:
        if (!(ac > 0)) return -1; /* x0 = (x - sqrt(1 - ac) eps) / sqrt(ac) is undefined */
        x0_x = sqrt(1.0 / ac);
        x0_m = -sqrt(1.0 / ac - 1.0);
        eps_x = 0.0;
        eps_m = 1.0;
        break;
    case FPDM_PREDICT_V:
        x0_x = sqrt(ac);
        x0_m = -sqrt(1.0 - ac);
        eps_x = sqrt(1.0 - ac);
        eps_m = sqrt(ac);
        break;
    case FPDM_PREDICT_X0:
        x0_x = 0.0;
        x0_m = 1.0;
        eps_x = 1.0 / sqrt(1.0 - ac);
        eps_m = -sqrt(ac) / sqrt(1.0 - ac);
        break;
    default:
        return -1;
    }
    out->x0_from_x = (float)x0_x;
    out->x0_from_model = (float)x0_m;
    out->eps_from_x = (float)eps_x;
    out->eps_from_model = (float)eps_m;

    if (sampler == FPDM_SAMPLER_DDIM) {
        double sigma = ddim_eta * sqrt((1.0 - ac_prev) / (1.0 - ac)) * sqrt(1.0 - ac / ac_prev);
        out->next_from_x0 = (float)sqrt(ac_prev);
        out->next_from_eps = (float)sqrt(1.0 - ac_prev - sigma * sigma);
        out->next_from_x = 0.0f;
        out->noise_std = (float)sigma;
        out->add_noise = i > 0 && sigma > 0;
        return 0;
    }
    if (sampler != FPDM_SAMPLER_DDPM) return -1;

    /* Posterior mean coef1 * x0 + coef2 * x_t. */
    out->next_from_x0 = (float)(beta * sqrt(ac_prev) / (1.0 - ac));
    out->next_from_eps = 0.0f;
    out->next_from_x = (float)((1.0 - ac_prev) * sqrt(1.0 - beta) / (1.0 - ac));
    out->add_noise = i > 0;
    if (!out->add_noise) return 0; /* the variance of the last step is never used */

    /* posterior_log_variance_clipped replaces entry 0 by entry 1; i > 0 here. */
    double log_posterior = log(posterior_variance(d, i));
    if (learn_sigma) {
        out->learned_variance = 1;
        out->log_variance_min = (float)log_posterior;
        out->log_variance_max = (float)log(beta);
    } else if (fixed_small) {
        out->noise_std = (float)exp(0.5 * log_posterior);
    } else {
        /* fixed_large: betas with entry 0 replaced by posterior_variance[1]. */
        out->noise_std = (float)exp(0.5 * log(beta));
    }
    return 0;
}

void diffusion_apply_step(const diffusion_step_coefs *coefs, float *x, const float *model_out,
                          const float *noise, int batch, int channels, int hw,
                          int model_channels) {
    for (int b = 0; b < batch; b++) {
        float *xb = x + (size_t)b * channels * hw;
        const float *mb = model_out + (size_t)b * model_channels * hw;
        const float *nb = noise ? noise + (size_t)b * channels * hw : NULL;
        for (size_t e = 0; e < (size_t)channels * hw; e++) {
            float xv = xb[e], m = mb[e];
            float x0 = coefs->x0_from_x * xv + coefs->x0_from_model * m;
            float eps = coefs->eps_from_x * xv + coefs->eps_from_model * m;
            float next = coefs->next_from_x0 * x0 + coefs->next_from_eps * eps +
                         coefs->next_from_x * xv;
            if (coefs->add_noise) {
                float std = coefs->noise_std;
                if (coefs->learned_variance) {
                    float frac = (mb[(size_t)channels * hw + e] + 1.0f) * 0.5f;
                    std = expf(0.5f * (frac * coefs->log_variance_max +
                                       (1.0f - frac) * coefs->log_variance_min));
                }
                next += std * nb[e];
            }
            xb[e] = next;
        }
    }
}
