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

/* Sizes of every buffer for a batch, in floats, in the order network_layout
 * carves them. */
typedef struct layout_sizes {
    size_t image_in, image_out, hidden, state, normed, work, injection, freq, operand_vec, vec,
        modulation, scratch;
} layout_sizes;

static layout_sizes sizes_for(const fpdm_context *ctx, const model_config *cfg, int batch) {
    size_t b = (size_t)batch, t = (size_t)cfg->num_tokens, d = (size_t)cfg->hidden_size;
    size_t pp = (size_t)cfg->patch_size * cfg->patch_size;
    backend_dtype operand = ctx->be->operand_type;
    layout_sizes s;
    s.image_in = b * cfg->in_channels * cfg->input_size * cfg->input_size;
    s.image_out = b * cfg->out_channels * cfg->input_size * cfg->input_size;
    s.hidden = b * t * d;
    s.state = cfg->fixed_point ? b * t * d : 0;
    /* An operand [B, T, D]; FPDM's iterations put fc1's [B, T, 2D] output
     * here in 16-bit operands (network_layout), float32 [B, T, D]'s bytes. */
    s.normed = cfg->fixed_point ? max_size(backend_dtype_floats(operand, b * t * d), b * t * d)
                                : backend_dtype_floats(operand, b * t * d);
    /* qkv, proj's output, the MLP hidden layer, the patches, the
     * final layer's output, the solve's pre-projection (see network_layout). */
    size_t work_operand_cols = max_size(max_size(3 * d, (size_t)cfg->mlp_hidden),
                                        max_size(2 * d, pp * cfg->in_channels));
    s.work = max_size(backend_dtype_floats(operand, b * t * work_operand_cols),
                      b * t * max_size(d, pp * cfg->out_channels));
    s.injection = cfg->fixed_point ? backend_dtype_floats(operand, b * t * 2 * d) : 0;
    s.freq = backend_dtype_floats(operand, b * 256);
    s.operand_vec = backend_dtype_floats(operand, b * d);
    s.vec = b * d;
    s.modulation = b * 6 * d;
    s.scratch = ctx->be->attention_scratch_floats(ctx->be, batch, cfg->num_tokens, cfg->num_heads,
                                                  cfg->head_dim);
    return s;
}

/* Rounds every buffer up to 16 floats so each starts on a 64-byte boundary. */
static size_t aligned(size_t floats) { return (floats + 15) / 16 * 16; }

/* The arena is what network_layout carves, counted by carving from no base. */
size_t network_arena_floats(const fpdm_context *ctx, const model_config *cfg, int batch) {
    network_state st;
    network_layout(ctx, cfg, batch, NULL, &st);
    return st.floats;
}

double fpdm_min_activation_bytes(const fpdm_model_info *info, int rows, int operand_bytes) {
    if (!info || rows < 1 || (operand_bytes != 2 && operand_bytes != 4) || info->patch_size < 1)
        return 0.0;
    double d = info->hidden_size, m = info->mlp_hidden, o = operand_bytes;
    double grid = info->input_size / info->patch_size, tokens = grid * grid;
    double per_token = 4 * d + o * (4 * d > d + m ? 4 * d : d + m);
    if (info->is_fixed_point) per_token += 4 * d + 2 * o * d;
    return rows * tokens * per_token;
}

/* Buffers share memory where their lives do not overlap, which puts the
 * arena at the analytic minimum (fpdm_min_activation_bytes) for DiT in
 * float32. In a block:
 *   normed: LN1 output -> (qkv product) -> attention output -> (proj) ->
 *           LN2 output -> (fc1) -> fc2's output (mlp_out)
 *   work:   qkv -> (attention) -> proj's output (proj_out) ->
 *           (gated residual) -> the MLP hidden layer (wide) -> (fc2)
 * Outside blocks `work` holds the patches, the final layer's output and, in
 * the solve's set-up, the pre-projection. Two fused paths use `work` more:
 * DiT's chained blocks keep LN1's output there behind qkv, and FPDM's
 * iterations (16-bit operands) keep the state's operand copy there from a
 * block's last op to the next iteration's first product, whose [B, T, 2D]
 * output then goes to normed. */
