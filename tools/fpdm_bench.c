/* fpdm_bench.c - fpdm-bench: measures how fast the library runs a model:
 * images/s, model evaluations/s, fixed-point iterations/s and the achieved
 * GFLOP/s from an analytic FLOP count, for a model file or for a named
 * architecture with random weights (written to a temporary file and deleted
 * once loaded). Beside each measurement: the activation arena, the device
 * memory in use, the analytic minimum activation footprint, the weights'
 * bytes, and the achieved rate as a fraction of one large matrix product's
 * (fpdm_benchmark_matmul: its fastest run, on the CPU over about half a
 * second; once per run). With --vae or --vae-config it also times the VAE decoder
 * (fpdm_vae_decode) at 256 and 512 px.
 *
 *   fpdm-bench                                   DiT-S/2 at 256, batch 1, CPU
 *   fpdm-bench --config FPDM-XL/2 --iters 1,4,26 --batch-size 1,8 --device cuda
 *   fpdm-bench --model models/fpdm-mnist.safetensors --mode sample --steps 20 --json
 *   fpdm-bench --config tiny-fpdm --write-model /tmp/tiny.safetensors
 *   fpdm-bench --mode vae --vae-config sd --vae-batch 4
 *
 * --mode forward (default) times single fpdm_forward calls; --mode sample
 * times whole fpdm_sample runs of --steps steps; --mode vae times only the
 * decoder. Exit status: 0, 1 runtime failure (including a GPU or CUDA build
 * this machine lacks), 2 usage error. */
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
#include "synthetic_vae.h"

#define PROGRAM "fpdm-bench"
#define DEFAULT_CONFIG "DiT-S/2"
#define DEFAULT_IMAGE_SIZE 256
#define DEFAULT_STEPS 10
#define DEFAULT_VAE_BATCH 1
#define CFG_SCALE 4.0f
#define TIMESTEP_FREQUENCIES 256
/* The reference product: m = n = k, big enough to reach the device's rate.
 * Rounds of REFERENCE_REPEATS_* products (each round warms up first) until
 * REFERENCE_SECONDS have passed, at most REFERENCE_ROUNDS_*: many on the CPU,
 * which other processes share, one on a GPU, which they do not (and where
 * more would crowd a profile of the network with the reference's kernels). */
#define REFERENCE_SIZE_GPU 8192
#define REFERENCE_SIZE_CPU 1024
#define REFERENCE_REPEATS_GPU 10
#define REFERENCE_REPEATS_CPU 5
#define REFERENCE_ROUNDS_GPU 1
#define REFERENCE_ROUNDS_CPU 20
#define REFERENCE_SECONDS 0.5
#define MB (1024.0 * 1024.0)

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2 };
enum { MODE_FORWARD, MODE_SAMPLE, MODE_VAE };

typedef struct options {
    const char *model_path;
    const char *config_name;
    int image_size;           /* 0: DEFAULT_IMAGE_SIZE */
    int *batch_sizes;
    int num_batch_sizes;
    int *iters;               /* NULL: the model's default */
    int num_iters;
    int steps;                /* 0: DEFAULT_STEPS */
    int cfg;                  /* -1: not given (off) */
    const char *device;       /* --device, or NULL (see cli_device) */
    fpdm_precision precision;
    int threads;
    int repeat;
    int warmup;
    int json;
    int mode;
    const char *write_model;
    const char *timing_flag;  /* the first option given that only a timed run uses */
    uint64_t seed;
    const char *vae_path;
    const char *vae_config_name;
    int vae_batch;            /* 0: DEFAULT_VAE_BATCH */
    int *vae_latent_sizes;
    int num_vae_latent_sizes;
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
"      --write-model FILE   write the --config model file and exit (takes only\n"
"                           --config, --image-size and --seed)\n"
"      --mode M             forward | sample | vae (default: forward; vae: the decoder only)\n"
"      --batch-size LIST    comma-separated batch sizes (default: 1)\n"
"      --iters LIST         FPDM iterations per forward (default: the model's)\n"
"      --steps N            sampling steps for --mode sample (default: 10)\n"
"      --cfg on|off         classifier-free guidance: doubled rows (default: off; not with\n"
"                           --mode vae)\n"
"      --device DEV         auto | cpu | cuda | cuda:N (default: $FPDM_DEVICE, else auto:\n"
"                           the first GPU when this build has CUDA and one is visible,\n"
"                           else cpu)\n"
"      --precision P        fp32 | bf16 | fp16 (default: the device's)\n"
"      --threads N          CPU threads (default: OpenMP's choice)\n"
"      --repeat N           timed runs per measurement (default: 3)\n"
"      --warmup N           untimed runs first (default: 1)\n"
"      --seed S             seed of the weights and inputs (default: 0)\n"
"      --vae FILE           also time this VAE decoder (diffusers AutoencoderKL), or\n"
"      --vae-config NAME    a decoder with random weights: %s\n"
"      --vae-batch N        latents per fpdm_vae_decode call (default: 1)\n"
"      --vae-latent-sizes L latent sizes to decode (default: 32,64: 256 and 512 px for SD)\n"
"      --json               print JSON instead of a table\n"
"  -h, --help               this help\n"
"\n"
"images/s counts images; evals/s and fp-iters/s count network rows (images, doubled\n"
"with --cfg on): rows through the network, and rows through one fixed-point\n"
"iteration, per second (fpdm-sample's report counts a batch's iteration once,\n"
"whatever its rows).\n",
            synthetic_config_names(), synthetic_vae_config_names());
}

