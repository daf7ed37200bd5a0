/* fpdm_bench.c - fpdm-bench: measures how fast the library runs a model:
 * images/s, model evaluations/s, fixed-point iterations/s and the achieved
 * GFLOP/s from an analytic FLOP count, for a model file or for a named
 * architecture with random weights (written to a temporary file and deleted
 * once loaded).
 *
 *   fpdm-bench                                   DiT-S/2 at 256, batch 1, CPU
 *   fpdm-bench --config FPDM-XL/2 --iters 1,4,26 --batch-size 1,8 --device cuda
 *   fpdm-bench --model models/fpdm-mnist.safetensors --mode sample --steps 20 --json
 *   fpdm-bench --config tiny-fpdm --write-model /tmp/tiny.safetensors
 *
 * --mode forward (default) times single fpdm_forward calls; --mode sample
 * times whole fpdm_sample runs of --steps steps. Exit status: 0, 1 runtime
 * failure, 2 usage error. */
#define _POSIX_C_SOURCE 200809L

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"
#include "fpdm.h"
#include "progress.h"
#include "report.h"
#include "synthetic_model.h"

#define PROGRAM "fpdm-bench"
#define DEFAULT_CONFIG "DiT-S/2"
#define CFG_SCALE 4.0f
/* fpdm_model_info has no mlp_ratio; every official configuration uses 4. */
#define MLP_RATIO 4
#define TIMESTEP_FREQUENCIES 256

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };
enum { MODE_FORWARD, MODE_SAMPLE };

typedef struct options {
    const char *model_path;
    const char *config_name;
    int image_size;
    int *batch_sizes;
    int num_batch_sizes;
    int *iters;               /* NULL: the model's default */
    int num_iters;
    int steps;
    int cfg;
    const char *device;
    int precision;
    int threads;
    int repeat;
    int warmup;
    int json;
    int mode;
    const char *write_model;
    uint64_t seed;
} options;

static void print_help(FILE *out)
{
    fprintf(out,
"usage: " PROGRAM " [options]\n"
"Measures images/s, model evaluations/s, fixed-point iterations/s and GFLOP/s.\n"
"\n"
"      --model FILE         benchmark this model file, or\n"
"      --config NAME        an architecture with random weights (default: " DEFAULT_CONFIG ")\n"
"                           one of: %s\n"
"      --image-size N       256 | 512 for the latent configurations (default: 256)\n"
"      --write-model FILE   write the --config model file and exit\n"
"      --mode M             forward | sample (default: forward)\n"
"      --batch-size LIST    comma-separated batch sizes (default: 1)\n"
"      --iters LIST         FPDM iterations per forward (default: the model's)\n"
"      --steps N            sampling steps for --mode sample (default: 10)\n"
"      --cfg on|off         classifier-free guidance: doubled rows (default: off)\n"
"      --device DEV         cpu | cuda | cuda:N (default: cpu)\n"
"      --precision P        fp32 | bf16 | fp16 (default: the device's)\n"
"      --threads N          CPU threads (default: OpenMP's choice)\n"
"      --repeat N           timed runs per measurement (default: 3)\n"
"      --warmup N           untimed runs first (default: 1)\n"
"      --seed S             seed of the weights and inputs (default: 0)\n"
"      --json               print JSON instead of a table\n"
"  -h, --help               this help\n",
            synthetic_config_names());
}

static int usage_error(const char *message)
{
    fprintf(stderr, PROGRAM ": %s\n" PROGRAM ": try '" PROGRAM " --help'\n", message);
    return EXIT_USAGE;
}

static const char *const mode_names[] = {"forward", "sample", NULL};
static const char *const on_off_names[] = {"off", "on", NULL};
static const char *const precision_names[] = {"fp32", "bf16", "fp16", NULL};
static const fpdm_precision precision_values[] = {FPDM_PRECISION_FP32, FPDM_PRECISION_BF16,
                                                  FPDM_PRECISION_FP16};

