/* test_diffusion.c - schedules, respacing and step coefficients: kept
 * timesteps and respaced alphas_cumprod against tests/golden/diffusion.safetensors
 * (tools/reference_sampling.py, checked against the official code), every
 * step-coefficient case against a float64 evaluation of the official
 * formulas, and rejected respacings.
 * Run: ctest -R test_diffusion (from the build folder's ctest). */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffusion.h"
#include "safetensors.h"
#include "test_util.h"

#define GOLDEN "tests/golden/diffusion.safetensors"

static double read_f64(const safetensors_tensor *t, int64_t i) {
    double v;
    memcpy(&v, t->data + 8 * i, 8);
    return v;
}

static int64_t read_i64(const safetensors_tensor *t, int64_t i) {
    int64_t v;
    memcpy(&v, t->data + 8 * i, 8);
    return v;
}

static fpdm_noise_schedule schedule_named(const char *name) {
    return strcmp(name, "squaredcos_cap_v2") == 0 ? FPDM_SCHEDULE_SQUAREDCOS_CAP_V2
                                                   : FPDM_SCHEDULE_LINEAR;
}

static void test_golden_tables(void) {
    safetensors_file file;
    char err[512];
    if (safetensors_open(GOLDEN, &file, err, sizeof err) != 0) {
        fprintf(stderr, "%s\n", err);
        test_failures++;
        return;
    }
    int count = golden_int(&file, "num_schedules", 0);
    CHECK(count >= 5);
    for (int k = 0; k < count; k++) {
        char key[64], schedule[64], respacing[64];
        int train, ztsnr;
        snprintf(key, sizeof key, "schedule%d", k);
        const char *desc = safetensors_metadata(&file, key);
        if (!desc || sscanf(desc, "%63s %d %d %63s", schedule, &train, &ztsnr, respacing) != 4) {
            CHECK_MSG(0, "bad metadata %s", key);
            continue;
        }
        snprintf(key, sizeof key, "schedule%d.timesteps", k);
        const safetensors_tensor *timesteps = safetensors_find(&file, key);
        snprintf(key, sizeof key, "schedule%d.alphas_cumprod", k);
        const safetensors_tensor *alphas = safetensors_find(&file, key);
        CHECK(timesteps && alphas && timesteps->dtype == SAFETENSORS_I64 &&
              alphas->dtype == SAFETENSORS_F64);
        if (!timesteps || !alphas) continue;
        diffusion d;
        if (diffusion_init(&d, schedule_named(schedule), train, ztsnr, respacing, err,
                           sizeof err) != 0) {
            CHECK_MSG(0, "%s: %s", desc, err);
            continue;
        }
        CHECK_MSG(d.num_steps == timesteps->num_elements, "%s: %d steps, expected %lld", desc,
                  d.num_steps, (long long)timesteps->num_elements);
        int bad_timesteps = 0;
        double worst = 0;
        for (int i = 0; i < d.num_steps && i < timesteps->num_elements; i++) {
            bad_timesteps += d.timesteps[i] != read_i64(timesteps, i);
            double expected = read_f64(alphas, i), got = d.alphas_cumprod[i];
            double rel = expected == 0 ? fabs(got) : fabs(got - expected) / fabs(expected);
            if (rel > worst) worst = rel;
            /* alphas_cumprod_prev must be the previous entry (1 first). */
            CHECK(d.alphas_cumprod_prev[i] == (i ? d.alphas_cumprod[i - 1] : 1.0));
        }
        CHECK_MSG(bad_timesteps == 0, "%s: %d timesteps differ", desc, bad_timesteps);
        CHECK_MSG(worst <= 1e-12, "%s: alphas_cumprod relative error %.3e", desc, worst);
        if (ztsnr && d.timesteps[d.num_steps - 1] == train - 1)
            CHECK_MSG(d.alphas_cumprod[d.num_steps - 1] == 0.0, "%s: last not zero", desc);
        fprintf(stderr, "  %-40s %4d steps, alphas_cumprod rel err %.1e\n", desc, d.num_steps,
                worst);
        diffusion_free(&d);
    }
    safetensors_close(&file);
}