void network_layout(const fpdm_context *ctx, const model_config *cfg, int batch, float *base,
                    network_state *st) {
    layout_sizes s = sizes_for(ctx, cfg, batch);
    size_t offset = 0;
#define CARVE(field, n) (st->field = (n) && base ? (void *)(base + offset) : NULL, offset += aligned(n))
    st->be = ctx->be;
    st->batch = batch;
    CARVE(x, s.image_in);
    CARVE(out, s.image_out);
    CARVE(hidden, s.hidden);
    CARVE(state, s.state);
    CARVE(next, s.state);
    CARVE(normed, s.normed);
    st->mlp_out = st->normed;
    CARVE(qkv, s.work);
    st->proj_out = st->qkv;
    st->wide = st->qkv;
    /* DiT chains its blocks (run_blocks_chained) where the backend fuses
     * residual_layernorm_modulate and `work` holds qkv [B, T, 3D] and a
     * [B, T, D] LayerNorm output side by side (an MLP hidden layer of 4D or
     * more): the LN1 output then sits behind qkv, away from fc2's output,
     * which the fused op reads while writing it. */
    size_t rows = (size_t)batch * cfg->num_tokens, d = (size_t)cfg->hidden_size;
    backend_dtype operand = ctx->be->operand_type;
    int chained = !cfg->fixed_point && ctx->be->residual_layernorm_modulate &&
                  backend_dtype_floats(operand, rows * 4 * d) <= s.work;
    st->ln1_out = chained && base ? (float *)st->qkv + backend_dtype_floats(operand, rows * 3 * d)
                                  : NULL;
    /* FPDM keeps its state's operand copy in `work` where the backend fuses
     * gated_residual_to_operand and operands are 16-bit, so that fc1's
     * [B, T, 2D] output fits in normed (fixed_point_iteration). */
    int state_copy = cfg->fixed_point && ctx->be->gated_residual_to_operand &&
                     operand != BACKEND_F32 &&
                     backend_dtype_floats(operand, rows * 2 * d) <= s.normed &&
                     backend_dtype_floats(operand, rows * d) <= s.work;
    st->state_operand = state_copy && base ? st->qkv : NULL;
    CARVE(injection, s.injection);
    CARVE(t_freq, s.freq);
    CARVE(t_hidden, s.operand_vec);
    CARVE(t_emb, s.vec);
    CARVE(y_emb, s.vec);
    CARVE(cond, s.vec);
    CARVE(cond_pp, s.vec);
    CARVE(silu_cond, s.operand_vec);
    CARVE(silu_cond_pp, s.operand_vec);
    CARVE(modulation, s.modulation);
    CARVE(fixed_point_modulation, s.modulation);
    CARVE(next_modulation, chained ? s.modulation : 0);
    CARVE(attn_scratch, s.scratch);
#undef CARVE
    st->floats = offset;
}

/* A float32 buffer as a product's input: itself where operands are float32,
 * else its conversion into `scratch`. */
static const void *as_operand(backend *be, const float *values, size_t n, void *scratch) {
    if (be->operand_type == BACKEND_F32) return values;
    be->to_operand(be, scratch, values, n);
    return scratch;
}

