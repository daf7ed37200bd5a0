/* model.c - loading a model file: validate it (safetensors.c, model_config.c),
 * convert its tensors and place them in the backend's memory: the linear
 * weights in the backend's operand type (backend.h), everything else (biases,
 * embeddings, tables) in float32. With float32 operands that is one
 * allocation; with 16-bit operands the weights go to a second allocation,
 * stored in 16 bits only, each padded to 16 bytes for the matrix units, with a
 * 16-bit copy of each bias beside them. A host-memory backend (the CPU's) is
 * written in place; a device's through bounded staging chunks (placement
 * below). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "float16.h"
#include "model.h"
#include "position_embedding.h"

/* Where one of the two weight arrays (float32, 16-bit operands) is written.
 * A host-memory backend's array is written in place. A device's goes through
 * a staging chunk in host memory, uploaded whenever the next tensor would not
 * fit in it: tensors are placed in address order, so each upload covers the
 * span placed since the one before, and a load holds one chunk of weights
 * besides the file's pages rather than a whole copy. */
typedef struct placement {
    unsigned char *host;      /* in place: the array; else the chunk; NULL while counting */
    float *device;            /* the backend allocation */
    size_t element_bytes;     /* 4 or 2 */
    size_t chunk_elements;    /* 0 when written in place */
    size_t chunk_start;       /* the element the chunk holds first */
    size_t used;              /* elements placed so far */
    size_t largest;           /* elements of the largest tensor (with padding) */
} placement;

/* Placement runs twice: first with no host memory, counting what goes where
 * (and the largest tensor, which a chunk must hold), then for real. */
typedef struct weight_layout {
    const safetensors_file *file;
    backend *be;
    backend_dtype operand_type;
    placement floats;         /* biases, embeddings, tables; every weight with float32 operands */
    placement operands;       /* 16-bit operands: linear weights and a copy of each bias */
    float *converted;         /* one tensor in float32, on its way to 16 bits */
    int upload_failed;
    /* The first weight no network can compute with: NaN or infinite in the
     * file, or past the 16-bit operand type's range (fp16 ends at 65504).
     * Such a model loaded and sampled NaN images with FPDM_OK. */
    char bad_tensor[128];     /* "" while none */
    size_t bad_index;
    double bad_value;
} weight_layout;

/* 16-bit tensors start 16 bytes apart at least. */
enum { OPERAND_ALIGN_ELEMENTS = 8 };
/* Host memory a load for a device stages each weight array through, unless
 * the backend names its own (backend.h's staging_bytes). */
#define MODEL_STAGING_BYTES ((size_t)64 << 20)

/* Sends the chunk's elements [chunk_start, end) to the device and starts an
 * empty chunk at `end`, zeroed where it was written (padding must read as
 * zero; the rest still is). */
static void upload_chunk(weight_layout *layout, placement *to, size_t end) {
    size_t count = end - to->chunk_start;
    if (count && !layout->upload_failed)
        layout->upload_failed =
            layout->be->upload(layout->be, to->device + to->chunk_start * to->element_bytes / 4,
                               (const float *)to->host, count * to->element_bytes / 4) != 0;
    memset(to->host, 0, count * to->element_bytes);
    to->chunk_start = end;
}

/* Reserves `span` elements for a tensor: its host address to write, or NULL
 * while counting; its backend address is `offset` elements into device. */
static void *reserve(weight_layout *layout, placement *to, size_t span, size_t *offset) {
    *offset = to->used;
    to->used += span;
    if (span > to->largest) to->largest = span;
    if (!to->host) return NULL;
    if (!to->chunk_elements) return to->host + *offset * to->element_bytes;
    if (*offset + span > to->chunk_start + to->chunk_elements) upload_chunk(layout, to, *offset);
    return to->host + (*offset - to->chunk_start) * to->element_bytes;
}

/* Records weight `index` of tensor `name` as the load's first bad one. */
static void record_bad_weight(weight_layout *layout, const char *name, size_t index,
                              double value) {
    if (layout->bad_tensor[0]) return;
    snprintf(layout->bad_tensor, sizeof layout->bad_tensor, "%s", name);
    layout->bad_index = index;
    layout->bad_value = value;
}

/* Places one validated tensor in float32 and returns its backend address. */
static const float *place(weight_layout *layout, const char *name) {
    const safetensors_tensor *t = safetensors_find(layout->file, name);
    size_t n = (size_t)t->num_elements, offset;
    float *host = reserve(layout, &layout->floats, n, &offset);
    if (host) {
        safetensors_to_f32(t, host);
        const size_t bad = context_first_non_finite(host, n);
        if (bad < n) record_bad_weight(layout, name, bad, host[bad]);
    }
    return layout->floats.device + offset;
}

