/* synthetic_vae.c - VAE decoder files with random weights (see synthetic_vae.h). */
#define _POSIX_C_SOURCE 200809L
#include "synthetic_vae.h"
#include "synthetic_tensors.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <string.h>

static const synthetic_vae_config known_vaes[] = {
    /* name   blocks  channels              layers latent image groups */
    {"sd",    4,      {128, 256, 512, 512}, 2,     4,     3,    32},
    {"tiny",  2,      {32, 32},             1,     4,     3,    8},
};
enum { NUM_VAES = sizeof known_vaes / sizeof known_vaes[0] };

const char *synthetic_vae_config_names(void) { return "sd, tiny"; }

int synthetic_vae_config_lookup(const char *name, synthetic_vae_config *config, char *err,
                                size_t err_size)
{
    for (int i = 0; i < NUM_VAES; i++) {
        if (strcmp(name, known_vaes[i].name) == 0) {
            *config = known_vaes[i];
            return 0;
        }
    }
    snprintf(err, err_size, "unknown VAE configuration '%s' (allowed: %s)", name,
             synthetic_vae_config_names());
    return -1;
}

/* ---- the tensor list ----------------------------------------------------- */

/* GroupNorm scales are 1 and every bias and shift 0, as at initialisation;
 * weights are uniform with standard deviation 1 / sqrt(fan_in), so the
 * activations keep their scale through the network. */
enum { FILL_WEIGHT, FILL_ONE, FILL_ZERO };

static void add_conv(synthetic_tensor_list *list, const char *prefix, int64_t in, int64_t out,
                     int64_t kernel)
{
    const int64_t weight[4] = {out, in, kernel, kernel}, bias[1] = {out};
    synthetic_tensor_add(list, FILL_WEIGHT, 4, weight, "%s.weight", prefix);
    synthetic_tensor_add(list, FILL_ZERO, 1, bias, "%s.bias", prefix);
}

static void add_linear(synthetic_tensor_list *list, const char *prefix, int64_t channels)
{
    const int64_t weight[2] = {channels, channels}, bias[1] = {channels};
    synthetic_tensor_add(list, FILL_WEIGHT, 2, weight, "%s.weight", prefix);
    synthetic_tensor_add(list, FILL_ZERO, 1, bias, "%s.bias", prefix);
}

static void add_norm(synthetic_tensor_list *list, const char *prefix, int64_t channels)
{
    const int64_t shape[1] = {channels};
    synthetic_tensor_add(list, FILL_ONE, 1, shape, "%s.weight", prefix);
    synthetic_tensor_add(list, FILL_ZERO, 1, shape, "%s.bias", prefix);
}

static void add_resnet(synthetic_tensor_list *list, const char *prefix, int64_t in, int64_t out)
{
    char name[96];
    snprintf(name, sizeof name, "%s.norm1", prefix);
    add_norm(list, name, in);
    snprintf(name, sizeof name, "%s.conv1", prefix);
    add_conv(list, name, in, out, 3);
    snprintf(name, sizeof name, "%s.norm2", prefix);
    add_norm(list, name, out);
    snprintf(name, sizeof name, "%s.conv2", prefix);
    add_conv(list, name, out, out, 3);
    if (in != out) {
        snprintf(name, sizeof name, "%s.conv_shortcut", prefix);
        add_conv(list, name, in, out, 1);
    }
}