void network_embed(const fpdm_model *model, network_state *st, const float *host_timesteps,
                   const int *host_labels) {
    const model_config *cfg = &model->config;
    backend *be = st->be;
    int b = st->batch, t = cfg->num_tokens, d = cfg->hidden_size;
    be->patchify(be, st->wide, st->x, b, cfg->in_channels, cfg->input_size, cfg->patch_size);
    be->linear(be, st->hidden, BACKEND_OUT_F32, st->wide, b * t, &model->patch_embed, NULL,
               BACKEND_ACT_NONE);
    be->add(be, st->hidden, st->hidden, model->pos_embed, b, t, d, 1);

    be->timestep_frequencies(be, st->t_freq, host_timesteps, b, 256);
    be->linear(be, st->t_hidden, BACKEND_OUT_OPERAND, st->t_freq, b, &model->t_mlp0, NULL,
               BACKEND_ACT_SILU);
    be->linear(be, st->t_emb, BACKEND_OUT_F32, st->t_hidden, b, &model->t_mlp2, NULL,
               BACKEND_ACT_NONE);
    be->embedding_rows(be, st->y_emb, model->label_table, host_labels, b, d);
    be->add(be, st->cond, st->t_emb, st->y_emb, b, 1, d, 0);
    be->activation(be, st->silu_cond, st->cond, (size_t)b * d, BACKEND_ACT_SILU);
    const float *cond_pp = (!cfg->fixed_point || cfg->pre_post_timestep_conditioning) ? st->cond
                                                                                        : st->y_emb;
    be->copy(be, st->cond_pp, cond_pp, (size_t)b * d);
    be->activation(be, st->silu_cond_pp, st->cond_pp, (size_t)b * d, BACKEND_ACT_SILU);
}

/* Where a block's first LayerNorm writes, and how the block starts and ends:
 * on its own, ln1 = st->normed and nothing else. */
typedef struct block_links {
    void *ln1;                    /* the LN1 output's buffer */
    int input_normed;             /* ln1 already holds this block's LN1 output */
    const float *next_modulation; /* non-NULL: end with the next block's LN1 into ln1 (DiT's chain) */
    void *state_operand;          /* non-NULL: the output also rounded to operands here (FPDM) */
} block_links;

static void block_body(const fpdm_model *model, network_state *st, const block_weights *block,
                       float *tokens, const float *modulation, const block_links *links) {
    const model_config *cfg = &model->config;
    backend *be = st->be;
    int b = st->batch, t = cfg->num_tokens, d = cfg->hidden_size, rows = b * t;
    int stride = 6 * d;
    /* modulation chunks: shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp */
    void *ln1 = links->ln1;
    if (!links->input_normed)
        be->layernorm_modulate(be, ln1, tokens, modulation, modulation + d, stride, b, t, d);
    be->linear(be, st->qkv, BACKEND_OUT_OPERAND, ln1, rows, &block->qkv, NULL, BACKEND_ACT_NONE);
    void *attn_out = st->normed;
    be->attention(be, attn_out, st->qkv, b, t, cfg->num_heads, cfg->head_dim, st->attn_scratch);
    /* proj's and fc2's outputs are operands: in 16 bits they halve the bytes
     * of the residual passes that read them, and round where PyTorch's bf16
     * forward rounds. */
    be->linear(be, st->proj_out, BACKEND_OUT_OPERAND, attn_out, rows, &block->proj, NULL,
               BACKEND_ACT_NONE);
    if (be->residual_layernorm_modulate) {
        be->residual_layernorm_modulate(be, st->normed, tokens, st->proj_out, modulation + 2 * d,
                                        modulation + 3 * d, modulation + 4 * d, stride, b, t, d);
    } else {
        be->gated_residual(be, tokens, st->proj_out, modulation + 2 * d, stride, b, t, d);
        be->layernorm_modulate(be, st->normed, tokens, modulation + 3 * d, modulation + 4 * d,
                               stride, b, t, d);
    }
    be->linear(be, st->wide, BACKEND_OUT_OPERAND, st->normed, rows, &block->fc1, NULL,
               BACKEND_ACT_GELU_TANH);
    be->linear(be, st->mlp_out, BACKEND_OUT_OPERAND, st->wide, rows, &block->fc2, NULL,
               BACKEND_ACT_NONE);
    if (links->next_modulation) {
        const float *next = links->next_modulation;
        be->residual_layernorm_modulate(be, ln1, tokens, st->mlp_out, modulation + 5 * d, next,
                                        next + d, stride, b, t, d);
    } else if (links->state_operand) {
        be->gated_residual_to_operand(be, links->state_operand, tokens, st->mlp_out,
                                      modulation + 5 * d, stride, b, t, d);
    } else {
        be->gated_residual(be, tokens, st->mlp_out, modulation + 5 * d, stride, b, t, d);
    }
}

