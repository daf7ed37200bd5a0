/* fpdm_sample.c - fpdm-sample: draws images (class-conditional, or
 * unconditional) from a DiT or FPDM model file and writes them as PNGs (and
 * optionally a grid, the raw latents, an .npz of the images for FID tools
 * and a JSON run report).
 *
 *   fpdm-sample -m models/fpdm-mnist.safetensors -n 16 --steps 20 --out samples
 *   fpdm-sample --help
 *
 * Exit status: 0 done, 1 runtime failure (files, library, a GPU or CUDA
 * build this machine lacks), 2 usage error (arguments no machine takes).
 * On SIGINT (Ctrl-C), SIGTERM (what a batch scheduler sends at its time
 * limit) or SIGHUP (a closed terminal) the run stops after the current step,
 * keeps the images finished so far, leaves nothing half-written, writes
 * --report for the batches drawn to the end (its "stopped_by" names the
 * signal) and then ends by that signal (a shell reports 128 + its number:
 * 130, 143, 129). Once the last batch is drawn, a signal lets the outputs
 * finish, except --npz's packing, which stops. SIGKILL leaves what was being
 * written as NAME.tmp.PID, which nothing reads; a rerun leaves such files
 * alone, since a shard on another machine sharing the folder may own one.
 * Every check of the arguments happens before any output file or folder is
 * created.
 *
 * Resuming: image i is written as {i:05d}-{class}.png, and both its class and
 * its noise depend only on (--seed, i), never on the batch it falls in, so a
 * rerun skips every batch whose files all exist and draws the remaining ones
 * exactly as an uninterrupted run would have. The folder keeps the settings
 * the images depend on (.fpdm-sample-settings), and a rerun with others is
 * refused rather than mixing two runs' images (--overwrite redraws). */
#define _XOPEN_SOURCE 700 /* POSIX 2008 and realpath */

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <math.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cli.h"
#include "fpdm.h"
#include "npy.h"
#include "npz.h"
#include "png.h"
#include "progress.h"
#include "report.h"
#include "temp_path.h"

enum { EXIT_RUNTIME = 1, EXIT_USAGE = 2, EXIT_INTERRUPTED = 130 /* 128 + SIGINT */ };

#define PROGRAM "fpdm-sample"
#define DEFAULT_MODEL "models/fpdm-mnist.safetensors"
#define DEFAULT_NUM_IMAGES 16
#define MAX_DEFAULT_BATCH 32
#define DEFAULT_STEPS 250
#define GRID_PADDING 2
/* PNG files encoded or decoded together (on OpenMP's threads): the file
 * names and --npz's decoded pixels are held for this many at a time,
 * whatever the batch size. */
#define PNG_CHUNK 64

typedef struct options {
    const char *model_path;   /* NULL: search the default locations */
    int num_images;
    int batch_size;           /* 0: min(num_images, 32) */
    int steps;
    int sampler;              /* fpdm_sampler */
    float eta;
    float cfg_scale;          /* 0: the model's default (fpdm_sample_default_params) */
    int cfg_all_channels;
    uint64_t seed;
    int first_index;          /* index of the first image: shards of one run */
    int shard_index, shard_count; /* --shard K/N, or 0/0 */
    int *classes;
    int num_classes_given;
    int iters;                /* -1: the model's default */
    int reuse;
    int schedule;             /* fpdm_iteration_schedule */
    int schedule_given;
    int budget;
    int *iters_per_step;
    int num_iters_per_step;
    float tol;
    int carry_over;
    const char *init_noise_path;
    const char *step_noise_path;
    const char *latents_out;
    const char *out_dir;
    const char *grid_path;
    const char *npz_path;
    int out_given;            /* --out on the command line (the default is "samples") */
    int overwrite;
    const char *report_path;
    const char *device;       /* --device, or NULL (see cli_device) */
    fpdm_precision precision;
    int threads;
    int verbose;
    int quiet;
    const char *vae_path;
} options;

/* The stopping signal's number, set by its handler, read by the progress
 * callback; 0 while none came. */
static volatile sig_atomic_t interrupted;

static void on_stop_signal(int signal_number)
{
    interrupted = signal_number;
}

/* The signal as the report names it. */
static const char *stop_signal_id(void)
{
    return interrupted == SIGTERM ? "SIGTERM" : interrupted == SIGHUP ? "SIGHUP" : "SIGINT";
}

/* The signal as a message to a person names it. */
static const char *stop_signal_name(void)
{
    return interrupted == SIGINT ? "Ctrl-C" : stop_signal_id();
}

static void print_help(FILE *out)
{
    fprintf(out,
"usage: " PROGRAM " [options]\n"
"Samples images (class-conditional, or unconditional) from a DiT or FPDM model file.\n"
"\n"
"Model and device:\n"
"  -m, --model FILE         model .safetensors (default: " DEFAULT_MODEL ",\n"
"                           also looked up in ../models and ../share/fpdm/models\n"
"                           next to the executable)\n"
"      --vae FILE           VAE decoder (diffusers safetensors) for latent-space models\n"
"      --device DEV         auto | cpu | cuda | cuda:N (default: $FPDM_DEVICE, else auto:\n"
"                           the first GPU when this build has CUDA and one is visible,\n"
"                           else cpu)\n"
"      --precision P        fp32 | bf16 | fp16 (default: fp32 on cpu, bf16 on cuda)\n"
"      --threads N          CPU threads (default: OpenMP's choice)\n"
"\n"
"What to sample:\n"
"  -n, --num-images N       images to draw (default: %d)\n"
"  -b, --batch-size N       images per network batch (default: min(N, %d))\n"
"      --class LIST         comma-separated class labels, cycled over the images\n"
"                           (default: drawn from the seed, per image index)\n"
"      --seed S             noise and class seed (default: 0)\n"
"      --first-index I      index of the first image, to split one run into shards:\n"
"                           names, noise and default classes follow the index (default: 0)\n"
"      --shard K/N          draw part K (0..N-1) of N near-equal parts of the -n images,\n"
"                           e.g. one process per GPU (--device cuda:K) into one --out;\n"
"                           --grid, --latents-out and --report then cover the part (give\n"
"                           each part its own file); --npz is for the whole range, after\n"
"                           the parts\n"
"      --steps N            sampling steps, 1..num_train_timesteps (default: %d)\n"
"      --sampler S          ddpm | ddim (default: ddpm)\n"
"      --eta X              DDIM eta, 0..1 (default: 0; 1: DDPM's variance)\n"
"      --cfg-scale X        classifier-free guidance scale >= 1, 1 disables it\n"
"                           (default: 4.0; 1 for an unconditional model)\n"
"      --cfg-channels C     3 (official: guide the first 3 channels) | all (default: 3)\n"
"\n"
"Fixed-point models (FPDM) only:\n"
"      --iters K            fixed-point iterations per step (default: the model's)\n"
"      --schedule S         fixed | increasing | decreasing (default: fixed); as in the\n"
"                           official code, increasing gives the noisiest (first) steps\n"
"                           the most iterations, decreasing the last\n"
"      --budget B           total iterations spread over the steps (default: steps * iters)\n"
"      --iters-per-step L   explicit comma-separated iterations, one per step\n"
"      --reuse              start each solve from the previous step's solution\n"
"      --tol EPS            stop an image's solve under this relative residual (default: 0, never)\n"
"      --carry-over         with --tol: an image's unused iterations move to its next step\n"
"\n"
"Noise from files (float32 .npy):\n"
"      --init-noise FILE    initial noise [N, C, H, W]\n"
"      --step-noise FILE    per-step noise [steps, N, C, H, W]\n"
"\n"
"Output:\n"
"      --out DIR            PNG folder, files {index:05d}-{class}.png (default: samples)\n"
"      --overwrite          redraw images whose files exist, and remove the run's\n"
"                           indices' files of other classes; other indices' files\n"
"                           stay (a note counts them when the settings changed)\n"
"                           (default: skip batches whose files all exist, so\n"
"                           interrupted runs resume)\n"
"      --grid FILE.png      also tile the PNGs, read back from --out (resumed runs'\n"
"                           earlier images too), into one grid\n"
"      --latents-out FILE   also write the sampled latents [N, C, H, W] as .npy\n"
"                           (it needs every latent: no batch is skipped)\n"
"      --npz FILE.npz       also pack the PNGs, read back from --out in index order\n"
"                           (resumed runs' earlier images too), into FILE's uint8\n"
"                           array arr_0 [N, H, W, C]: the official sample_ddp.py's\n"
"                           .npz, which ADM's FID evaluator reads\n"
"      --report FILE.json   per-step iterations (summed over the batches run) and\n"
"                           residuals, totals, settings; a stopped run's report covers\n"
"                           the batches it finished and names the signal (stopped_by)\n"
"      --verbose            model details, the iteration plan, library debug messages\n"
"      --quiet              no progress or summary\n"
"  -h, --help               this help\n"
"\n"
"Exit status: 0 done, 1 runtime failure (files, the device, a GPU or CUDA build\n"
"this machine lacks), 2 bad arguments, 128 + the signal on\n"
"SIGINT (Ctrl-C), SIGTERM or SIGHUP: the run stops after the current step and\n"
"keeps its finished images; a rerun resumes it.\n"
"\n"
"Output files are written whole under a temporary name, then renamed (a link's\n"
"target is what gets replaced; /dev/stdout and other special files are written\n"
"in place). No two outputs, and no output and input, may be one file.\n",
            DEFAULT_NUM_IMAGES, MAX_DEFAULT_BATCH, DEFAULT_STEPS);
}

/* Whether name ends in suffix, ignoring ASCII case. */
static int has_suffix(const char *name, const char *suffix)
{
    size_t name_length = strlen(name), suffix_length = strlen(suffix);
    return name_length >= suffix_length &&
           strcasecmp(name + name_length - suffix_length, suffix) == 0;
}

static int usage_error(const char *message)
{
    fprintf(stderr, PROGRAM ": %s\n" PROGRAM ": try '" PROGRAM " --help'\n", message);
    return EXIT_USAGE;
}

/* ---- arguments --------------------------------------------------------- */

static const char *const sampler_names[] = {"ddpm", "ddim", NULL};
static const char *const schedule_names[] = {"fixed", "increasing", "decreasing", NULL};
static const char *const cfg_channel_names[] = {"3", "all", NULL};

static int flag_is(const char *arg, const char *short_name, const char *long_name,
                   const char **inline_value)
{
    *inline_value = NULL;
    if ((short_name && strcmp(arg, short_name) == 0) || strcmp(arg, long_name) == 0)
        return 1;
    *inline_value = cli_inline_value(arg, long_name);
    return *inline_value != NULL;
}

