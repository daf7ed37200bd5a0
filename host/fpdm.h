/* fpdm.h - public C API of fpdm: DiT and Fixed Point Diffusion Model sampling.
 *
 * Two handles:
 *   fpdm_context  one per thread: the device, the activation arena, the last
 *                 error message and the log callback. Not thread-safe; use one
 *                 context per thread.
 *   fpdm_model    weights loaded from a .safetensors model file through a
 *                 context, living on that context's device. Read-only after
 *                 loading: any number of contexts on the same device and of the
 *                 same precision (its weights are stored in that precision's
 *                 operand type) may use one model at once, each on its own
 *                 stream. Free it before the context it was loaded through
 *                 (that context's backend owns its memory).
 *
 * Every function that can fail returns an fpdm_status; on failure the context
 * keeps a one-line message (fpdm_last_error) and also passes it to the log
 * callback at FPDM_LOG_ERROR. The library never prints, exits or aborts, and
 * keeps no global mutable state.
 *
 * Sampling in ten lines:
 *
 *   fpdm_context *ctx;
 *   fpdm_context_params cp = fpdm_context_default_params();
 *   if (fpdm_context_create(&cp, &ctx) != FPDM_OK) { ... fpdm_last_error(ctx) ... }
 *   fpdm_model *model;
 *   if (fpdm_model_load(ctx, "models/fpdm-mnist.safetensors", &model) != FPDM_OK) { ... }
 *   fpdm_sample_params sp = fpdm_sample_default_params(model);
 *   sp.num_steps = 20; sp.noise_seed = 1;
 *   int labels[4] = {1, 2, 3, 4};
 *   float *latents = malloc(fpdm_sample_output_size(model, 4) * sizeof(float));
 *   fpdm_sample(ctx, model, &sp, 4, labels, latents, NULL);
 *   fpdm_model_free(model); fpdm_context_free(ctx);
 */
#ifndef FPDM_H
#define FPDM_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(__GNUC__)
#define FPDM_API __attribute__((visibility("default")))
#else
#define FPDM_API
#endif

#define FPDM_VERSION "0.1.0"

typedef enum fpdm_status {
    FPDM_OK = 0,
    FPDM_ERR_INVALID_ARGUMENT = 1, /* a parameter is out of range or inconsistent */
    FPDM_ERR_IO = 2,               /* a file could not be opened, read or mapped */
    FPDM_ERR_BAD_FILE = 3,         /* a file is malformed or does not match its architecture */
    FPDM_ERR_OUT_OF_MEMORY = 4,
    FPDM_ERR_UNSUPPORTED = 5,      /* valid request this build or device cannot serve */
    FPDM_ERR_DEVICE = 6,           /* the accelerator reported an error */
    FPDM_ERR_CANCELLED = 7,        /* the abort callback asked to stop */
    FPDM_ERR_NOT_FINITE = 8,       /* the result holds NaN or infinity: finite weights or
                                      settings took the arithmetic past float32's range */
} fpdm_status;

FPDM_API const char *fpdm_status_name(fpdm_status status);

typedef enum fpdm_log_level {
    FPDM_LOG_DEBUG = 0,
    FPDM_LOG_INFO = 1,
    FPDM_LOG_WARN = 2,
    FPDM_LOG_ERROR = 3,
} fpdm_log_level;

typedef void (*fpdm_log_callback)(fpdm_log_level level, const char *message, void *user_data);

/* bf16 / fp16 (CUDA only): linear weights and the activations that feed
 * matrix products are stored in 16 bits and multiplied on tensor cores with
 * float32 accumulation; the residual stream, the fixed-point state and the
 * sampler stay float32. fp32: true float32 products (no TF32), for checking. */
typedef enum fpdm_precision {
    FPDM_PRECISION_DEFAULT = 0, /* fp32 on CPU, bf16 on CUDA */
    FPDM_PRECISION_FP32 = 1,
    FPDM_PRECISION_BF16 = 2,
    FPDM_PRECISION_FP16 = 3,
} fpdm_precision;

typedef struct fpdm_context fpdm_context;
typedef struct fpdm_model fpdm_model;