/* Returns 0, EXIT_USAGE after printing, or -1 after --help. */
static int parse_arguments(int argc, char **argv, options *opt)
{
    char err[512];
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            print_help(stdout);
            return -1;
        }
        if (strcmp(arg, "--json") == 0) {
            opt->json = 1;
            continue;
        }
        static const char *const value_flags[] = {
            "--model", "--config", "--image-size", "--write-model", "--mode", "--batch-size",
            "--iters", "--steps", "--cfg", "--device", "--precision", "--threads", "--repeat",
            "--warmup", "--seed", NULL};
        const char *flag = NULL, *value = NULL;
        for (int f = 0; value_flags[f] && !flag; f++) {
            if (strcmp(arg, value_flags[f]) == 0) {
                flag = value_flags[f];
                if (i + 1 >= argc) {
                    snprintf(err, sizeof err, "%s: missing value", flag);
                    return usage_error(err);
                }
                value = argv[++i];
            } else if ((value = cli_inline_value(arg, value_flags[f])) != NULL) {
                flag = value_flags[f];
            }
        }
        if (!flag) {
            snprintf(err, sizeof err, "unknown option '%s'", arg);
            return usage_error(err);
        }
        int rc = 0, index = 0;
        if (strcmp(flag, "--model") == 0) {
            opt->model_path = value;
        } else if (strcmp(flag, "--config") == 0) {
            opt->config_name = value;
        } else if (strcmp(flag, "--write-model") == 0) {
            opt->write_model = value;
        } else if (strcmp(flag, "--image-size") == 0) {
            rc = cli_parse_int(flag, value, 8, 4096, &opt->image_size, err, sizeof err);
        } else if (strcmp(flag, "--mode") == 0) {
            rc = cli_parse_choice(flag, value, mode_names, &opt->mode, err, sizeof err);
        } else if (strcmp(flag, "--batch-size") == 0) {
            free(opt->batch_sizes);
            opt->batch_sizes = NULL;
            rc = cli_parse_int_list(flag, value, 1, 65536, &opt->batch_sizes,
                                    &opt->num_batch_sizes, err, sizeof err);
        } else if (strcmp(flag, "--iters") == 0) {
            free(opt->iters);
            opt->iters = NULL;
            rc = cli_parse_int_list(flag, value, 0, 100000, &opt->iters, &opt->num_iters, err,
                                    sizeof err);
        } else if (strcmp(flag, "--steps") == 0) {
            rc = cli_parse_int(flag, value, 1, 100000, &opt->steps, err, sizeof err);
        } else if (strcmp(flag, "--cfg") == 0) {
            rc = cli_parse_choice(flag, value, on_off_names, &opt->cfg, err, sizeof err);
        } else if (strcmp(flag, "--device") == 0) {
            opt->device = value;
        } else if (strcmp(flag, "--precision") == 0) {
            rc = cli_parse_choice(flag, value, precision_names, &index, err, sizeof err);
            opt->precision = (int)precision_values[index];
        } else if (strcmp(flag, "--threads") == 0) {
            rc = cli_parse_int(flag, value, 1, 4096, &opt->threads, err, sizeof err);
        } else if (strcmp(flag, "--repeat") == 0) {
            rc = cli_parse_int(flag, value, 1, 1000000, &opt->repeat, err, sizeof err);
        } else if (strcmp(flag, "--warmup") == 0) {
            rc = cli_parse_int(flag, value, 0, 1000000, &opt->warmup, err, sizeof err);
        } else if (strcmp(flag, "--seed") == 0) {
            rc = cli_parse_u64(flag, value, &opt->seed, err, sizeof err);
        }
        if (rc != 0)
            return usage_error(err);
    }
    if (opt->model_path && opt->config_name)
        return usage_error("give --model FILE or --config NAME, not both");
    if (opt->model_path && opt->write_model)
        return usage_error("--write-model writes a --config model; it does not copy --model");
    return 0;
}

/* ---- the FLOP count ------------------------------------------------------- */

/* Multiply-adds count 2 FLOPs; norms, activations and the softmax are left
 * out (a few percent). Counts are per batch row (one image, one forward). */
typedef struct flop_count {
    double base;              /* one forward without fixed-point iterations */
    double per_iter;          /* one fixed-point iteration (FPDM) */
} flop_count;

static double block_flops(double tokens, double hidden, double mlp_hidden)
{
    const double linear = 2.0 * tokens * (3 * hidden * hidden + hidden * hidden +
                                          2 * hidden * mlp_hidden);
    const double attention = 4.0 * tokens * tokens * hidden;  /* Q K^T and A V */
    return linear + attention;
}

