/* network.h - the DiT / FPDM denoising network, written once over the backend
 * interface. All buffers live in the context's arena; network_prepare lays
 * them out for a batch size, and nothing is allocated after that. */
#ifndef FPDM_NETWORK_H
#define FPDM_NETWORK_H

#include "context.h"
#include "model.h"

typedef struct network_state {
    /* The calling context's backend: every op runs on its stream, handles and
     * graphs. Not the model's (model->be, the loading context's, which only
     * owns the weights' memory): contexts on several threads share a model. */
    backend *be;
    int batch;
    /* Activations (backend memory, inside the arena). Buffers typed void *
     * hold the backend's operand type (backend.h); the rest float32. Buffers
     * whose lives do not overlap share memory (see network_layout). */
    float *x;             /* [B, C, H, W] network input */
    float *out;           /* [B, out_C, H, W] network output */
    float *hidden;        /* [B, T, D] the token stream (DiT, pre and post blocks) */
    float *state, *next;  /* [B, T, D] FPDM: fixed-point iterate and the one being computed */
    void *injection;      /* [B, T, 2D] FPDM: fc1's injection half plus its bias, once per solve */
    void *normed;         /* [B, T, D] LayerNorm outputs, the attention output, the state as operand */
    void *mlp_out;        /* [B, T, D] fc2's output, an operand (in normed's memory) */
    void *qkv;            /* [B, T, 3D] */
    void *proj_out;       /* [B, T, D] proj's output, an operand (in qkv's memory) */
    void *wide;           /* [B, T, max(M, 2D, C p p)] MLP hidden, fc1 output, patches;
                           * float32 [B, T, p p out_C] from the final layer (in qkv's memory) */
    void *t_freq;         /* [B, 256] */
    void *t_hidden;       /* [B, D] */
    float *t_emb, *y_emb, *cond, *cond_pp;  /* [B, D] */
    void *silu_cond, *silu_cond_pp;         /* [B, D] */
    float *modulation;    /* [B, 6D] for the block being run */
    float *fixed_point_modulation;  /* [B, 6D] the implicit block's, once per solve */
    /* DiT with a backend that fuses residual_layernorm_modulate (else NULL):
     * blocks run as a chain (network.c's run_blocks_chained), the LN1 output
     * [B, T, D] (operand) in qkv's memory behind qkv, and the next block's
     * modulation [B, 6D] made while this one runs. */
    void *ln1_out;
    float *next_modulation;
    /* FPDM with 16-bit operands and a backend that fuses
     * gated_residual_to_operand (else NULL): the state rounded to operands
     * [B, T, D], kept by the iterations themselves (in qkv's memory). */
    void *state_operand;
    float *attn_scratch;
    size_t floats;        /* arena floats used */
} network_state;

/* How the fixed-point solve of one forward runs and what it did. Each row
 * (image) is its own solve: it stops at its own iteration limit or when its
 * own relative residual falls under tol, and from then on the iterations
 * the rest of the batch still runs leave it as it was, so a row's result
 * does not depend on the other rows in the batch. */
typedef struct network_solve {
    int iters;                   /* maximum iterations of every row (without row_iters) */
    float tol;                   /* a row stops when its relative residual < tol; 0: never */
    int measure_final;           /* without tol, still measure the last iteration's residual
                                  * (the host then waits for the device once per solve) */
    const float *init_solution;  /* [B, T, D] backend memory, or NULL: start from the pre blocks */
    float *solution_out;         /* [B, T, D] backend memory, or NULL */
    int iters_used;              /* out: iterations the batch ran (its longest row's) */
    float residual;              /* out: the largest over rows of each row's last relative
                                  * residual, -1 if none was measured */
    const int *row_iters;        /* optional [B]: each row's own maximum, instead of iters */
    int *row_iters_used;         /* optional [B], out: each row's iterations */
} network_solve;

/* Bytes of the context's row scratch a solve of `rows` rows uses (reserve
 * them with context_row_scratch before a run, so the solve allocates
 * nothing). */
size_t network_row_scratch_bytes(int rows);

/* Arena floats a batch needs: st->floats of network_layout. */
size_t network_arena_floats(const fpdm_context *ctx, const model_config *cfg, int batch);

/* Lays the state out from base and sets st->floats to the floats it takes
 * (base NULL: only counts, every pointer NULL). */
void network_layout(const fpdm_context *ctx, const model_config *cfg, int batch, float *base,
                    network_state *st);

/* Patch + position embedding into st->hidden; timestep and label embeddings,
 * their sums and SiLUs. Reads st->x. */
void network_embed(const fpdm_model *model, network_state *st, const float *host_timesteps,
                   const int *host_labels);

/* One adaLN-Zero block on tokens [B, T, D] in place; `modulation` [B, 6D]. */
void network_block(const fpdm_model *model, network_state *st, const block_weights *block,
                   float *tokens, const float *modulation);

/* The whole network: st->x -> st->out. solve is used (and filled) for FPDM. */
fpdm_status network_forward(fpdm_context *ctx, const fpdm_model *model, network_state *st,
                            const float *host_timesteps, const int *host_labels,
                            network_solve *solve);

#endif