static int usage_error(const char *message)
{
    fprintf(stderr, PROGRAM ": %s\n" PROGRAM ": try '" PROGRAM " --help'\n", message);
    return EXIT_USAGE;
}

static const char *const mode_names[] = {"forward", "sample", "vae", NULL};
static const char *const on_off_names[] = {"off", "on", NULL};

/* Whether a flag is one of those that --write-model's file depends on; every
 * other one only matters to a timed run. */
static int shapes_model_file(const char *flag)
{
    static const char *const flags[] = {"--config", "--image-size", "--write-model", "--seed",
                                        NULL};
    for (int i = 0; flags[i]; i++)
        if (strcmp(flag, flags[i]) == 0)
            return 1;
    return 0;
}

/* Options that the chosen mode would silently ignore are usage errors, so that
 * a run never looks like it measured what it did not. 0 or EXIT_USAGE. */
static int refuse_unused_options(const options *opt)
{
    char err[512];
    if (opt->write_model && opt->timing_flag) {
        snprintf(err, sizeof err, "%s has no effect with --write-model, which writes the --config "
                 "model file and exits", opt->timing_flag);
        return usage_error(err);
    }
    if (opt->steps && opt->mode != MODE_SAMPLE) {
        snprintf(err, sizeof err, "--steps applies to --mode sample only; --mode %s runs no "
                 "sampling steps", mode_names[opt->mode]);
        return usage_error(err);
    }
    if (opt->mode == MODE_VAE) {
        const char *model_flag = opt->model_path ? "--model"
                                 : opt->config_name ? "--config"
                                 : opt->image_size ? "--image-size"
                                 : opt->batch_sizes ? "--batch-size"
                                 : opt->iters ? "--iters"
                                 : opt->cfg >= 0 ? "--cfg"
                                                    : NULL;
        if (model_flag) {
            snprintf(err, sizeof err, "%s has no effect with --mode vae, which times the VAE "
                     "decoder only (without --mode vae the model and the decoder are timed)",
                     model_flag);
            return usage_error(err);
        }
    }
    if (opt->image_size && opt->model_path)
        return usage_error("--image-size applies to --config; a --model file has its own size");
    if ((opt->vae_batch || opt->vae_latent_sizes) && !opt->vae_path && !opt->vae_config_name) {
        snprintf(err, sizeof err, "%s applies to the VAE decoder: give --vae FILE or "
                 "--vae-config NAME to time one",
                 opt->vae_batch ? "--vae-batch" : "--vae-latent-sizes");
        return usage_error(err);
    }
    return 0;
}

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
            if (!opt->timing_flag)
                opt->timing_flag = "--json";
            continue;
        }
        static const char *const value_flags[] = {
            "--model", "--config", "--image-size", "--write-model", "--mode", "--batch-size",
            "--iters", "--steps", "--cfg", "--device", "--precision", "--threads", "--repeat",
            "--warmup", "--seed", "--vae", "--vae-config", "--vae-batch", "--vae-latent-sizes",
            NULL};
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
        if (value[0] == '\0') {
            snprintf(err, sizeof err, "%s: empty value", flag);
            return usage_error(err);
        }
        if (!opt->timing_flag && !shapes_model_file(flag))
            opt->timing_flag = flag;
        int rc = 0;
        if (strcmp(flag, "--model") == 0) {
            opt->model_path = value;
        } else if (strcmp(flag, "--config") == 0) {
            opt->config_name = value;
        } else if (strcmp(flag, "--write-model") == 0) {
            opt->write_model = value;
        } else if (strcmp(flag, "--image-size") == 0) {
            /* The sizes the latent configurations come in (DiT's 256 and 512 px). */
            static const char *const image_sizes[] = {"256", "512", NULL};
            int choice = 0;
            rc = cli_parse_choice(flag, value, image_sizes, &choice, err, sizeof err);
            opt->image_size = choice ? 512 : 256;
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
            rc = cli_parse_int_list(flag, value, 0, FPDM_MAX_ITERS, &opt->iters, &opt->num_iters,
                                    err, sizeof err);
        } else if (strcmp(flag, "--steps") == 0) {
            rc = cli_parse_int(flag, value, 1, 100000, &opt->steps, err, sizeof err);
        } else if (strcmp(flag, "--cfg") == 0) {
            rc = cli_parse_choice(flag, value, on_off_names, &opt->cfg, err, sizeof err);
        } else if (strcmp(flag, "--device") == 0) {
            opt->device = value;
        } else if (strcmp(flag, "--precision") == 0) {
            rc = cli_parse_precision(flag, value, &opt->precision, err, sizeof err);
        } else if (strcmp(flag, "--threads") == 0) {
            rc = cli_parse_int(flag, value, 1, 4096, &opt->threads, err, sizeof err);
        } else if (strcmp(flag, "--repeat") == 0) {
            rc = cli_parse_int(flag, value, 1, 1000000, &opt->repeat, err, sizeof err);
        } else if (strcmp(flag, "--warmup") == 0) {
            rc = cli_parse_int(flag, value, 0, 1000000, &opt->warmup, err, sizeof err);
        } else if (strcmp(flag, "--seed") == 0) {
            rc = cli_parse_u64(flag, value, &opt->seed, err, sizeof err);
        } else if (strcmp(flag, "--vae") == 0) {
            opt->vae_path = value;
        } else if (strcmp(flag, "--vae-config") == 0) {
            opt->vae_config_name = value;
        } else if (strcmp(flag, "--vae-batch") == 0) {
            rc = cli_parse_int(flag, value, 1, 65536, &opt->vae_batch, err, sizeof err);
        } else if (strcmp(flag, "--vae-latent-sizes") == 0) {
            free(opt->vae_latent_sizes);
            opt->vae_latent_sizes = NULL;
            rc = cli_parse_int_list(flag, value, 1, 1024, &opt->vae_latent_sizes,
                                    &opt->num_vae_latent_sizes, err, sizeof err);
        }
        if (rc != 0)
            return usage_error(err);
    }
    if (opt->model_path && opt->config_name)
        return usage_error("give --model FILE or --config NAME, not both");
    if (opt->model_path && opt->write_model)
        return usage_error("--write-model writes a --config model; it does not copy --model");
    if (opt->vae_path && opt->vae_config_name)
        return usage_error("give --vae FILE or --vae-config NAME, not both");
    if (opt->mode == MODE_VAE && !opt->vae_path && !opt->vae_config_name)
        return usage_error("--mode vae needs --vae FILE or --vae-config NAME");
    return refuse_unused_options(opt);
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
    const double d = info->hidden_size, m = info->mlp_hidden, p = info->patch_size;
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
    double reference_fraction;   /* gflops / the reference product's rate */
    fpdm_memory_info memory;     /* after the run */
    double min_activation_bytes;
} measurement;