void network_block(const fpdm_model *model, network_state *st, const block_weights *block,
                   float *tokens, const float *modulation) {
    block_links alone = {st->normed, 0, NULL, NULL};
    block_body(model, st, block, tokens, modulation, &alone);
}

/* DiT's blocks as a chain: each block's MLP residual goes through the fused
 * residual_layernorm_modulate together with the next block's first
 * LayerNorm, one pass over the token stream a block fewer. The next block's
 * modulation is made before this block ends, into the second buffer. */
static void run_blocks_chained(const fpdm_model *model, network_state *st) {
    const model_config *cfg = &model->config;
    backend *be = st->be;
    float *modulation = st->modulation, *next_modulation = st->next_modulation;
    be->linear(be, modulation, BACKEND_OUT_F32, st->silu_cond, st->batch,
               &model->blocks[0].modulation, NULL, BACKEND_ACT_NONE);
    for (int i = 0; i < cfg->depth; i++) {
        block_links links = {st->ln1_out, i > 0, NULL, NULL};
        if (i + 1 < cfg->depth) {
            be->linear(be, next_modulation, BACKEND_OUT_F32, st->silu_cond, st->batch,
                       &model->blocks[i + 1].modulation, NULL, BACKEND_ACT_NONE);
            links.next_modulation = next_modulation;
        }
        block_body(model, st, &model->blocks[i], st->hidden, modulation, &links);
        float *done = modulation;
        modulation = next_modulation;
        next_modulation = done;
    }
}

static void run_block(const fpdm_model *model, network_state *st, const block_weights *block,
                      float *tokens, const void *silu_cond) {
    st->be->linear(st->be, st->modulation, BACKEND_OUT_F32, silu_cond, st->batch,
                      &block->modulation, NULL, BACKEND_ACT_NONE);
    network_block(model, st, block, tokens, st->modulation);
}

static void final_layer(const fpdm_model *model, network_state *st, const float *tokens,
                        const void *silu_cond) {
    const model_config *cfg = &model->config;
    backend *be = st->be;
    int b = st->batch, t = cfg->num_tokens, d = cfg->hidden_size;
    be->linear(be, st->modulation, BACKEND_OUT_F32, silu_cond, b, &model->final_modulation, NULL,
               BACKEND_ACT_NONE);
    be->layernorm_modulate(be, st->normed, tokens, st->modulation, st->modulation + d, 2 * d, b, t, d);
    be->linear(be, st->wide, BACKEND_OUT_F32, st->normed, b * t, &model->final_linear, NULL,
               BACKEND_ACT_NONE);
    be->unpatchify(be, st->out, st->wide, b, cfg->out_channels, cfg->input_size, cfg->patch_size);
}

/* A solve's per-row bookkeeping, carved from the context's row scratch. */
typedef struct row_book {
    double *diff_sq, *norm_sq;      /* row_norms' outputs */
    float *residual, *last_residual;
    int *limit, *used;
    unsigned char *stopped;
} row_book;

size_t network_row_scratch_bytes(int rows) {
    size_t n = rows > 0 ? (size_t)rows : 1;
    return n * (2 * sizeof(double) + 2 * sizeof(float) + 2 * sizeof(int) + 1);
}

static row_book carve_row_book(void *scratch, int rows) {
    row_book book;
    book.diff_sq = scratch;
    book.norm_sq = book.diff_sq + rows;
    book.residual = (float *)(book.norm_sq + rows);
    book.last_residual = book.residual + rows;
    book.limit = (int *)(book.last_residual + rows);
    book.used = book.limit + rows;
    book.stopped = (unsigned char *)(book.used + rows);
    return book;
}

