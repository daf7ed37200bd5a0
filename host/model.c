/* model.c - loading a model file: validate it (safetensors.c, model_config.c),
 * convert every tensor to float32 and place them in one backend allocation. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "model.h"
#include "position_embedding.h"

typedef struct weight_layout {
    const safetensors_file *file;
    float *host;              /* staging copy, float32 */
    float *device;            /* backend allocation */
    size_t used;              /* floats placed so far */
} weight_layout;

/* Places one validated tensor and returns its backend address. */
static const float *place(weight_layout *layout, const char *name) {
    const safetensors_tensor *t = safetensors_find(layout->file, name);
    float *host = layout->host + layout->used;
    safetensors_to_f32(t, host);
    const float *device = layout->device + layout->used;
    layout->used += (size_t)t->num_elements;
    return device;
}

static backend_linear place_linear(weight_layout *layout, const char *prefix, int out_dim,
                                   int in_dim) {
    char name[128];
    backend_linear w = {0};
    snprintf(name, sizeof name, "%s.weight", prefix);
    w.weight = place(layout, name);
    snprintf(name, sizeof name, "%s.bias", prefix);
    w.bias = place(layout, name);
    w.out_dim = out_dim;
    w.in_dim = in_dim;
    w.weight_stride = in_dim;
    return w;
}

static void place_block(weight_layout *layout, const model_config *cfg, const char *prefix,
                        block_weights *b) {
    char name[128];
    int d = cfg->hidden_size, m = cfg->mlp_hidden;
    snprintf(name, sizeof name, "%s.attn.qkv", prefix);
    b->qkv = place_linear(layout, name, 3 * d, d);
    snprintf(name, sizeof name, "%s.attn.proj", prefix);
    b->proj = place_linear(layout, name, d, d);
    snprintf(name, sizeof name, "%s.mlp.fc1", prefix);
    b->fc1 = place_linear(layout, name, m, d);
    snprintf(name, sizeof name, "%s.mlp.fc2", prefix);
    b->fc2 = place_linear(layout, name, d, m);
    snprintf(name, sizeof name, "%s.adaLN_modulation.1", prefix);
    b->modulation = place_linear(layout, name, 6 * d, d);
}

static void place_blocks(weight_layout *layout, const model_config *cfg, const char *prefix,
                         int count, block_weights *blocks) {
    char name[96];
    for (int i = 0; i < count; i++) {
        snprintf(name, sizeof name, "%s.%d", prefix, i);
        place_block(layout, cfg, name, &blocks[i]);
    }
}

/* Official checkpoints store the fixed sin-cos table; one that differs is
 * used as stored (as the official code would) but is worth a warning. */
static void check_position_embedding(fpdm_context *ctx, const model_config *cfg,
                                     const float *stored, const char *path) {
    size_t n = (size_t)cfg->num_tokens * cfg->hidden_size;
    float *computed = malloc(n * sizeof(float));
    if (!computed) return;
    position_embedding_2d(cfg->hidden_size, cfg->grid_size, computed);
    double max_diff = 0;
    for (size_t i = 0; i < n; i++) max_diff = fmax(max_diff, fabs((double)stored[i] - computed[i]));
    free(computed);
    /* bf16 storage rounds values of magnitude <= 1 by at most 2^-9. */
    if (max_diff > 4e-3)
        context_log(ctx, FPDM_LOG_WARN,
                    "%s: pos_embed differs from the fixed 2-D sin-cos embedding by up to %.3g; "
                    "using the stored table", path, max_diff);
}

static void fill_info(fpdm_model *model) {
    const model_config *c = &model->config;
    fpdm_model_info *info = &model->info;
    info->is_fixed_point = c->fixed_point;
    info->hidden_size = c->hidden_size;
    info->depth = c->depth;
    info->num_heads = c->num_heads;
    info->patch_size = c->patch_size;
    info->input_size = c->input_size;
    info->in_channels = c->in_channels;
    info->out_channels = c->out_channels;
    info->num_classes = c->num_classes;
    info->learn_sigma = c->learn_sigma;
    info->pre_depth = c->pre_depth;
    info->post_depth = c->post_depth;
    info->pre_post_timestep_conditioning = c->pre_post_timestep_conditioning;
    info->default_iters = c->fixed_point ? c->equivalent_depth - c->pre_depth - c->post_depth : 0;
    info->prediction = c->prediction;
    info->zero_terminal_snr = c->zero_terminal_snr;
    info->latent_space = c->latent_space;
    info->num_train_timesteps = c->num_train_timesteps;
    info->noise_schedule = c->noise_schedule;
    info->num_parameters = model->num_weight_floats - (size_t)c->num_tokens * c->hidden_size;
}