typedef struct bench {
    const options *opt;
    fpdm_context *ctx;
    fpdm_model *model;
    const fpdm_model_info *info;
    flop_count flops;
    report *json;                /* NULL: print tables */
    int reference_size;
    int reference_runs;          /* timed products; reference_seconds is the fastest */
    double reference_seconds;
    double reference_tflops;
    double weight_bytes;         /* the weights as stored on the device */
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
/* Creates an empty file $TMPDIR/<stem>-XXXXXX (TMPDIR defaults to /tmp)
 * and puts its name in path[PATH_MAX]. 0, or EXIT_RUNTIME after a message. */
static int create_temporary_file(const char *stem, char *path)
{
    const char *tmp_dir = getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp";
    if (snprintf(path, PATH_MAX, "%s/%s-XXXXXX", tmp_dir, stem) >= PATH_MAX) {
        fprintf(stderr, PROGRAM ": TMPDIR is too long\n");
        return EXIT_RUNTIME;
    }
    int fd = mkstemp(path);
    if (fd < 0) {
        fprintf(stderr, PROGRAM ": cannot create a temporary file in %s\n", tmp_dir);
        return EXIT_RUNTIME;
    }
    close(fd);
    return 0;
}

static int load_synthetic(bench *b, const synthetic_config *config)
{
    char path[PATH_MAX], err[512];
    if (create_temporary_file("fpdm-bench-model", path) != 0)
        return EXIT_RUNTIME;
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
    /* Millions for the real models; the tiny ones' tens of thousands in full. */
    char parameters[32];
    if (info->num_parameters >= 100000)
        snprintf(parameters, sizeof parameters, "%.1fM", info->num_parameters / 1e6);
    else
        snprintf(parameters, sizeof parameters, "%zu", (size_t)info->num_parameters);
    printf("%s: %s (%s, %s parameters, %s %dx%dx%d), %s, mode %s, cfg %s, "
           "%d warmup + %d timed\n",
           PROGRAM, model_name, info->is_fixed_point ? "FPDM" : "DiT",
           parameters, info->latent_space ? "latent" : "pixel",
           info->in_channels, info->input_size, info->input_size,
           fpdm_context_device_name(b->ctx), mode_names[b->opt->mode],
           on_off_names[b->opt->cfg], b->opt->warmup, b->opt->repeat);
    printf("reference: %d^3 product %.4f s = %.3f TFLOP/s (fastest of %d); weights %.1f MB "
           "(fp32)\n",
           b->reference_size, b->reference_seconds, b->reference_tflops, b->reference_runs,
           b->weight_bytes / MB);
    printf("%6s %6s %6s %10s %10s %10s %10s %12s %10s %9s %6s %9s %9s %9s\n", "batch", "iters",
           "rows", "mean s", "min s", "images/s", "evals/s", "fp-iters/s", "GFLOP", "GFLOP/s",
           "%ref", "arena MB", "used MB", "min MB");
}

static void print_table_row(const measurement *m)
{
    char iters[16];
    if (m->iters >= 0)
        snprintf(iters, sizeof iters, "%d", m->iters);
    else
        snprintf(iters, sizeof iters, "-");
    printf("%6d %6s %6d %10.4f %10.4f %10.3f %10.3f %12.3f %10.3f %9.2f %6.1f %9.1f %9.1f %9.1f\n",
           m->batch, iters, m->rows, m->seconds_mean, m->seconds_min, m->images_per_second,
           m->evaluations_per_second, m->iterations_per_second, m->gflop, m->gflops,
           100.0 * m->reference_fraction, m->memory.arena_bytes / MB,
           m->memory.device_used_bytes / MB, m->min_activation_bytes / MB);
}

static void add_json_row(report *r, const bench *b, const measurement *m)
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
        {"fraction_of_reference", NULL, m->reference_fraction},
        {"arena_bytes", NULL, (double)m->memory.arena_bytes},
        {"device_used_bytes", NULL, (double)m->memory.device_used_bytes},
        {"device_total_bytes", NULL, (double)m->memory.device_total_bytes},
        {"min_activation_bytes", NULL, m->min_activation_bytes},
        {"weight_bytes", NULL, b->weight_bytes},
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
    report_set_context(r, "settings", b->ctx);
    report_set_string(r, "settings", "mode", mode_names[opt->mode]);
    report_set_bool(r, "settings", "cfg", opt->cfg);
    if (opt->mode == MODE_SAMPLE)
        report_set_number(r, "settings", "steps", opt->steps);
    report_set_number(r, "settings", "warmup", opt->warmup);
    report_set_number(r, "settings", "repeat", opt->repeat);
    report_set_number(r, "settings", "gflop_per_row_base", b->flops.base / 1e9);
    report_set_number(r, "settings", "gflop_per_row_iteration", b->flops.per_iter / 1e9);
    report_set_number(r, "settings", "weight_bytes", b->weight_bytes);
    report_set_number(r, "reference", "matmul_size", b->reference_size);
    report_set_number(r, "reference", "seconds", b->reference_seconds);
    report_set_number(r, "reference", "runs", b->reference_runs);
    report_set_number(r, "reference", "tflops", b->reference_tflops);
}

