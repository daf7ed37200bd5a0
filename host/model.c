/* model.c - loading a model file: validate it (safetensors.c, model_config.c),
 * convert its tensors and place them in the backend's memory: the linear
 * weights in the backend's operand type (backend.h), everything else (biases,
 * embeddings, tables) in float32. With float32 operands that is one
 * allocation; with 16-bit operands the weights go to a second allocation,
 * stored in 16 bits only, each padded to 16 bytes for the matrix units, with a
 * 16-bit copy of each bias beside them. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "float16.h"
#include "model.h"
#include "position_embedding.h"

/* Placement runs twice: first with no host buffers, counting what goes
 * where, then for real into host staging buffers uploaded afterwards. */
typedef struct weight_layout {
    const safetensors_file *file;
    backend_dtype operand_type;
    float *host;                  /* float32 staging (NULL while counting) */
    float *device;                /* its backend allocation */
    size_t used;                  /* floats placed so far */
    uint16_t *operand_host;       /* 16-bit staging (NULL while counting) */
    uint16_t *operand_device;     /* its backend allocation */
    size_t operand_used;          /* 16-bit elements placed so far */
    float *converted;             /* one tensor in float32, on its way to 16 bits */
    size_t largest_operand;       /* elements of the largest 16-bit tensor */
} weight_layout;

/* 16-bit tensors start 16 bytes apart at least. */
enum { OPERAND_ALIGN_ELEMENTS = 8 };

/* Places one validated tensor in float32 and returns its backend address. */
static const float *place(weight_layout *layout, const char *name) {
    const safetensors_tensor *t = safetensors_find(layout->file, name);
    if (layout->host) safetensors_to_f32(t, layout->host + layout->used);
    const float *device = layout->device + layout->used;
    layout->used += (size_t)t->num_elements;
    return device;
}

/* Places one tensor in the operand type and returns its backend address. */
static const void *place_operand(weight_layout *layout, const char *name) {
    if (layout->operand_type == BACKEND_F32) return place(layout, name);
    const safetensors_tensor *t = safetensors_find(layout->file, name);
    size_t n = (size_t)t->num_elements;
    if (layout->operand_host) {
        uint16_t *dst = layout->operand_host + layout->operand_used;
        safetensors_to_f32(t, layout->converted);
        for (size_t i = 0; i < n; i++)
            dst[i] = layout->operand_type == BACKEND_BF16 ? f32_to_bf16(layout->converted[i])
                                                          : f32_to_f16(layout->converted[i]);
    }
    const uint16_t *device = layout->operand_device + layout->operand_used;
    layout->operand_used += (n + OPERAND_ALIGN_ELEMENTS - 1) / OPERAND_ALIGN_ELEMENTS *
                            OPERAND_ALIGN_ELEMENTS;
    if (n > layout->largest_operand) layout->largest_operand = n;
    return device;
}