static void test_three_steps(void) {
    diffusion d;
    char err[256];
    CHECK(diffusion_init(&d, FPDM_SCHEDULE_LINEAR, 1000, 0, "3", err, sizeof err) == 0);
    CHECK(d.num_steps == 3 && d.timesteps[0] == 0 && d.timesteps[1] == 500 &&
          d.timesteps[2] == 999);
    diffusion_free(&d);
    CHECK(diffusion_init(&d, FPDM_SCHEDULE_LINEAR, 1000, 0, "ddim4", err, sizeof err) == 0);
    CHECK(d.num_steps == 4 && d.timesteps[1] == 250 && d.timesteps[3] == 750);
    diffusion_free(&d);
}

static void test_rejections(void) {
    const char *bad[] = {"", "abc", "0", "10,,5", "ddim", "ddim999", "1001", "10,20,x",
                         "-5", "ddim-3", "500,500,1"};
    const char *fragment[] = {"empty", "not a positive integer", "not a positive integer",
                              "section 2", "ddimN", "no integer stride", "cannot divide",
                              "section 3", "not a positive integer", "ddimN", "cannot divide"};
    for (size_t k = 0; k < sizeof bad / sizeof bad[0]; k++) {
        diffusion d;
        char err[256] = "";
        int status = diffusion_init(&d, FPDM_SCHEDULE_LINEAR, 1000, 0, bad[k], err, sizeof err);
        CHECK_MSG(status == -1, "respacing \"%s\" accepted", bad[k]);
        CHECK_MSG(strstr(err, fragment[k]) != NULL, "respacing \"%s\": message \"%s\" lacks \"%s\"",
                  bad[k], err, fragment[k]);
        if (status == 0) diffusion_free(&d);
    }
}

/* ---- step coefficients against the official formulas in float64 ---------- */

typedef struct step_case {
    const char *name;
    fpdm_noise_schedule schedule;
    int zero_terminal_snr;
    const char *respacing;
    fpdm_sampler sampler;
    float eta;
    fpdm_prediction prediction;
    int learn_sigma, fixed_small;
} step_case;

static double uniform(uint64_t *state) {
    *state = *state * 6364136223846793005ull + 1442695040888963407ull;
    return (double)(*state >> 11) / 9007199254740992.0;
}

/* p_mean_variance + p_sample / ddim_sample of the official code, one element. */
static double official_step(const diffusion *d, int i, const step_case *c, double x, double m,
                            double var_value, double noise) {
    double ac = d->alphas_cumprod[i], ac_prev = d->alphas_cumprod_prev[i], beta = d->betas[i];
    double x0, eps;
    if (c->prediction == FPDM_PREDICT_EPS) {
        x0 = sqrt(1.0 / ac) * x - sqrt(1.0 / ac - 1) * m;
    } else if (c->prediction == FPDM_PREDICT_V) {
        x0 = sqrt(ac) * x - sqrt(1 - ac) * m;
    } else {
        x0 = m;
    }
    if (c->prediction == FPDM_PREDICT_V && ac == 0)
        eps = sqrt(ac) * m + sqrt(1 - ac) * x;
    else
        eps = (sqrt(1.0 / ac) * x - x0) / sqrt(1.0 / ac - 1);
    if (c->sampler == FPDM_SAMPLER_DDIM) {
        double sigma = c->eta * sqrt((1 - ac_prev) / (1 - ac)) * sqrt(1 - ac / ac_prev);
        double next = x0 * sqrt(ac_prev) + sqrt(1 - ac_prev - sigma * sigma) * eps;
        return i == 0 ? next : next + sigma * noise;
    }
    double coef1 = beta * sqrt(ac_prev) / (1 - ac);
    double coef2 = (1 - ac_prev) * sqrt(1 - beta) / (1 - ac);
    double mean = coef1 * x0 + coef2 * x;
    if (i == 0) return mean;
    /* posterior_log_variance_clipped: entry 0 replaced by entry 1. */
    int j = i == 0 ? 1 : i;
    double post_var = d->betas[j] * (1 - d->alphas_cumprod_prev[j]) / (1 - d->alphas_cumprod[j]);
    double log_variance;
    if (c->learn_sigma) {
        double frac = (var_value + 1) / 2;
        log_variance = frac * log(beta) + (1 - frac) * log(post_var);
    } else if (c->fixed_small) {
        log_variance = log(post_var);
    } else {
        log_variance = log(beta);
    }
    return mean + exp(0.5 * log_variance) * noise;
}