static int is_cpu(const bench *b)
{
    return strcmp(fpdm_context_device_name(b->ctx), "cpu") == 0;
}

/* Times the reference product once per run, before the network. Its rate is
 * the fastest product: other work on the machine only slows a product down,
 * and one short timing on a loaded CPU (a median of three) caught it slow and
 * put the network at up to 143% of it. */
static int measure_reference(bench *b)
{
    const int size = is_cpu(b) ? REFERENCE_SIZE_CPU : REFERENCE_SIZE_GPU;
    const int repeats = is_cpu(b) ? REFERENCE_REPEATS_CPU : REFERENCE_REPEATS_GPU;
    const int rounds = is_cpu(b) ? REFERENCE_ROUNDS_CPU : REFERENCE_ROUNDS_GPU;
    const double start = progress_now();
    b->reference_runs = 0;
    for (int round = 0; round < rounds; round++) {
        double seconds;
        if (fpdm_benchmark_matmul(b->ctx, size, size, size, repeats, &seconds) != FPDM_OK) {
            fprintf(stderr, PROGRAM ": the reference product failed: %s\n",
                    fpdm_last_error(b->ctx));
            return EXIT_RUNTIME;
        }
        if (round == 0 || seconds < b->reference_seconds)
            b->reference_seconds = seconds;
        b->reference_runs += repeats;
        if (progress_now() - start >= REFERENCE_SECONDS)
            break;
    }
    b->reference_size = size;
    b->reference_tflops = 2.0 * size * size * (double)size / b->reference_seconds / 1e12;
    return 0;
}

