/* network.c - the DiT and FPDM forward passes over the backend interface.
 *
 * DiT:  tokens = patch_embed(x) + pos; c = t_emb + y_emb;
 *       tokens = block_i(tokens, c) for every block; out = final(tokens, c).
 * FPDM: condition = pre_blocks(tokens, c_pp); injection = pre_projection(condition);
 *       z = init_solution or condition;
 *       repeat: z = fixed_point_block(fc2(gelu(fc1(concat(z, injection)))), c);
 *       out = final(post_blocks(z, c_pp), c_pp),
 *       where c_pp = c with pre/post timestep conditioning, else y_emb alone.
 */
#include "network.h"

#include <math.h>

static size_t max_size(size_t a, size_t b) { return a > b ? a : b; }

/* Sizes of every buffer for a batch, in the order network_layout carves them. */
typedef struct layout_sizes {
    size_t image_in, image_out, tokens, injection, qkv, wide, freq, vec, modulation, scratch;
} layout_sizes;

static layout_sizes sizes_for(const fpdm_context *ctx, const model_config *cfg, int batch) {
    size_t b = (size_t)batch, t = (size_t)cfg->num_tokens, d = (size_t)cfg->hidden_size;
    size_t pp = (size_t)cfg->patch_size * cfg->patch_size;
    layout_sizes s;
    s.image_in = b * cfg->in_channels * cfg->input_size * cfg->input_size;
    s.image_out = b * cfg->out_channels * cfg->input_size * cfg->input_size;
    s.tokens = b * t * d;
    s.injection = cfg->fixed_point ? b * t * 2 * d : 0;
    s.qkv = b * t * 3 * d;
    size_t wide_cols = max_size(max_size((size_t)cfg->mlp_hidden, 2 * d),
                                max_size(pp * cfg->in_channels, pp * cfg->out_channels));
    s.wide = b * t * wide_cols;
    s.freq = b * 256;
    s.vec = b * d;
    s.modulation = b * 6 * d;
    s.scratch = ctx->be->attention_scratch_floats(ctx->be, batch, cfg->num_tokens, cfg->num_heads,
                                                  cfg->head_dim);
    return s;
}

/* Rounds every buffer up to 16 floats so each starts on a 64-byte boundary. */
static size_t aligned(size_t floats) { return (floats + 15) / 16 * 16; }

size_t network_arena_floats(const fpdm_context *ctx, const model_config *cfg, int batch) {
    layout_sizes s = sizes_for(ctx, cfg, batch);
    return aligned(s.image_in) + aligned(s.image_out) + 6 * aligned(s.tokens) +
           aligned(s.injection) + aligned(s.qkv) + aligned(s.wide) + aligned(s.freq) +
           7 * aligned(s.vec) + 2 * aligned(s.modulation) + aligned(s.scratch);
}

void network_layout(const fpdm_context *ctx, const model_config *cfg, int batch, float *base,
                    network_state *st) {
    layout_sizes s = sizes_for(ctx, cfg, batch);
    float *p = base;
#define CARVE(field, n) (st->field = p, p += aligned(n))
    st->batch = batch;
    CARVE(x, s.image_in);
    CARVE(out, s.image_out);
    CARVE(hidden, s.tokens);
    CARVE(state, s.tokens);
    CARVE(next, s.tokens);
    CARVE(normed, s.tokens);
    CARVE(attn_out, s.tokens);
    CARVE(branch_out, s.tokens);
    CARVE(injection, s.injection);
    CARVE(qkv, s.qkv);
    CARVE(wide, s.wide);
    CARVE(t_freq, s.freq);
    CARVE(t_hidden, s.vec);
    CARVE(t_emb, s.vec);
    CARVE(y_emb, s.vec);
    CARVE(cond, s.vec);
    CARVE(cond_pp, s.vec);
    CARVE(silu_cond, s.vec);
    CARVE(silu_cond_pp, s.vec);
    CARVE(modulation, s.modulation);
    CARVE(fixed_point_modulation, s.modulation);
    CARVE(attn_scratch, s.scratch);
#undef CARVE
    st->floats = (size_t)(p - base);
}