typedef struct fpdm_context_params {
    const char *device;          /* "cpu", "cuda", "cuda:N", or "auto": cuda:0 where the build
                                    has CUDA and a GPU is visible, else cpu; NULL means "cpu" */
    fpdm_precision precision;
    int num_threads;             /* CPU threads of the library's own loops, 0..4096; 0 keeps
                                    OpenMP's default. OpenBLAS's products follow the calling thread's
                                    OpenMP setting (omp_set_num_threads, OMP_NUM_THREADS),
                                    which the library leaves to the program */
    fpdm_log_callback log_callback; /* NULL: messages are dropped */
    void *log_user_data;
} fpdm_context_params;

FPDM_API fpdm_context_params fpdm_context_default_params(void);

/* Creates a context. On failure *out is still set (unless there was no memory
 * for the context itself, then it is NULL) so the caller can read
 * fpdm_last_error; free it either way. Such a context refuses every call that
 * needs its device with FPDM_ERR_INVALID_ARGUMENT. */
FPDM_API fpdm_status fpdm_context_create(const fpdm_context_params *params, fpdm_context **out);
FPDM_API void fpdm_context_free(fpdm_context *ctx);
/* The message of the last failed call on this context, "" if none. */
FPDM_API const char *fpdm_last_error(const fpdm_context *ctx);
/* "cpu" or "cuda:N (device name)". */
FPDM_API const char *fpdm_context_device_name(const fpdm_context *ctx);
/* What the context's defaults resolved to: the precision it computes in
 * (never FPDM_PRECISION_DEFAULT) and the CPU threads its CPU work runs on. */
FPDM_API fpdm_precision fpdm_context_precision(const fpdm_context *ctx);
FPDM_API int fpdm_context_num_threads(const fpdm_context *ctx);

/* Memory of a context: its activation arena and what its device reports (0
 * where it reports nothing). A model's weights: fpdm_model_info.weight_bytes. */
typedef struct fpdm_memory_info {
    size_t arena_bytes;
    size_t device_used_bytes;
    size_t device_total_bytes;
    /* Bytes per element of the activations that feed matrix products
     * (4: float32; 2: bf16/fp16 precision, where they are stored in 16 bits). */
    int operand_bytes;
} fpdm_memory_info;

FPDM_API fpdm_status fpdm_context_memory(fpdm_context *ctx, fpdm_memory_info *info);

/* The reference rate benchmarks compare a network against: the seconds one
 * m x k by k x n matrix product takes on the context's device in its
 * precision, the fastest of `repeats` after untimed warm-up products (other
 * work on the machine only ever slows a product down, so the fastest is the
 * closest to the device's own rate). Allocates its own operands: not for use
 * while sampling; FPDM_ERR_OUT_OF_MEMORY when they do not fit. */
FPDM_API fpdm_status fpdm_benchmark_matmul(fpdm_context *ctx, int m, int n, int k, int repeats,
                                           double *seconds);

/* ---- models ---------------------------------------------------------- */

typedef enum fpdm_prediction {
    FPDM_PREDICT_EPS = 0,
    FPDM_PREDICT_V = 1,
    FPDM_PREDICT_X0 = 2,
} fpdm_prediction;

typedef enum fpdm_noise_schedule {
    FPDM_SCHEDULE_LINEAR = 0,
    FPDM_SCHEDULE_SQUAREDCOS_CAP_V2 = 1,
} fpdm_noise_schedule;

typedef struct fpdm_model_info {
    int is_fixed_point;       /* 1: FPDM (pre blocks, implicit block, post blocks); 0: DiT */
    int hidden_size;
    int mlp_hidden;           /* hidden_size * mlp_ratio: the MLP's inner width */
    int depth;                /* DiT blocks; for FPDM pre + 1 + post */
    int num_heads;
    int patch_size;
    int input_size;           /* spatial size of the model's input (latent or pixel) */
    int in_channels;
    int out_channels;         /* 2 * in_channels with learned sigma */
    int num_classes;          /* the label table has num_classes + 1 rows; the last is the null class */
    int learn_sigma;
    int pre_depth, post_depth;            /* FPDM only */
    int pre_post_timestep_conditioning;   /* FPDM only */
    int default_iters;        /* FPDM: equivalent depth - pre - post; DiT: 0 */
    fpdm_prediction prediction;
    int zero_terminal_snr;
    int latent_space;         /* 1: outputs are VAE latents; 0: pixels in [-1, 1] */
    int num_train_timesteps;
    fpdm_noise_schedule noise_schedule;
    size_t num_parameters;
    /* Memory the loaded weights take on the context's device: linear weights
     * are stored in 16 bits in bf16/fp16 precision, the rest in float32. */
    size_t weight_bytes;
    /* 1: trained with one class and no class dropout (the official train.py's
     * --unsupervised): the null class is untrained, so sampling refuses
     * guidance (cfg_scale > 1) and its default cfg_scale is 1. (Last, so the
     * fields before it keep their places for programs built before it.) */
    int unconditional;
} fpdm_model_info;

