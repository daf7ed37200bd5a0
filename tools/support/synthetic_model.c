/* synthetic_model.c - model files with random weights (see synthetic_model.h). */
#define _POSIX_C_SOURCE 200809L
#include "synthetic_model.h"
#include "synthetic_tensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

enum { TIMESTEP_FREQUENCIES = 256, MLP_RATIO = 4 };
#define BF16_THRESHOLD 100000000u

static const synthetic_config known_configs[] = {
    /* name       fp  hidden heads depth pre post eq  patch input ch classes latent sigma */
    {"DiT-XL/2",  0, 1152, 16, 28, 0, 0, 0,  2, 32, 4, 1000, 1, 1},
    {"DiT-B/2",   0,  768, 12, 12, 0, 0, 0,  2, 32, 4, 1000, 1, 1},
    {"DiT-S/2",   0,  384,  6, 12, 0, 0, 0,  2, 32, 4, 1000, 1, 1},
    {"FPDM-XL/2", 1, 1152, 16,  0, 1, 1, 28, 2, 32, 4, 1000, 1, 1},
    {"tiny-dit",  0,   32,  2,  2, 0, 0, 0,  2,  8, 1,   10, 0, 1},
    {"tiny-fpdm", 1,   32,  2,  0, 1, 1, 6,  2,  8, 1,   10, 0, 1},
};
enum { NUM_CONFIGS = sizeof known_configs / sizeof known_configs[0] };

const char *synthetic_config_names(void)
{
    return "DiT-XL/2, DiT-B/2, DiT-S/2, FPDM-XL/2, tiny-dit, tiny-fpdm";
}

int synthetic_config_lookup(const char *name, int image_size, synthetic_config *config,
                            char *err, size_t err_size)
{
    for (int i = 0; i < NUM_CONFIGS; i++) {
        if (strcmp(name, known_configs[i].name) != 0)
            continue;
        *config = known_configs[i];
        if (config->latent_space) {
            if (image_size != 256 && image_size != 512) {
                snprintf(err, err_size, "image size %d is not supported (allowed: 256, 512)",
                         image_size);
                return -1;
            }
            config->input_size = image_size / 8;
        }
        return 0;
    }
    snprintf(err, err_size, "unknown configuration '%s' (allowed: %s)", name,
             synthetic_config_names());
    return -1;
}

/* ---- the tensor list ----------------------------------------------------- */

enum { FILL_WEIGHT, FILL_ZERO, FILL_POS_EMBED };

static void add_tensor(synthetic_tensor_list *list, int kind, int ndim, int64_t d0, int64_t d1,
                       int64_t d2, int64_t d3, const char *format, ...)
    __attribute__((format(printf, 8, 9)));
static void add_tensor(synthetic_tensor_list *list, int kind, int ndim, int64_t d0, int64_t d1,
                       int64_t d2, int64_t d3, const char *format, ...)
{
    const int64_t shape[4] = {d0, d1, d2, d3};
    va_list args;
    va_start(args, format);
    synthetic_tensor_addv(list, kind, ndim, shape, format, args);
    va_end(args);
}

/* Weight [out, in] and bias [out] of an nn.Linear called prefix. */
static void add_linear(synthetic_tensor_list *list, const char *prefix, int64_t out, int64_t in)
{
    add_tensor(list, FILL_WEIGHT, 2, out, in, 0, 0, "%s.weight", prefix);
    add_tensor(list, FILL_ZERO, 1, out, 0, 0, 0, "%s.bias", prefix);
}

static void add_block(synthetic_tensor_list *list, const char *prefix, int64_t hidden)
{
    char name[96];
    const int64_t mlp = hidden * MLP_RATIO;
    snprintf(name, sizeof name, "%s.attn.qkv", prefix);
    add_linear(list, name, 3 * hidden, hidden);
    snprintf(name, sizeof name, "%s.attn.proj", prefix);
    add_linear(list, name, hidden, hidden);
    snprintf(name, sizeof name, "%s.mlp.fc1", prefix);
    add_linear(list, name, mlp, hidden);
    snprintf(name, sizeof name, "%s.mlp.fc2", prefix);
    add_linear(list, name, hidden, mlp);
    snprintf(name, sizeof name, "%s.adaLN_modulation.1", prefix);
    add_linear(list, name, 6 * hidden, hidden);
}

/* 0, or -1 when out of memory. */
static int build_tensor_list(const synthetic_config *c, synthetic_tensor_list *list)
{
    const int64_t d = c->hidden_size, p = c->patch_size;
    const int64_t grid = c->input_size / c->patch_size;
    const int64_t out_channels = c->learn_sigma ? 2 * c->in_channels : c->in_channels;
    char prefix[64];
    add_tensor(list, FILL_WEIGHT, 4, d, c->in_channels, p, p, "x_embedder.proj.weight");
    add_tensor(list, FILL_ZERO, 1, d, 0, 0, 0, "x_embedder.proj.bias");
    add_tensor(list, FILL_POS_EMBED, 3, 1, grid * grid, d, 0, "pos_embed");
    add_linear(list, "t_embedder.mlp.0", d, TIMESTEP_FREQUENCIES);
    add_linear(list, "t_embedder.mlp.2", d, d);
    add_tensor(list, FILL_WEIGHT, 2, c->num_classes + 1, d, 0, 0,
               "y_embedder.embedding_table.weight");
    if (c->fixed_point) {
        for (int i = 0; i < c->pre_depth; i++) {
            snprintf(prefix, sizeof prefix, "blocks_pre.%d", i);
            add_block(list, prefix, d);
        }
        add_linear(list, "block_pre_projection", d, d);
        add_linear(list, "block_fixed_point_projection_fc1", 2 * d, 2 * d);
        add_linear(list, "block_fixed_point_projection_fc2", d, 2 * d);
        add_block(list, "block_fixed_point", d);
        for (int i = 0; i < c->post_depth; i++) {
            snprintf(prefix, sizeof prefix, "blocks_post.%d", i);
            add_block(list, prefix, d);
        }
    } else {
        for (int i = 0; i < c->depth; i++) {
            snprintf(prefix, sizeof prefix, "blocks.%d", i);
            add_block(list, prefix, d);
        }
    }
    add_linear(list, "final_layer.linear", p * p * out_channels, d);
    add_linear(list, "final_layer.adaLN_modulation.1", 2 * d, d);
    return list->failed ? -1 : 0;
}