/* Each row's relative residual ||a - b|| / ||b|| (||a - b|| where b is 0). */
static int row_residuals(backend *be, const float *a, const float *b, int rows, size_t cols,
                         const row_book *book, float *residual) {
    double *diff_sq = book->diff_sq, *norm_sq = book->norm_sq;
    if (be->row_norms(be, a, b, rows, cols, diff_sq, norm_sq) != 0) return -1;
    for (int i = 0; i < rows; i++)
        residual[i] = (float)(norm_sq[i] > 0 ? sqrt(diff_sq[i] / norm_sq[i]) : sqrt(diff_sq[i]));
    return 0;
}

/* dst = src on the rows marked stopped, one copy per run of adjacent rows. */
static void copy_stopped_rows(backend *be, float *dst, const float *src, const unsigned char *stopped,
                              int rows, size_t per_row) {
    for (int first = 0; first < rows;) {
        if (!stopped[first]) {
            first++;
            continue;
        }
        int end = first;
        while (end < rows && stopped[end]) end++;
        be->copy(be, dst + first * per_row, src + first * per_row, (size_t)(end - first) * per_row);
        first = end;
    }
}

/* One fixed-point iteration: st->next = block(fc2(gelu(W_z st->state + injection))).
 * With st->state_operand, the state arrives already rounded to operands
 * there (the last iteration's final op wrote it, or the solve before its
 * first), fc1's output goes to normed and the block's final op writes the
 * new state's operand copy: no separate pass to round the state. */
static void fixed_point_iteration(const fpdm_model *model, network_state *st) {
    backend *be = st->be;
    int rows = st->batch * model->config.num_tokens;
    const block_weights *block = &model->fixed_point_block;
    if (st->state_operand) {
        be->linear(be, st->normed, BACKEND_OUT_OPERAND, st->state_operand, rows, &model->fc1_state,
                   st->injection, BACKEND_ACT_GELU_TANH);
        be->linear(be, st->next, BACKEND_OUT_F32, st->normed, rows, &model->fc2, NULL,
                   BACKEND_ACT_NONE);
        block_links links = {st->normed, 0, NULL, st->state_operand};
        block_body(model, st, block, st->next, st->fixed_point_modulation, &links);
        return;
    }
    const void *state = as_operand(be, st->state, (size_t)rows * model->config.hidden_size,
                                   st->normed);
    be->linear(be, st->wide, BACKEND_OUT_OPERAND, state, rows, &model->fc1_state, st->injection,
               BACKEND_ACT_GELU_TANH);
    be->linear(be, st->next, BACKEND_OUT_F32, st->wide, rows, &model->fc2, NULL, BACKEND_ACT_NONE);
    network_block(model, st, block, st->next, st->fixed_point_modulation);
}

/* The words a recorded iteration is stored under: every buffer it reads or
 * writes (this iteration's state and next included), every weight and every
 * size, so a recording is only replayed where it computes the same thing. */
enum {
    ITERATION_SHAPE_AND_BUFFER_WORDS = 15,
    ITERATION_LINEARS = 6,
    LINEAR_KEY_WORDS = 6,
    ITERATION_KEY_WORDS = ITERATION_SHAPE_AND_BUFFER_WORDS + ITERATION_LINEARS * LINEAR_KEY_WORDS
};

