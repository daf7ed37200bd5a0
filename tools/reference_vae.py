"""reference_vae.py - the decoder of diffusers' AutoencoderKL (Stable
Diffusion's VAE) in plain PyTorch, written from diffusers' semantics: the
PyTorch side of the VAE comparisons, for machines without diffusers (the GPU
machines have torch and no network).

    /usr/bin/python3 tools/reference_vae.py VAE.safetensors LATENTS.npy IMAGES.npy

decodes sampled latents [N, 4, h, w] as the official samplers do
(decode(latents / scaling_factor)). tests/test_reference_vae.py checks it
against diffusers' own output (tests/golden/vae-small*); tests/gpu/
torch_vae_bench.py times it beside fpdm-bench --mode vae.

The network (host/vae.c describes the same one): post_quant_conv 1x1,
conv_in 3x3, mid block (resnet, single-head attention over the pixels,
resnet), up blocks over reversed(block_out_channels) of layers_per_block + 1
resnets and (all but the last) nearest 2x + conv 3x3, then GroupNorm, SiLU,
conv_out 3x3. Every GroupNorm has norm_num_groups groups and eps 1e-6; the
module names are diffusers', so a diffusers state dict loads as it is. The
configuration comes from the file's metadata where present (vae.* keys),
else from the tensor shapes, as host/vae.c reads it.
"""
import argparse
import re
import sys

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import safetensors_io

NORM_EPS = 1e-6
DEFAULT_GROUPS = 32
DEFAULT_SCALING_FACTOR = 0.18215
# The Stable Diffusion VAE's decoder (sd-vae-ft-mse / -ema).
SD_CONFIG = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                 latent_channels=4, image_channels=3, norm_num_groups=32,
                 scaling_factor=DEFAULT_SCALING_FACTOR)
# Older diffusers files name the attention's linears differently.
OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def group_norm(channels, groups):
    return nn.GroupNorm(groups, channels, eps=NORM_EPS, affine=True)


class ResnetBlock(nn.Module):
    """x + conv2(SiLU(GN(conv1(SiLU(GN(x)))))), x through a 1x1 conv when
    the channel count changes."""

    def __init__(self, in_channels, out_channels, groups):
        super().__init__()
        self.norm1 = group_norm(in_channels, groups)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.norm2 = group_norm(out_channels, groups)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.conv_shortcut = (nn.Conv2d(in_channels, out_channels, 1)
                              if in_channels != out_channels else None)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        shortcut = self.conv_shortcut(x) if self.conv_shortcut is not None else x
        return shortcut + h


class Attention(nn.Module):
    """One head over every pixel, with GroupNorm in front and the input added back."""

    def __init__(self, channels, groups):
        super().__init__()
        self.group_norm = group_norm(channels, groups)
        self.to_q = nn.Linear(channels, channels)
        self.to_k = nn.Linear(channels, channels)
        self.to_v = nn.Linear(channels, channels)
        self.to_out = nn.ModuleList([nn.Linear(channels, channels)])

    def forward(self, x):
        batch, channels, height, width = x.shape
        tokens = self.group_norm(x).reshape(batch, channels, height * width).transpose(1, 2)
        q, k, v = (layer(tokens).unsqueeze(1) for layer in (self.to_q, self.to_k, self.to_v))
        # The fused kernel where PyTorch has one; the scale is 1/sqrt(channels) either way.
        if hasattr(F, "scaled_dot_product_attention"):
            attended = F.scaled_dot_product_attention(q, k, v)
        else:
            scores = q @ k.transpose(-1, -2) / channels ** 0.5
            attended = scores.softmax(dim=-1) @ v
        out = self.to_out[0](attended.squeeze(1))
        return x + out.transpose(1, 2).reshape(batch, channels, height, width)


class MidBlock(nn.Module):
    def __init__(self, channels, groups):
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels, groups),
                                      ResnetBlock(channels, channels, groups)])
        self.attentions = nn.ModuleList([Attention(channels, groups)])

    def forward(self, x):
        x = self.resnets[0](x)
        x = self.attentions[0](x)
        return self.resnets[1](x)


class Upsample(nn.Module):
    def __init__(self, channels):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UpBlock(nn.Module):
    def __init__(self, in_channels, out_channels, num_resnets, groups, upsample):
        super().__init__()
        self.resnets = nn.ModuleList(
            [ResnetBlock(in_channels if i == 0 else out_channels, out_channels, groups)
             for i in range(num_resnets)])
        self.upsamplers = nn.ModuleList([Upsample(out_channels)]) if upsample else None

    def forward(self, x):
        for resnet in self.resnets:
            x = resnet(x)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x)
        return x