/* Loads and validates a model file; weights go to the context's device. */
FPDM_API fpdm_status fpdm_model_load(fpdm_context *ctx, const char *path, fpdm_model **out);
FPDM_API void fpdm_model_free(fpdm_model *model);
FPDM_API const fpdm_model_info *fpdm_model_get_info(const fpdm_model *model);

/* The smallest activation memory, in bytes, one forward of `rows` network
 * rows (images, doubled with guidance) can run in, counting the
 * [rows, tokens, *] tensors only (per-row vectors and the images are small
 * beside them): the largest set of buffers live at once, with fused attention
 * (no tokens x tokens scores). The residual stream x and FPDM's iterate z
 * stay float32; the inputs of matrix products take operand_bytes (o: 4, or 2
 * in bf16/fp16; fpdm_memory_info.operand_bytes; other values give 0, as do
 * a NULL info and rows < 1). Per token, with D the
 * hidden size and M the MLP width:
 *   block = 4 D + o max(4 D, D + M)   attention: x, qkv and its output;
 *                                     MLP: x, the normed input, the hidden layer
 *   FPDM adds the previous iterate z (4 D) and the injection half of fc1
 *   (2 o D), both kept across the iterations: block + 4 D + 2 o D.
 * The arena the library allocates is measured against it (fpdm-bench). */
FPDM_API double fpdm_min_activation_bytes(const fpdm_model_info *info, int rows, int operand_bytes);

/* ---- one network evaluation ------------------------------------------ */

/* Runs the network on a batch (host arrays, float32, finite values):
 *   x            [batch, in_channels, input_size, input_size]
 *   timesteps    [batch] original (unspaced) timestep indices, may be fractional
 *   labels       [batch] in 0..num_classes (num_classes is the null class)
 *   out          [batch, out_channels, input_size, input_size]
 * FPDM only (ignored for DiT): fixed-point iterations `iters` (0..FPDM_MAX_ITERS,
 * each call runs them all: there is no callback); `init_solution`
 * [batch, tokens, hidden] or NULL to start from the pre blocks' output; and
 * `solution_out` [batch, tokens, hidden] or NULL receives the final solution. */
FPDM_API fpdm_status fpdm_forward(fpdm_context *ctx, const fpdm_model *model, int batch,
                                  const float *x, const float *timesteps, const int *labels,
                                  int iters, const float *init_solution,
                                  float *out, float *solution_out);

/* ---- sampling -------------------------------------------------------- */

typedef enum fpdm_sampler {
    FPDM_SAMPLER_DDPM = 0,
    FPDM_SAMPLER_DDIM = 1,
} fpdm_sampler;

typedef enum fpdm_iteration_schedule {
    FPDM_ITERS_FIXED = 0,       /* the same number of iterations at every step */
    FPDM_ITERS_INCREASING = 1,  /* the official LinearController: most iterations at the noisiest steps */
    FPDM_ITERS_DECREASING = 2,
} fpdm_iteration_schedule;

typedef struct fpdm_progress {
    int step;                 /* steps done so far in this batch, 1..num_steps */
    int num_steps;
    int batch_index;          /* which batch of the run, 0-based */
    int num_batches;
    int images_done;          /* images finished before this batch */
    int num_images;
    int timestep;             /* original timestep index of this step */
    int iters_used;           /* fixed-point iterations this step (FPDM) */
    float residual;           /* last relative residual of this step's solve, or -1 */
} fpdm_progress;

/* Called after every step of every batch. Return non-zero to stop the run:
 * fpdm_sample then returns FPDM_ERR_CANCELLED, even at the last step of the
 * last batch. A stop at a batch's last step keeps that batch, which is done:
 * it is in latents_out and counted in the report. Without a report, the
 * batches kept are those before the one whose step the stop came at, and
 * that one when the step was its last (progress->batch_index and ->step).
 * A step is not interrupted, so the longest wait for a stop is one step:
 * its solve's iterations are at most FPDM_MAX_ITERS. */