static flop_count count_flops(const fpdm_model_info *info)
{
    const double d = info->hidden_size, m = MLP_RATIO * d, p = info->patch_size;
    const double grid = info->input_size / info->patch_size;
    const double t = grid * grid;
    const double adaln = 2.0 * d * 6 * d;  /* per block, once per forward */
    flop_count fc = {0, 0};
    fc.base += 2.0 * t * d * info->in_channels * p * p;                /* patch embedding */
    fc.base += 2.0 * (TIMESTEP_FREQUENCIES * d + d * d);               /* timestep MLP */
    fc.base += 2.0 * t * d * p * p * info->out_channels + 2.0 * d * 2 * d;  /* final layer */
    if (info->is_fixed_point) {
        const int outer_blocks = info->pre_depth + info->post_depth;
        fc.base += outer_blocks * (block_flops(t, d, m) + adaln);
        /* Input injection: the pre projection and the injection half of fc1
         * are computed once per forward; the implicit block's modulation
         * too, since its conditioning does not change between iterations. */
        fc.base += 2.0 * t * d * d + 2.0 * t * d * 2 * d + adaln;
        /* Per iteration: the solution half of fc1, fc2, then the block. */
        fc.per_iter = 2.0 * t * d * 2 * d + 2.0 * t * 2 * d * d + block_flops(t, d, m);
    } else {
        fc.base += info->depth * (block_flops(t, d, m) + adaln);
    }
    return fc;
}

/* ---- measuring ------------------------------------------------------------- */

typedef struct measurement {
    int batch;
    int iters;                /* -1 for DiT */
    int rows;                 /* network batch rows: batch, doubled with CFG */
    double seconds_mean, seconds_min;
    double images_per_second;
    double evaluations_per_second;
    double iterations_per_second;
    double gflop;             /* per timed call */
    double gflops;
} measurement;

typedef struct bench {
    const options *opt;
    fpdm_context *ctx;
    fpdm_model *model;
    const fpdm_model_info *info;
    flop_count flops;
} bench;

static void finish_measurement(measurement *m, const double *seconds, int repeat)
{
    double sum = 0, min = seconds[0];
    for (int r = 0; r < repeat; r++) {
        sum += seconds[r];
        if (seconds[r] < min)
            min = seconds[r];
    }
    m->seconds_mean = sum / repeat;
    m->seconds_min = min;
}

/* Times fpdm_forward on one batch of random inputs. */
static int measure_forward(bench *b, int batch, int iters, measurement *m, double *seconds)
{
    const fpdm_model_info *info = b->info;
    const int rows = b->opt->cfg ? 2 * batch : batch;
    const size_t in_floats = (size_t)info->in_channels * info->input_size * info->input_size;
    const size_t out_floats = (size_t)info->out_channels * info->input_size * info->input_size;
    float *x = malloc((size_t)rows * in_floats * sizeof(float));
    float *out = malloc((size_t)rows * out_floats * sizeof(float));
    float *timesteps = malloc((size_t)rows * sizeof(float));
    int *labels = malloc((size_t)rows * sizeof(int));
    int rc = 0;
    if (!x || !out || !timesteps || !labels) {
        fprintf(stderr, PROGRAM ": out of memory for batch %d\n", batch);
        rc = EXIT_RUNTIME;
        goto done;
    }
    fpdm_noise(b->opt->seed, 0, 0, x, (size_t)rows * in_floats);
    for (int r = 0; r < rows; r++) {
        timesteps[r] = (float)(info->num_train_timesteps / 2);
        /* With CFG the second half carries the null class, as in sampling. */
        labels[r] = r < batch ? r % info->num_classes : info->num_classes;
    }
    for (int r = 0; r < b->opt->warmup + b->opt->repeat && rc == 0; r++) {
        const double start = progress_now();
        if (fpdm_forward(b->ctx, b->model, rows, x, timesteps, labels, iters, NULL, out, NULL) !=
            FPDM_OK) {
            fprintf(stderr, PROGRAM ": forward failed: %s\n", fpdm_last_error(b->ctx));
            rc = EXIT_RUNTIME;
        }
        if (r >= b->opt->warmup)
            seconds[r - b->opt->warmup] = progress_now() - start;
    }
    if (rc == 0) {
        finish_measurement(m, seconds, b->opt->repeat);
        const int fp_iters = info->is_fixed_point ? iters : 0;
        m->gflop = rows * (b->flops.base + fp_iters * b->flops.per_iter) / 1e9;
        m->images_per_second = batch / m->seconds_mean;
        m->evaluations_per_second = rows / m->seconds_mean;
        m->iterations_per_second = (double)rows * fp_iters / m->seconds_mean;
    }
done:
    free(x);
    free(out);
    free(timesteps);
    free(labels);
    return rc;
}