/* The decoder in diffusers' order: up block i works at reversed(channels)[i]. */
static void build_decoder(const synthetic_vae_config *c, synthetic_tensor_list *list)
{
    const int n = c->num_blocks;
    const int64_t top = c->block_out_channels[n - 1], latent = c->latent_channels;
    const char *attn = "decoder.mid_block.attentions.0";
    char name[96];
    add_conv(list, "post_quant_conv", latent, latent, 1);
    add_conv(list, "decoder.conv_in", latent, top, 3);
    add_resnet(list, "decoder.mid_block.resnets.0", top, top);
    snprintf(name, sizeof name, "%s.group_norm", attn);
    add_norm(list, name, top);
    static const char *const projections[] = {"to_q", "to_k", "to_v", "to_out.0"};
    for (int p = 0; p < 4; p++) {
        snprintf(name, sizeof name, "%s.%s", attn, projections[p]);
        add_linear(list, name, top);
    }
    add_resnet(list, "decoder.mid_block.resnets.1", top, top);
    int64_t previous = top;
    for (int i = 0; i < n; i++) {
        const int64_t out = c->block_out_channels[n - 1 - i];
        for (int j = 0; j <= c->layers_per_block; j++) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.resnets.%d", i, j);
            add_resnet(list, name, j == 0 ? previous : out, out);
        }
        if (i < n - 1) {
            snprintf(name, sizeof name, "decoder.up_blocks.%d.upsamplers.0.conv", i);
            add_conv(list, name, out, out, 3);
        }
        previous = out;
    }
    add_norm(list, "decoder.conv_norm_out", c->block_out_channels[0]);
    add_conv(list, "decoder.conv_out", c->block_out_channels[0], c->image_channels, 3);
}

/* ---- values and the file --------------------------------------------------- */

static void fill(const synthetic_tensor *t, const void *context, uint64_t *rng, float *values)
{
    (void)context;
    const int64_t n = synthetic_tensor_elements(t);
    int64_t fan_in = 1;
    for (int d = 1; d < t->ndim; d++)
        fan_in *= t->shape[d];
    const float amplitude = sqrtf(3.0f / (float)fan_in);
    for (int64_t i = 0; i < n; i++) {
        if (t->kind == FILL_WEIGHT)
            values[i] = synthetic_uniform(rng, amplitude);
        else
            values[i] = t->kind == FILL_ONE ? 1.0f : 0.0f;
    }
}

static char *build_header(const synthetic_vae_config *c, synthetic_vae_format format,
                          const synthetic_tensor_list *list)
{
    cJSON *root = cJSON_CreateObject();
    if (format.with_metadata) {
        cJSON *metadata = cJSON_AddObjectToObject(root, "__metadata__");
        char groups[16];
        snprintf(groups, sizeof groups, "%d", c->norm_num_groups);
        cJSON_AddStringToObject(metadata, "vae.norm_num_groups", groups);
        cJSON_AddStringToObject(metadata, "synthetic", c->name);
    }
    synthetic_header_add_tensors(root, list, format.storage);
    char *text = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return text;
}

static int check_config(const synthetic_vae_config *c, char *err, size_t err_size)
{
    if (c->num_blocks < 1 || c->num_blocks > SYNTHETIC_VAE_MAX_BLOCKS || c->layers_per_block < 0 ||
        c->latent_channels < 1 || c->image_channels < 1 || c->norm_num_groups < 1) {
        snprintf(err, err_size, "VAE configuration '%s' is out of range", c->name);
        return -1;
    }
    for (int i = 0; i < c->num_blocks; i++) {
        if (c->block_out_channels[i] < 1 || c->block_out_channels[i] % c->norm_num_groups) {
            snprintf(err, err_size, "VAE configuration '%s': %d channels do not split into %d groups",
                     c->name, c->block_out_channels[i], c->norm_num_groups);
            return -1;
        }
    }
    return 0;
}

int synthetic_vae_write(const synthetic_vae_config *config, synthetic_vae_format format,
                        const char *path, uint64_t seed, char *err, size_t err_size)
{
    if (check_config(config, err, err_size) != 0)
        return -1;
    if (!format.with_metadata && config->norm_num_groups != 32) {
        snprintf(err, err_size, "VAE configuration '%s': %d groups need the metadata (the "
                 "loader takes 32 without it)", config->name, config->norm_num_groups);
        return -1;
    }
    synthetic_tensor_list list = {0};
    build_decoder(config, &list);
    char *header = list.failed ? NULL : build_header(config, format, &list);
    int rc = synthetic_tensors_write(path, header, &list, format.storage, fill, NULL, seed, err,
                                     err_size);
    synthetic_tensor_list_free(&list);
    cJSON_free(header);
    return rc;
}