/* "K/N" with 0 <= K < N. Returns 0, or -1 with a message in err. */
static int parse_shard(const char *text, int *index, int *count, char *err, size_t err_size)
{
    const char *slash = strchr(text, '/');
    char part[32];
    if (!slash || (size_t)(slash - text) >= sizeof part) {
        snprintf(err, err_size, "--shard: '%s' is not K/N (part K of N, 0 <= K < N)", text);
        return -1;
    }
    snprintf(part, sizeof part, "%.*s", (int)(slash - text), text);
    if (cli_parse_int("--shard N", slash + 1, 1, INT_MAX, count, err, err_size) != 0 ||
        cli_parse_int("--shard K", part, 0, *count - 1, index, err, err_size) != 0)
        return -1;
    return 0;
}

/* Parses argv into opt. Returns 0, EXIT_USAGE after printing the problem, or
 * -1 when --help was printed. */
static int parse_arguments(int argc, char **argv, options *opt)
{
    char err[512];
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        const char *inline_value;
        const char *value = NULL;
        int rc = 0;
        /* Value-taking flags: each entry says how its text is parsed. */
#define TAKE_VALUE(flag)                                                              \
    do {                                                                              \
        if (inline_value) {                                                           \
            value = inline_value;                                                     \
        } else if (i + 1 < argc) {                                                    \
            value = argv[++i];                                                        \
        } else {                                                                      \
            snprintf(err, sizeof err, "%s: missing value", flag);                     \
            return usage_error(err);                                                  \
        }                                                                             \
    } while (0)
        if (flag_is(arg, "-h", "--help", &inline_value)) {
            print_help(stdout);
            return -1;
        } else if (flag_is(arg, "-m", "--model", &inline_value)) {
            TAKE_VALUE("--model");
            opt->model_path = value;
        } else if (flag_is(arg, "-n", "--num-images", &inline_value)) {
            TAKE_VALUE("--num-images");
            rc = cli_parse_int("--num-images", value, 1, INT_MAX / 2, &opt->num_images, err,
                               sizeof err);
        } else if (flag_is(arg, "-b", "--batch-size", &inline_value)) {
            TAKE_VALUE("--batch-size");
            rc = cli_parse_int("--batch-size", value, 1, 65536, &opt->batch_size, err,
                               sizeof err);
        } else if (flag_is(arg, NULL, "--steps", &inline_value)) {
            TAKE_VALUE("--steps");
            rc = cli_parse_int("--steps", value, 1, 100000, &opt->steps, err, sizeof err);
        } else if (flag_is(arg, NULL, "--sampler", &inline_value)) {
            TAKE_VALUE("--sampler");
            rc = cli_parse_choice("--sampler", value, sampler_names, &opt->sampler, err,
                                  sizeof err);
        } else if (flag_is(arg, NULL, "--eta", &inline_value)) {
            TAKE_VALUE("--eta");
            rc = cli_parse_float("--eta", value, 0.0, 1.0, &opt->eta, err, sizeof err);
        } else if (flag_is(arg, NULL, "--cfg-scale", &inline_value)) {
            TAKE_VALUE("--cfg-scale");
            rc = cli_parse_float("--cfg-scale", value, 1.0, FPDM_MAX_SCALE, &opt->cfg_scale, err,
                                 sizeof err);
        } else if (flag_is(arg, NULL, "--cfg-channels", &inline_value)) {
            TAKE_VALUE("--cfg-channels");
            rc = cli_parse_choice("--cfg-channels", value, cfg_channel_names,
                                  &opt->cfg_all_channels, err, sizeof err);
        } else if (flag_is(arg, NULL, "--seed", &inline_value)) {
            TAKE_VALUE("--seed");
            rc = cli_parse_u64("--seed", value, &opt->seed, err, sizeof err);
        } else if (flag_is(arg, NULL, "--first-index", &inline_value)) {
            TAKE_VALUE("--first-index");
            rc = cli_parse_int("--first-index", value, 0, INT_MAX / 2, &opt->first_index, err,
                               sizeof err);
        } else if (flag_is(arg, NULL, "--shard", &inline_value)) {
            TAKE_VALUE("--shard");
            rc = parse_shard(value, &opt->shard_index, &opt->shard_count, err, sizeof err);
        } else if (flag_is(arg, NULL, "--class", &inline_value)) {
            TAKE_VALUE("--class");
            free(opt->classes);
            opt->classes = NULL;
            rc = cli_parse_int_list("--class", value, INT_MIN, INT_MAX, &opt->classes,
                                    &opt->num_classes_given, err, sizeof err);
        } else if (flag_is(arg, NULL, "--iters", &inline_value)) {
            TAKE_VALUE("--iters");
            rc = cli_parse_int("--iters", value, 0, FPDM_MAX_ITERS, &opt->iters, err, sizeof err);
        } else if (flag_is(arg, NULL, "--reuse", &inline_value) && !inline_value) {
            opt->reuse = 1;
        } else if (flag_is(arg, NULL, "--schedule", &inline_value)) {
            TAKE_VALUE("--schedule");
            rc = cli_parse_choice("--schedule", value, schedule_names, &opt->schedule, err,
                                  sizeof err);
            opt->schedule_given = 1;
        } else if (flag_is(arg, NULL, "--budget", &inline_value)) {
            TAKE_VALUE("--budget");
            rc = cli_parse_int("--budget", value, 1, 100000000, &opt->budget, err,
                               sizeof err);
        } else if (flag_is(arg, NULL, "--iters-per-step", &inline_value)) {
            TAKE_VALUE("--iters-per-step");
            free(opt->iters_per_step);
            opt->iters_per_step = NULL;
            rc = cli_parse_int_list("--iters-per-step", value, 0, FPDM_MAX_ITERS,
                                    &opt->iters_per_step, &opt->num_iters_per_step, err,
                                    sizeof err);
        } else if (flag_is(arg, NULL, "--tol", &inline_value)) {
            TAKE_VALUE("--tol");
            rc = cli_parse_float("--tol", value, 0.0, 1e6, &opt->tol, err, sizeof err);
        } else if (flag_is(arg, NULL, "--carry-over", &inline_value) && !inline_value) {
            opt->carry_over = 1;
        } else if (flag_is(arg, NULL, "--init-noise", &inline_value)) {
            TAKE_VALUE("--init-noise");
            opt->init_noise_path = value;
        } else if (flag_is(arg, NULL, "--step-noise", &inline_value)) {
            TAKE_VALUE("--step-noise");
            opt->step_noise_path = value;
        } else if (flag_is(arg, NULL, "--latents-out", &inline_value)) {
            TAKE_VALUE("--latents-out");
            opt->latents_out = value;
        } else if (flag_is(arg, NULL, "--out", &inline_value)) {
            TAKE_VALUE("--out");
            opt->out_dir = value;
            opt->out_given = 1;
        } else if (flag_is(arg, NULL, "--grid", &inline_value)) {
            TAKE_VALUE("--grid");
            opt->grid_path = value;
        } else if (flag_is(arg, NULL, "--npz", &inline_value)) {
            TAKE_VALUE("--npz");
            opt->npz_path = value;
        } else if (flag_is(arg, NULL, "--overwrite", &inline_value) && !inline_value) {
            opt->overwrite = 1;
        } else if (flag_is(arg, NULL, "--report", &inline_value)) {
            TAKE_VALUE("--report");
            opt->report_path = value;
        } else if (flag_is(arg, NULL, "--device", &inline_value)) {
            TAKE_VALUE("--device");
            opt->device = value;
        } else if (flag_is(arg, NULL, "--precision", &inline_value)) {
            TAKE_VALUE("--precision");
            rc = cli_parse_precision("--precision", value, &opt->precision, err, sizeof err);
        } else if (flag_is(arg, NULL, "--threads", &inline_value)) {
            TAKE_VALUE("--threads");
            rc = cli_parse_int("--threads", value, 1, 4096, &opt->threads, err, sizeof err);
        } else if (flag_is(arg, NULL, "--verbose", &inline_value) && !inline_value) {
            opt->verbose = 1;
        } else if (flag_is(arg, NULL, "--quiet", &inline_value) && !inline_value) {
            opt->quiet = 1;
        } else if (flag_is(arg, NULL, "--vae", &inline_value)) {
            TAKE_VALUE("--vae");
            opt->vae_path = value;
        } else {
            snprintf(err, sizeof err, "unknown option '%s'", arg);
            return usage_error(err);
        }
#undef TAKE_VALUE
        if (rc != 0)
            return usage_error(err);
        if (value && value[0] == '\0') {
            snprintf(err, sizeof err, "%s: empty value", arg);
            return usage_error(err);
        }
    }
    if (opt->verbose && opt->quiet)
        return usage_error("--verbose and --quiet exclude each other");
    if (opt->grid_path && !has_suffix(opt->grid_path, ".png")) {
        snprintf(err, sizeof err, "--grid %s: the grid is a PNG; give a name ending in .png",
                 opt->grid_path);
        return usage_error(err);
    }
    if (opt->npz_path && !has_suffix(opt->npz_path, ".npz")) {
        snprintf(err, sizeof err, "--npz %s: the archive is an .npz; give a name ending in .npz",
                 opt->npz_path);
        return usage_error(err);
    }
    if (opt->carry_over && opt->tol <= 0)
        return usage_error("--carry-over needs --tol EPS > 0 (unused iterations come from "
                           "solves stopped early)");
    if (opt->iters_per_step && (opt->schedule_given || opt->budget))
        return usage_error("--iters-per-step replaces --schedule and --budget; give one or "
                           "the other");
    return 0;
}

/* ---- files and folders ---------------------------------------------------- */

static int is_file(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISREG(st.st_mode);
}

static int is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* Where the default model is looked for, after ./models/: relative to the
 * executable's folder, an installed copy (cmake --install puts the shipped
 * models in <datadir>/fpdm/models, and passes that folder as seen from the
 * program's, ../share/fpdm by default), then the source tree's models/ (the
 * executable usually lives in <source>/build*). */
#ifndef FPDM_DATA_FROM_BIN
#define FPDM_DATA_FROM_BIN "../share/fpdm"
#endif
static const char *const DEFAULT_MODEL_PLACES[] = {"..", FPDM_DATA_FROM_BIN, "../.."};

/* The default model's path in buffer, or NULL, with buffer then listing the
 * places looked in. */