void network_embed(const fpdm_model *model, network_state *st, const float *host_timesteps,
                   const int *host_labels) {
    const model_config *cfg = &model->config;
    backend *be = model->be;
    int b = st->batch, t = cfg->num_tokens, d = cfg->hidden_size;
    be->patchify(be, st->wide, st->x, b, cfg->in_channels, cfg->input_size, cfg->patch_size);
    be->linear(be, st->hidden, st->wide, b * t, &model->patch_embed, NULL, BACKEND_ACT_NONE);
    be->add(be, st->hidden, st->hidden, model->pos_embed, b, t, d, 1);

    be->timestep_frequencies(be, st->t_freq, host_timesteps, b, 256);
    be->linear(be, st->t_hidden, st->t_freq, b, &model->t_mlp0, NULL, BACKEND_ACT_SILU);
    be->linear(be, st->t_emb, st->t_hidden, b, &model->t_mlp2, NULL, BACKEND_ACT_NONE);
    be->embedding_rows(be, st->y_emb, model->label_table, host_labels, b, d);
    be->add(be, st->cond, st->t_emb, st->y_emb, b, 1, d, 0);
    be->activation(be, st->silu_cond, st->cond, (size_t)b * d, BACKEND_ACT_SILU);
    const float *cond_pp = (!cfg->fixed_point || cfg->pre_post_timestep_conditioning) ? st->cond
                                                                                        : st->y_emb;
    be->copy(be, st->cond_pp, cond_pp, (size_t)b * d);
    be->activation(be, st->silu_cond_pp, st->cond_pp, (size_t)b * d, BACKEND_ACT_SILU);
}

void network_block(const fpdm_model *model, network_state *st, const block_weights *block,
                   float *tokens, const float *modulation) {
    const model_config *cfg = &model->config;
    backend *be = model->be;
    int b = st->batch, t = cfg->num_tokens, d = cfg->hidden_size, rows = b * t;
    int stride = 6 * d;
    /* modulation chunks: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp */
    be->layernorm_modulate(be, st->normed, tokens, modulation, modulation + d, stride, b, t, d);
    be->linear(be, st->qkv, st->normed, rows, &block->qkv, NULL, BACKEND_ACT_NONE);
    be->attention(be, st->attn_out, st->qkv, b, t, cfg->num_heads, cfg->head_dim, st->attn_scratch);
    be->linear(be, st->branch_out, st->attn_out, rows, &block->proj, NULL, BACKEND_ACT_NONE);
    be->gated_residual(be, tokens, st->branch_out, modulation + 2 * d, stride, b, t, d);
    be->layernorm_modulate(be, st->normed, tokens, modulation + 3 * d, modulation + 4 * d, stride,
                           b, t, d);
    be->linear(be, st->wide, st->normed, rows, &block->fc1, NULL, BACKEND_ACT_GELU_TANH);
    be->linear(be, st->branch_out, st->wide, rows, &block->fc2, NULL, BACKEND_ACT_NONE);
    be->gated_residual(be, tokens, st->branch_out, modulation + 5 * d, stride, b, t, d);
}

static void run_block(const fpdm_model *model, network_state *st, const block_weights *block,
                      float *tokens, const float *silu_cond) {
    model->be->linear(model->be, st->modulation, silu_cond, st->batch, &block->modulation, NULL,
                      BACKEND_ACT_NONE);
    network_block(model, st, block, tokens, st->modulation);
}

static void final_layer(const fpdm_model *model, network_state *st, const float *tokens,
                        const float *silu_cond) {
    const model_config *cfg = &model->config;
    backend *be = model->be;
    int b = st->batch, t = cfg->num_tokens, d = cfg->hidden_size;
    be->linear(be, st->modulation, silu_cond, b, &model->final_modulation, NULL, BACKEND_ACT_NONE);
    be->layernorm_modulate(be, st->normed, tokens, st->modulation, st->modulation + d, 2 * d, b, t, d);
    be->linear(be, st->wide, st->normed, b * t, &model->final_linear, NULL, BACKEND_ACT_NONE);
    be->unpatchify(be, st->out, st->wide, b, cfg->out_channels, cfg->input_size, cfg->patch_size);
}