static int run_measurements(bench *b, const char *model_name)
{
    const options *opt = b->opt;
    const int default_iters = b->info->is_fixed_point ? b->info->default_iters : -1;
    const int num_iters = b->info->is_fixed_point && opt->iters ? opt->num_iters : 1;
    double *seconds = malloc((size_t)opt->repeat * sizeof(double));
    report *json = b->json;
    int rc = 0;
    if (!seconds) {
        fprintf(stderr, PROGRAM ": out of memory\n");
        rc = EXIT_RUNTIME;
        goto done;
    }
    b->weight_bytes = (double)b->info->weight_bytes;
    rc = measure_reference(b);
    if (rc != 0)
        goto done;
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
            if (rc == 0 && fpdm_context_memory(b->ctx, &m.memory) != FPDM_OK) {
                fprintf(stderr, PROGRAM ": %s\n", fpdm_last_error(b->ctx));
                rc = EXIT_RUNTIME;
            }
            if (rc != 0)
                break;
            m.gflops = m.gflop / m.seconds_mean;
            m.reference_fraction = m.gflops / (1000.0 * b->reference_tflops);
            m.min_activation_bytes = fpdm_min_activation_bytes(b->info, m.rows, m.memory.operand_bytes);
            if (json)
                add_json_row(json, b, &m);
            else
                print_table_row(&m);
            fflush(stdout);
        }
    }
done:
    free(seconds);
    return rc;
}

/* ---- the VAE decoder ---------------------------------------------------------- */

typedef struct vae_measurement {
    int latent_size, image_size, batch;
    double seconds_mean, seconds_min, images_per_second;
    fpdm_memory_info memory;  /* of the context that decoded, after the run */
} vae_measurement;

/* Loads --vae, or writes the --vae-config decoder to a temporary file, loads
 * it and deletes the file. */