static const char *find_default_model(char *buffer, size_t size)
{
    if (is_file(DEFAULT_MODEL))
        return DEFAULT_MODEL;
    char exe[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe, sizeof exe - 1);
    char *slash = len > 0 ? (exe[len] = '\0', strrchr(exe, '/')) : NULL;
    if (slash) {
        *slash = '\0';
        for (size_t i = 0; i < sizeof DEFAULT_MODEL_PLACES / sizeof *DEFAULT_MODEL_PLACES; i++)
            if (snprintf(buffer, size, "%s/%s/%s", exe, DEFAULT_MODEL_PLACES[i],
                         DEFAULT_MODEL) < (int)size && is_file(buffer))
                return buffer;
    }
    snprintf(buffer, size, "./%s", DEFAULT_MODEL);
    for (size_t i = 0; slash && i < sizeof DEFAULT_MODEL_PLACES / sizeof *DEFAULT_MODEL_PLACES; i++)
        snprintf(buffer + strlen(buffer), size - strlen(buffer), ", %s/%s/%s", exe,
                 DEFAULT_MODEL_PLACES[i], DEFAULT_MODEL);
    return NULL;
}

/* path with "." components and repeated or trailing slashes dropped, into
 * out; "." when nothing is left. ".." stays: "a/../o" is "o" only when a
 * exists, and the --out folder compared with may not exist yet. */
static void plain_path(char *out, size_t size, const char *path)
{
    char copy[PATH_MAX];
    snprintf(copy, sizeof copy, "%s", path);
    const char *parts[PATH_MAX / 2];
    int count = 0, absolute = path[0] == '/';
    for (char *part = strtok(copy, "/"); part; part = strtok(NULL, "/"))
        if (strcmp(part, ".") != 0)
            parts[count++] = part;
    snprintf(out, size, "%s", absolute ? "/" : "");
    for (int i = 0; i < count; i++)
        snprintf(out + strlen(out), size - strlen(out), "%s%s", i ? "/" : "", parts[i]);
    if (!out[0])
        snprintf(out, size, ".");
}

/* folder/name into out; out unchanged where it would not fit. */
static void join_path(char *out, size_t size, const char *folder, const char *name)
{
    char joined[2 * PATH_MAX + 2];
    const int length = snprintf(joined, sizeof joined, "%s/%s", strcmp(folder, "/") ? folder : "",
                                name);
    if (length > 0 && (size_t)length < size)
        memcpy(out, joined, (size_t)length + 1);
}

/* Where path's bytes end up, for telling whether two paths are one file:
 * the real path of what exists (links followed), else its folder's identity
 * and its name (a folder this run creates does not exist yet). */
static void file_identity(const char *path, char *out, size_t size)
{
    char resolved[PATH_MAX], folder[PATH_MAX];
    if (realpath(path, resolved)) {
        snprintf(out, size, "%s", resolved);
        return;
    }
    plain_path(folder, sizeof folder, path);
    char *slash = strrchr(folder, '/');
    if (!slash || slash == folder) {
        /* A name in "." or "/": both exist, so realpath failed on the name. */
        snprintf(out, size, "%s", folder);
        if (realpath(slash ? "/" : ".", resolved))
            join_path(out, size, resolved, slash ? slash + 1 : folder);
        return;
    }
    *slash = '\0';
    char parent[PATH_MAX];
    file_identity(folder, parent, sizeof parent);
    snprintf(out, size, "%s", parent);
    join_path(out, size, parent, slash + 1);
}

/* A file this run writes at the end: not a folder, and its folder exists
 * and is writable already, or is the --out folder this run creates
 * (pending_dir, NULL if none); or a special file (/dev/null) it may write,
 * or one of its own descriptors open for writing (/dev/stdout), which are
 * written in place. A link counts as the file it names, which is what gets
 * written. Checked before sampling, so a typo does not cost the run. */
static int check_output_file(const char *flag, const char *path, const char *pending_dir)
{
    size_t length = strlen(path);
    if (is_dir(path) || (length > 0 && path[length - 1] == '/')) {
        fprintf(stderr, PROGRAM ": %s %s: is a folder (allowed: a file name)\n", flag, path);
        return -1;
    }
    const int descriptor = temp_path_descriptor(path);
    if (descriptor >= 0) {
        const int mode = fcntl(descriptor, F_GETFL);
        if (mode != -1 && (mode & O_ACCMODE) != O_RDONLY)
            return 0;
        fprintf(stderr, PROGRAM ": %s %s: descriptor %d is not open for writing\n", flag, path,
                descriptor);
        return -1;
    }
    struct stat st;
    if (stat(path, &st) == 0 && !S_ISREG(st.st_mode)) {
        if (access(path, W_OK) == 0)
            return 0;
        fprintf(stderr, PROGRAM ": %s %s: is not writable\n", flag, path);
        return -1;
    }
    char dir[PATH_MAX], resolved[PATH_MAX];
    plain_path(dir, sizeof dir, realpath(path, resolved) ? resolved : path);
    char *slash = strrchr(dir, '/');
    if (!slash)
        snprintf(dir, sizeof dir, ".");
    else if (slash == dir)
        slash[1] = '\0';
    else
        *slash = '\0';
    if (is_dir(dir)) {
        if (access(dir, W_OK) == 0)
            return 0;
        fprintf(stderr, PROGRAM ": %s %s: folder %s is not writable\n", flag, path, dir);
        return -1;
    }
    if (pending_dir) {
        char pending[PATH_MAX], identity[PATH_MAX];
        file_identity(pending_dir, pending, sizeof pending);
        file_identity(dir, identity, sizeof identity);
        if (strcmp(identity, pending) == 0)
            return 0;
    }
    fprintf(stderr, PROGRAM ": %s %s: folder %s does not exist\n", flag, path, dir);
    return -1;
}

/* mkdir -p, then proves the folder is writable by creating and removing a
 * temporary file in it. */
static int prepare_out_dir(const char *dir)
{
    char path[PATH_MAX];
    /* Room for the names made in it (the write test's is the longest), checked
     * before any folder is made. */
    const size_t room = sizeof "/.fpdm-sample-write-test-XXXXXX" + 16;
    if (strlen(dir) + room > sizeof path) {
        fprintf(stderr, PROGRAM ": --out %s: path too long (allowed: under %zu bytes)\n", dir,
                sizeof path - room);
        return -1;
    }
    snprintf(path, sizeof path, "%s", dir);
    for (char *p = path + 1;; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(path, 0777) != 0 && errno != EEXIST) {
                fprintf(stderr, PROGRAM ": --out %s: cannot create folder %s: %s\n", dir, path,
                        strerror(errno));
                return -1;
            }
            *p = saved;
            if (saved == '\0')
                break;
        }
    }
    if (!is_dir(dir)) {
        fprintf(stderr, PROGRAM ": --out %s: exists and is not a folder\n", dir);
        return -1;
    }
    snprintf(path, sizeof path, "%s/.fpdm-sample-write-test-XXXXXX", dir);
    int fd = mkstemp(path);
    if (fd < 0) {
        fprintf(stderr, PROGRAM ": --out %s: folder is not writable: %s\n", dir,
                strerror(errno));
        return -1;
    }
    close(fd);
    unlink(path);
    return 0;
}

static void image_path(char *out, size_t size, const char *dir, int index, int label)
{
    snprintf(out, size, "%s/%05d-%d.png", dir, index, label);
}

/* Whether name is one image_path gives (any index and class), with them in
 * *index and *label: exactly that spelling (no sign, space or other
 * padding), so --overwrite never takes a file this program did not name. */
static int parse_image_name(const char *name, int *index, int *label)
{
    const size_t index_digits = strspn(name, "0123456789");
    const size_t label_digits =
        name[index_digits] == '-' ? strspn(name + index_digits + 1, "0123456789") : 0;
    if (index_digits == 0 || index_digits > 10 || label_digits == 0 || label_digits > 10)
        return 0;
    const long long index_value = strtoll(name, NULL, 10);
    const long long label_value = strtoll(name + index_digits + 1, NULL, 10);
    if (index_value > INT_MAX || label_value > INT_MAX)
        return 0;
    char canonical[64];
    snprintf(canonical, sizeof canonical, "%05lld-%lld.png", index_value, label_value);
    *index = (int)index_value;
    *label = (int)label_value;
    return strcmp(canonical, name) == 0;
}

static int is_image_name(const char *name)
{
    int index, label;
    return parse_image_name(name, &index, &label);
}

/* Reads a float32 .npy noise file and checks it has exactly `ndim` dims of
 * `shape`. Returns 0, EXIT_USAGE (wrong shape) or EXIT_RUNTIME (unreadable). */
static int read_noise(const char *flag, const char *path, int ndim, const int64_t *shape,
                      float **data)
{
    char err[512];
    int file_ndim = 0;
    int64_t file_shape[8] = {0};
    if (npy_read_f32(path, data, &file_ndim, file_shape, err, sizeof err) != 0) {
        fprintf(stderr, PROGRAM ": %s: %s\n", flag, err);
        return EXIT_RUNTIME;
    }
    int same = file_ndim == ndim;
    size_t count = 1;
    for (int i = 0; same && i < ndim; i++) {
        same = file_shape[i] == shape[i];
        count *= (size_t)shape[i];
    }
    if (same) {
        /* NaN or infinite noise would sample black images without a word. */
        for (size_t i = 0; i < count; i++) {
            if (!isfinite((*data)[i])) {
                fprintf(stderr, PROGRAM ": %s %s: value %zu is %g (allowed: finite numbers)\n",
                        flag, path, i, (double)(*data)[i]);
                free(*data);
                *data = NULL;
                return EXIT_USAGE;
            }
        }
        return 0;
    }
    char expected[128] = "", found[128] = "";
    size_t used = 0;
    for (int i = 0; i < ndim; i++)
        used += (size_t)snprintf(expected + used, sizeof expected - used, "%s%lld",
                                 i ? ", " : "", (long long)shape[i]);
    used = 0;
    for (int i = 0; i < file_ndim && i < 8; i++)
        used += (size_t)snprintf(found + used, sizeof found - used, "%s%lld", i ? ", " : "",
                                 (long long)file_shape[i]);
    fprintf(stderr, PROGRAM ": %s %s: shape [%s] does not match the run (allowed: [%s])\n", flag,
            path, found, expected);
    free(*data);
    *data = NULL;
    return EXIT_USAGE;
}

/* ---- callbacks ----------------------------------------------------------- */

static void log_to_stderr(fpdm_log_level level, const char *message, void *user_data)
{
    const int verbose = *(const int *)user_data;
    /* Errors come back through return codes and are printed once, by the
     * caller, with fpdm_last_error. */
    if (level == FPDM_LOG_ERROR || (level < FPDM_LOG_WARN && !verbose))
        return;
    static const char *const names[] = {"debug", "info", "warning", "error"};
    fprintf(stderr, PROGRAM ": %s: %s\n", names[level], message);
}

