/* synthetic_vae.c - VAE decoder files with random weights (see synthetic_vae.h). */
#define _POSIX_C_SOURCE 200809L
#include "synthetic_vae.h"
#include "safetensors_header.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
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

typedef struct vae_tensor {
    char name[96];
    int ndim;
    int64_t shape[4];
    int kind;
} vae_tensor;

typedef struct vae_tensor_list {
    vae_tensor *entries;
    int count, capacity;
    int failed;
} vae_tensor_list;

static void add(vae_tensor_list *list, int kind, int ndim, const int64_t *shape,
                const char *format, ...) __attribute__((format(printf, 5, 6)));
static void add(vae_tensor_list *list, int kind, int ndim, const int64_t *shape,
                const char *format, ...)
{
    if (list->failed)
        return;
    if (list->count == list->capacity) {
        int capacity = list->capacity ? 2 * list->capacity : 128;
        vae_tensor *grown = realloc(list->entries, (size_t)capacity * sizeof *grown);
        if (!grown) {
            list->failed = 1;
            return;
        }
        list->entries = grown;
        list->capacity = capacity;
    }
    vae_tensor *t = &list->entries[list->count++];
    va_list args;
    va_start(args, format);
    vsnprintf(t->name, sizeof t->name, format, args);
    va_end(args);
    t->ndim = ndim;
    for (int d = 0; d < 4; d++)
        t->shape[d] = d < ndim ? shape[d] : 0;
    t->kind = kind;
}

static void add_conv(vae_tensor_list *list, const char *prefix, int64_t in, int64_t out,
                     int64_t kernel)
{
    const int64_t weight[4] = {out, in, kernel, kernel}, bias[1] = {out};
    add(list, FILL_WEIGHT, 4, weight, "%s.weight", prefix);
    add(list, FILL_ZERO, 1, bias, "%s.bias", prefix);
}

static void add_linear(vae_tensor_list *list, const char *prefix, int64_t channels)
{
    const int64_t weight[2] = {channels, channels}, bias[1] = {channels};
    add(list, FILL_WEIGHT, 2, weight, "%s.weight", prefix);
    add(list, FILL_ZERO, 1, bias, "%s.bias", prefix);
}

static void add_norm(vae_tensor_list *list, const char *prefix, int64_t channels)
{
    const int64_t shape[1] = {channels};
    add(list, FILL_ONE, 1, shape, "%s.weight", prefix);
    add(list, FILL_ZERO, 1, shape, "%s.bias", prefix);
}

static void add_resnet(vae_tensor_list *list, const char *prefix, int64_t in, int64_t out)
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
static void build_decoder(const synthetic_vae_config *c, vae_tensor_list *list)
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

static int64_t num_elements(const vae_tensor *t)
{
    int64_t n = 1;
    for (int d = 0; d < t->ndim; d++)
        n *= t->shape[d];
    return n;
}

/* ---- values and the file --------------------------------------------------- */

static uint64_t splitmix64(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill(const vae_tensor *t, uint64_t *rng, float *values)
{
    const int64_t n = num_elements(t);
    int64_t fan_in = 1;
    for (int d = 1; d < t->ndim; d++)
        fan_in *= t->shape[d];
    const float amplitude = sqrtf(3.0f / (float)fan_in);
    for (int64_t i = 0; i < n; i++) {
        if (t->kind == FILL_WEIGHT) {
            double unit = (double)(splitmix64(rng) >> 11) * 0x1.0p-53;
            values[i] = amplitude * (float)(2.0 * unit - 1.0);
        } else {
            values[i] = t->kind == FILL_ONE ? 1.0f : 0.0f;
        }
    }
}

static char *build_header(const synthetic_vae_config *c, const vae_tensor_list *list)
{
    cJSON *root = cJSON_CreateObject();
    cJSON *metadata = cJSON_AddObjectToObject(root, "__metadata__");
    char groups[16];
    snprintf(groups, sizeof groups, "%d", c->norm_num_groups);
    cJSON_AddStringToObject(metadata, "vae.norm_num_groups", groups);
    cJSON_AddStringToObject(metadata, "synthetic", c->name);
    int64_t offset = 0;
    for (int i = 0; i < list->count; i++) {
        const vae_tensor *t = &list->entries[i];
        cJSON *entry = cJSON_AddObjectToObject(root, t->name);
        cJSON_AddStringToObject(entry, "dtype", "F32");
        cJSON *shape = cJSON_AddArrayToObject(entry, "shape");
        for (int d = 0; d < t->ndim; d++)
            cJSON_AddItemToArray(shape, cJSON_CreateNumber((double)t->shape[d]));
        const int64_t end = offset + num_elements(t) * (int64_t)sizeof(float);
        cJSON *offsets = cJSON_AddArrayToObject(entry, "data_offsets");
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)offset));
        cJSON_AddItemToArray(offsets, cJSON_CreateNumber((double)end));
        offset = end;
    }
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

int synthetic_vae_write(const synthetic_vae_config *config, const char *path, uint64_t seed,
                        char *err, size_t err_size)
{
    vae_tensor_list list = {0};
    char *header = NULL;
    float *values = NULL;
    FILE *f = NULL;
    int rc = -1;
    if (check_config(config, err, err_size) != 0)
        return -1;
    build_decoder(config, &list);
    header = list.failed ? NULL : build_header(config, &list);
    int64_t largest = 0;
    for (int i = 0; i < list.count; i++)
        if (num_elements(&list.entries[i]) > largest)
            largest = num_elements(&list.entries[i]);
    values = malloc((size_t)(largest ? largest : 1) * sizeof(float));
    if (!header || !values) {
        snprintf(err, err_size, "%s: out of memory", path);
        goto done;
    }
    f = fopen(path, "wb");
    if (!f) {
        snprintf(err, err_size, "%s: cannot create: %s", path, strerror(errno));
        goto done;
    }
    /* Then the tensors in header order, in the host's byte order
     * (little-endian on every machine fpdm targets). */
    int ok = write_safetensors_header(f, header) == 0;
    uint64_t rng = seed;
    for (int i = 0; ok && i < list.count; i++) {
        const size_t n = (size_t)num_elements(&list.entries[i]);
        fill(&list.entries[i], &rng, values);
        ok = fwrite(values, sizeof(float), n, f) == n;
    }
    if (fclose(f) != 0)
        ok = 0;
    if (!ok) {
        snprintf(err, err_size, "%s: write failed: %s", path, strerror(errno));
        remove(path);
        goto done;
    }
    rc = 0;
done:
    free(list.entries);
    cJSON_free(header);
    free(values);
    return rc;
}
