"""make_vae_golden.py - golden data for the VAE decoder (tests/test_vae.c),
computed by diffusers' own AutoencoderKL.

Regenerate (from the repository root; needs a venv that sees Debian's torch):
    /usr/bin/python3 -m venv --system-site-packages /tmp/vae-venv
    /tmp/vae-venv/bin/pip install diffusers==0.21.4 huggingface_hub==0.17.3
    /tmp/vae-venv/bin/python tests/golden/make_vae_golden.py

Writes
  tests/golden/vae-small.safetensors     the weights, diffusers' names (to_q...),
      decoder.* and post_quant_conv.* plus a few encoder.* / quant_conv.*
      tensors the loader must ignore (the whole encoder would make the file too
      big). Metadata carries only what the shapes cannot tell: the norm groups
      and the scaling factor. The channels and layers are left to inference.
  tests/golden/vae-small.io.safetensors  "latents" [2,4,8,8] as a sampler would
      produce them and "images" [2,3,32,32] = decode(latents / scaling_factor),
      computed in float64 and stored as float32.

The configuration is a small copy of Stable Diffusion's: three up blocks (so
two upsamplers and both a channel change with a 1x1 shortcut and blocks
without one), layers_per_block 1, 4 groups of 2 and 4 channels.
"""
import os
import sys

import numpy as np
import torch
from diffusers import AutoencoderKL

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "tools"))
import safetensors_io  # noqa: E402

BLOCK_OUT_CHANNELS = (8, 16, 16)
LAYERS_PER_BLOCK = 1
NORM_NUM_GROUPS = 4
LATENT_CHANNELS = 4
# Not the SD value, so a loader that ignores the metadata fails the test.
SCALING_FACTOR = 0.5
BATCH = 2
LATENT_SIZE = 8
KEPT_ENCODER_TENSORS = ("encoder.conv_in.weight", "encoder.conv_in.bias",
                        "encoder.conv_out.weight", "encoder.conv_out.bias",
                        "quant_conv.weight", "quant_conv.bias")


def main():
    out_dir = os.path.dirname(os.path.abspath(__file__))
    torch.manual_seed(20240607)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * len(BLOCK_OUT_CHANNELS),
        up_block_types=("UpDecoderBlock2D",) * len(BLOCK_OUT_CHANNELS),
        block_out_channels=BLOCK_OUT_CHANNELS, layers_per_block=LAYERS_PER_BLOCK,
        latent_channels=LATENT_CHANNELS, norm_num_groups=NORM_NUM_GROUPS,
        sample_size=LATENT_SIZE * 2 ** (len(BLOCK_OUT_CHANNELS) - 1),
        scaling_factor=SCALING_FACTOR).eval()

    # Default initialisation leaves GroupNorm at (1, 0) and some biases tiny;
    # randomise them so a dropped or misplaced term changes the output.
    with torch.no_grad():
        for name, param in vae.named_parameters():
            if name.endswith(".bias"):
                param.copy_(0.2 * torch.randn_like(param))
            elif "norm" in name and name.endswith(".weight"):
                param.copy_(1.0 + 0.3 * torch.randn_like(param))

    state = {name: t.detach().to(torch.float32).numpy().copy()
             for name, t in vae.state_dict().items()
             if name.startswith(("decoder.", "post_quant_conv.")) or name in KEPT_ENCODER_TENSORS}
    safetensors_io.write(os.path.join(out_dir, "vae-small.safetensors"), state, {
        "vae.norm_num_groups": str(NORM_NUM_GROUPS),
        "vae.scaling_factor": repr(SCALING_FACTOR),
    })

    latents = torch.randn(BATCH, LATENT_CHANNELS, LATENT_SIZE, LATENT_SIZE, dtype=torch.float32)
    with torch.no_grad():
        images = vae.double().decode(latents.double() / SCALING_FACTOR).sample
    safetensors_io.write(os.path.join(out_dir, "vae-small.io.safetensors"), {
        "latents": latents.numpy(),
        "images": images.to(torch.float32).numpy(),
    }, {"batch": str(BATCH), "latent_size": str(LATENT_SIZE)})
    print("images", tuple(images.shape), "std", float(images.std()))


if __name__ == "__main__":
    main()