size_t synthetic_model_num_parameters(const synthetic_config *config)
{
    synthetic_tensor_list list = {0};
    size_t total = 0;
    if (build_tensor_list(config, &list) == 0) {
        for (int i = 0; i < list.count; i++)
            total += (size_t)synthetic_tensor_elements(&list.entries[i]);
    }
    synthetic_tensor_list_free(&list);
    return total;
}

/* ---- values ----------------------------------------------------------------- */

/* The fixed 2-D sin-cos table the official model registers as pos_embed:
 * the first half of the channels encodes the column, the second the row
 * (the official grid puts w first), each as [sin(pos * omega), cos(pos * omega)]. */
static float pos_embed_value(int64_t token, int64_t channel, int64_t grid, int64_t hidden)
{
    const int64_t half = hidden / 2, quarter = hidden / 4;
    const int64_t pos = channel < half ? token % grid : token / grid;
    const int64_t c = channel % half;
    const double omega = 1.0 / pow(10000.0, (double)(c % quarter) / (double)quarter);
    return (float)(c < quarter ? sin((double)pos * omega) : cos((double)pos * omega));
}

/* Weights: uniform with standard deviation 0.02 (the official init scale),
 * so activations stay moderate through many blocks and iterations. */
static void fill_tensor(const synthetic_tensor *t, const void *context, uint64_t *rng,
                        float *values)
{
    const synthetic_config *c = context;
    const int64_t n = synthetic_tensor_elements(t);
    const float amplitude = 0.02f * sqrtf(3.0f);
    for (int64_t i = 0; i < n; i++) {
        switch (t->kind) {
        case FILL_WEIGHT:
            values[i] = synthetic_uniform(rng, amplitude);
            break;
        case FILL_POS_EMBED:
            values[i] = pos_embed_value(i / c->hidden_size, i % c->hidden_size,
                                        c->input_size / c->patch_size, c->hidden_size);
            break;
        default:
            values[i] = 0.0f;
        }
    }
}

/* ---- the file ------------------------------------------------------------- */

static void add_metadata(cJSON *metadata, const char *key, long value)
{
    char text[32];
    snprintf(text, sizeof text, "%ld", value);
    cJSON_AddStringToObject(metadata, key, text);
}

static char *build_header(const synthetic_config *c, const synthetic_tensor_list *list,
                          synthetic_storage storage)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *metadata = cJSON_AddObjectToObject(root, "__metadata__");
    cJSON_AddStringToObject(metadata, "fpdm.architecture", c->fixed_point ? "fpdm" : "dit");
    add_metadata(metadata, "fpdm.hidden_size", c->hidden_size);
    add_metadata(metadata, "fpdm.num_heads", c->num_heads);
    add_metadata(metadata, "fpdm.patch_size", c->patch_size);
    add_metadata(metadata, "fpdm.input_size", c->input_size);
    add_metadata(metadata, "fpdm.in_channels", c->in_channels);
    add_metadata(metadata, "fpdm.num_classes", c->num_classes);
    if (c->fixed_point) {
        add_metadata(metadata, "fpdm.pre_depth", c->pre_depth);
        add_metadata(metadata, "fpdm.post_depth", c->post_depth);
        add_metadata(metadata, "fpdm.equivalent_depth", c->equivalent_depth);
    } else {
        add_metadata(metadata, "fpdm.depth", c->depth);
    }
    cJSON_AddStringToObject(metadata, "fpdm.learn_sigma", c->learn_sigma ? "true" : "false");
    cJSON_AddStringToObject(metadata, "fpdm.space", c->latent_space ? "latent" : "pixel");
    cJSON_AddStringToObject(metadata, "synthetic", c->name);

    synthetic_header_add_tensors(root, list, storage);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

int synthetic_model_write(const synthetic_config *config, const char *path, uint64_t seed,
                          char *err, size_t err_size)
{
    synthetic_tensor_list list = {0};
    build_tensor_list(config, &list);
    const synthetic_storage storage =
        synthetic_model_num_parameters(config) > BF16_THRESHOLD ? SYNTHETIC_BF16 : SYNTHETIC_F32;
    char *header = list.failed ? NULL : build_header(config, &list, storage);
    int rc = synthetic_tensors_write(path, header, &list, storage, fill_tensor, config, seed, err,
                                     err_size);
    synthetic_tensor_list_free(&list);
    cJSON_free(header);
    return rc;
}