/* Times whole fpdm_sample runs of `batch` images in one network batch. The
 * FLOPs come from the iterations the run reports per step. */
static int measure_sample(bench *b, int batch, int iters, measurement *m, double *seconds)
{
    const options *opt = b->opt;
    const int rows = opt->cfg ? 2 * batch : batch;
    float *latents = malloc(fpdm_sample_output_size(b->model, batch) * sizeof(float));
    int *labels = malloc((size_t)batch * sizeof(int));
    int rc = 0;
    if (!latents || !labels) {
        fprintf(stderr, PROGRAM ": out of memory for batch %d\n", batch);
        rc = EXIT_RUNTIME;
        goto done;
    }
    for (int i = 0; i < batch; i++)
        labels[i] = i % b->info->num_classes;
    fpdm_sample_params sp = fpdm_sample_default_params(b->model);
    sp.num_steps = opt->steps;
    sp.cfg_scale = opt->cfg ? CFG_SCALE : 1.0f;
    sp.batch_size = batch;
    sp.noise_seed = opt->seed;
    if (b->info->is_fixed_point)
        sp.iters = iters;
    long long evaluations = 0, iterations = 0;
    double gflop = 0;
    for (int r = 0; r < opt->warmup + opt->repeat && rc == 0; r++) {
        fpdm_sample_report report = {0};
        const double start = progress_now();
        if (fpdm_sample(b->ctx, b->model, &sp, batch, labels, latents, &report) != FPDM_OK) {
            fprintf(stderr, PROGRAM ": sampling failed: %s\n", fpdm_last_error(b->ctx));
            rc = EXIT_RUNTIME;
        } else if (r >= opt->warmup) {
            seconds[r - opt->warmup] = progress_now() - start;
            evaluations += report.model_evaluations;
            iterations += report.fixed_point_iterations;
            double run_gflop = 0;
            for (int s = 0; s < report.num_steps; s++)
                run_gflop += rows * (b->flops.base + report.steps[s].iters_used * b->flops.per_iter);
            gflop += run_gflop / 1e9;
        }
        fpdm_sample_report_free(&report);
    }
    if (rc == 0) {
        finish_measurement(m, seconds, opt->repeat);
        const double total_seconds = m->seconds_mean * opt->repeat;
        m->gflop = gflop / opt->repeat;
        m->images_per_second = batch / m->seconds_mean;
        m->evaluations_per_second = evaluations / total_seconds;
        /* The report counts iterations per batch; every row runs them. */
        m->iterations_per_second = (double)iterations * rows / total_seconds;
    }
done:
    free(latents);
    free(labels);
    return rc;
}

/* ---- setup and output ------------------------------------------------------ */

static void log_to_stderr(fpdm_log_level level, const char *message, void *user_data)
{
    (void)user_data;
    if (level == FPDM_LOG_WARN)
        fprintf(stderr, PROGRAM ": warning: %s\n", message);
}

/* Writes the --config model to a temporary file, loads it, deletes the file. */
static int load_synthetic(bench *b, const synthetic_config *config)
{
    const char *tmp_dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    char path[PATH_MAX], err[512];
    if (snprintf(path, sizeof path, "%s/fpdm-bench-model-XXXXXX", tmp_dir) >= (int)sizeof path) {
        fprintf(stderr, PROGRAM ": TMPDIR is too long\n");
        return EXIT_RUNTIME;
    }
    int fd = mkstemp(path);
    if (fd < 0) {
        fprintf(stderr, PROGRAM ": cannot create a temporary model file in %s\n", tmp_dir);
        return EXIT_RUNTIME;
    }
    close(fd);
    int rc = 0;
    if (synthetic_model_write(config, path, b->opt->seed, err, sizeof err) != 0) {
        fprintf(stderr, PROGRAM ": %s\n", err);
        rc = EXIT_RUNTIME;
    } else if (fpdm_model_load(b->ctx, path, &b->model) != FPDM_OK) {
        fprintf(stderr, PROGRAM ": %s\n", fpdm_last_error(b->ctx));
        rc = EXIT_RUNTIME;
    }
    unlink(path);
    return rc;
}