static int load_vae(const options *opt, const synthetic_vae_config *config, fpdm_context *ctx,
                    fpdm_vae **vae)
{
    char path[PATH_MAX], err[512];
    int rc = 0;
    if (!opt->vae_path) {
        if (create_temporary_file("fpdm-bench-vae", path) != 0)
            return EXIT_RUNTIME;
        const synthetic_vae_format f32_with_groups = {SYNTHETIC_F32, 1};
        if (synthetic_vae_write(config, f32_with_groups, path, opt->seed, err, sizeof err) != 0) {
            fprintf(stderr, PROGRAM ": %s\n", err);
            rc = EXIT_RUNTIME;
        }
    }
    if (rc == 0 && fpdm_vae_load(ctx, opt->vae_path ? opt->vae_path : path, vae) != FPDM_OK) {
        fprintf(stderr, PROGRAM ": cannot load the VAE decoder: %s\n", fpdm_last_error(ctx));
        rc = EXIT_RUNTIME;
    }
    if (!opt->vae_path)
        unlink(path);
    return rc;
}

/* Loads --vae and frees it again: a bad file then fails before the model's
 * measurements (minutes for the large models on a CPU) rather than after
 * them. It is loaded again for its own timing so that meanwhile its weights
 * neither take device memory from the model's runs nor count in their
 * memory columns. */
static int check_vae_file(const options *opt, fpdm_context *ctx)
{
    fpdm_vae *vae = NULL;
    int rc = load_vae(opt, NULL, ctx, &vae);
    fpdm_vae_free(vae);
    return rc;
}

/* The context the decoder runs on: the bench's, or a CPU context when the
 * bench's device has no decoder (fpdm_vae_prepare answers
 * FPDM_ERR_UNSUPPORTED there). */
static int vae_context(bench *b, const fpdm_vae *vae, fpdm_context **cpu_ctx,
                       fpdm_context **decode_ctx)
{
    *decode_ctx = b->ctx;
    fpdm_status status = fpdm_vae_prepare(b->ctx, vae, 1, 1);
    if (status == FPDM_ERR_UNSUPPORTED && !is_cpu(b)) {
        fpdm_context_params cp = fpdm_context_default_params();
        cp.num_threads = b->opt->threads;
        if (fpdm_context_create(&cp, cpu_ctx) != FPDM_OK) {
            fprintf(stderr, PROGRAM ": cannot create a CPU context for the VAE\n");
            return EXIT_RUNTIME;
        }
        fprintf(stderr, PROGRAM ": the VAE decoder does not run on %s: timing it on the cpu\n",
                fpdm_context_device_name(b->ctx));
        *decode_ctx = *cpu_ctx;
    } else if (status != FPDM_OK) {
        fprintf(stderr, PROGRAM ": VAE decoder: %s\n", fpdm_last_error(b->ctx));
        return EXIT_RUNTIME;
    }
    return 0;
}

static int measure_vae(const options *opt, fpdm_context *ctx, const fpdm_vae *vae,
                       vae_measurement *m, double *seconds)
{
    const fpdm_vae_info *info = fpdm_vae_get_info(vae);
    const size_t latent_floats = (size_t)opt->vae_batch * info->latent_channels *
                                 m->latent_size * m->latent_size;
    const size_t image_floats = (size_t)opt->vae_batch * info->image_channels * m->image_size *
                                m->image_size;
    float *latents = malloc(latent_floats * sizeof(float));
    float *images = malloc(image_floats * sizeof(float));
    int rc = 0;
    if (!latents || !images) {
        fprintf(stderr, PROGRAM ": out of memory for VAE latent size %d\n", m->latent_size);
        rc = EXIT_RUNTIME;
    } else {
        /* Sampled latents are about N(0, scaling_factor^2). */
        fpdm_noise(opt->seed, 0, 0, latents, latent_floats);
        for (size_t i = 0; i < latent_floats; i++)
            latents[i] *= info->scaling_factor;
        /* Memory and algorithms are set up before the clock starts, as
         * fpdm-sample does before sampling. */
        if (fpdm_vae_prepare(ctx, vae, opt->vae_batch, m->latent_size) != FPDM_OK) {
            fprintf(stderr, PROGRAM ": VAE decoder: %s\n", fpdm_last_error(ctx));
            rc = EXIT_RUNTIME;
        }
    }
    for (int r = 0; r < opt->warmup + opt->repeat && rc == 0; r++) {
        const double start = progress_now();
        if (fpdm_vae_decode(ctx, vae, opt->vae_batch, m->latent_size, latents, images) !=
            FPDM_OK) {
            fprintf(stderr, PROGRAM ": VAE decode failed: %s\n", fpdm_last_error(ctx));
            rc = EXIT_RUNTIME;
        }
        if (r >= opt->warmup)
            seconds[r - opt->warmup] = progress_now() - start;
    }
    if (rc == 0 && fpdm_context_memory(ctx, &m->memory) != FPDM_OK) {
        fprintf(stderr, PROGRAM ": %s\n", fpdm_last_error(ctx));
        rc = EXIT_RUNTIME;
    }
    if (rc == 0) {
        double sum = 0, min = seconds[0];
        for (int r = 0; r < opt->repeat; r++) {
            sum += seconds[r];
            min = seconds[r] < min ? seconds[r] : min;
        }
        m->seconds_mean = sum / opt->repeat;
        m->seconds_min = min;
        m->images_per_second = m->batch / m->seconds_mean;
    }
    free(latents);
    free(images);
    return rc;
}

