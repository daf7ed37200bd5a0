/* model_config.c - reads a model's architecture from its file's metadata,
 * lists the tensors (official PyTorch names and shapes, from the reference
 * models.py) that architecture needs, and checks a file against that list.
 * Limits keep a hostile file from asking for absurd allocations. */
#include "model_config.h"
#include "decimal.h"
#include "diffusion.h"
#include "error_message.h"

#include <limits.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_HIDDEN 16384
#define MAX_TOKENS 65536
#define MAX_INPUT_SIZE 65536
#define MAX_CHANNELS 1024
#define MAX_CLASSES 1000000
#define MAX_DEPTH 1024
#define MAX_MLP_HIDDEN (16 * MAX_HIDDEN)
#define MAX_EQUIVALENT_DEPTH 100000
/* The timestep embedder's sinusoidal input width (TimestepEmbedder's
 * frequency_embedding_size). */
#define FREQUENCY_EMBEDDING_SIZE 256

static const char *const known_keys[] = {
    "fpdm.architecture", "fpdm.hidden_size", "fpdm.num_heads", "fpdm.patch_size",
    "fpdm.input_size", "fpdm.in_channels", "fpdm.num_classes", "fpdm.depth",
    "fpdm.pre_depth", "fpdm.post_depth", "fpdm.learn_sigma", "fpdm.mlp_ratio",
    "fpdm.pre_post_timestep_conditioning", "fpdm.equivalent_depth", "fpdm.prediction",
    "fpdm.zero_terminal_snr", "fpdm.space", "fpdm.noise_schedule", "fpdm.num_train_timesteps",
    "fpdm.unconditional",
};

/* Keys that describe the fixed-point structure; in a DiT file they would be
 * silently meaningless, so they are rejected there. */
static const char *const fpdm_only_keys[] = {
    "fpdm.pre_depth", "fpdm.post_depth", "fpdm.pre_post_timestep_conditioning",
    "fpdm.equivalent_depth",
};

#define COUNT_OF(a) (int)(sizeof(a) / sizeof((a)[0]))

/* ---- metadata values ---------------------------------------------------- */

/* Looks up key; NULL with an error when it is required and absent. */
static const char *lookup(const safetensors_file *file, const char *key, int required, char *err,
                          size_t err_size) {
    const char *value = safetensors_metadata(file, key);
    if (!value && required) set_error(err, err_size, "%s: missing metadata key %s", file->path, key);
    return value;
}

/* Decimal digits only: no sign, no spaces, no suffix, no overflow. */
static int parse_decimal(const char *text, int *out) {
    if (!*text) return 0;
    long long value = 0;
    for (const char *p = text; *p; p++) {
        if (*p < '0' || *p > '9') return 0;
        value = value * 10 + (*p - '0');
        if (value > INT_MAX) return 0;
    }
    *out = (int)value;
    return 1;
}

static int get_int(const safetensors_file *file, const char *key, int required, int fallback,
                   int min, int max, int *out, char *err, size_t err_size) {
    const char *text = lookup(file, key, required, err, err_size);
    if (!text) {
        if (required) return -1;
        *out = fallback;
        return 0;
    }
    int value;
    if (!parse_decimal(text, &value)) {
        set_error(err, err_size, "%s: metadata %s = \"%.40s\" is not a non-negative integer",
                  file->path, key, text);
        return -1;
    }
    if (value < min || value > max) {
        set_error(err, err_size, "%s: metadata %s = %d is out of range [%d, %d]", file->path, key,
                  value, min, max);
        return -1;
    }
    *out = value;
    return 0;
}

/* Matches the value against choices; *out gets the index. */
static int get_choice(const safetensors_file *file, const char *key, int required, int fallback,
                      const char *const *choices, int num_choices, const char *choice_list,
                      int *out, char *err, size_t err_size) {
    const char *text = lookup(file, key, required, err, err_size);
    if (!text) {
        if (required) return -1;
        *out = fallback;
        return 0;
    }
    for (int i = 0; i < num_choices; i++) {
        if (strcmp(text, choices[i]) == 0) {
            *out = i;
            return 0;
        }
    }
    set_error(err, err_size, "%s: metadata %s = \"%.40s\" is not one of %s", file->path, key, text,
              choice_list);
    return -1;
}

static int get_bool(const safetensors_file *file, const char *key, int fallback, int *out,
                    char *err, size_t err_size) {
    static const char *const choices[] = {"false", "true"};
    return get_choice(file, key, 0, fallback, choices, 2, "\"true\", \"false\"", out, err,
                      err_size);
}