static void test_step_case(const step_case *c) {
    enum { BATCH = 2, CHANNELS = 3, HW = 40 };
    diffusion d;
    char err[256];
    if (diffusion_init(&d, c->schedule, 1000, c->zero_terminal_snr, c->respacing, err,
                       sizeof err) != 0) {
        CHECK_MSG(0, "%s: %s", c->name, err);
        return;
    }
    int model_channels = c->learn_sigma ? 2 * CHANNELS : CHANNELS;
    static float x[BATCH * CHANNELS * HW], model_out[BATCH * 2 * CHANNELS * HW],
        noise[BATCH * CHANNELS * HW], expected[BATCH * CHANNELS * HW];
    uint64_t state = 12345;
    double worst = 0;
    for (int i = d.num_steps - 1; i >= 0; i--) {
        for (int e = 0; e < BATCH * CHANNELS * HW; e++) {
            x[e] = (float)(4 * uniform(&state) - 2);
            noise[e] = (float)(4 * uniform(&state) - 2);
        }
        for (int e = 0; e < BATCH * model_channels * HW; e++)
            model_out[e] = (float)(2.4 * uniform(&state) - 1.2);
        for (int b = 0; b < BATCH; b++)
            for (int e = 0; e < CHANNELS * HW; e++) {
                const float *mb = model_out + (size_t)b * model_channels * HW;
                double var_value = c->learn_sigma ? mb[CHANNELS * HW + e] : 0;
                expected[b * CHANNELS * HW + e] =
                    (float)official_step(&d, i, c, x[b * CHANNELS * HW + e], mb[e], var_value,
                                         noise[b * CHANNELS * HW + e]);
            }
        diffusion_step_coefs coefs;
        if (diffusion_step_coefs_for(&d, i, c->sampler, c->eta, c->prediction, c->learn_sigma,
                                     c->fixed_small, &coefs) != 0) {
            CHECK_MSG(0, "%s: step %d rejected", c->name, i);
            continue;
        }
        if (i == 0) CHECK_MSG(!coefs.add_noise, "%s: noise at t = 0", c->name);
        diffusion_apply_step(&coefs, x, model_out, noise, BATCH, CHANNELS, HW, model_channels);
        double err_i = rel_l2(x, expected, BATCH * CHANNELS * HW);
        if (!(err_i <= worst)) worst = err_i;
    }
    int ok = worst <= 2e-6;
    fprintf(stderr, "  %-40s worst step rel_l2 %.2e %s\n", c->name, worst, ok ? "ok" : "FAIL");
    if (!ok) test_failures++;
    diffusion_free(&d);
}