static void print_table_header(const bench *b, const char *model_name)
{
    const fpdm_model_info *info = b->info;
    printf("%s: %s (%s, %.1fM parameters, %s %dx%dx%d), %s, mode %s, cfg %s, "
           "%d warmup + %d timed\n",
           PROGRAM, model_name, info->is_fixed_point ? "FPDM" : "DiT",
           info->num_parameters / 1e6, info->latent_space ? "latent" : "pixel",
           info->in_channels, info->input_size, info->input_size,
           fpdm_context_device_name(b->ctx), mode_names[b->opt->mode],
           on_off_names[b->opt->cfg], b->opt->warmup, b->opt->repeat);
    printf("%6s %6s %6s %10s %10s %10s %10s %12s %10s %9s\n", "batch", "iters", "rows",
           "mean s", "min s", "images/s", "evals/s", "fp-iters/s", "GFLOP", "GFLOP/s");
}

static void print_table_row(const measurement *m)
{
    char iters[16];
    if (m->iters >= 0)
        snprintf(iters, sizeof iters, "%d", m->iters);
    else
        snprintf(iters, sizeof iters, "-");
    printf("%6d %6s %6d %10.4f %10.4f %10.3f %10.3f %12.3f %10.3f %9.2f\n", m->batch, iters,
           m->rows, m->seconds_mean, m->seconds_min, m->images_per_second,
           m->evaluations_per_second, m->iterations_per_second, m->gflop, m->gflops);
}

static void add_json_row(report *r, const measurement *m)
{
    const report_field fields[] = {
        {"batch_size", NULL, m->batch},
        {"iters", NULL, m->iters},
        {"rows", NULL, m->rows},
        {"seconds_mean", NULL, m->seconds_mean},
        {"seconds_min", NULL, m->seconds_min},
        {"images_per_second", NULL, m->images_per_second},
        {"model_evaluations_per_second", NULL, m->evaluations_per_second},
        {"fixed_point_iterations_per_second", NULL, m->iterations_per_second},
        {"gflop", NULL, m->gflop},
        {"gflops", NULL, m->gflops},
    };
    report_add_row(r, "results", fields, (int)(sizeof fields / sizeof fields[0]));
}

static void add_json_settings(report *r, const bench *b, const char *model_name)
{
    const options *opt = b->opt;
    report_set_string(r, "settings", "model", model_name);
    report_set_string(r, "settings", "architecture", b->info->is_fixed_point ? "fpdm" : "dit");
    report_set_number(r, "settings", "parameters", (double)b->info->num_parameters);
    report_set_number(r, "settings", "input_size", b->info->input_size);
    report_set_string(r, "settings", "device", fpdm_context_device_name(b->ctx));
    report_set_string(r, "settings", "precision",
                      opt->precision ? precision_names[opt->precision - 1] : "default");
    report_set_number(r, "settings", "threads", opt->threads);
    report_set_string(r, "settings", "mode", mode_names[opt->mode]);
    report_set_bool(r, "settings", "cfg", opt->cfg);
    if (opt->mode == MODE_SAMPLE)
        report_set_number(r, "settings", "steps", opt->steps);
    report_set_number(r, "settings", "warmup", opt->warmup);
    report_set_number(r, "settings", "repeat", opt->repeat);
    report_set_number(r, "settings", "gflop_per_row_base", b->flops.base / 1e9);
    report_set_number(r, "settings", "gflop_per_row_iteration", b->flops.per_iter / 1e9);
}