static void report_vae(bench *b, const char *name, const fpdm_context *decode_ctx,
                       const vae_measurement *m, int first)
{
    if (b->json) {
        if (first) {
            report_set_string(b->json, "vae_settings", "vae", name);
            report_set_context(b->json, "vae_settings", decode_ctx);
            report_set_number(b->json, "vae_settings", "batch_size", m->batch);
            report_set_number(b->json, "vae_settings", "warmup", b->opt->warmup);
            report_set_number(b->json, "vae_settings", "repeat", b->opt->repeat);
        }
        const report_field fields[] = {
            {"latent_size", NULL, m->latent_size},
            {"image_size", NULL, m->image_size},
            {"batch_size", NULL, m->batch},
            {"seconds_mean", NULL, m->seconds_mean},
            {"seconds_min", NULL, m->seconds_min},
            {"images_per_second", NULL, m->images_per_second},
            {"arena_bytes", NULL, (double)m->memory.arena_bytes},
            {"device_used_bytes", NULL, (double)m->memory.device_used_bytes},
        };
        report_add_row(b->json, "vae", fields, (int)(sizeof fields / sizeof fields[0]));
        return;
    }
    if (first) {
        printf("%s: VAE decoder %s on %s, %s, %d warmup + %d timed\n", PROGRAM, name,
               fpdm_context_device_name(decode_ctx),
               cli_precision_name(fpdm_context_precision(decode_ctx)), b->opt->warmup,
               b->opt->repeat);
        printf("%7s %7s %6s %10s %10s %10s %9s\n", "latent", "image", "batch", "mean s", "min s",
               "images/s", "arena MB");
    }
    printf("%7d %7d %6d %10.4f %10.4f %10.3f %9.1f\n", m->latent_size, m->image_size, m->batch,
           m->seconds_mean, m->seconds_min, m->images_per_second, m->memory.arena_bytes / MB);
}

/* Times fpdm_vae_decode of --vae-batch latents at each --vae-latent-sizes. */
static int run_vae(bench *b, const synthetic_vae_config *config)
{
    const options *opt = b->opt;
    const char *name = opt->vae_path ? opt->vae_path : config->name;
    fpdm_vae *vae = NULL;
    fpdm_context *cpu_ctx = NULL, *ctx = NULL;
    double *seconds = malloc((size_t)opt->repeat * sizeof(double));
    int rc = seconds ? load_vae(opt, config, b->ctx, &vae) : EXIT_RUNTIME;
    if (rc == 0)
        rc = vae_context(b, vae, &cpu_ctx, &ctx);
    if (!b->json && rc == 0 && opt->mode != MODE_VAE)
        printf("\n");
    for (int i = 0; i < opt->num_vae_latent_sizes && rc == 0; i++) {
        vae_measurement m = {0};
        m.latent_size = opt->vae_latent_sizes[i];
        m.image_size = m.latent_size * fpdm_vae_get_info(vae)->upscale;
        m.batch = opt->vae_batch;
        rc = measure_vae(opt, ctx, vae, &m, seconds);
        if (rc == 0)
            report_vae(b, name, ctx, &m, i == 0);
        fflush(stdout);
    }
    fpdm_vae_free(vae);
    fpdm_context_free(cpu_ctx);
    free(seconds);
    return rc;
}

