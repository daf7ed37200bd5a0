/* test_model_operands.c - the model loader's 16-bit placement, which the
 * CUDA backend's bf16 and fp16 modes use, checked on the CPU: a CPU backend
 * that claims a 16-bit operand type loads the golden DiT and FPDM files (its
 * alloc and upload copy bytes, so nothing else is needed), and every linear
 * weight must hold the file's values rounded to 16 bits, 16-byte aligned;
 * every bias must be there in float32 exactly and in 16 bits rounded;
 * FPDM's fc1 must be split into its state and injection column blocks;
 * weight_bytes must count both allocations. And the loader's path for a
 * device (backend.h's host_memory 0: weights converted into a host staging
 * chunk, uploaded whenever the next tensor would not fit) must give both
 * allocations the very bytes of a load in place, for float32, bf16 and fp16
 * operands and chunks from smaller than any tensor to larger than the model.
 * A weight no network can compute with (NaN or infinite in the file, or past
 * the 16-bit operand type's range) fails the load with FPDM_ERR_BAD_FILE,
 * naming the tensor and the element.
 * Run: ctest -R test_model_operands. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "context.h"
#include "float16.h"
#include "model.h"
#include "safetensors.h"
#include "test_util.h"

/* Counts the elements of `w` (out_dim x in_dim, rows weight_stride apart)
 * that differ from the file tensor `name` (columns from first_column on)
 * rounded to `type`, and of its biases. */
static int check_linear(const safetensors_file *file, const char *prefix, const backend_linear *w,
                        int first_column, backend_dtype type) {
    char name[160];
    snprintf(name, sizeof name, "%s.weight", prefix);
    const safetensors_tensor *t = safetensors_find(file, name);
    CHECK_MSG(t != NULL, "%s missing", name);
    if (!t) return 1;
    int file_columns = (int)(t->num_elements / t->shape[0]); /* conv weights flatten */
    float *values = malloc((size_t)t->num_elements * sizeof(float));
    safetensors_to_f32(t, values);
    const uint16_t *stored = w->weight;
    int wrong = ((uintptr_t)stored % 16) != 0 && first_column == 0;
    for (int o = 0; o < w->out_dim; o++)
        for (int i = 0; i < w->in_dim; i++)
            wrong += stored[(size_t)o * w->weight_stride + i] !=
                     test_to_16bit(values[(size_t)o * file_columns + first_column + i], type);
    free(values);
    if (w->bias) {
        snprintf(name, sizeof name, "%s.bias", prefix);
        t = safetensors_find(file, name);
        float *bias = malloc((size_t)t->num_elements * sizeof(float));
        safetensors_to_f32(t, bias);
        const uint16_t *bias_operand = w->bias_operand;
        for (int o = 0; o < w->out_dim; o++)
            wrong += w->bias[o] != bias[o] || bias_operand[o] != test_to_16bit(bias[o], type);
        free(bias);
    }
    CHECK_MSG(wrong == 0, "%s: %d elements wrong", prefix, wrong);
    return wrong;
}

/* Loads path with operand type `type`, in place (staging_bytes 0) or staged
 * through chunks of staging_bytes; NULL after a failed check. */
static fpdm_model *load_as(fpdm_context **ctx, const char *path, backend_dtype type,
                           size_t staging_bytes) {
    fpdm_context_params params = fpdm_context_default_params();
    CHECK(fpdm_context_create(&params, ctx) == FPDM_OK);
    if (!*ctx) return NULL;
    test_set_loading(*ctx, type, staging_bytes);
    return test_load_model(*ctx, path);
}

static void check_model(const char *path, backend_dtype type) {
    fpdm_context *ctx = NULL;
    fpdm_model *model = load_as(&ctx, path, type, 0);
    safetensors_file file;
    char err[256];
    if (!model || safetensors_open(path, &file, err, sizeof err) != 0) {
        fpdm_model_free(model);
        fpdm_context_free(ctx);
        return;
    }
    const model_config *cfg = &model->config;
    int d = cfg->hidden_size, failures_before = test_failures;
    CHECK(model->operand_weights != NULL);
    check_linear(&file, "x_embedder.proj", &model->patch_embed, 0, type);
    check_linear(&file, "t_embedder.mlp.0", &model->t_mlp0, 0, type);
    check_linear(&file, "final_layer.linear", &model->final_linear, 0, type);
    const char *block_prefix = cfg->fixed_point ? "blocks_pre.0" : "blocks.0";
    const block_weights *block = cfg->fixed_point ? &model->pre_blocks[0] : &model->blocks[0];
    char prefix[96];
    const char *parts[5] = {"attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1"};
    const backend_linear *linears[5] = {&block->qkv, &block->proj, &block->fc1, &block->fc2,
                                        &block->modulation};
    for (int i = 0; i < 5; i++) {
        snprintf(prefix, sizeof prefix, "%s.%s", block_prefix, parts[i]);
        check_linear(&file, prefix, linears[i], 0, type);
    }
    if (cfg->fixed_point) {
        check_linear(&file, "block_fixed_point_projection_fc1", &model->fc1_state, 0, type);
        check_linear(&file, "block_fixed_point_projection_fc1", &model->fc1_injection, d, type);
        CHECK((const uint16_t *)model->fc1_injection.weight == (const uint16_t *)model->fc1_state.weight + d);
        check_linear(&file, "block_fixed_point_projection_fc2", &model->fc2, 0, type);
        check_linear(&file, "block_fixed_point.attn.qkv", &model->fixed_point_block.qkv, 0, type);
    }
    /* Float32 tensors stay exact, and both allocations are counted. */
    const safetensors_tensor *table = safetensors_find(&file, "y_embedder.embedding_table.weight");
    float *values = malloc((size_t)table->num_elements * sizeof(float));
    safetensors_to_f32(table, values);
    CHECK(memcmp(values, model->label_table, (size_t)table->num_elements * sizeof(float)) == 0);
    free(values);
    const fpdm_model_info *info = fpdm_model_get_info(model);
    CHECK(info->weight_bytes > 2 * info->num_parameters && info->weight_bytes < 4 * info->num_parameters);
    fprintf(stderr, "  %-48s %s %s\n", path, type == BACKEND_BF16 ? "bf16" : "fp16",
            test_failures == failures_before ? "ok" : "FAIL");
    safetensors_close(&file);
    fpdm_model_free(model);
    fpdm_context_free(ctx);
}