/* Places one tensor in the operand type and returns its backend address. */
static const void *place_operand(weight_layout *layout, const char *name) {
    if (layout->operand_type == BACKEND_F32) return place(layout, name);
    const safetensors_tensor *t = safetensors_find(layout->file, name);
    size_t n = (size_t)t->num_elements, offset;
    size_t span =
        (n + OPERAND_ALIGN_ELEMENTS - 1) / OPERAND_ALIGN_ELEMENTS * OPERAND_ALIGN_ELEMENTS;
    uint16_t *host = reserve(layout, &layout->operands, span, &offset);
    if (host) {
        safetensors_to_f32(t, layout->converted);
        const int bf16 = layout->operand_type == BACKEND_BF16;
        /* All exponent bits set: NaN or infinity in the file, or past the
         * type's range (rounding keeps NaN and infinity as they are). */
        const uint16_t exponent = bf16 ? 0x7f80 : 0x7c00;
        for (size_t i = 0; i < n; i++) {
            host[i] = bf16 ? f32_to_bf16(layout->converted[i]) : f32_to_f16(layout->converted[i]);
            if ((host[i] & exponent) == exponent)
                record_bad_weight(layout, name, i, layout->converted[i]);
        }
    }
    return (const uint16_t *)layout->operands.device + offset;
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
 * used as stored (as the official code would) but is worth a warning. Read
 * from the file: a device's copy is not at hand. */
static void check_position_embedding(fpdm_context *ctx, const model_config *cfg,
                                     const safetensors_tensor *stored_tensor, const char *path) {
    size_t n = (size_t)cfg->num_tokens * cfg->hidden_size;
    float *computed = malloc(2 * n * sizeof(float));
    if (!computed) return;
    float *stored = computed + n;
    position_embedding_2d(cfg->hidden_size, cfg->grid_size, computed);
    safetensors_to_f32(stored_tensor, stored);
    double max_diff = 0;
    for (size_t i = 0; i < n; i++) max_diff = fmax(max_diff, fabs((double)stored[i] - computed[i]));
    free(computed);
    /* bf16 storage rounds values of magnitude <= 1 by at most 2^-9. */
    if (max_diff > 4e-3)
        context_log(ctx, FPDM_LOG_WARN,
                    "%s: pos_embed differs from the fixed 2-D sin-cos embedding by up to %.3g; "
                    "using the stored table", path, max_diff);
}

/* A staging chunk holds the backend's staging_bytes (or MODEL_STAGING_BYTES),
 * at least the largest tensor, at most the whole array. */
static size_t staging_chunk_elements(const backend *be, const placement *array) {
    size_t bytes = be->staging_bytes ? be->staging_bytes : MODEL_STAGING_BYTES;
    size_t elements = bytes / array->element_bytes;
    if (elements < array->largest) elements = array->largest;
    if (elements > array->used) elements = array->used;
    return elements ? elements : 1;
}

/* Both weight allocations' bytes. */
static size_t model_weight_bytes(const fpdm_model *model) {
    return (model->weight_floats + model->operand_floats) * sizeof(float);
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
    info->unconditional = c->unconditional;
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
    info->weight_bytes = model_weight_bytes(model);
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
    if (context_check_device(ctx) != FPDM_OK) return FPDM_ERR_INVALID_ARGUMENT;
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
    weight_layout layout = {.file = &file, .be = be, .operand_type = be->operand_type,
                            .floats.element_bytes = 4, .operands.element_bytes = 2};
    place_all(&layout, model);
    size_t operand_floats = backend_dtype_floats(layout.operand_type, layout.operands.used);
    model->weight_floats = layout.floats.used;
    model->operand_floats = operand_floats;
    model->weights = be->alloc(be, model->weight_floats);
    model->operand_weights = operand_floats ? be->alloc(be, operand_floats) : NULL;
    placement floats = {.device = model->weights, .element_bytes = layout.floats.element_bytes};
    placement operands = {.device = model->operand_weights,
                          .element_bytes = layout.operands.element_bytes};
    int in_place = be->host_memory;
    if (in_place) {
        floats.host = (unsigned char *)model->weights;
        operands.host = (unsigned char *)model->operand_weights;
    } else {
        floats.chunk_elements = staging_chunk_elements(be, &layout.floats);
        floats.host = calloc(floats.chunk_elements, floats.element_bytes);
        if (operand_floats) {
            operands.chunk_elements = staging_chunk_elements(be, &layout.operands);
            operands.host = calloc(operands.chunk_elements, operands.element_bytes);
        }
    }
    size_t converted_floats = layout.operands.largest ? layout.operands.largest : 1;
    float *converted = malloc(converted_floats * sizeof(float));
    if (!floats.host || !converted || !model->weights || (operand_floats && !operands.host) ||
        (operand_floats && !model->operand_weights)) {
        if (!in_place) {
            free(floats.host);
            free(operands.host);
        }
        free(converted);
        status = context_fail(ctx, FPDM_ERR_OUT_OF_MEMORY, "%s: cannot allocate %.1f MB of weights",
                              path, (double)model_weight_bytes(model) / (1 << 20));
        goto done;
    }
    /* The 16-bit weights' padding must read as zero (a chunk starts zeroed). */
    if (in_place && operand_floats) memset(operands.host, 0, operand_floats * sizeof(float));
    layout = (weight_layout){.file = &file, .be = be, .operand_type = be->operand_type,
                             .floats = floats, .operands = operands, .converted = converted};
    place_all(&layout, model);
    free(converted);
    if (!in_place) {
        upload_chunk(&layout, &layout.floats, layout.floats.used);
        if (operand_floats) upload_chunk(&layout, &layout.operands, layout.operands.used);
        free(layout.floats.host);
        free(layout.operands.host);
    }
    if (layout.upload_failed) {
        status = context_device_fail(ctx, "%s: copying the weights to %s", path, ctx->device_name);
        goto done;
    }
    if (layout.bad_tensor[0]) {
        const int fp16 = layout.operand_type == BACKEND_F16;
        if (isfinite(layout.bad_value))
            status = context_fail(ctx, FPDM_ERR_BAD_FILE,
                                  "%s: %s[%zu] = %g is past %s's range: load the model through %s "
                                  "context", path, layout.bad_tensor, layout.bad_index,
                                  layout.bad_value, fp16 ? "fp16" : "bf16",
                                  fp16 ? "a bf16 or fp32" : "an fp32");
        else
            status = context_fail(ctx, FPDM_ERR_BAD_FILE, "%s: %s[%zu] is %g (allowed: finite "
                                  "numbers)", path, layout.bad_tensor, layout.bad_index,
                                  layout.bad_value);
        goto done;
    }
    check_position_embedding(ctx, cfg, safetensors_find(&file, "pos_embed"), path);
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