int main(int argc, char **argv)
{
    options opt = {
        .cfg = -1,
        .repeat = 3,
        .warmup = 1,
    };
    static const int default_vae_latent_sizes[] = {32, 64};
    bench b = {.opt = &opt};
    char err[512];
    int rc = parse_arguments(argc, argv, &opt);
    if (rc != 0)
        goto done;
    if (!opt.steps)
        opt.steps = DEFAULT_STEPS;
    if (opt.cfg < 0)
        opt.cfg = 0;
    if (!opt.vae_batch)
        opt.vae_batch = DEFAULT_VAE_BATCH;
    if (!opt.batch_sizes) {
        opt.batch_sizes = malloc(sizeof(int));
        if (!opt.batch_sizes) {
            rc = EXIT_RUNTIME;
            goto done;
        }
        opt.batch_sizes[0] = 1;
        opt.num_batch_sizes = 1;
    }
    if (!opt.vae_latent_sizes) {
        opt.vae_latent_sizes = malloc(sizeof default_vae_latent_sizes);
        if (!opt.vae_latent_sizes) {
            rc = EXIT_RUNTIME;
            goto done;
        }
        memcpy(opt.vae_latent_sizes, default_vae_latent_sizes, sizeof default_vae_latent_sizes);
        opt.num_vae_latent_sizes = 2;
    }
    synthetic_vae_config vae_config;
    if (opt.vae_config_name &&
        synthetic_vae_config_lookup(opt.vae_config_name, &vae_config, err, sizeof err) != 0) {
        char message[600];
        snprintf(message, sizeof message, "--vae-config: %s", err);
        rc = usage_error(message);
        goto done;
    }
    synthetic_config config;
    if (!opt.model_path) {
        const char *name = opt.config_name ? opt.config_name : DEFAULT_CONFIG;
        const int image_size = opt.image_size ? opt.image_size : DEFAULT_IMAGE_SIZE;
        if (synthetic_config_lookup(name, image_size, &config, err, sizeof err) != 0) {
            char message[600];
            snprintf(message, sizeof message, "--config: %s", err);
            rc = usage_error(message);
            goto done;
        }
        if (opt.image_size && !config.latent_space) {
            snprintf(err, sizeof err, "--image-size applies to the latent configurations; %s is "
                     "a pixel-space model of %dx%d", config.name, config.input_size,
                     config.input_size);
            rc = usage_error(err);
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

    cli_use_threads(opt.threads);
    fpdm_context_params cp = fpdm_context_default_params();
    const char *device_source;
    cp.device = cli_device(opt.device, &device_source);
    cp.precision = opt.precision;
    cp.num_threads = opt.threads;
    cp.log_callback = log_to_stderr;
    rc = cli_create_context(PROGRAM, &cp, device_source, &b.ctx);
    if (rc != 0)
        goto done;
    if (opt.json && !(b.json = report_create(PROGRAM))) {
        fprintf(stderr, PROGRAM ": out of memory\n");
        rc = EXIT_RUNTIME;
        goto done;
    }
    if (opt.mode == MODE_VAE)
        goto vae;
    if (opt.vae_path && (rc = check_vae_file(&opt, b.ctx)) != 0)
        goto done;
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
    if (opt.mode == MODE_SAMPLE && opt.cfg && b.info->unconditional) {
        snprintf(err, sizeof err, "--cfg on: %s is unconditional (its null class is untrained), "
                 "so sampling it refuses guidance; --mode forward times the doubled rows",
                 opt.model_path);
        rc = usage_error(err);
        goto done;
    }
    rc = run_measurements(&b, opt.model_path ? opt.model_path : config.name);
    if (rc != 0)
        goto done;
vae:
    if (opt.vae_path || opt.vae_config_name)
        rc = run_vae(&b, &vae_config);
    if (rc == 0 && b.json) {
        char *text = report_to_string(b.json);
        if (text)
            printf("%s\n", text);
        free(text);
    }
done:
    report_free(b.json);
    fpdm_model_free(b.model);
    fpdm_context_free(b.ctx);
    free(opt.batch_sizes);
    free(opt.iters);
    free(opt.vae_latent_sizes);
    if (rc <= 0 && cli_flush_stdout(PROGRAM) != 0)
        return 1;
    return rc < 0 ? 0 : rc;
}