static void place_all(weight_layout *layout, fpdm_model *model) {
    const model_config *cfg = &model->config;
    int d = cfg->hidden_size;
    int patch_dim = cfg->in_channels * cfg->patch_size * cfg->patch_size;
    model->patch_embed = place_linear(layout, "x_embedder.proj", d, patch_dim);
    model->pos_embed = place(layout, "pos_embed");
    model->t_mlp0 = place_linear(layout, "t_embedder.mlp.0", d, 256);
    model->t_mlp2 = place_linear(layout, "t_embedder.mlp.2", d, d);
    model->label_table = place(layout, "y_embedder.embedding_table.weight");
    model->final_modulation = place_linear(layout, "final_layer.adaLN_modulation.1", 2 * d, d);
    model->final_linear = place_linear(layout, "final_layer.linear",
                                       cfg->patch_size * cfg->patch_size * cfg->out_channels, d);
    if (!cfg->fixed_point) {
        place_blocks(layout, cfg, "blocks", cfg->depth, model->blocks);
        return;
    }
    place_blocks(layout, cfg, "blocks_pre", cfg->pre_depth, model->pre_blocks);
    model->pre_projection = place_linear(layout, "block_pre_projection", d, d);
    backend_linear fc1 = place_linear(layout, "block_fixed_point_projection_fc1", 2 * d, 2 * d);
    model->fc1_state = (backend_linear){fc1.weight, NULL, 2 * d, d, 2 * d};
    model->fc1_injection = (backend_linear){fc1.weight + d, fc1.bias, 2 * d, d, 2 * d};
    model->fc2 = place_linear(layout, "block_fixed_point_projection_fc2", d, 2 * d);
    place_block(layout, cfg, "block_fixed_point", &model->fixed_point_block);
    place_blocks(layout, cfg, "blocks_post", cfg->post_depth, model->post_blocks);
}

fpdm_status fpdm_model_load(fpdm_context *ctx, const char *path, fpdm_model **out) {
    if (!ctx) return FPDM_ERR_INVALID_ARGUMENT;
    if (!path || !out) return context_fail(ctx, FPDM_ERR_INVALID_ARGUMENT, "fpdm_model_load: NULL argument");
    *out = NULL;
    safetensors_file file;
    char err[512];
    if (safetensors_open(path, &file, err, sizeof err) != 0) {
        /* A file that cannot be opened at all is an I/O problem; anything the
         * reader parsed and refused is a bad file. */
        FILE *probe = fopen(path, "rb");
        fpdm_status status = probe ? FPDM_ERR_BAD_FILE : FPDM_ERR_IO;
        if (probe) fclose(probe);
        return context_fail(ctx, status, "%s", err);
    }
    fpdm_model *model = calloc(1, sizeof(*model));
    fpdm_status status = FPDM_OK;
    if (!model) {
        status = context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        goto done;
    }
    if (model_config_from_file(&file, &model->config, err, sizeof err) != 0 ||
        model_config_check_tensors(&model->config, &file, err, sizeof err) != 0) {
        status = context_fail(ctx, FPDM_ERR_BAD_FILE, "%s", err);
        goto done;
    }
    const model_config *cfg = &model->config;
    for (int i = 0; i < file.num_tensors; i++) model->num_weight_floats += (size_t)file.tensors[i].num_elements;
    int num_blocks = cfg->fixed_point ? cfg->pre_depth + cfg->post_depth : cfg->depth;
    block_weights *blocks = calloc((size_t)(num_blocks ? num_blocks : 1), sizeof(block_weights));
    float *host = malloc(model->num_weight_floats * sizeof(float));
    model->be = ctx->be;
    model->device_index = ctx->device_index;
    model->weights = ctx->be->alloc(ctx->be, model->num_weight_floats);
    if (!blocks || !host || !model->weights) {
        free(blocks);
        free(host);
        status = context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "%s: cannot allocate %zu MB of weights",
                              path, model->num_weight_floats * sizeof(float) >> 20);
        goto done;
    }
    model->blocks = blocks;
    model->pre_blocks = blocks;
    model->post_blocks = blocks + cfg->pre_depth;
    weight_layout layout = {&file, host, model->weights, 0};
    place_all(&layout, model);
    check_position_embedding(ctx, cfg, host + (model->pos_embed - model->weights), path);
    int upload_failed = ctx->be->upload(ctx->be, model->weights, host, model->num_weight_floats);
    free(host);
    if (upload_failed) {
        status = context_fail(ctx, FPDM_ERR_DEVICE, "%s: copying the weights to %s failed", path,
                              ctx->device_name);
        goto done;
    }
    fill_info(model);
    context_log(ctx, FPDM_LOG_INFO, "%s: %s, hidden %d, %d heads, patch %d, %zu parameters", path,
                cfg->fixed_point ? "FPDM" : "DiT", cfg->hidden_size, cfg->num_heads,
                cfg->patch_size, model->info.num_parameters);
done:
    safetensors_close(&file);
    if (status != FPDM_OK) {
        fpdm_model_free(model);
        return status;
    }
    *out = model;
    return FPDM_OK;
}

void fpdm_model_free(fpdm_model *model) {
    if (!model) return;
    if (model->weights) model->be->release(model->be, model->weights);
    free(model->blocks);
    free(model);
}

const fpdm_model_info *fpdm_model_get_info(const fpdm_model *model) {
    return model ? &model->info : NULL;
}