static int run_measurements(bench *b, const char *model_name)
{
    const options *opt = b->opt;
    const int default_iters = b->info->is_fixed_point ? b->info->default_iters : -1;
    const int num_iters = b->info->is_fixed_point && opt->iters ? opt->num_iters : 1;
    double *seconds = malloc((size_t)opt->repeat * sizeof(double));
    report *json = opt->json ? report_create(PROGRAM) : NULL;
    int rc = 0;
    if (!seconds || (opt->json && !json)) {
        fprintf(stderr, PROGRAM ": out of memory\n");
        rc = EXIT_RUNTIME;
        goto done;
    }
    if (json)
        add_json_settings(json, b, model_name);
    else
        print_table_header(b, model_name);
    for (int bi = 0; bi < opt->num_batch_sizes && rc == 0; bi++) {
        for (int ii = 0; ii < num_iters && rc == 0; ii++) {
            measurement m = {0};
            m.batch = opt->batch_sizes[bi];
            m.iters = b->info->is_fixed_point && opt->iters ? opt->iters[ii] : default_iters;
            m.rows = opt->cfg ? 2 * m.batch : m.batch;
            rc = opt->mode == MODE_FORWARD ? measure_forward(b, m.batch, m.iters, &m, seconds)
                                           : measure_sample(b, m.batch, m.iters, &m, seconds);
            if (rc != 0)
                break;
            m.gflops = m.gflop / m.seconds_mean;
            if (json)
                add_json_row(json, &m);
            else
                print_table_row(&m);
            fflush(stdout);
        }
    }
    if (rc == 0 && json) {
        char *text = report_to_string(json);
        if (text)
            printf("%s\n", text);
        free(text);
    }
done:
    free(seconds);
    report_free(json);
    return rc;
}

int main(int argc, char **argv)
{
    options opt = {
        .image_size = 256,
        .steps = 10,
        .device = "cpu",
        .repeat = 3,
        .warmup = 1,
    };
    bench b = {.opt = &opt};
    char err[512];
    int rc = parse_arguments(argc, argv, &opt);
    if (rc != 0)
        goto done;
    if (!opt.batch_sizes) {
        opt.batch_sizes = malloc(sizeof(int));
        if (!opt.batch_sizes) {
            rc = EXIT_RUNTIME;
            goto done;
        }
        opt.batch_sizes[0] = 1;
        opt.num_batch_sizes = 1;
    }
    synthetic_config config;
    if (!opt.model_path) {
        const char *name = opt.config_name ? opt.config_name : DEFAULT_CONFIG;
        if (synthetic_config_lookup(name, opt.image_size, &config, err, sizeof err) != 0) {
            char message[600];
            snprintf(message, sizeof message, "--config: %s", err);
            rc = usage_error(message);
            goto done;
        }
    }
    if (opt.write_model) {
        if (synthetic_model_write(&config, opt.write_model, opt.seed, err, sizeof err) != 0) {
            fprintf(stderr, PROGRAM ": %s\n", err);
            rc = EXIT_RUNTIME;
        }
        goto done;
    }

    fpdm_context_params cp = fpdm_context_default_params();
    cp.device = opt.device;
    cp.precision = (fpdm_precision)opt.precision;
    cp.num_threads = opt.threads;
    cp.log_callback = log_to_stderr;
    if (fpdm_context_create(&cp, &b.ctx) != FPDM_OK) {
        fprintf(stderr, PROGRAM ": --device %s: %s\n", opt.device,
                b.ctx ? fpdm_last_error(b.ctx) : "out of memory");
        rc = EXIT_RUNTIME;
        goto done;
    }
    if (opt.model_path) {
        if (fpdm_model_load(b.ctx, opt.model_path, &b.model) != FPDM_OK) {
            fprintf(stderr, PROGRAM ": %s\n", fpdm_last_error(b.ctx));
            rc = EXIT_RUNTIME;
            goto done;
        }
    } else {
        rc = load_synthetic(&b, &config);
        if (rc != 0)
            goto done;
    }
    b.info = fpdm_model_get_info(b.model);
    b.flops = count_flops(b.info);
    if (opt.iters && !b.info->is_fixed_point) {
        rc = usage_error("--iters applies to fixed-point (FPDM) models only");
        goto done;
    }
    if (opt.mode == MODE_SAMPLE && opt.steps > b.info->num_train_timesteps) {
        snprintf(err, sizeof err, "--steps: %d is out of range (allowed: 1..%d)", opt.steps,
                 b.info->num_train_timesteps);
        rc = usage_error(err);
        goto done;
    }
    rc = run_measurements(&b, opt.model_path ? opt.model_path : config.name);
done:
    fpdm_model_free(b.model);
    fpdm_context_free(b.ctx);
    free(opt.batch_sizes);
    free(opt.iters);
    return rc < 0 ? 0 : rc;
}
