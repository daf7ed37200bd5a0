/* model_config.h - a model's architecture, read from a model file's metadata,
 * and the list of tensors (official names, exact shapes) it requires.
 *
 * Metadata keys (all values are strings, as safetensors requires):
 *   fpdm.architecture        "dit" | "fpdm"                        (required)
 *   fpdm.hidden_size, fpdm.num_heads, fpdm.patch_size, fpdm.input_size,
 *   fpdm.in_channels, fpdm.num_classes                             (required)
 *   fpdm.unconditional       "true" | "false"                      (default false)
 *                            true: trained with one class and no class
 *                            dropout (the official train.py --unsupervised,
 *                            for FFHQ, CelebA-HQ, LSUN): num_classes must be
 *                            1, and the null class row is untrained, so
 *                            sampling refuses guidance
 *   fpdm.depth               DiT blocks                            (required for dit)
 *   fpdm.pre_depth, fpdm.post_depth                                (required for fpdm)
 *   fpdm.learn_sigma         "true" | "false"                      (default true)
 *   fpdm.mlp_ratio           default "4"; a plain decimal ("4", "2.5"),
 *                            at most 17 significant digits and 27 after
 *                            the point, no sign or exponent
 *   fpdm.pre_post_timestep_conditioning  "true" | "false"          (default true, as models.py; convert.py always writes it, off unless the checkpoint says)
 *   fpdm.equivalent_depth    depth of the DiT an FPDM replaces     (default 28)
 *   fpdm.prediction          "eps" | "v" | "x0"                    (default eps)
 *   fpdm.zero_terminal_snr   "true" | "false"                      (default false)
 *   fpdm.space               "latent" | "pixel"                    (default latent)
 *   fpdm.noise_schedule      "linear" | "squaredcos_cap_v2"        (default linear)
 *   fpdm.num_train_timesteps default "1000"
 * Integers are plain decimal digits (no sign, spaces or suffix); booleans are
 * exactly "true" or "false". For fpdm, fpdm.depth may be given and must then
 * equal pre_depth + 1 + post_depth; the FPDM-only keys (pre_depth, post_depth,
 * pre_post_timestep_conditioning, equivalent_depth) are an error in a dit file.
 * Unknown keys outside the "fpdm." prefix are ignored (converters add
 * provenance); unknown "fpdm." keys are an error, so typos do not pass silently.
 */
#ifndef FPDM_MODEL_CONFIG_H
#define FPDM_MODEL_CONFIG_H

#include "fpdm.h"
#include "safetensors.h"

typedef struct model_config {
    int fixed_point;          /* 1 for fpdm, 0 for dit */
    int hidden_size;
    int num_heads;
    int head_dim;             /* hidden_size / num_heads */
    int mlp_hidden;           /* (int)(hidden_size * mlp_ratio) */
    int depth;                /* dit: blocks; fpdm: pre + 1 + post */
    int pre_depth, post_depth;
    int pre_post_timestep_conditioning;
    int equivalent_depth;
    int patch_size;
    int input_size;
    int grid_size;            /* input_size / patch_size */
    int num_tokens;           /* grid_size^2 */
    int in_channels;
    int out_channels;         /* 2 * in_channels if learn_sigma */
    int learn_sigma;
    int num_classes;
    int unconditional;        /* fpdm.unconditional: no trained null class */
    fpdm_prediction prediction;
    int zero_terminal_snr;
    int latent_space;
    fpdm_noise_schedule noise_schedule;
    int num_train_timesteps;
} model_config;

/* Parses and checks the metadata (positive sizes, hidden divisible by heads and
 * by 4 for the 2-D sin-cos position embedding, input divisible by patch,
 * equivalent_depth >= pre + post, and limits against absurd allocations:
 * hidden <= 16384, tokens <= 65536, in_channels <= 1024, classes <= 1e6,
 * depth <= 1024). 0 or -1 with "PATH: problem". */
int model_config_from_file(const safetensors_file *file, model_config *config,
                           char *err, size_t err_size);

typedef struct model_tensor_spec {
    char name[96];
    int ndim;
    int64_t shape[4];
} model_tensor_spec;

/* Writes the required tensors (at most max_specs of them) into specs (if not
 * NULL) and returns how many the model needs. */
int model_config_tensor_specs(const model_config *config, model_tensor_spec *specs, int max_specs);

/* Every required tensor present with its exact shape and a float dtype (F32,
 * F16, BF16), nothing else in the file. 0 or -1 with "PATH: problem" naming the
 * tensor, the expected and the found shape. */
int model_config_check_tensors(const model_config *config, const safetensors_file *file,
                               char *err, size_t err_size);

#endif
