/* vae.h - the library-internal side of the VAE decoder (vae.c); the public
 * side is fpdm_vae_* in fpdm.h. */
#ifndef FPDM_VAE_H
#define FPDM_VAE_H

#include <stddef.h>

#include "fpdm.h"

/* fpdm_vae_decode, with the images decoded together bounded by chunk_bytes
 * of activations (at least one image at a time) instead of the device's
 * default (0): tests use it to walk the chunking. */
fpdm_status vae_decode_in_chunks(fpdm_context *ctx, const fpdm_vae *vae, int batch,
                                 int latent_size, const float *latents, float *images,
                                 size_t chunk_bytes);

#endif