/* ---- model_config_from_file ------------------------------------------------ */

static int check_known_keys(const safetensors_file *file, int fixed_point, char *err,
                            size_t err_size) {
    for (int i = 0; i < file->num_metadata; i++) {
        const char *key = file->metadata_keys[i];
        if (strncmp(key, "fpdm.", 5) != 0) continue;
        int known = 0;
        for (int k = 0; k < COUNT_OF(known_keys) && !known; k++) known = !strcmp(key, known_keys[k]);
        if (!known) {
            set_error(err, err_size, "%s: unknown metadata key %s", file->path, key);
            return -1;
        }
        for (int k = 0; k < COUNT_OF(fpdm_only_keys) && !fixed_point; k++) {
            if (!strcmp(key, fpdm_only_keys[k])) {
                set_error(err, err_size,
                          "%s: metadata key %s is only valid for fpdm.architecture \"fpdm\"",
                          file->path, key);
                return -1;
            }
        }
    }
    return 0;
}

static int read_depths(const safetensors_file *file, model_config *c, char *err, size_t err_size) {
    if (!c->fixed_point)
        return get_int(file, "fpdm.depth", 1, 0, 1, MAX_DEPTH, &c->depth, err, err_size);
    int stated_depth = 0;
    if (get_int(file, "fpdm.pre_depth", 1, 0, 0, MAX_DEPTH, &c->pre_depth, err, err_size) ||
        get_int(file, "fpdm.post_depth", 1, 0, 0, MAX_DEPTH, &c->post_depth, err, err_size) ||
        get_int(file, "fpdm.depth", 0, 0, 1, MAX_DEPTH, &stated_depth, err, err_size) ||
        get_bool(file, "fpdm.pre_post_timestep_conditioning", 1,
                 &c->pre_post_timestep_conditioning, err, err_size) ||
        get_int(file, "fpdm.equivalent_depth", 0, 28, 1, MAX_EQUIVALENT_DEPTH, &c->equivalent_depth,
                err, err_size))
        return -1;
    c->depth = c->pre_depth + 1 + c->post_depth;
    if (c->depth > MAX_DEPTH) {
        set_error(err, err_size, "%s: pre_depth + 1 + post_depth = %d exceeds %d blocks",
                  file->path, c->depth, MAX_DEPTH);
        return -1;
    }
    if (stated_depth && stated_depth != c->depth) {
        set_error(err, err_size, "%s: metadata fpdm.depth = %d, but pre_depth + 1 + post_depth = %d",
                  file->path, stated_depth, c->depth);
        return -1;
    }
    if (c->equivalent_depth < c->pre_depth + c->post_depth) {
        set_error(err, err_size,
                  "%s: fpdm.equivalent_depth = %d is less than pre_depth + post_depth = %d",
                  file->path, c->equivalent_depth, c->pre_depth + c->post_depth);
        return -1;
    }
    return 0;
}