typedef struct run_progress {
    progress bar;
    long long steps_before;   /* sampling steps of the batches finished in this run */
    int images_before;        /* images finished in this run, skipped ones included */
} run_progress;

static int on_progress(const fpdm_progress *p, void *user_data)
{
    run_progress *run = user_data;
    char label[64];
    snprintf(label, sizeof label, "step %d/%d", p->step, p->num_steps);
    /* fpdm-sample samples a batch per call: its images are drawn at its last step. */
    int images_done = run->images_before + (p->step == p->num_steps ? p->num_images : 0);
    progress_update(&run->bar, run->steps_before + p->step, images_done, label);
    return interrupted ? 1 : 0;
}

/* ---- the run --------------------------------------------------------------- */

/* A class per image index from the seed alone, so it never depends on the
 * batch size or on which batches a resumed run skips. */
static int default_label(uint64_t seed, int index, int num_classes)
{
    uint64_t z = seed + 0x9e3779b97f4a7c15ull * (uint64_t)(index + 1);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    return (int)(z % (uint64_t)num_classes);
}

typedef struct run_state {
    const options *opt;
    fpdm_context *ctx;
    fpdm_model *model;
    const fpdm_model_info *info;
    fpdm_vae *vae;
    fpdm_context *vae_ctx;    /* the VAE decodes on the CPU: ctx itself, or a CPU context */
    int *labels;              /* [num_images] */
    int *plan;                /* [steps]: planned iterations, sampling order */
    int batches_to_run;       /* batches not on disk yet, counted once (check_outputs) */
    float *init_noise;        /* [N, C, H, W] or NULL */
    float *step_noise;        /* [steps, N, C, H, W] or NULL */
    int write_pngs;
    int image_channels, image_size;
    size_t latent_floats;     /* per image */
    size_t image_floats;      /* per image */
    float *all_latents;       /* [N, ...] when --latents-out */
    char **paths;             /* [PNG_CHUNK] file names, PATH_MAX each */
    fpdm_step_report *steps;  /* summed over batches */
    long long model_evaluations, fixed_point_iterations;
    int num_batches;          /* the batches those sums cover (skipped ones are not run) */
    int images_sampled, images_skipped;
    /* --overwrite: the settings description the file gets when the run completes */
    const char *pending_settings;
} run_state;

static int batch_files_exist(const run_state *rs, int start, int count)
{
    char path[PATH_MAX];
    for (int i = start; i < start + count; i++) {
        image_path(path, sizeof path, rs->opt->out_dir, rs->opt->first_index + i, rs->labels[i]);
        if (!is_file(path))
            return 0;
    }
    return 1;
}

static void add_batch_report(run_state *rs, const fpdm_sample_report *batch)
{
    for (int s = 0; s < batch->num_steps && s < rs->opt->steps; s++) {
        fpdm_step_report *total = &rs->steps[s];
        total->timestep = batch->steps[s].timestep;
        total->iters_planned = batch->steps[s].iters_planned;
        total->iters_used += batch->steps[s].iters_used;
        if (batch->steps[s].residual > total->residual)
            total->residual = batch->steps[s].residual;
    }
    rs->model_evaluations += batch->model_evaluations;
    rs->fixed_point_iterations += batch->fixed_point_iterations;
    rs->num_batches += batch->num_batches;
}

/* rs->paths[0..count-1]: the file names of images start .. start+count-1. */
static void fill_image_paths(run_state *rs, int start, int count)
{
    for (int i = 0; i < count; i++)
        image_path(rs->paths[i], PATH_MAX, rs->opt->out_dir, rs->opt->first_index + start + i,
                   rs->labels[start + i]);
}

/* Turns a batch of latents into images (the VAE for latent models) and
 * writes their PNGs. Returns 0 or EXIT_RUNTIME after printing the problem. */
static int write_batch_images(run_state *rs, int start, int count, const float *latents,
                              float *images)
{
    const fpdm_model_info *info = rs->info;
    const float *pixels = latents;
    if (rs->vae) {
        if (fpdm_vae_decode(rs->vae_ctx, rs->vae, count, info->input_size, latents, images) !=
            FPDM_OK) {
            fprintf(stderr, PROGRAM ": VAE decoding failed: %s\n", fpdm_last_error(rs->vae_ctx));
            return EXIT_RUNTIME;
        }
        pixels = images;
    }
    if (!rs->opt->out_dir || !rs->write_pngs)
        return 0;
    char err[512];
    for (int done = 0; done < count; done += PNG_CHUNK) {
        const int chunk = count - done < PNG_CHUNK ? count - done : PNG_CHUNK;
        fill_image_paths(rs, start + done, chunk);
        if (png_write_images((const char *const *)rs->paths,
                             pixels + (size_t)done * rs->image_floats, chunk, rs->image_channels,
                             rs->image_size, rs->image_size, err, sizeof err) != 0) {
            fprintf(stderr, PROGRAM ": %s\n", err);
            return EXIT_RUNTIME;
        }
    }
    return 0;
}

/* Samples every batch that is not already on disk. Returns 0, EXIT_RUNTIME
 * or EXIT_INTERRUPTED. */
static int run_batches(run_state *rs, fpdm_sample_params base, run_progress *rp)
{
    const options *opt = rs->opt;
    const int n = opt->num_images, b = opt->batch_size;
    const int keep_all = rs->all_latents != NULL;
    float *latents = malloc((size_t)b * rs->latent_floats * sizeof(float));
    float *images = rs->vae ? malloc((size_t)b * rs->image_floats * sizeof(float)) : NULL;
    float *step_slice = rs->step_noise
                            ? malloc((size_t)opt->steps * b * rs->latent_floats * sizeof(float))
                            : NULL;
    int rc = 0;
    if (!latents || (rs->vae && !images) || (rs->step_noise && !step_slice)) {
        fprintf(stderr, PROGRAM ": out of memory for a batch of %d images\n", b);
        rc = EXIT_RUNTIME;
        goto done;
    }
    for (int start = 0; start < n && rc == 0; start += b) {
        const int count = start + b <= n ? b : n - start;
        if (!opt->overwrite && !keep_all && rs->write_pngs &&
            batch_files_exist(rs, start, count)) {
            rs->images_skipped += count;
            rp->images_before += count;
            continue;
        }
        if (interrupted) {
            rc = EXIT_INTERRUPTED;
            break;
        }
        fpdm_sample_params sp = base;
        sp.batch_size = count;
        sp.first_image_index = opt->first_index + start;
        if (rs->init_noise)
            sp.init_noise = rs->init_noise + (size_t)start * rs->latent_floats;
        if (rs->step_noise) {
            const size_t per_step = (size_t)count * rs->latent_floats;
            for (int s = 0; s < opt->steps; s++)
                memcpy(step_slice + (size_t)s * per_step,
                       rs->step_noise + ((size_t)s * n + start) * rs->latent_floats,
                       per_step * sizeof(float));
            sp.step_noise = step_slice;
        }
        fpdm_sample_report batch_report = {0};
        fpdm_status status = fpdm_sample(rs->ctx, rs->model, &sp, count, rs->labels + start,
                                         latents, &batch_report);
        /* Stopped at its last step, the batch is done (counted) and kept. */
        const int finished = status == FPDM_OK ||
                             (status == FPDM_ERR_CANCELLED && batch_report.num_batches == 1);
        if (status == FPDM_ERR_CANCELLED && !finished) {
            fpdm_sample_report_free(&batch_report);
            rc = EXIT_INTERRUPTED;
            break;
        }
        if (!finished) {
            fprintf(stderr, PROGRAM ": sampling failed: %s\n", fpdm_last_error(rs->ctx));
            fpdm_sample_report_free(&batch_report);
            rc = EXIT_RUNTIME;
            break;
        }
        add_batch_report(rs, &batch_report);
        fpdm_sample_report_free(&batch_report);
        if (rs->all_latents)
            memcpy(rs->all_latents + (size_t)start * rs->latent_floats, latents,
                   (size_t)count * rs->latent_floats * sizeof(float));
        rc = write_batch_images(rs, start, count, latents, images);
        rs->images_sampled += count;
        rp->images_before += count;
        rp->steps_before += opt->steps;
    }
done:
    free(latents);
    free(images);
    free(step_slice);
    return rc;
}

static int count_batches_to_run(const run_state *rs)
{
    const options *opt = rs->opt;
    int batches = 0;
    for (int start = 0; start < opt->num_images; start += opt->batch_size) {
        const int count = start + opt->batch_size <= opt->num_images ? opt->batch_size
                                                                     : opt->num_images - start;
        if (opt->overwrite || rs->all_latents || !rs->write_pngs ||
            !batch_files_exist(rs, start, count))
            batches++;
    }
    return batches;
}

static void fill_report(report *r, const run_state *rs, const fpdm_sample_params *sp,
                        double seconds)
{
    const options *opt = rs->opt;
    report_set_string(r, "settings", "model", opt->model_path);
    if (opt->vae_path)
        report_set_string(r, "settings", "vae", opt->vae_path);
    report_set_string(r, "settings", "architecture", rs->info->is_fixed_point ? "fpdm" : "dit");
    report_set_number(r, "settings", "num_images", opt->num_images);
    report_set_number(r, "settings", "first_index", opt->first_index);
    report_set_number(r, "settings", "batch_size", opt->batch_size);
    report_set_number(r, "settings", "steps", opt->steps);
    report_set_string(r, "settings", "sampler", sampler_names[opt->sampler]);
    report_set_number(r, "settings", "eta", opt->eta);
    report_set_number(r, "settings", "cfg_scale", opt->cfg_scale);
    report_set_string(r, "settings", "cfg_channels", cfg_channel_names[opt->cfg_all_channels]);
    report_set_uint64(r, "settings", "seed", opt->seed);
    report_set_int_array(r, "settings", "classes", rs->labels, opt->num_images);
    if (rs->info->is_fixed_point) {
        report_set_number(r, "settings", "iters",
                          sp->iters >= 0 ? sp->iters : rs->info->default_iters);
        report_set_string(r, "settings", "schedule",
                          opt->iters_per_step ? "explicit" : schedule_names[opt->schedule]);
        report_set_int_array(r, "settings", "iteration_plan", rs->plan, opt->steps);
        report_set_bool(r, "settings", "reuse", opt->reuse);
        report_set_number(r, "settings", "tol", opt->tol);
        report_set_bool(r, "settings", "carry_over", opt->carry_over);
    }
    report_set_context(r, "settings", rs->ctx);
    fpdm_sample_report totals = {
        .num_steps = opt->steps,
        .steps = rs->steps,
        .model_evaluations = rs->model_evaluations,
        .fixed_point_iterations = rs->fixed_point_iterations,
        .seconds = seconds,
        .num_batches = rs->num_batches,
    };
    report_set_sample(r, &totals, rs->images_sampled);
    report_set_number(r, "totals", "images_skipped", rs->images_skipped);
}