class Decoder(nn.Module):
    def __init__(self, block_out_channels, layers_per_block, latent_channels, image_channels,
                 groups):
        super().__init__()
        channels = list(reversed(block_out_channels))
        self.conv_in = nn.Conv2d(latent_channels, channels[0], 3, padding=1)
        self.mid_block = MidBlock(channels[0], groups)
        self.up_blocks = nn.ModuleList(
            [UpBlock(channels[max(i - 1, 0)], channels[i], layers_per_block + 1, groups,
                     upsample=i < len(channels) - 1)
             for i in range(len(channels))])
        self.conv_norm_out = group_norm(channels[-1], groups)
        self.conv_out = nn.Conv2d(channels[-1], image_channels, 3, padding=1)

    def forward(self, z):
        x = self.mid_block(self.conv_in(z))
        for block in self.up_blocks:
            x = block(x)
        return self.conv_out(F.silu(self.conv_norm_out(x)))


class VAEDecoder(nn.Module):
    """post_quant_conv then the decoder; decode() takes sampled latents."""

    def __init__(self, block_out_channels, layers_per_block, latent_channels=4, image_channels=3,
                 norm_num_groups=DEFAULT_GROUPS, scaling_factor=DEFAULT_SCALING_FACTOR):
        super().__init__()
        self.scaling_factor = scaling_factor
        self.upscale = 2 ** (len(block_out_channels) - 1)
        self.post_quant_conv = nn.Conv2d(latent_channels, latent_channels, 1)
        self.decoder = Decoder(block_out_channels, layers_per_block, latent_channels,
                               image_channels, norm_num_groups)

    def forward(self, z):
        return self.decoder(self.post_quant_conv(z))

    def decode(self, latents):
        return self(latents / self.scaling_factor)


def config_from(tensors, metadata):
    """The decoder's configuration: metadata where given, else the shapes."""
    if "vae.block_out_channels" in metadata:
        block_out_channels = tuple(int(c) for c in re.findall(r"\d+", metadata["vae.block_out_channels"]))
    else:
        up = []
        while f"decoder.up_blocks.{len(up)}.resnets.0.conv1.weight" in tensors:
            up.append(tensors[f"decoder.up_blocks.{len(up)}.resnets.0.conv1.weight"].shape[0])
        if not up:
            raise ValueError("tensor decoder.up_blocks.0.resnets.0.conv1.weight is missing "
                             "(not the decoder of a diffusers AutoencoderKL)")
        block_out_channels = tuple(reversed(up))
    resnets = 0
    while f"decoder.up_blocks.0.resnets.{resnets}.conv1.weight" in tensors:
        resnets += 1
    layers_per_block = int(metadata.get("vae.layers_per_block", max(resnets - 1, 0)))
    if "post_quant_conv.weight" in tensors:
        latent_guess = tensors["post_quant_conv.weight"].shape[0]
    else:
        latent_guess = tensors["decoder.conv_in.weight"].shape[1]
    return dict(block_out_channels=block_out_channels, layers_per_block=layers_per_block,
                latent_channels=int(metadata.get("vae.latent_channels", latent_guess)),
                image_channels=tensors["decoder.conv_out.weight"].shape[0],
                norm_num_groups=int(metadata.get("vae.norm_num_groups", DEFAULT_GROUPS)),
                scaling_factor=float(metadata.get("vae.scaling_factor", DEFAULT_SCALING_FACTOR)))


def decoder_state(tensors):
    """The decoder's tensors under the current names: the encoder's dropped,
    the older attention names renamed and their [C, C, 1, 1] weights made [C, C]."""
    state = {}
    for name, array in tensors.items():
        if not name.startswith(("decoder.", "post_quant_conv.")):
            continue
        parts = name.split(".")
        if "attentions" in parts and parts[-2] in OLD_ATTENTION_NAMES:
            name = ".".join(parts[:-2] + [OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
        if "attentions" in parts and array.ndim == 4:
            array = array.reshape(array.shape[0], array.shape[1])
        state[name] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    return state


def from_tensors(tensors, metadata):
    """A VAEDecoder (float32, eval mode) holding these weights; raises
    ValueError naming what is missing, left over or misshapen."""
    vae = VAEDecoder(**config_from(tensors, metadata)).eval()
    state = decoder_state(tensors)
    expected = vae.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    misshapen = sorted(name for name in set(expected) & set(state)
                       if tuple(expected[name].shape) != tuple(state[name].shape))
    if missing or unexpected or misshapen:
        raise ValueError(f"not this decoder's weights: missing {missing[:3]}, unexpected "
                         f"{unexpected[:3]}, misshapen {misshapen[:3]}")
    vae.load_state_dict(state)
    return vae


def load(path):
    tensors, metadata = safetensors_io.read(path)
    return from_tensors(tensors, metadata)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("vae", help="diffusers AutoencoderKL safetensors")
    parser.add_argument("latents", help=".npy [N, C, h, w] float32, as sampled")
    parser.add_argument("images", help=".npy [N, 3, 8h, 8w] float32 output")
    args = parser.parse_args()
    vae = load(args.vae)
    latents = torch.from_numpy(np.load(args.latents).astype(np.float32))
    with torch.no_grad():
        images = vae.decode(latents)
    np.save(args.images, images.numpy())
    return 0


if __name__ == "__main__":
    sys.exit(main())
