"""test_reference_vae.py - tools/reference_vae.py, the plain-PyTorch VAE
decoder, against diffusers' own output (tests/golden/vae-small*, made by
tests/golden/make_vae_golden.py), with the older attention names, and
refusing weights that do not fit.

    /usr/bin/python3 tests/test_reference_vae.py BUILD_DIR      (run from the repository root)

Exits 77 (skipped) without torch/numpy; prints "N passed, M failed".
"""
import sys

from harness import run_tests, test  # skips without numpy/torch; tools/ on the path

import numpy as np  # noqa: E402
import torch  # noqa: E402

import reference_vae  # noqa: E402
import safetensors_io  # noqa: E402

GOLDEN_WEIGHTS = "tests/golden/vae-small.safetensors"
GOLDEN_IO = "tests/golden/vae-small.io.safetensors"


def relative_l2(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def golden_decode(tensors, metadata):
    """Decodes the golden latents in float64 with these weights; (ours, diffusers')."""
    io, _ = safetensors_io.read(GOLDEN_IO)
    vae = reference_vae.from_tensors(tensors, metadata).double()
    with torch.no_grad():
        images = vae.decode(torch.from_numpy(io["latents"]).double()).numpy()
    return images, io["images"]


@test
def matches_diffusers():
    tensors, metadata = safetensors_io.read(GOLDEN_WEIGHTS)
    ours, expected = golden_decode(tensors, metadata)
    assert ours.shape == expected.shape, (ours.shape, expected.shape)
    # The golden is diffusers in float64, stored as float32.
    error = relative_l2(ours, expected)
    assert error < 1e-6, error


@test
def reads_the_configuration():
    tensors, metadata = safetensors_io.read(GOLDEN_WEIGHTS)
    config = reference_vae.config_from(tensors, metadata)
    assert config["block_out_channels"] == (8, 16, 16), config
    assert config["layers_per_block"] == 1 and config["norm_num_groups"] == 4, config
    assert config["scaling_factor"] == 0.5 and config["latent_channels"] == 4, config
    # Without metadata: the SD defaults where the shapes cannot tell.
    config = reference_vae.config_from(tensors, {})
    assert config["norm_num_groups"] == 32 and config["scaling_factor"] == 0.18215, config


@test
def older_attention_names_decode_alike():
    tensors, metadata = safetensors_io.read(GOLDEN_WEIGHTS)
    old = {}
    for name, array in tensors.items():
        for new_name, old_name in (("to_q", "query"), ("to_k", "key"), ("to_v", "value"),
                                   ("to_out.0", "proj_attn")):
            marker = f".attentions.0.{new_name}."
            if marker in name:
                name = name.replace(marker, f".attentions.0.{old_name}.")
                if array.ndim == 2:
                    array = array.reshape(array.shape + (1, 1))
        old[name] = array
    assert "decoder.mid_block.attentions.0.proj_attn.weight" in old
    ours, expected = golden_decode(old, metadata)
    assert relative_l2(ours, expected) < 1e-6


@test
def every_term_matters():
    # A changed bias anywhere moves the output: the golden check above is not
    # blind to any tensor (checked on a few spread through the network).
    tensors, metadata = safetensors_io.read(GOLDEN_WEIGHTS)
    base, _ = golden_decode(tensors, metadata)
    rng = np.random.default_rng(5)
    for name in ("post_quant_conv.bias", "decoder.mid_block.attentions.0.to_v.bias",
                 "decoder.up_blocks.2.resnets.0.conv_shortcut.bias",
                 "decoder.up_blocks.0.upsamplers.0.conv.bias", "decoder.conv_norm_out.bias"):
        changed = dict(tensors)
        # Per-channel changes: a shift shared by a whole group would vanish in GroupNorm.
        changed[name] = tensors[name] + 0.1 * rng.standard_normal(tensors[name].shape).astype(np.float32)
        moved, _ = golden_decode(changed, metadata)
        assert relative_l2(moved, base) > 1e-4, name


@test
def refuses_what_does_not_fit():
    tensors, metadata = safetensors_io.read(GOLDEN_WEIGHTS)
    missing = dict(tensors)
    del missing["decoder.up_blocks.1.resnets.0.conv2.weight"]
    misshapen = dict(tensors)
    misshapen["decoder.conv_out.bias"] = np.zeros(7, np.float32)
    for broken, word in ((missing, "conv2.weight"), (misshapen, "conv_out")):
        try:
            reference_vae.from_tensors(broken, metadata)
        except ValueError as error:
            assert word in str(error), error
        else:
            raise AssertionError(f"weights without a proper {word} were accepted")


@test
def sd_configuration_shapes():
    vae = reference_vae.VAEDecoder(**reference_vae.SD_CONFIG).eval()
    parameters = sum(p.numel() for p in vae.parameters())
    # diffusers' SD decoder with post_quant_conv: 49,490,199 parameters.
    assert parameters == 49_490_199, parameters
    with torch.no_grad():
        image = vae.decode(torch.zeros(1, 4, 4, 4))
    assert image.shape == (1, 3, 32, 32), image.shape


if __name__ == "__main__":
    sys.exit(run_tests())
