/* synthetic_vae.h - VAE decoder files with random weights, so the decoder can
 * be timed without downloading Stable Diffusion's VAE.
 *
 * The file is a .safetensors with the tensor names and shapes of a diffusers
 * AutoencoderKL's decoder (post_quant_conv.*, decoder.*; no encoder), the
 * layout host/vae.c loads, with or without the metadata key
 * vae.norm_num_groups (the one setting the shapes cannot tell), in float32,
 * bfloat16 or float16. Weights are deterministic in the seed;
 * their values mean nothing, only their shapes and cost do. */
#ifndef FPDM_SYNTHETIC_VAE_H
#define FPDM_SYNTHETIC_VAE_H

#include <stddef.h>
#include <stdint.h>

#include "synthetic_tensors.h"

#define SYNTHETIC_VAE_MAX_BLOCKS 8

typedef struct synthetic_vae_config {
    char name[32];
    int num_blocks;
    int block_out_channels[SYNTHETIC_VAE_MAX_BLOCKS];
    int layers_per_block;
    int latent_channels;
    int image_channels;
    int norm_num_groups;
} synthetic_vae_config;

/* Names accepted by synthetic_vae_config_lookup, separated by ", ":
 * "sd" (Stable Diffusion's decoder: 128, 256, 512, 512 channels, 2 layers per
 * block, 4 latent channels, 32 groups) and "tiny" (32, 32 channels, 1 layer,
 * 8 groups), for tests. */
const char *synthetic_vae_config_names(void);

/* 0, or -1 with a message naming the allowed names. */
int synthetic_vae_config_lookup(const char *name, synthetic_vae_config *config, char *err,
                                size_t err_size);

/* How the file is written: its weights' storage, and whether its metadata
 * names the group count (without it, as in diffusers' own files, the loader
 * infers the configuration from the shapes and takes 32 groups). */
typedef struct synthetic_vae_format {
    synthetic_storage storage;
    int with_metadata;
} synthetic_vae_format;

/* Writes the decoder file. 0, or -1 with a message. */
int synthetic_vae_write(const synthetic_vae_config *config, synthetic_vae_format format,
                        const char *path, uint64_t seed, char *err, size_t err_size);

#endif
