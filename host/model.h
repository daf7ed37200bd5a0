/* model.h - the inside of an fpdm_model: its configuration and its weights in
 * the backend's memory, arranged as the linear layers the network applies. */
#ifndef FPDM_MODEL_H
#define FPDM_MODEL_H

#include "backend.h"
#include "fpdm.h"
#include "model_config.h"

/* One DiT block (adaLN-Zero). */
typedef struct block_weights {
    backend_linear qkv, proj, fc1, fc2;
    backend_linear modulation; /* adaLN_modulation.1: [6D, D] */
} block_weights;

struct fpdm_model {
    model_config config;
    fpdm_model_info info;
    backend *be;              /* the backend the weights live on */
    int device_index;         /* -1: CPU */
    float *weights;           /* backend allocation: the float32 tensors */
    float *operand_weights;   /* backend allocation: 16-bit linear weights, or NULL */
    size_t weight_floats, operand_floats; /* the two allocations' sizes */
    size_t num_parameters;    /* elements of every tensor in the file */

    backend_linear patch_embed;   /* x_embedder.proj viewed as [D, C * p * p] */
    const float *pos_embed;       /* [T, D] */
    backend_linear t_mlp0, t_mlp2;
    const float *label_table;     /* [classes + 1, D] */
    backend_linear final_modulation, final_linear;

    block_weights *blocks;        /* DiT: depth blocks */
    block_weights *pre_blocks, *post_blocks, fixed_point_block; /* FPDM */
    backend_linear pre_projection;
    /* block_fixed_point_projection_fc1 acts on concat(z, injection): its weight
     * [2D, 2D] is split by columns into the half that sees z and the half that
     * sees the injection (which carries the bias), see network.c. */
    backend_linear fc1_state, fc1_injection, fc2;
};

#endif