static void check_staged_load(const char *path, backend_dtype type) {
    fpdm_context *in_place_ctx = NULL;
    fpdm_model *in_place = load_as(&in_place_ctx, path, type, 0);
    /* 4 bytes: a chunk of the largest tensor, uploaded at every tensor; 20000
     * bytes: several tensors a chunk; 1 GB: one chunk of the whole model. */
    const size_t chunk_bytes[3] = {4, 20000, (size_t)1 << 30};
    for (int c = 0; c < 3 && in_place; c++) {
        fpdm_context *ctx = NULL;
        fpdm_model *staged = load_as(&ctx, path, type, chunk_bytes[c]);
        int same = staged && staged->weight_floats == in_place->weight_floats &&
                   staged->operand_floats == in_place->operand_floats &&
                   staged->info.weight_bytes == in_place->info.weight_bytes &&
                   memcmp(staged->weights, in_place->weights,
                          in_place->weight_floats * sizeof(float)) == 0 &&
                   (!in_place->operand_floats ||
                    memcmp(staged->operand_weights, in_place->operand_weights,
                           in_place->operand_floats * sizeof(float)) == 0);
        CHECK_MSG(same,
                  "%s, %s operands, staged through %zu-byte chunks: weights differ from a load "
                  "in place", path, type == BACKEND_F32 ? "float32" : "16-bit", chunk_bytes[c]);
        fpdm_model_free(staged);
        fpdm_context_free(ctx);
    }
    fpdm_model_free(in_place);
    fpdm_context_free(in_place_ctx);
}

/* The load through `type` operands fails with BAD_FILE and a message holding
 * needle, or (needle NULL) succeeds. */
static void expect_load(const char *copy, backend_dtype type, const char *needle) {
    fpdm_context_params params = fpdm_context_default_params();
    fpdm_context *ctx = NULL;
    CHECK(fpdm_context_create(&params, &ctx) == FPDM_OK);
    if (!ctx) return;
    test_set_loading(ctx, type, 0);
    fpdm_model *model = NULL;
    fpdm_status status = fpdm_model_load(ctx, copy, &model);
    if (needle)
        CHECK_MSG(status == FPDM_ERR_BAD_FILE && !model && strstr(fpdm_last_error(ctx), needle),
                  "expected a refusal naming \"%s\", got status %d: %s", needle, (int)status,
                  status == FPDM_OK ? "(none)" : fpdm_last_error(ctx));
    else
        CHECK_MSG(status == FPDM_OK, "expected the load to succeed: %s", fpdm_last_error(ctx));
    fpdm_model_free(model);
    fpdm_context_free(ctx);
}

static void check_unusable_weights(const char *path) {
    char dir[256], copy[512];
    if (test_make_temp_dir(dir, sizeof dir, "test_model_operands") != 0) return;
    snprintf(copy, sizeof copy, "%s/model.safetensors", dir);
    /* A linear weight (16-bit operands) and a bias (float32 everywhere). */
    if (test_write_model_with_value(path, copy, "final_layer.linear.weight", 3, NAN) == 0) {
        expect_load(copy, BACKEND_F32, "final_layer.linear.weight[3] is nan (allowed: finite");
        expect_load(copy, BACKEND_BF16, "final_layer.linear.weight[3] is nan");
    }
    if (test_write_model_with_value(path, copy, "final_layer.linear.bias", 1, -INFINITY) == 0)
        expect_load(copy, BACKEND_F16, "final_layer.linear.bias[1] is -inf");
    /* 1e5 is a number bf16 and float32 hold and fp16 does not (it ends at
     * 65504). */
    if (test_write_model_with_value(path, copy, "final_layer.linear.weight", 2, 1e5f) == 0) {
        expect_load(copy, BACKEND_F32, NULL);
        expect_load(copy, BACKEND_BF16, NULL);
        expect_load(copy, BACKEND_F16, "final_layer.linear.weight[2] = 99840 is past fp16's "
                                       "range: load the model through a bf16 or fp32 context");
    }
    test_remove_temp_dir(dir);
}

int main(void) {
    const char *paths[2] = {"tests/golden/forward-dit-p2.model.safetensors",
                            "tests/golden/forward-fpdm.model.safetensors"};
    for (int i = 0; i < 2; i++) {
        check_model(paths[i], BACKEND_BF16);
        check_model(paths[i], BACKEND_F16);
        check_staged_load(paths[i], BACKEND_F32);
        check_staged_load(paths[i], BACKEND_BF16);
        check_staged_load(paths[i], BACKEND_F16);
        check_unusable_weights(paths[i]);
    }
    return test_finish("test_model_operands");
}