static backend_linear place_linear(weight_layout *layout, const char *prefix, int out_dim,
                                   int in_dim) {
    char name[128];
    backend_linear w = {0};
    snprintf(name, sizeof name, "%s.weight", prefix);
    w.weight = place_operand(layout, name);
    snprintf(name, sizeof name, "%s.bias", prefix);
    w.bias = place(layout, name);
    w.bias_operand = layout->operand_type == BACKEND_F32 ? w.bias : place_operand(layout, name);
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
    info->mlp_hidden = c->mlp_hidden;
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
    info->num_parameters = model->num_parameters - (size_t)c->num_tokens * c->hidden_size;
    info->weight_bytes = model->weight_bytes;
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
    const char *injection_columns =
        (const char *)fc1.weight + (size_t)d * backend_dtype_bytes(layout->operand_type);
    model->fc1_state = (backend_linear){fc1.weight, NULL, NULL, 2 * d, d, 2 * d};
    model->fc1_injection =
        (backend_linear){injection_columns, fc1.bias, fc1.bias_operand, 2 * d, d, 2 * d};
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
    int open_result = safetensors_open(path, &file, err, sizeof err);
    if (open_result != 0)
        return context_fail(ctx, safetensors_failure_status(open_result, path), "%s", err);
    fpdm_model *model = calloc(1, sizeof(*model));
    fpdm_status status = FPDM_OK;
    if (!model) {
        status = context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        goto done;
    }
    int check_result = model_config_from_file(&file, &model->config, err, sizeof err);
    if (check_result == 0)
        check_result = model_config_check_tensors(&model->config, &file, err, sizeof err);
    if (check_result != 0) {
        status = context_fail(ctx, check_result == ERROR_OUT_OF_MEMORY ? FPDM_ERR_OUT_OF_MEMORY
                                                                       : FPDM_ERR_BAD_FILE,
                              "%s", err);
        goto done;
    }
    const model_config *cfg = &model->config;
    backend *be = ctx->be;
    for (int i = 0; i < file.num_tensors; i++)
        model->num_parameters += (size_t)file.tensors[i].num_elements;
    int num_blocks = cfg->fixed_point ? cfg->pre_depth + cfg->post_depth : cfg->depth;
    block_weights *blocks = calloc((size_t)(num_blocks ? num_blocks : 1), sizeof(block_weights));
    model->blocks = blocks;
    model->pre_blocks = blocks;
    model->post_blocks = blocks + cfg->pre_depth;
    if (!blocks) {
        status = context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "%s: out of memory", path);
        goto done;
    }
    model->be = be;
    model->device_index = ctx->device_index;
    weight_layout layout = {.file = &file, .operand_type = be->operand_type};
    place_all(&layout, model);
    size_t operand_floats = backend_dtype_floats(layout.operand_type, layout.operand_used);
    model->weight_bytes = (layout.used + operand_floats) * sizeof(float);
    model->weights = be->alloc(be, layout.used);
    model->operand_weights = operand_floats ? be->alloc(be, operand_floats) : NULL;
    /* Host memory is filled in place; a device's is staged and uploaded. */
    int in_place = be->host_memory;
    float *host = in_place ? model->weights : malloc(layout.used * sizeof(float));
    uint16_t *operand_host = !operand_floats ? NULL
                             : in_place      ? (uint16_t *)model->operand_weights
                                             : calloc(operand_floats, 2 * sizeof(uint16_t));
    float *converted = malloc((layout.largest_operand ? layout.largest_operand : 1) * sizeof(float));
    if (!host || !converted || !model->weights || (operand_floats && !operand_host) ||
        (operand_floats && !model->operand_weights)) {
        if (!in_place) {
            free(host);
            free(operand_host);
        }
        free(converted);
        status = context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "%s: cannot allocate %.1f MB of weights",
                              path, (double)model->weight_bytes / (1 << 20));
        goto done;
    }
    /* The 16-bit weights' padding starts zeroed, as the staging copy did. */
    if (in_place && operand_floats) memset(operand_host, 0, operand_floats * sizeof(float));
    layout = (weight_layout){.file = &file, .operand_type = be->operand_type, .host = host,
                             .device = model->weights, .operand_host = operand_host,
                             .operand_device = (uint16_t *)model->operand_weights,
                             .converted = converted};
    place_all(&layout, model);
    free(converted);
    check_position_embedding(ctx, cfg, host + (model->pos_embed - model->weights), path);
    int upload_failed = 0;
    if (!in_place) {
        upload_failed = be->upload(be, model->weights, host, layout.used) ||
                        (operand_floats && be->upload(be, model->operand_weights,
                                                      (const float *)operand_host, operand_floats));
        free(host);
        free(operand_host);
    }
    if (upload_failed) {
        status = context_device_fail(ctx, "%s: copying the weights to %s", path, ctx->device_name);
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
    if (model->operand_weights) model->be->release(model->be, model->operand_weights);
    free(model->blocks);
    free(model);
}

const fpdm_model_info *fpdm_model_get_info(const fpdm_model *model) {
    return model ? &model->info : NULL;
}