static uintptr_t *put_linear(uintptr_t *key, const backend_linear *w) {
    *key++ = (uintptr_t)w->weight;
    *key++ = (uintptr_t)w->bias;
    *key++ = (uintptr_t)w->bias_operand;
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
        (uintptr_t)st->normed, (uintptr_t)st->qkv, (uintptr_t)st->proj_out,
        (uintptr_t)st->attn_scratch,
        (uintptr_t)st->fixed_point_modulation, (uintptr_t)st->state_operand};
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
    backend *be = st->be;
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
    backend *be = st->be;
    int b = st->batch, rows = b * cfg->num_tokens;
    size_t per_image = (size_t)cfg->num_tokens * cfg->hidden_size;

    /* st->hidden holds the condition (pre blocks' output); the projection of
     * it is an operand parked in `work`, free until the first block. */
    const void *condition = as_operand(be, st->hidden, (size_t)b * per_image, st->normed);
    be->linear(be, st->qkv, BACKEND_OUT_OPERAND, condition, rows, &model->pre_projection, NULL,
               BACKEND_ACT_NONE);
    be->linear(be, st->injection, BACKEND_OUT_OPERAND, st->qkv, rows, &model->fc1_injection, NULL,
               BACKEND_ACT_NONE);
    be->linear(be, st->fixed_point_modulation, BACKEND_OUT_F32, st->silu_cond, b,
               &model->fixed_point_block.modulation, NULL, BACKEND_ACT_NONE);
    be->copy(be, st->state, solve->init_solution ? solve->init_solution : st->hidden,
             (size_t)b * per_image);
    if (st->state_operand) be->to_operand(be, st->state_operand, st->state, (size_t)b * per_image);

    /* Rows that have stopped keep their state: after each iteration their
     * new values are overwritten with the old before the swap. */
    void *scratch = context_row_scratch(ctx, network_row_scratch_bytes(b));
    if (!scratch) return FPDM_ERR_OUT_OF_MEMORY;
    row_book book = carve_row_book(scratch, b);
    int *limit = book.limit, *used = book.used;
    unsigned char *stopped = book.stopped;
    float *residual = book.residual, *last_residual = book.last_residual;
    int most_iters = 0, running = 0;
    for (int r = 0; r < b; r++) {
        limit[r] = solve->row_iters ? solve->row_iters[r] : solve->iters;
        most_iters = limit[r] > most_iters ? limit[r] : most_iters;
        used[r] = 0;
        stopped[r] = limit[r] <= 0;
        running += !stopped[r];
        last_residual[r] = -1.0f;
    }
    solve->iters_used = 0;
    for (int k = 0; k < most_iters && running > 0; k++) {
        run_iteration(model, st);
        if (running < b) {
            copy_stopped_rows(be, st->next, st->state, stopped, b, per_image);
            /* The iteration wrote the stopped rows' discarded values into the
             * operand copy: rounding the kept state again keeps the copy the
             * state's exact mirror, so a stopped image's (discarded) work goes
             * on from its kept state and cannot wander off. */
            if (st->state_operand)
                be->to_operand(be, st->state_operand, st->next, (size_t)b * per_image);
        }
        int ends_a_row = 0;
        for (int r = 0; r < b; r++) ends_a_row |= !stopped[r] && limit[r] == k + 1;
        int measure = solve->tol > 0 || (solve->measure_final && ends_a_row);
        if (measure && row_residuals(be, st->next, st->state, b, per_image, &book, residual) != 0)
            return context_device_fail(ctx, "%s: computing the residual", ctx->device_name);
        float *done = st->next;
        st->next = st->state;
        st->state = done;
        solve->iters_used = k + 1;
        for (int r = 0; r < b; r++) {
            if (stopped[r]) continue;
            used[r] = k + 1;
            if (measure) last_residual[r] = residual[r];
            if (used[r] >= limit[r] || (solve->tol > 0 && residual[r] < solve->tol)) {
                stopped[r] = 1;
                running--;
            }
        }
    }
    solve->residual = -1.0f;
    for (int r = 0; r < b; r++) {
        if (last_residual[r] > solve->residual) solve->residual = last_residual[r];
        if (solve->row_iters_used) solve->row_iters_used[r] = used[r];
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
        if (st->ln1_out)
            run_blocks_chained(model, st);
        else
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