static int read_sizes(const safetensors_file *file, model_config *c, char *err, size_t err_size) {
    const char *path = file->path;
    if (get_int(file, "fpdm.hidden_size", 1, 0, 1, MAX_HIDDEN, &c->hidden_size, err, err_size) ||
        get_int(file, "fpdm.num_heads", 1, 0, 1, MAX_HIDDEN, &c->num_heads, err, err_size) ||
        get_int(file, "fpdm.patch_size", 1, 0, 1, MAX_INPUT_SIZE, &c->patch_size, err, err_size) ||
        get_int(file, "fpdm.input_size", 1, 0, 1, MAX_INPUT_SIZE, &c->input_size, err, err_size) ||
        get_int(file, "fpdm.in_channels", 1, 0, 1, MAX_CHANNELS, &c->in_channels, err, err_size) ||
        get_int(file, "fpdm.num_classes", 1, 0, 1, MAX_CLASSES, &c->num_classes, err, err_size) ||
        get_bool(file, "fpdm.learn_sigma", 1, &c->learn_sigma, err, err_size) ||
        get_bool(file, "fpdm.unconditional", 0, &c->unconditional, err, err_size))
        return -1;
    if (c->unconditional && c->num_classes != 1) {
        set_error(err, err_size, "%s: an unconditional model has num_classes 1, not %d", path,
                  c->num_classes);
        return -1;
    }
    if (c->hidden_size % c->num_heads != 0) {
        set_error(err, err_size, "%s: hidden_size %d is not divisible by num_heads %d", path,
                  c->hidden_size, c->num_heads);
        return -1;
    }
    if (c->hidden_size % 4 != 0) {
        set_error(err, err_size,
                  "%s: hidden_size %d is not divisible by 4 (2-D sin-cos position embedding)", path,
                  c->hidden_size);
        return -1;
    }
    if (c->input_size % c->patch_size != 0) {
        set_error(err, err_size, "%s: input_size %d is not divisible by patch_size %d", path,
                  c->input_size, c->patch_size);
        return -1;
    }
    c->head_dim = c->hidden_size / c->num_heads;
    c->grid_size = c->input_size / c->patch_size;
    if (c->grid_size > MAX_TOKENS / c->grid_size) {
        set_error(err, err_size, "%s: (input_size / patch_size)^2 = %d^2 tokens exceeds %d", path,
                  c->grid_size, MAX_TOKENS);
        return -1;
    }
    c->num_tokens = c->grid_size * c->grid_size;
    c->out_channels = c->learn_sigma ? 2 * c->in_channels : c->in_channels;

    /* The double Python's float() gives, which the reference multiplies by
     * hidden_size: (int)(hidden_size * ratio) is then the checkpoint's MLP
     * width. */
    const char *ratio_text = lookup(file, "fpdm.mlp_ratio", 0, err, err_size);
    double ratio = 4.0;
    if (ratio_text && !decimal_parse(ratio_text, &ratio)) {
        set_error(err, err_size, "%s: metadata fpdm.mlp_ratio = \"%.40s\" is not a plain decimal "
                  "(at most %d significant digits, %d after the point)",
                  path, ratio_text, DECIMAL_MAX_SIGNIFICANT_DIGITS, DECIMAL_MAX_FRACTION_DIGITS);
        return -1;
    }
    double mlp_hidden = (double)c->hidden_size * ratio;
    if (!(mlp_hidden >= 1 && mlp_hidden < MAX_MLP_HIDDEN + 1)) {
        set_error(err, err_size, "%s: hidden_size * mlp_ratio = %g is out of range [1, %d]", path,
                  mlp_hidden, MAX_MLP_HIDDEN);
        return -1;
    }
    c->mlp_hidden = (int)mlp_hidden;
    return 0;
}

static int read_diffusion(const safetensors_file *file, model_config *c, char *err,
                          size_t err_size) {
    static const char *const predictions[] = {"eps", "v", "x0"};
    static const char *const spaces[] = {"pixel", "latent"};
    static const char *const schedules[] = {"linear", "squaredcos_cap_v2"};
    int prediction, schedule;
    if (get_choice(file, "fpdm.prediction", 0, 0, predictions, 3, "\"eps\", \"v\", \"x0\"",
                   &prediction, err, err_size) ||
        get_bool(file, "fpdm.zero_terminal_snr", 0, &c->zero_terminal_snr, err, err_size) ||
        get_choice(file, "fpdm.space", 0, 1, spaces, 2, "\"latent\", \"pixel\"", &c->latent_space,
                   err, err_size) ||
        get_choice(file, "fpdm.noise_schedule", 0, 0, schedules, 2,
                   "\"linear\", \"squaredcos_cap_v2\"", &schedule, err, err_size) ||
        get_int(file, "fpdm.num_train_timesteps", 0, 1000, DIFFUSION_MIN_TRAIN_TIMESTEPS,
                DIFFUSION_MAX_TRAIN_TIMESTEPS,
                &c->num_train_timesteps, err, err_size))
        return -1;
    c->prediction = prediction == 0 ? FPDM_PREDICT_EPS : prediction == 1 ? FPDM_PREDICT_V
                                                                        : FPDM_PREDICT_X0;
    /* Refused here rather than at every fpdm_sample: a service learns it at
     * startup, not per request. */
    if (c->zero_terminal_snr && c->prediction != FPDM_PREDICT_V) {
        set_error(err, err_size, "%s: fpdm.zero_terminal_snr needs fpdm.prediction \"v\", got "
                  "\"%s\" (the first step has alpha_cumprod 0, where no other prediction "
                  "determines the image)", file->path, predictions[prediction]);
        return -1;
    }
    c->noise_schedule = schedule == 0 ? FPDM_SCHEDULE_LINEAR : FPDM_SCHEDULE_SQUAREDCOS_CAP_V2;
    return 0;
}