static void test_step_coefs(void) {
    const step_case cases[] = {
        {"ddpm eps learned 10", FPDM_SCHEDULE_LINEAR, 0, "10", FPDM_SAMPLER_DDPM, 0,
         FPDM_PREDICT_EPS, 1, 0},
        {"ddpm eps fixed_large 7", FPDM_SCHEDULE_LINEAR, 0, "7", FPDM_SAMPLER_DDPM, 0,
         FPDM_PREDICT_EPS, 0, 0},
        {"ddpm eps fixed_small 7", FPDM_SCHEDULE_LINEAR, 0, "7", FPDM_SAMPLER_DDPM, 0,
         FPDM_PREDICT_EPS, 0, 1},
        {"ddpm v learned cosine 9", FPDM_SCHEDULE_SQUAREDCOS_CAP_V2, 0, "9", FPDM_SAMPLER_DDPM,
         0, FPDM_PREDICT_V, 1, 0},
        {"ddpm x0 fixed_large 6", FPDM_SCHEDULE_LINEAR, 0, "6", FPDM_SAMPLER_DDPM, 0,
         FPDM_PREDICT_X0, 0, 0},
        {"ddpm v zero-snr fixed_large 8", FPDM_SCHEDULE_LINEAR, 1, "8", FPDM_SAMPLER_DDPM, 0,
         FPDM_PREDICT_V, 0, 0},
        {"ddpm v zero-snr learned 8", FPDM_SCHEDULE_LINEAR, 1, "8", FPDM_SAMPLER_DDPM, 0,
         FPDM_PREDICT_V, 1, 0},
        {"ddim eps eta 0 10", FPDM_SCHEDULE_LINEAR, 0, "10", FPDM_SAMPLER_DDIM, 0,
         FPDM_PREDICT_EPS, 1, 0},
        {"ddim eps eta 0.5 ddim25", FPDM_SCHEDULE_LINEAR, 0, "ddim25", FPDM_SAMPLER_DDIM, 0.5f,
         FPDM_PREDICT_EPS, 0, 0},
        {"ddim eps eta 1 cosine 12", FPDM_SCHEDULE_SQUAREDCOS_CAP_V2, 0, "12",
         FPDM_SAMPLER_DDIM, 1.0f, FPDM_PREDICT_EPS, 0, 0},
        {"ddim v zero-snr eta 0 8", FPDM_SCHEDULE_LINEAR, 1, "8", FPDM_SAMPLER_DDIM, 0,
         FPDM_PREDICT_V, 0, 0},
        {"ddim v zero-snr eta 0.7 cosine 5", FPDM_SCHEDULE_SQUAREDCOS_CAP_V2, 1, "5",
         FPDM_SAMPLER_DDIM, 0.7f, FPDM_PREDICT_V, 0, 0},
        {"ddim x0 eta 0.3 6", FPDM_SCHEDULE_LINEAR, 0, "6", FPDM_SAMPLER_DDIM, 0.3f,
         FPDM_PREDICT_X0, 0, 0},
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) test_step_case(&cases[k]);

    /* DDIM with eta 0 adds no noise anywhere; eps at alphas_cumprod 0 and a step
     * out of range are refused. */
    diffusion d;
    char err[256];
    diffusion_step_coefs coefs;
    CHECK(diffusion_init(&d, FPDM_SCHEDULE_LINEAR, 1000, 1, "4", err, sizeof err) == 0);
    CHECK(diffusion_step_coefs_for(&d, 3, FPDM_SAMPLER_DDIM, 0, FPDM_PREDICT_V, 0, 0, &coefs) == 0 &&
          !coefs.add_noise);
    CHECK(diffusion_step_coefs_for(&d, 3, FPDM_SAMPLER_DDPM, 0, FPDM_PREDICT_EPS, 1, 0, &coefs) == -1);
    CHECK(diffusion_step_coefs_for(&d, 4, FPDM_SAMPLER_DDPM, 0, FPDM_PREDICT_V, 1, 0, &coefs) == -1);
    CHECK(diffusion_step_coefs_for(&d, -1, FPDM_SAMPLER_DDPM, 0, FPDM_PREDICT_V, 1, 0, &coefs) == -1);
    diffusion_free(&d);
}

int main(void) {
    test_golden_tables();
    test_three_steps();
    test_rejections();
    test_step_coefs();
    return test_finish("test_diffusion");
}