/* The grid is as near square as the image count allows. */
static int grid_columns(const options *opt)
{
    return (int)ceil(sqrt((double)opt->num_images));
}

/* Packs the run's PNGs into --npz, read back from the folder in index order
 * as the official sample_ddp.py builds its .npz: the images drawn now and
 * those an earlier run left alike, bytes as the PNGs hold them. Returns 0,
 * EXIT_RUNTIME or EXIT_INTERRUPTED after printing why; PATH is then left as
 * it was. */
static int write_npz(run_state *rs)
{
    const options *opt = rs->opt;
    const int64_t shape[4] = {opt->num_images, rs->image_size, rs->image_size,
                              rs->image_channels};
    const size_t image_bytes = (size_t)rs->image_size * rs->image_size * rs->image_channels;
    char err[512];
    uint8_t *pixels = malloc((size_t)PNG_CHUNK * image_bytes);
    if (!pixels) {
        fprintf(stderr, PROGRAM ": --npz: out of memory\n");
        return EXIT_RUNTIME;
    }
    if (!opt->quiet && opt->num_images >= 1000)
        fprintf(stderr, PROGRAM ": packing %d images into %s\n", opt->num_images, opt->npz_path);
    npz_writer *npz = npz_u8_create(opt->npz_path, 4, shape, err, sizeof err);
    int rc = npz ? 0 : EXIT_RUNTIME;
    for (int start = 0; rc == 0 && start < opt->num_images; start += PNG_CHUNK) {
        const int count = opt->num_images - start < PNG_CHUNK ? opt->num_images - start : PNG_CHUNK;
        fill_image_paths(rs, start, count);
        if (interrupted)
            rc = EXIT_INTERRUPTED;
        else if (png_read_images((const char *const *)rs->paths, count, rs->image_channels,
                                 rs->image_size, rs->image_size, pixels, err, sizeof err) != 0 ||
                 npz_u8_append(npz, pixels, (size_t)count * image_bytes, err, sizeof err) != 0)
            rc = EXIT_RUNTIME;
    }
    if (rc == 0 && npz_u8_finish(npz, err, sizeof err) != 0)
        rc = EXIT_RUNTIME;
    else if (rc != 0)
        npz_u8_abort(npz);
    free(pixels);
    if (rc == EXIT_INTERRUPTED)
        fprintf(stderr, PROGRAM ": interrupted (%s); --npz %s not written (the images are in "
                "%s)\n", stop_signal_name(), opt->npz_path, opt->out_dir);
    else if (rc != 0)
        fprintf(stderr, PROGRAM ": --npz: %s\n", err);
    return rc;
}

/* Writes --report; stop_signal is the name of the signal that stopped the
 * run, or NULL when it ran to the end. Returns 0 or EXIT_RUNTIME after
 * printing why. */
static int write_report(const run_state *rs, const fpdm_sample_params *sp, double seconds,
                        const char *stop_signal)
{
    char err[512];
    report *r = report_create(PROGRAM);
    if (!r) {
        fprintf(stderr, PROGRAM ": out of memory for the report\n");
        return EXIT_RUNTIME;
    }
    report_set_string(r, NULL, "stopped_by", stop_signal);
    fill_report(r, rs, sp, seconds);
    int rc = report_write(r, rs->opt->report_path, err, sizeof err);
    report_free(r);
    if (rc != 0) {
        fprintf(stderr, PROGRAM ": %s\n", err);
        return EXIT_RUNTIME;
    }
    return 0;
}

/* The closing line. Its counts say their units: a model evaluation is one
 * image row through the network at one step (two with guidance), while a
 * fixed-point iteration runs a whole batch's rows at once, as the report's
 * fixed_point_iterations counts it. */
static void print_summary(const run_state *rs, double seconds)
{
    const int drawn = rs->images_sampled;
    fprintf(stderr, PROGRAM ": %d %s in %.2f s (%.2f images/s), %d %s already on disk; %lld "
            "model evaluations (image rows x steps)", drawn, drawn == 1 ? "image" : "images",
            seconds, seconds > 0 ? drawn / seconds : 0.0, rs->images_skipped,
            rs->images_skipped == 1 ? "image" : "images", rs->model_evaluations);
    if (rs->info->is_fixed_point && rs->num_batches > 0)
        fprintf(stderr, "; %lld fixed-point iterations in %d %s (%.1f a batch)",
                rs->fixed_point_iterations, rs->num_batches,
                rs->num_batches == 1 ? "batch" : "batches",
                (double)rs->fixed_point_iterations / rs->num_batches);
    fputc('\n', stderr);
}

/* Tiles --grid from the run's PNGs read back from --out, as --npz packs
 * them: the images drawn now and those an earlier run left alike (a resumed
 * run's grid is whole), the same bytes as a grid of the samples themselves.
 * Returns 0 or EXIT_RUNTIME after printing why. */
static int write_grid(run_state *rs)
{
    const options *opt = rs->opt;
    const size_t image_bytes = (size_t)rs->image_size * rs->image_size * rs->image_channels;
    char err[512];
    /* png_check_grid held the canvas to 1 GiB: the images take no more. */
    uint8_t *pixels = malloc((size_t)opt->num_images * image_bytes);
    if (!pixels) {
        fprintf(stderr, PROGRAM ": --grid: out of memory\n");
        return EXIT_RUNTIME;
    }
    int rc = 0;
    for (int start = 0; rc == 0 && start < opt->num_images; start += PNG_CHUNK) {
        const int count = opt->num_images - start < PNG_CHUNK ? opt->num_images - start : PNG_CHUNK;
        fill_image_paths(rs, start, count);
        if (png_read_images((const char *const *)rs->paths, count, rs->image_channels,
                            rs->image_size, rs->image_size, pixels + (size_t)start * image_bytes,
                            err, sizeof err) != 0)
            rc = EXIT_RUNTIME;
    }
    if (rc == 0 && png_write_grid_pixels(opt->grid_path, pixels, opt->num_images,
                                         rs->image_channels, rs->image_size, rs->image_size,
                                         grid_columns(opt), GRID_PADDING, err, sizeof err) != 0)
        rc = EXIT_RUNTIME;
    if (rc != 0)
        fprintf(stderr, PROGRAM ": --grid: %s\n", err);
    free(pixels);
    return rc;
}

/* Writes --grid, --latents-out, --npz and --report after the batches. */
static int write_run_outputs(run_state *rs, const fpdm_sample_params *sp, double seconds)
{
    const options *opt = rs->opt;
    char err[512];
    if (opt->grid_path) {
        int rc = write_grid(rs);
        if (rc != 0)
            return rc;
    }
    if (opt->latents_out) {
        const int64_t shape[4] = {opt->num_images, rs->info->in_channels, rs->info->input_size,
                                  rs->info->input_size};
        if (npy_write_f32(opt->latents_out, rs->all_latents, 4, shape, err, sizeof err) != 0) {
            fprintf(stderr, PROGRAM ": %s\n", err);
            return EXIT_RUNTIME;
        }
    }
    if (opt->npz_path) {
        int rc = write_npz(rs);
        if (rc != 0)
            return rc;
    }
    if (opt->report_path)
        return write_report(rs, sp, seconds, NULL);
    return 0;
}

/* Readies the decoder for a whole batch before any sampling, so a device
 * short of memory for it says so now and not after the first batch. A CUDA
 * build without cuDNN keeps the VAE in host memory for CPU contexts: it
 * decodes on one of those. Returns 0 or EXIT_RUNTIME after printing why. */
static int prepare_vae(run_state *rs)
{
    fpdm_status status =
        fpdm_vae_prepare(rs->vae_ctx, rs->vae, rs->opt->batch_size, rs->info->input_size);
    if (status == FPDM_ERR_UNSUPPORTED && rs->vae_ctx == rs->ctx) {
        fpdm_context_params cp = fpdm_context_default_params();
        cp.num_threads = rs->opt->threads;
        if (fpdm_context_create(&cp, &rs->vae_ctx) != FPDM_OK) {
            fprintf(stderr, PROGRAM ": cannot open a CPU context for the VAE\n");
            return EXIT_RUNTIME;
        }
        if (!rs->opt->quiet)
            fprintf(stderr, PROGRAM ": note: the VAE decodes on the CPU\n");
        status = fpdm_vae_prepare(rs->vae_ctx, rs->vae, rs->opt->batch_size, rs->info->input_size);
    }
    if (status != FPDM_OK) {
        fprintf(stderr, PROGRAM ": VAE decoder: %s\n", fpdm_last_error(rs->vae_ctx));
        return EXIT_RUNTIME;
    }
    return 0;
}

/* Checks the options against the loaded model and fills the sampling
 * parameters. Returns 0 or EXIT_USAGE / EXIT_RUNTIME after printing. */