int model_config_from_file(const safetensors_file *file, model_config *config, char *err,
                           size_t err_size) {
    static const char *const architectures[] = {"dit", "fpdm"};
    memset(config, 0, sizeof(*config));
    if (err && err_size) err[0] = '\0';
    /* A VAE given where a model belongs would otherwise only lack a key. */
    if (!safetensors_metadata(file, "fpdm.architecture") &&
        safetensors_find(file, "post_quant_conv.weight")) {
        set_error(err, err_size, "%s: holds a VAE decoder (post_quant_conv, decoder.*), not a DiT "
                  "or FPDM model", file->path);
        return -1;
    }
    if (get_choice(file, "fpdm.architecture", 1, 0, architectures, 2, "\"dit\", \"fpdm\"",
                   &config->fixed_point, err, err_size) ||
        check_known_keys(file, config->fixed_point, err, err_size) ||
        read_depths(file, config, err, err_size) || read_sizes(file, config, err, err_size) ||
        read_diffusion(file, config, err, err_size))
        return -1;
    return 0;
}

/* ---- tensor list -------------------------------------------------------------- */

typedef struct spec_list {
    model_tensor_spec *specs;
    int max_specs;
    int count;
} spec_list;

static void add_spec(spec_list *list, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                     const char *format, ...) __attribute__((format(printf, 7, 8)));

static void add_spec(spec_list *list, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3,
                     const char *format, ...) {
    if (list->specs && list->count < list->max_specs) {
        model_tensor_spec *spec = &list->specs[list->count];
        va_list args;
        va_start(args, format);
        vsnprintf(spec->name, sizeof(spec->name), format, args);
        va_end(args);
        spec->ndim = ndim;
        int64_t dims[4] = {d0, d1, d2, d3};
        memcpy(spec->shape, dims, sizeof(dims));
    }
    list->count++;
}

/* DiTBlock: attention (fused qkv), MLP, and the adaLN-Zero modulation. */
static void add_block(spec_list *list, const model_config *c, const char *prefix) {
    int64_t d = c->hidden_size, m = c->mlp_hidden;
    add_spec(list, 2, 3 * d, d, 0, 0, "%s.attn.qkv.weight", prefix);
    add_spec(list, 1, 3 * d, 0, 0, 0, "%s.attn.qkv.bias", prefix);
    add_spec(list, 2, d, d, 0, 0, "%s.attn.proj.weight", prefix);
    add_spec(list, 1, d, 0, 0, 0, "%s.attn.proj.bias", prefix);
    add_spec(list, 2, m, d, 0, 0, "%s.mlp.fc1.weight", prefix);
    add_spec(list, 1, m, 0, 0, 0, "%s.mlp.fc1.bias", prefix);
    add_spec(list, 2, d, m, 0, 0, "%s.mlp.fc2.weight", prefix);
    add_spec(list, 1, d, 0, 0, 0, "%s.mlp.fc2.bias", prefix);
    add_spec(list, 2, 6 * d, d, 0, 0, "%s.adaLN_modulation.1.weight", prefix);
    add_spec(list, 1, 6 * d, 0, 0, 0, "%s.adaLN_modulation.1.bias", prefix);
}

static void add_blocks(spec_list *list, const model_config *c, const char *group, int count) {
    char prefix[48];
    for (int i = 0; i < count; i++) {
        snprintf(prefix, sizeof(prefix), "%s.%d", group, i);
        add_block(list, c, prefix);
    }
}

int model_config_tensor_specs(const model_config *config, model_tensor_spec *specs, int max_specs) {
    spec_list list = {specs, max_specs, 0};
    const model_config *c = config;
    int64_t d = c->hidden_size, p = c->patch_size;
    add_spec(&list, 4, d, c->in_channels, p, p, "x_embedder.proj.weight");
    add_spec(&list, 1, d, 0, 0, 0, "x_embedder.proj.bias");
    add_spec(&list, 3, 1, c->num_tokens, d, 0, "pos_embed");
    add_spec(&list, 2, d, FREQUENCY_EMBEDDING_SIZE, 0, 0, "t_embedder.mlp.0.weight");
    add_spec(&list, 1, d, 0, 0, 0, "t_embedder.mlp.0.bias");
    add_spec(&list, 2, d, d, 0, 0, "t_embedder.mlp.2.weight");
    add_spec(&list, 1, d, 0, 0, 0, "t_embedder.mlp.2.bias");
    /* One extra row: the null class used for classifier-free guidance. */
    add_spec(&list, 2, (int64_t)c->num_classes + 1, d, 0, 0, "y_embedder.embedding_table.weight");
    if (c->fixed_point) {
        add_blocks(&list, c, "blocks_pre", c->pre_depth);
        add_spec(&list, 2, d, d, 0, 0, "block_pre_projection.weight");
        add_spec(&list, 1, d, 0, 0, 0, "block_pre_projection.bias");
        add_spec(&list, 2, 2 * d, 2 * d, 0, 0, "block_fixed_point_projection_fc1.weight");
        add_spec(&list, 1, 2 * d, 0, 0, 0, "block_fixed_point_projection_fc1.bias");
        add_spec(&list, 2, d, 2 * d, 0, 0, "block_fixed_point_projection_fc2.weight");
        add_spec(&list, 1, d, 0, 0, 0, "block_fixed_point_projection_fc2.bias");
        add_block(&list, c, "block_fixed_point");
        add_blocks(&list, c, "blocks_post", c->post_depth);
    } else {
        add_blocks(&list, c, "blocks", c->depth);
    }
    add_spec(&list, 2, p * p * c->out_channels, d, 0, 0, "final_layer.linear.weight");
    add_spec(&list, 1, p * p * c->out_channels, 0, 0, 0, "final_layer.linear.bias");
    add_spec(&list, 2, 2 * d, d, 0, 0, "final_layer.adaLN_modulation.1.weight");
    add_spec(&list, 1, 2 * d, 0, 0, 0, "final_layer.adaLN_modulation.1.bias");
    return list.count;
}

