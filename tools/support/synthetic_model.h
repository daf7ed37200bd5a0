/* synthetic_model.h - model files with random weights for named
 * architectures (DiT-XL/2, DiT-B/2, DiT-S/2, FPDM-XL/2 and tiny test models),
 * so benchmarks and tests can run without downloading checkpoints.
 *
 * The file is a .safetensors with the official tensor names and shapes
 * (lukemelas/fixed-point-diffusion-models models.py) and the fpdm.* metadata
 * keys documented in host/model_config.h. Weights are deterministic in the
 * seed; their values mean nothing, only their shapes and cost do. */
#ifndef FPDM_SYNTHETIC_MODEL_H
#define FPDM_SYNTHETIC_MODEL_H

#include <stddef.h>
#include <stdint.h>

typedef struct synthetic_config {
    char name[32];
    int fixed_point;          /* 1: FPDM, 0: DiT */
    int hidden_size;
    int num_heads;
    int depth;                /* DiT blocks (DiT only) */
    int pre_depth, post_depth;/* FPDM only */
    int equivalent_depth;     /* FPDM only: the DiT depth it replaces */
    int patch_size;
    int input_size;
    int in_channels;
    int num_classes;
    int latent_space;
    int learn_sigma;
} synthetic_config;

/* Names accepted by synthetic_config_lookup, separated by ", ". */
const char *synthetic_config_names(void);

/* Fills config for a named architecture. image_size (256 or 512) sets the
 * latent input size (image_size / 8) of the latent-space configurations; the
 * tiny pixel-space ones are always 8x8. 0, or -1 with a message. */
int synthetic_config_lookup(const char *name, int image_size, synthetic_config *config,
                            char *err, size_t err_size);

/* Parameter count of the file synthetic_model_write would write. */
size_t synthetic_model_num_parameters(const synthetic_config *config);

/* Writes the model file (float32; bfloat16 above 100M parameters, to keep
 * multi-GB files in /tmp half as large). 0, or -1 with a message. */
int synthetic_model_write(const synthetic_config *config, const char *path, uint64_t seed,
                          char *err, size_t err_size);

#endif