static int configure(run_state *rs, fpdm_sample_params *sp)
{
    const options *opt = rs->opt;
    const fpdm_model_info *info = rs->info;
    char err[512];
    if (opt->steps > info->num_train_timesteps) {
        snprintf(err, sizeof err, "--steps: %d is out of range (allowed: 1..%d, the model's "
                 "training timesteps)", opt->steps, info->num_train_timesteps);
        return usage_error(err);
    }
    for (int i = 0; i < opt->num_classes_given; i++) {
        if (opt->classes[i] < 0 || opt->classes[i] >= info->num_classes) {
            snprintf(err, sizeof err, "--class: %d is out of range (allowed: 0..%d for this "
                     "model)", opt->classes[i], info->num_classes - 1);
            return usage_error(err);
        }
    }
    if (!info->is_fixed_point) {
        const char *fpdm_flag = opt->iters >= 0 ? "--iters"
                                : opt->reuse ? "--reuse"
                                : opt->schedule_given ? "--schedule"
                                : opt->budget ? "--budget"
                                : opt->iters_per_step ? "--iters-per-step"
                                : opt->tol > 0 ? "--tol"
                                : opt->carry_over ? "--carry-over"
                                                  : NULL;
        if (fpdm_flag) {
            snprintf(err, sizeof err, "%s applies to fixed-point (FPDM) models only; %s is a "
                     "DiT", fpdm_flag, opt->model_path);
            return usage_error(err);
        }
    }
    if (opt->budget && opt->budget < opt->steps && opt->schedule != FPDM_ITERS_FIXED) {
        snprintf(err, sizeof err, "--budget %d is less than --steps %d (allowed: at least one "
                 "iteration per step with --schedule %s)", opt->budget, opt->steps,
                 schedule_names[opt->schedule]);
        return usage_error(err);
    }
    if (info->latent_space && !opt->vae_path && opt->grid_path && opt->latents_out) {
        snprintf(err, sizeof err, "--grid needs --vae FILE: %s samples VAE latents, which "
                 "--latents-out saves without one", opt->model_path);
        return usage_error(err);
    }
    if (info->latent_space && !opt->vae_path && !opt->latents_out) {
        snprintf(err, sizeof err, "%s samples VAE latents: give --vae FILE to decode them into "
                 "PNGs, or --latents-out FILE.npy to save the latents only", opt->model_path);
        return usage_error(err);
    }
    if (opt->eta > 0 && opt->sampler != FPDM_SAMPLER_DDIM)
        return usage_error("--eta applies to --sampler ddim only");
    if (opt->iters >= 0 && opt->iters_per_step)
        return usage_error("--iters and --iters-per-step both set the iterations: give one");
    if (opt->iters >= 0 && opt->budget && (long long)opt->iters * opt->steps != opt->budget) {
        snprintf(err, sizeof err, "--budget %d and --iters %d disagree: --budget is the total, "
                 "which --iters %d makes %lld over --steps %d (allowed: one of them, or a budget "
                 "of steps x iters)", opt->budget, opt->iters, opt->iters,
                 (long long)opt->iters * opt->steps, opt->steps);
        return usage_error(err);
    }

    *sp = fpdm_sample_default_params(rs->model);
    sp->num_steps = opt->steps;
    sp->sampler = (fpdm_sampler)opt->sampler;
    sp->ddim_eta = opt->eta;
    sp->cfg_scale = opt->cfg_scale;
    sp->cfg_all_channels = opt->cfg_all_channels;
    sp->noise_seed = opt->seed;
    if (info->is_fixed_point) {
        if (opt->iters >= 0)
            sp->iters = opt->iters;
        sp->iteration_schedule = (fpdm_iteration_schedule)opt->schedule;
        sp->budget = opt->budget;
        sp->iters_per_step = opt->iters_per_step;
        sp->reuse = opt->reuse;
        sp->tol = opt->tol;
        sp->carry_over = opt->carry_over;
        /* Residuals cost a device wait per step: only for a report. */
        sp->measure_residuals = opt->report_path != NULL;
    }
    rs->plan = calloc((size_t)opt->steps, sizeof(int));
    if (!rs->plan)
        return EXIT_RUNTIME;
    fpdm_status status = fpdm_plan_iterations(rs->ctx, rs->model, sp, rs->plan);
    if (status == FPDM_ERR_INVALID_ARGUMENT)
        return usage_error(fpdm_last_error(rs->ctx));
    if (status != FPDM_OK) {
        fprintf(stderr, PROGRAM ": %s\n", fpdm_last_error(rs->ctx));
        return EXIT_RUNTIME;
    }

    rs->latent_floats = (size_t)info->in_channels * info->input_size * info->input_size;
    if (opt->init_noise_path) {
        const int64_t shape[4] = {opt->num_images, info->in_channels, info->input_size,
                                  info->input_size};
        int rc = read_noise("--init-noise", opt->init_noise_path, 4, shape, &rs->init_noise);
        if (rc != 0)
            return rc;
    }
    if (opt->step_noise_path) {
        const int64_t shape[5] = {opt->steps, opt->num_images, info->in_channels,
                                  info->input_size, info->input_size};
        int rc = read_noise("--step-noise", opt->step_noise_path, 5, shape, &rs->step_noise);
        if (rc != 0)
            return rc;
    }

    rs->image_channels = info->in_channels;
    rs->image_size = info->input_size;
    rs->write_pngs = !info->latent_space || opt->vae_path;
    if (opt->vae_path) {
        if (!info->latent_space) {
            snprintf(err, sizeof err, "--vae: %s is a pixel-space model; it needs no VAE",
                     opt->model_path);
            return usage_error(err);
        }
        rs->vae_ctx = rs->ctx;
        if (fpdm_vae_load(rs->vae_ctx, opt->vae_path, &rs->vae) != FPDM_OK) {
            fprintf(stderr, PROGRAM ": cannot load the VAE decoder: %s\n",
                    fpdm_last_error(rs->vae_ctx));
            return EXIT_RUNTIME;
        }
        const fpdm_vae_info *vae_info = fpdm_vae_get_info(rs->vae);
        if (vae_info->latent_channels != info->in_channels) {
            snprintf(err, sizeof err, "--vae %s decodes %d latent channels but the model "
                     "samples %d", opt->vae_path, vae_info->latent_channels, info->in_channels);
            return usage_error(err);
        }
        rs->image_channels = vae_info->image_channels;
        rs->image_size = info->input_size * vae_info->upscale;
        int rc = prepare_vae(rs);
        if (rc != 0)
            return rc;
    }
    if (rs->write_pngs && rs->image_channels != 1 && rs->image_channels != 3) {
        /* Such samples can still be saved as an array. */
        if (opt->latents_out && !opt->grid_path && !opt->vae_path) {
            rs->write_pngs = 0;
        } else if (opt->vae_path) {
            snprintf(err, sizeof err, "--vae %s decodes to %d channels; PNGs need 1 or 3 "
                     "(without --vae, --latents-out FILE.npy saves the latents)", opt->vae_path,
                     rs->image_channels);
            return usage_error(err);
        } else {
            snprintf(err, sizeof err, "%s has %d channels; PNGs need 1 or 3 (save the samples "
                     "with --latents-out FILE.npy and no --grid instead)", opt->model_path,
                     rs->image_channels);
            return usage_error(err);
        }
    }
    if (!rs->write_pngs && opt->npz_path) {
        snprintf(err, sizeof err, "--npz packs the run's PNGs, and this run writes none%s",
                 info->latent_space ? " (give --vae FILE to decode the latents into PNGs)" : "");
        return usage_error(err);
    }
    if (!rs->write_pngs && (opt->out_given || opt->overwrite)) {
        snprintf(err, sizeof err, "%s is for PNG folders; this run writes only --latents-out%s",
                 opt->overwrite ? "--overwrite" : "--out",
                 info->latent_space ? " (give --vae FILE to decode the latents into PNGs)" : "");
        return usage_error(err);
    }
    rs->image_floats = (size_t)rs->image_channels * rs->image_size * rs->image_size;
    /* Before the per-image arrays: -n 1000000000 drew a billion labels
     * (11 s) before this refused its grid. */
    if (opt->grid_path && png_check_grid(opt->grid_path, opt->num_images, rs->image_channels,
                                         rs->image_size, rs->image_size, grid_columns(opt),
                                         GRID_PADDING, err, sizeof err) != 0) {
        char message[sizeof err + 16];
        snprintf(message, sizeof message, "--grid %s", err);
        return usage_error(message);
    }

    rs->labels = malloc((size_t)opt->num_images * sizeof(int));
    rs->steps = calloc((size_t)opt->steps, sizeof(fpdm_step_report));
    if (opt->latents_out)
        rs->all_latents = malloc((size_t)opt->num_images * rs->latent_floats * sizeof(float));
    rs->paths = calloc(PNG_CHUNK, sizeof *rs->paths);
    for (int i = 0; rs->paths && i < PNG_CHUNK; i++)
        if (!(rs->paths[i] = malloc(PATH_MAX)))
            break;
    if (!rs->labels || !rs->steps || (opt->latents_out && !rs->all_latents) ||
        !rs->paths || !rs->paths[PNG_CHUNK - 1]) {
        fprintf(stderr, PROGRAM ": out of memory for %d images\n", opt->num_images);
        return EXIT_RUNTIME;
    }
    for (int i = 0; i < opt->num_images; i++) {
        int index = opt->first_index + i;
        rs->labels[i] = opt->num_classes_given
                            ? opt->classes[index % opt->num_classes_given]
                            : default_label(opt->seed, index, info->num_classes);
    }
    for (int s = 0; s < opt->steps; s++)
        rs->steps[s].residual = -1.0f;
    return 0;
}

static void print_model_and_plan(const run_state *rs)
{
    const fpdm_model_info *info = rs->info;
    char classes[48];
    if (info->unconditional)
        snprintf(classes, sizeof classes, "unconditional");
    else
        snprintf(classes, sizeof classes, "%d classes", info->num_classes);
    fprintf(stderr, PROGRAM ": %s: %s, hidden %d, depth %d, heads %d, patch %d, input %dx%dx%d "
            "(%s), %s, %zu parameters, device %s\n", rs->opt->model_path,
            info->is_fixed_point ? "FPDM" : "DiT", info->hidden_size, info->depth,
            info->num_heads, info->patch_size, info->in_channels, info->input_size,
            info->input_size, info->latent_space ? "latent" : "pixel", classes,
            info->num_parameters, fpdm_context_device_name(rs->ctx));
    if (!info->is_fixed_point)
        return;
    long long total = 0;
    fprintf(stderr, PROGRAM ": iteration plan (sampling order):");
    for (int s = 0; s < rs->opt->steps; s++) {
        fprintf(stderr, "%s%d", s ? "," : " ", rs->plan[s]);
        total += rs->plan[s];
    }
    fprintf(stderr, " (total %lld)\n", total);
}

/* ---- the settings an output folder's images were drawn with --------------- */

/* A hidden file in --out: a rerun into a folder drawn with other settings
 * would otherwise skip the files it finds and mix two runs' images. It
 * names files by content, not by path or time, so shards on machines that
 * share the folder agree. */
#define SETTINGS_FILE ".fpdm-sample-settings"

static void append_line(char *text, size_t size, const char *format, ...)
    __attribute__((format(printf, 3, 4)));
static void append_line(char *text, size_t size, const char *format, ...)
{
    size_t used = strlen(text);
    if (used >= size)
        return;
    va_list args;
    va_start(args, format);
    vsnprintf(text + used, size - used, format, args);
    va_end(args);
}

static uint64_t fnv1a(uint64_t hash, const unsigned char *bytes, size_t n)
{
    for (size_t i = 0; i < n; i++)
        hash = (hash ^ bytes[i]) * 0x100000001b3ull;
    return hash;
}

#define FNV_OFFSET 0xcbf29ce484222325ull