/* Largest relative residual ||a - b|| / ||b|| over the batch's images. */
static int relative_residual(backend *be, const float *a, const float *b, int batch, size_t cols,
                             float *residual) {
    double diff_sq[batch], norm_sq[batch];
    if (be->row_norms(be, a, b, batch, cols, diff_sq, norm_sq) != 0) return -1;
    double worst = 0;
    for (int i = 0; i < batch; i++) {
        double r = norm_sq[i] > 0 ? sqrt(diff_sq[i] / norm_sq[i]) : sqrt(diff_sq[i]);
        worst = r > worst ? r : worst;
    }
    *residual = (float)worst;
    return 0;
}

/* One fixed-point iteration: st->next = block(fc2(gelu(W_z st->state + injection))). */
static void fixed_point_iteration(const fpdm_model *model, network_state *st) {
    backend *be = model->be;
    int rows = st->batch * model->config.num_tokens;
    be->linear(be, st->wide, st->state, rows, &model->fc1_state, st->injection,
               BACKEND_ACT_GELU_TANH);
    be->linear(be, st->next, st->wide, rows, &model->fc2, NULL, BACKEND_ACT_NONE);
    network_block(model, st, &model->fixed_point_block, st->next, st->fixed_point_modulation);
}

/* The words a recorded iteration is stored under: every buffer it reads or
 * writes (this iteration's state and next included), every weight and every
 * size, so a recording is only replayed where it computes the same thing. */
enum {
    ITERATION_SHAPE_AND_BUFFER_WORDS = 15,
    ITERATION_LINEARS = 6,
    LINEAR_KEY_WORDS = 5,
    ITERATION_KEY_WORDS = ITERATION_SHAPE_AND_BUFFER_WORDS + ITERATION_LINEARS * LINEAR_KEY_WORDS
};

static uintptr_t *put_linear(uintptr_t *key, const backend_linear *w) {
    *key++ = (uintptr_t)w->weight;
    *key++ = (uintptr_t)w->bias;
    *key++ = (uintptr_t)w->out_dim;
    *key++ = (uintptr_t)w->in_dim;
    *key++ = (uintptr_t)w->weight_stride;
    return key;
}

static void iteration_key(const fpdm_model *model, const network_state *st, uintptr_t *key) {
    const model_config *cfg = &model->config;
    const block_weights *block = &model->fixed_point_block;
    const backend_linear *linears[ITERATION_LINEARS] = {&model->fc1_state, &model->fc2,
                                                         &block->qkv, &block->proj,
                                                         &block->fc1, &block->fc2};
    const uintptr_t fixed[ITERATION_SHAPE_AND_BUFFER_WORDS] = {
        (uintptr_t)st->batch, (uintptr_t)cfg->num_tokens, (uintptr_t)cfg->hidden_size,
        (uintptr_t)cfg->num_heads, (uintptr_t)cfg->head_dim, (uintptr_t)st->state,
        (uintptr_t)st->next, (uintptr_t)st->wide, (uintptr_t)st->injection,
        (uintptr_t)st->normed, (uintptr_t)st->qkv, (uintptr_t)st->attn_out,
        (uintptr_t)st->branch_out, (uintptr_t)st->attn_scratch,
        (uintptr_t)st->fixed_point_modulation};
    for (int i = 0; i < ITERATION_SHAPE_AND_BUFFER_WORDS; i++) *key++ = fixed[i];
    for (int i = 0; i < ITERATION_LINEARS; i++) key = put_linear(key, linears[i]);
}

/* Runs one iteration. Where the backend records graphs (CUDA), the iteration
 * is recorded the first time these buffers are seen and replayed as one
 * launch after that, so the iteration count may change from step to step
 * without recording again. The loop below swaps state and next after each
 * iteration; since the key names both, the two parities are two recordings,
 * both made during the first solve: this costs a second small graph, where
 * replacing the swap by a device copy would cost a [B, T, D] copy on every
 * iteration (a few percent of an FPDM-XL/2 iteration in bf16). */