typedef int (*fpdm_progress_callback)(const fpdm_progress *progress, void *user_data);

/* Bounds of the arguments below (and of fpdm_forward's iters): the fixed-point
 * iterations of one solve, and cfg_scale, beyond which the updates overflow
 * float32. */
#define FPDM_MAX_ITERS 100000
#define FPDM_MAX_SCALE 1e6

typedef struct fpdm_sample_params {
    int num_steps;            /* respaced steps, 1..num_train_timesteps; default 250 */
    fpdm_sampler sampler;     /* default DDPM */
    float ddim_eta;           /* 0..1 (1: DDPM's variance); default 0 */
    float cfg_scale;          /* 1..FPDM_MAX_SCALE; 1 runs without the doubled batch;
                                 default 4.0 (official),
                                 1 for an unconditional model (which refuses more) */
    int cfg_all_channels;     /* 0 (official): guide model_out[:, :3], which for a model with
                                 fewer than 3 input channels includes variance channels;
                                 1: guide the in_channels prediction channels */
    int batch_size;           /* images per network batch (before CFG doubling); 0: all at once */
    uint64_t noise_seed;
    int first_image_index;    /* index of the first image in the whole run, for sharding (>= 0) */
    /* FPDM solver */
    int iters;                /* iterations per step, 0..FPDM_MAX_ITERS; -1: the model's default */
    fpdm_iteration_schedule iteration_schedule;
    int budget;               /* total iterations to spread, at most 100000000 (as is
                                 num_steps * iters); 0: num_steps * iters */
    const int *iters_per_step; /* explicit list of num_steps entries (sampling order), each
                                  0..FPDM_MAX_ITERS, or NULL */
    int reuse;                /* start each solve from the previous step's solution */
    float tol;                /* stop an image's solve when its relative residual falls
                                 under tol (finite); 0: never. Each image (each row of a guided pair) stops on
                                 its own residual, so batching does not change when it stops,
                                 up to rounding: products may sum in another order for another
                                 number of rows (about 1e-7 relative), and a residual within
                                 that of tol can stop an iteration sooner or later */
    int carry_over;           /* with tol: an image's unused iterations move to its next step */
    int measure_residuals;    /* 1: measure each solve's final relative residual for the report
                                 and progress even without tol (the host waits for the device
                                 once per step); 0 (default): reported as -1 unless tol is set */
    /* Noise from outside (host float32), or NULL for the built-in generator:
     * init_noise [num_images, C, H, W]; step_noise [num_steps, num_images, C, H, W]. */
    const float *init_noise;
    const float *step_noise;
    fpdm_progress_callback progress_callback;
    void *progress_user_data;
} fpdm_sample_params;

/* The official sampler's settings for this model. Start from them: a zeroed
 * struct is not a default (its iters 0 runs no fixed-point iteration, and
 * its cfg_scale 0 is refused). */
FPDM_API fpdm_sample_params fpdm_sample_default_params(const fpdm_model *model);

/* What a run did, per step and in total, when a pointer is given: fpdm_sample
 * overwrites it (free a previous one first) and leaves it empty when it
 * refuses its arguments. Free it with fpdm_sample_report_free. */
typedef struct fpdm_step_report {
    int timestep;
    int iters_planned;
    int iters_used;           /* iterations the network ran (a batch runs until its last
                                 image stops), summed over batches */
    float residual;           /* largest final relative residual over batches, -1 if not measured */
} fpdm_step_report;

typedef struct fpdm_sample_report {
    int num_steps;
    fpdm_step_report *steps;  /* num_steps entries, owned by the report */
    long long model_evaluations;       /* network forwards, counted per batch row */
    long long fixed_point_iterations;  /* summed over batches */
    double seconds;
    int num_batches;          /* network batches run to the end: the sums above are over
                                 these (divide iters_used by it for a batch's iterations at
                                 that step); a cancelled or failed run's last batch is not
                                 counted, though its steps so far are in the sums */
} fpdm_sample_report;

FPDM_API void fpdm_sample_report_free(fpdm_sample_report *report);