/* A file by its size and a hash of its first and last MiB (the header and
 * some weights: enough to tell two models or noise files apart cheaply). */
static void append_file_line(char *text, size_t size, const char *name, const char *path)
{
    enum { PIECE = 1 << 20 };
    static unsigned char piece[PIECE];
    if (!path) {
        append_line(text, size, "%s none\n", name);
        return;
    }
    FILE *file = fopen(path, "rb");
    struct stat st;
    if (!file || fstat(fileno(file), &st) != 0) {
        append_line(text, size, "%s unreadable\n", name);
        if (file)
            fclose(file);
        return;
    }
    uint64_t hash = fnv1a(FNV_OFFSET, piece, fread(piece, 1, PIECE, file));
    if (st.st_size > PIECE && fseeko(file, st.st_size - PIECE, SEEK_SET) == 0)
        hash = fnv1a(hash, piece, fread(piece, 1, PIECE, file));
    fclose(file);
    append_line(text, size, "%s %lld bytes, %016llx\n", name, (long long)st.st_size,
                (unsigned long long)hash);
}

/* A list of integers, or past 64 of them its length and hash. */
static void append_list_line(char *text, size_t size, const char *name, const int *values,
                             int count)
{
    if (count > 64) {
        append_line(text, size, "%s %d entries, %016llx\n", name, count,
                     (unsigned long long)fnv1a(FNV_OFFSET, (const unsigned char *)values,
                                              (size_t)count * sizeof *values));
        return;
    }
    append_line(text, size, "%s", name);
    for (int i = 0; i < count; i++)
        append_line(text, size, "%s%d", i ? "," : " ", values[i]);
    append_line(text, size, "\n");
}

/* What an image's pixels depend on, a "name value" line each: not the image
 * count, batch size, first index or device, which leave an image as it is
 * (shards of one run share a folder). */
static void describe_settings(const run_state *rs, char *text, size_t size)
{
    const options *opt = rs->opt;
    text[0] = '\0';
    append_file_line(text, size, "model", opt->model_path);
    append_file_line(text, size, "vae", opt->vae_path);
    append_line(text, size, "steps %d\nsampler %s\neta %.9g\ncfg_scale %.9g\ncfg_channels %s\n"
                "seed %llu\nprecision %s\n", opt->steps, sampler_names[opt->sampler],
                (double)opt->eta, (double)opt->cfg_scale, cfg_channel_names[opt->cfg_all_channels],
                (unsigned long long)opt->seed,
                cli_precision_name(fpdm_context_precision(rs->ctx)));
    if (opt->num_classes_given)
        append_list_line(text, size, "classes", opt->classes, opt->num_classes_given);
    else
        append_line(text, size, "classes by seed\n");
    append_list_line(text, size, "iterations", rs->plan, opt->steps);
    append_line(text, size, "reuse %d\ntol %.9g\ncarry_over %d\n", opt->reuse, (double)opt->tol,
                opt->carry_over);
    append_file_line(text, size, "init_noise", opt->init_noise_path);
    append_file_line(text, size, "step_noise", opt->step_noise_path);
}

/* The first line where two descriptions differ, into line. */
static void first_difference(const char *a, const char *b, char *line, size_t size)
{
    while (*a && *a == *b) {
        const char *a_end = strchr(a, '\n'), *b_end = strchr(b, '\n');
        if (!a_end || !b_end || a_end - a != b_end - b || strncmp(a, b, (size_t)(a_end - a)) != 0)
            break;
        a = a_end + 1;
        b = b_end + 1;
    }
    const char *end = strchr(a, '\n');
    int length = end ? (int)(end - a) : (int)strlen(a);
    snprintf(line, size, "%.*s", length, a);
}

/* Whether dir holds a file named as this program names images. */
static int has_images(const char *dir)
{
    DIR *folder = opendir(dir);
    if (!folder)
        return 0;
    int found = 0;
    for (struct dirent *entry; !found && (entry = readdir(folder));)
        found = is_image_name(entry->d_name);
    closedir(folder);
    return found;
}

/* Written whole under a temporary name and renamed into place, so a shard
 * starting beside this one reads either nothing or all of it. */
static int write_settings_file(const run_state *rs, const char *text)
{
    const options *opt = rs->opt;
    char path[PATH_MAX], temporary[PATH_MAX + 8];
    snprintf(path, sizeof path, "%s/%s", opt->out_dir, SETTINGS_FILE);
    snprintf(temporary, sizeof temporary, "%s.XXXXXX", path);
    int fd = mkstemp(temporary);
    /* mkstemp makes it 0600; the images follow the umask, and so must their
     * record, or another user's rerun in a shared folder could not read it. */
    const mode_t mask = umask(0);
    umask(mask);
    if (fd >= 0)
        fchmod(fd, 0666 & ~mask);
    FILE *file = fd >= 0 ? fdopen(fd, "w") : NULL;
    int ok = file && fputs(text, file) != EOF;
    if (file)
        ok = fclose(file) == 0 && ok;
    else if (fd >= 0)
        close(fd);
    if (ok && rename(temporary, path) == 0)
        return 0;
    fprintf(stderr, PROGRAM ": %s: cannot write: %s\n", path, strerror(errno));
    if (fd >= 0)
        unlink(temporary);
    return EXIT_RUNTIME;
}

/* Before sampling: a folder drawn with these settings (or empty) gets them
 * recorded; one drawn with others, or holding images with no record, is
 * refused, unless --overwrite, in which case the record goes and the new one
 * is written only when the run completes (pending_settings), so an
 * interrupted --overwrite cannot leave a record that vouches for the old
 * images still there. */
static int check_settings_file(run_state *rs)
{
    const options *opt = rs->opt;
    static char now[1 << 16], before[1 << 16];
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", opt->out_dir, SETTINGS_FILE);
    describe_settings(rs, now, sizeof now);
    FILE *file = fopen(path, "r");
    if (!file && errno != ENOENT) {
        fprintf(stderr, PROGRAM ": %s: cannot read: %s\n", path, strerror(errno));
        return EXIT_RUNTIME;
    }
    if (!file) {
        if (!has_images(opt->out_dir))
            return write_settings_file(rs, now);
        if (!opt->overwrite) {
            fprintf(stderr, PROGRAM ": --out %s holds images but no record of the settings they "
                    "were drawn with (an interrupted --overwrite, or an older fpdm-sample): give "
                    "another --out, or --overwrite to draw them again\n", opt->out_dir);
            return EXIT_USAGE;
        }
        rs->pending_settings = now;
        return 0;
    }
    size_t got = fread(before, 1, sizeof before - 1, file);
    before[got] = '\0';
    fclose(file);
    if (strcmp(before, now) == 0)
        return 0;
    if (!opt->overwrite) {
        char there[1024], here[1024];
        first_difference(before, now, there, sizeof there);
        first_difference(now, before, here, sizeof here);
        fprintf(stderr, PROGRAM ": --out %s holds images drawn with other settings (there: "
                "\"%s\"; now: \"%s\"): give another --out, or --overwrite to draw them "
                "again\n", opt->out_dir, there, here);
        return EXIT_USAGE;
    }
    if (unlink(path) != 0) {
        fprintf(stderr, PROGRAM ": %s: cannot remove: %s\n", path, strerror(errno));
        return EXIT_RUNTIME;
    }
    rs->pending_settings = now;
    return 0;
}

/* The run's files are distinct: no output names another output, an input
 * (it would be replaced: the model, say), the --out folder, or a name in it
 * that the images or the settings record take. Special files (/dev/null)
 * and the program's descriptors (/dev/stdout) may take several outputs. */
static int check_distinct_files(const run_state *rs)
{
    const options *opt = rs->opt;
    const struct named_path {
        const char *flag, *path;
    } outputs[] = {{"--grid", opt->grid_path},
                   {"--latents-out", opt->latents_out},
                   {"--report", opt->report_path},
                   {"--npz", opt->npz_path}},
      inputs[] = {{"-m", opt->model_path},
                  {"--vae", opt->vae_path},
                  {"--init-noise", opt->init_noise_path},
                  {"--step-noise", opt->step_noise_path}};
    enum { NUM_OUTPUTS = sizeof outputs / sizeof *outputs };
    char identity[NUM_OUTPUTS][PATH_MAX], out_identity[PATH_MAX], message[3 * PATH_MAX];
    file_identity(opt->out_dir, out_identity, sizeof out_identity);
    const size_t out_length = strlen(out_identity);
    for (int i = 0; i < NUM_OUTPUTS; i++) {
        identity[i][0] = '\0';
        struct stat output_stat;
        const int exists = outputs[i].path && stat(outputs[i].path, &output_stat) == 0;
        if (!outputs[i].path || (exists && !S_ISREG(output_stat.st_mode)) ||
            temp_path_descriptor(outputs[i].path) >= 0)
            continue;
        file_identity(outputs[i].path, identity[i], sizeof identity[i]);
        for (int j = 0; j < i; j++) {
            if (strcmp(identity[i], identity[j]) == 0) {
                snprintf(message, sizeof message, "%s %s and %s %s are the same file (allowed: "
                         "a file each)", outputs[j].flag, outputs[j].path, outputs[i].flag,
                         outputs[i].path);
                return usage_error(message);
            }
        }
        for (size_t k = 0; exists && k < sizeof inputs / sizeof *inputs; k++) {
            struct stat input_stat;
            if (inputs[k].path && stat(inputs[k].path, &input_stat) == 0 &&
                input_stat.st_dev == output_stat.st_dev && input_stat.st_ino == output_stat.st_ino) {
                snprintf(message, sizeof message, "%s %s is %s %s, which it would replace "
                         "(allowed: another file)", outputs[i].flag, outputs[i].path,
                         inputs[k].flag, inputs[k].path);
                return usage_error(message);
            }
        }
        if (!rs->write_pngs)
            continue;
        const char *name = identity[i] + out_length + 1;
        const int in_out = strncmp(identity[i], out_identity, out_length) == 0 &&
                           identity[i][out_length] == '/' && !strchr(name, '/');
        if (strcmp(identity[i], out_identity) == 0) {
            snprintf(message, sizeof message, "%s %s is the --out folder (allowed: a file name)",
                     outputs[i].flag, outputs[i].path);
            return usage_error(message);
        }
        if (in_out && (is_image_name(name) || strcmp(name, SETTINGS_FILE) == 0)) {
            snprintf(message, sizeof message, "%s %s is a name that --out %s keeps its %s in "
                     "(allowed: another name)", outputs[i].flag, outputs[i].path, opt->out_dir,
                     is_image_name(name) ? "images" : "settings record");
            return usage_error(message);
        }
    }
    return 0;
}