/* ---- checking a file against the list ----------------------------------------- */

static void format_shape(char *out, size_t size, int ndim, const int64_t *shape) {
    size_t used = (size_t)snprintf(out, size, "[");
    for (int i = 0; i < ndim && used < size; i++)
        used += (size_t)snprintf(out + used, size - used, "%s%lld", i ? ", " : "",
                                 (long long)shape[i]);
    if (used < size) snprintf(out + used, size - used, "]");
}

static int compare_spec_name(const void *a, const void *b) {
    return strcmp(((const model_tensor_spec *)a)->name, ((const model_tensor_spec *)b)->name);
}

static int check_one(const char *path, const model_tensor_spec *spec, const safetensors_file *file,
                     char *err, size_t err_size) {
    char expected[128], found[128];
    format_shape(expected, sizeof(expected), spec->ndim, spec->shape);
    const safetensors_tensor *t = safetensors_find(file, spec->name);
    if (!t) {
        set_error(err, err_size, "%s: missing tensor %s (expected shape %s)", path, spec->name,
                  expected);
        return -1;
    }
    if (t->dtype != SAFETENSORS_F32 && t->dtype != SAFETENSORS_F16 &&
        t->dtype != SAFETENSORS_BF16) {
        set_error(err, err_size, "%s: tensor %s has dtype %s; model weights must be F32, F16 or BF16",
                  path, spec->name, safetensors_dtype_name(t->dtype));
        return -1;
    }
    int same = t->ndim == spec->ndim;
    for (int i = 0; i < spec->ndim && same; i++) same = t->shape[i] == spec->shape[i];
    if (!same) {
        format_shape(found, sizeof(found), t->ndim, t->shape);
        set_error(err, err_size, "%s: tensor %s has shape %s, expected %s", path, spec->name, found,
                  expected);
        return -1;
    }
    return 0;
}

int model_config_check_tensors(const model_config *config, const safetensors_file *file,
                               char *err, size_t err_size) {
    if (err && err_size) err[0] = '\0';
    int count = model_config_tensor_specs(config, NULL, 0);
    model_tensor_spec *specs = malloc((size_t)count * sizeof(*specs));
    if (!specs) {
        set_error(err, err_size, "%s: out of memory listing %d tensors", file->path, count);
        return ERROR_OUT_OF_MEMORY;
    }
    model_config_tensor_specs(config, specs, count);
    int status = 0;
    for (int i = 0; i < count && status == 0; i++)
        status = check_one(file->path, &specs[i], file, err, err_size);
    /* Every spec is present and names are unique, so only a larger file can
     * hold something extra; sorted specs find it without a quadratic scan. */
    if (status == 0 && file->num_tensors > count) {
        qsort(specs, (size_t)count, sizeof(*specs), compare_spec_name);
        for (int i = 0; i < file->num_tensors; i++) {
            model_tensor_spec key;
            snprintf(key.name, sizeof(key.name), "%s", file->tensors[i].name);
            int fits = strlen(file->tensors[i].name) < sizeof(key.name);
            if (!fits || !bsearch(&key, specs, (size_t)count, sizeof(*specs), compare_spec_name)) {
                set_error(err, err_size, "%s: unexpected tensor %s", file->path,
                          file->tensors[i].name);
                status = -1;
                break;
            }
        }
    }
    free(specs);
    return status;
}