/* Number of floats fpdm_sample writes for num_images. */
FPDM_API size_t fpdm_sample_output_size(const fpdm_model *model, int num_images);

/* Plans the iterations of each step (sampling order) into iters_out[num_steps];
 * left as it was on failure. */
FPDM_API fpdm_status fpdm_plan_iterations(fpdm_context *ctx, const fpdm_model *model,
                                          const fpdm_sample_params *params, int *iters_out);

/* Samples num_images images with the given class labels (0..num_classes-1)
 * into latents_out [num_images, in_channels, input_size, input_size]. The
 * noise of image i depends only on (noise_seed, first_image_index + i, step),
 * so an image is the same whatever the batch size, thread count or sharding,
 * up to float rounding (products may sum in another order for another number
 * of rows). When the run fails or is cancelled, the images of the batches
 * that finished are in latents_out and the rest of it is as it was, except
 * after FPDM_ERR_NOT_FINITE, whose batch is there too, for inspection. */
FPDM_API fpdm_status fpdm_sample(fpdm_context *ctx, const fpdm_model *model,
                                 const fpdm_sample_params *params, int num_images,
                                 const int *labels, float *latents_out,
                                 fpdm_sample_report *report);

/* The standard-normal noise the built-in generator gives image `image_index`
 * at `stage` (0: initial noise, s >= 1: the noise of sampling step s), n floats. */
FPDM_API void fpdm_noise(uint64_t noise_seed, uint64_t image_index, uint32_t stage,
                         float *out, size_t n);

/* ---- the VAE decoder (latent-space models) ---------------------------- */

typedef struct fpdm_vae fpdm_vae;

typedef struct fpdm_vae_info {
    int latent_channels;      /* 4 for Stable Diffusion's VAE */
    int image_channels;       /* 3 */
    int upscale;              /* image size / latent size: 8 for the SD VAE */
    float scaling_factor;     /* 0.18215 for the SD VAE */
} fpdm_vae_info;

/* Loads the decoder of an AutoencoderKL from a diffusers
 * diffusion_pytorch_model.safetensors (encoder tensors are ignored). A VAE
 * decodes on contexts of the device it was loaded on; on CUDA it needs a
 * build with cuDNN, and without one a VAE loaded through a CUDA context keeps
 * its weights in host memory and decodes on CPU contexts only (decoding it on
 * a CUDA context returns FPDM_ERR_UNSUPPORTED). A CUDA VAE serves one decode
 * at a time; concurrent decodes through it wait. */
FPDM_API fpdm_status fpdm_vae_load(fpdm_context *ctx, const char *path, fpdm_vae **out);
/* Free a VAE before the context it was loaded through (that context's
 * backend owns its device memory), as for models. */
FPDM_API void fpdm_vae_free(fpdm_vae *vae);
FPDM_API const fpdm_vae_info *fpdm_vae_get_info(const fpdm_vae *vae);

/* Decodes sampled latents [batch, latent_channels, size, size] (divided by the
 * scaling factor here, as the official samplers do) into images
 * [batch, image_channels, size * upscale, size * upscale] in about [-1, 1].
 * The images go through the network together, as many at a time as fit in
 * 4 GiB of activations on a GPU (256 MiB on the CPU, where batching gains no
 * speed); the context's arena grows to that once and is reused. When a decode
 * fails partway, the images of the groups already decoded are in `images`.
 * Latents must be finite; images holding NaN or infinity (weights that
 * overflow) give FPDM_ERR_NOT_FINITE, with the images written. */
FPDM_API fpdm_status fpdm_vae_decode(fpdm_context *ctx, const fpdm_vae *vae, int batch,
                                     int latent_size, const float *latents, float *images);

/* Gets ctx ready to decode `batch` latents of latent_size a side with this
 * VAE: the arena grows now to what that fpdm_vae_decode will use (it never
 * shrinks, so the larger of this and the sampler's need is kept) and, on a
 * GPU, the convolution algorithms of its shapes are chosen. A program that
 * samples and then decodes calls it before sampling, so that a shortage of
 * memory shows before a long run rather than after it, and nothing is
 * allocated between batches. Optional: a decode does the same on its own. */
FPDM_API fpdm_status fpdm_vae_prepare(fpdm_context *ctx, const fpdm_vae *vae, int batch,
                                      int latent_size);

#ifdef __cplusplus
}
#endif
#endif