/* --overwrite: an earlier image of an index this run draws, under another
 * class, would stay beside the new one (names carry the class), so it goes.
 * Other indices' files stay: another process may be drawing them (--shard,
 * or parts split by --first-index); when the settings changed, the record
 * this run writes will cover them too, which is said. */
static int remove_replaced_images(const run_state *rs)
{
    const options *opt = rs->opt;
    DIR *folder = opendir(opt->out_dir);
    if (!folder) {
        fprintf(stderr, PROGRAM ": --out %s: %s\n", opt->out_dir, strerror(errno));
        return EXIT_RUNTIME;
    }
    int rc = 0, others = 0;
    for (struct dirent *entry; rc == 0 && (entry = readdir(folder));) {
        int index = 0, label = 0;
        if (!parse_image_name(entry->d_name, &index, &label))
            continue;
        if (index < opt->first_index || index - opt->first_index >= opt->num_images) {
            others++;
            continue;
        }
        if (rs->labels[index - opt->first_index] == label)
            continue;
        char path[PATH_MAX];
        snprintf(path, sizeof path, "%s/%s", opt->out_dir, entry->d_name);
        if (unlink(path) != 0 && errno != ENOENT) {
            fprintf(stderr, PROGRAM ": --overwrite: cannot remove %s: %s\n", path,
                    strerror(errno));
            rc = EXIT_RUNTIME;
        }
    }
    closedir(folder);
    if (rc == 0 && others > 0 && rs->pending_settings)
        fprintf(stderr, PROGRAM ": note: --out %s also holds %d %s of indices outside %d..%d, "
                "drawn with other settings, which the settings record this run writes will "
                "cover: delete them (or draw them again) unless other runs are doing so\n",
                opt->out_dir, others, others == 1 ? "image" : "images", opt->first_index,
                opt->first_index + opt->num_images - 1);
    return rc;
}

/* Everything that could refuse the run is checked before the first file or
 * folder is created: the output folder comes last. */
static int check_outputs(run_state *rs)
{
    const options *opt = rs->opt;
    const char *pending = rs->write_pngs ? opt->out_dir : NULL;
    if (opt->grid_path && check_output_file("--grid", opt->grid_path, pending) != 0)
        return EXIT_RUNTIME;
    if (opt->latents_out && check_output_file("--latents-out", opt->latents_out, pending) != 0)
        return EXIT_RUNTIME;
    if (opt->report_path && check_output_file("--report", opt->report_path, pending) != 0)
        return EXIT_RUNTIME;
    if (opt->npz_path && check_output_file("--npz", opt->npz_path, pending) != 0)
        return EXIT_RUNTIME;
    int rc = check_distinct_files(rs);
    if (rc != 0)
        return rc;
    /* --overwrite's removals below take no file of the run's names, so the
     * count holds for the progress bar too. */
    rs->batches_to_run = count_batches_to_run(rs);
    if (!rs->write_pngs)
        return 0;
    /* A folder that holds every image already takes no write (the settings
     * record is then only read), so a finished run's archived, read-only
     * folder can still be packed (--npz) or tiled (--grid). */
    const int draws = !is_dir(opt->out_dir) || rs->batches_to_run > 0;
    if (draws && prepare_out_dir(opt->out_dir) != 0)
        return EXIT_RUNTIME;
    rc = check_settings_file(rs);
    return rc == 0 && opt->overwrite ? remove_replaced_images(rs) : rc;
}

static void free_run(run_state *rs)
{
    free(rs->labels);
    free(rs->plan);
    free(rs->init_noise);
    free(rs->step_noise);
    free(rs->all_latents);
    for (int i = 0; rs->paths && i < PNG_CHUNK; i++)
        free(rs->paths[i]);
    free(rs->paths);
    free(rs->steps);
    fpdm_vae_free(rs->vae);
    if (rs->vae_ctx != rs->ctx)
        fpdm_context_free(rs->vae_ctx);
    fpdm_model_free(rs->model);
    fpdm_context_free(rs->ctx);
}

int main(int argc, char **argv)
{
    options opt = {
        .num_images = DEFAULT_NUM_IMAGES,
        .iters = -1,
        .out_dir = "samples",
    };
    char model_buffer[4 * PATH_MAX];
    run_state rs = {.opt = &opt};
    int rc = parse_arguments(argc, argv, &opt);
    if (rc != 0)
        goto done;
    if (!opt.model_path && !(opt.model_path = find_default_model(model_buffer,
                                                                 sizeof model_buffer))) {
        fprintf(stderr, PROGRAM ": no -m FILE given, and the shipped model is in none of: %s\n",
                model_buffer);
        rc = EXIT_RUNTIME;
        goto done;
    }
    if (!opt.steps)
        opt.steps = DEFAULT_STEPS;
    if (opt.iters_per_step && opt.num_iters_per_step != opt.steps) {
        char err[256];
        snprintf(err, sizeof err, "--iters-per-step has %d entries but --steps is %d (allowed: "
                 "exactly one entry per step)", opt.num_iters_per_step, opt.steps);
        rc = usage_error(err);
        goto done;
    }
    if (opt.shard_count) {
        char err[256];
        if (opt.shard_count > opt.num_images) {
            snprintf(err, sizeof err, "--shard %d/%d: %d parts of %d images leave some empty "
                     "(allowed: N <= -n)", opt.shard_index, opt.shard_count, opt.shard_count,
                     opt.num_images);
            rc = usage_error(err);
            goto done;
        }
        if (opt.npz_path) {
            rc = usage_error("--npz packs the whole run, and a --shard part holds only its own "
                             "images: when every part is done, run the whole range (no --shard) "
                             "with --npz; it draws nothing and packs them all");
            goto done;
        }
        if (opt.init_noise_path || opt.step_noise_path) {
            rc = usage_error("--shard splits the built-in noise's run; noise files are per run: "
                             "give each part its own with --first-index and -n instead");
            goto done;
        }
        /* Part K holds images [n K / N, n (K + 1) / N) of the run. */
        const int first = (int)((long long)opt.num_images * opt.shard_index / opt.shard_count);
        const int end = (int)((long long)opt.num_images * (opt.shard_index + 1) / opt.shard_count);
        opt.first_index += first;
        opt.num_images = end - first;
    }
    if (!opt.batch_size)
        opt.batch_size = opt.num_images < MAX_DEFAULT_BATCH ? opt.num_images : MAX_DEFAULT_BATCH;
    if (opt.batch_size > opt.num_images)
        opt.batch_size = opt.num_images;

    cli_use_threads(opt.threads);
    fpdm_context_params cp = fpdm_context_default_params();
    const char *device_source;
    cp.device = cli_device(opt.device, &device_source);
    cp.precision = opt.precision;
    cp.num_threads = opt.threads;
    cp.log_callback = log_to_stderr;
    cp.log_user_data = &opt.verbose;
    rc = cli_create_context(PROGRAM, &cp, device_source, &rs.ctx);
    if (rc != 0)
        goto done;
    if (fpdm_model_load(rs.ctx, opt.model_path, &rs.model) != FPDM_OK) {
        fprintf(stderr, PROGRAM ": cannot load the model: %s\n", fpdm_last_error(rs.ctx));
        rc = EXIT_RUNTIME;
        goto done;
    }
    rs.info = fpdm_model_get_info(rs.model);
    if (!opt.cfg_scale)
        opt.cfg_scale = fpdm_sample_default_params(rs.model).cfg_scale;
    fpdm_sample_params sp;
    rc = configure(&rs, &sp);
    if (rc != 0)
        goto done;
    rc = check_outputs(&rs);
    if (rc != 0)
        goto done;
    if (opt.verbose)
        print_model_and_plan(&rs);

    struct sigaction action;
    memset(&action, 0, sizeof action);
    action.sa_handler = on_stop_signal;
    /* A second signal of the same kind kills at once, for when a step takes
     * too long. */
    action.sa_flags = SA_RESETHAND;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, NULL);
    sigaction(SIGTERM, &action, NULL);
    sigaction(SIGHUP, &action, NULL);
    /* A closed terminal or Ctrl-C also ends a `| tee log` reading stderr:
     * progress lines then go nowhere instead of killing the run mid-batch. */
    signal(SIGPIPE, SIG_IGN);

    run_progress rp = {0};
    progress_start(&rp.bar, stderr, opt.quiet,
                   (long long)rs.batches_to_run * opt.steps, opt.num_images);
    sp.progress_callback = on_progress;
    sp.progress_user_data = &rp;
    const double start = progress_now();
    rc = run_batches(&rs, sp, &rp);
    const double seconds = progress_now() - start;
    progress_end(&rp.bar);
    if (rc == EXIT_INTERRUPTED) {
        if (rs.write_pngs)
            fprintf(stderr, PROGRAM ": interrupted (%s); %d %s drawn by this run kept in %s "
                    "(%s)\n", stop_signal_name(), rs.images_sampled,
                    rs.images_sampled == 1 ? "image" : "images", opt.out_dir,
                    rs.all_latents ? "a rerun draws them all again: --latents-out needs every "
                                     "latent"
                                   : "the same command resumes");
        else
            fprintf(stderr, PROGRAM ": interrupted (%s); no latents written (--latents-out is "
                    "written when the whole run is done)\n", stop_signal_name());
    } else if (rc == 0) {
        /* Every image is drawn: the folder's record can vouch for them even
         * if an output below fails. */
        if (rs.pending_settings)
            rc = write_settings_file(&rs, rs.pending_settings);
        if (rc == 0)
            rc = write_run_outputs(&rs, &sp, seconds);
        if (rc == 0 && !opt.quiet)
            print_summary(&rs, seconds);
    }
    /* A stopped run still says what it spent on the batches it finished (a
     * failure to write that is printed; the run still ends by its signal). */
    if (rc == EXIT_INTERRUPTED && opt.report_path)
        write_report(&rs, &sp, seconds, stop_signal_id());
done:
    free_run(&rs);
    free(opt.classes);
    free(opt.iters_per_step);
    /* Everything is cleaned up: end by the signal itself, so that a calling
     * shell sees it (bash goes on with a script whose child merely exited
     * 130 after Ctrl-C, taking it as handled). */
    if (rc == EXIT_INTERRUPTED && interrupted) {
        signal(interrupted, SIG_DFL);
        raise(interrupted);
        rc = 128 + interrupted;
    }
    if (rc <= 0 && cli_flush_stdout(PROGRAM) != 0)
        return EXIT_RUNTIME;
    return rc < 0 ? 0 : rc;
}