static void run_iteration(const fpdm_model *model, network_state *st) {
    backend *be = model->be;
    if (!be->graph_launch) {
        fixed_point_iteration(model, st);
        return;
    }
    uintptr_t key[ITERATION_KEY_WORDS];
    iteration_key(model, st, key);
    if (be->graph_launch(be, key, ITERATION_KEY_WORDS)) return;
    if (be->graph_begin(be) == 0) {
        fixed_point_iteration(model, st);
        if (be->graph_end(be, key, ITERATION_KEY_WORDS) == 0 &&
            be->graph_launch(be, key, ITERATION_KEY_WORDS))
            return;
    }
    fixed_point_iteration(model, st);
}

/* The fixed-point solve. Work that is the same for every iteration of one
 * solve is done once before the loop: the implicit block's adaLN modulation
 * (it depends only on c) and the injection's half of fc1, since
 * fc1(concat(z, inj)) = W_z z + (W_inj inj + b). An iteration then costs one
 * D -> 2D product, one 2D -> D product and one block. */
static fpdm_status solve_fixed_point(fpdm_context *ctx, const fpdm_model *model, network_state *st,
                                     network_solve *solve) {
    const model_config *cfg = &model->config;
    backend *be = model->be;
    int b = st->batch, rows = b * cfg->num_tokens;
    size_t per_image = (size_t)cfg->num_tokens * cfg->hidden_size;

    /* st->hidden holds the condition (pre blocks' output). */
    be->linear(be, st->attn_out, st->hidden, rows, &model->pre_projection, NULL, BACKEND_ACT_NONE);
    be->linear(be, st->injection, st->attn_out, rows, &model->fc1_injection, NULL, BACKEND_ACT_NONE);
    be->linear(be, st->fixed_point_modulation, st->silu_cond, b, &model->fixed_point_block.modulation,
               NULL, BACKEND_ACT_NONE);
    be->copy(be, st->state, solve->init_solution ? solve->init_solution : st->hidden,
             (size_t)b * per_image);

    solve->iters_used = 0;
    solve->residual = -1.0f;
    for (int k = 0; k < solve->iters; k++) {
        run_iteration(model, st);
        int measure = solve->tol > 0 || k == solve->iters - 1;
        if (measure && relative_residual(be, st->next, st->state, b, per_image, &solve->residual) != 0)
            return context_fail(ctx, FPDM_ERR_DEVICE, "%s: computing the residual failed",
                                ctx->device_name);
        float *done = st->next;
        st->next = st->state;
        st->state = done;
        solve->iters_used = k + 1;
        if (solve->tol > 0 && solve->residual < solve->tol) break;
    }
    if (solve->solution_out) be->copy(be, solve->solution_out, st->state, (size_t)b * per_image);
    return FPDM_OK;
}

fpdm_status network_forward(fpdm_context *ctx, const fpdm_model *model, network_state *st,
                            const float *host_timesteps, const int *host_labels,
                            network_solve *solve) {
    const model_config *cfg = &model->config;
    network_embed(model, st, host_timesteps, host_labels);
    if (!cfg->fixed_point) {
        for (int i = 0; i < cfg->depth; i++)
            run_block(model, st, &model->blocks[i], st->hidden, st->silu_cond);
        final_layer(model, st, st->hidden, st->silu_cond);
        return FPDM_OK;
    }
    for (int i = 0; i < cfg->pre_depth; i++)
        run_block(model, st, &model->pre_blocks[i], st->hidden, st->silu_cond_pp);
    fpdm_status status = solve_fixed_point(ctx, model, st, solve);
    if (status != FPDM_OK) return status;
    for (int i = 0; i < cfg->post_depth; i++)
        run_block(model, st, &model->post_blocks[i], st->state, st->silu_cond_pp);
    final_layer(model, st, st->state, st->silu_cond_pp);
    return FPDM_OK;
}
