"""make_forward_golden.py - writes the golden files for the C forward pass.

Regenerate (from the repository root):
    /usr/bin/python3 tests/golden/make_forward_golden.py

For each case it writes tests/golden/forward-<case>.model.safetensors (a model
file, weights stored bf16 or f16 to stay small) and
tests/golden/forward-<case>.io.safetensors holding the inputs x [B,C,H,W],
t [B] (float32), y [B] (int64, the null class included), optionally
init_solution [B,T,D], and the expected results computed by tools/reference.py
in float64 from the stored (rounded) weights, saved as float32: out, solution
[B,T,D] (FPDM), t_emb [B,D], y_emb [B,D], x_embed [B,T,D] (patches + pos_embed),
block0_out [B,T,D] (the first block, blocks.0 or blocks_pre.0, applied to
x_embed with c for DiT or c_pp for FPDM; absent for FPDM without pre blocks).
FPDM io files carry metadata "iters", the number of fixed-point iterations.
"""
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import reference  # noqa: E402
import safetensors_io  # noqa: E402

BATCH = 3
# A zero, the last training timestep and a fractional one (respaced samplers
# and the adaptive schedule feed non-integer timesteps).
TIMESTEPS = [0.0, 999.0, 310.5]

SMALL = dict(hidden_size=24, num_heads=2, patch_size=2, input_size=8, num_classes=10)
WIDE_P4 = dict(hidden_size=32, num_heads=4, patch_size=4, input_size=16, num_classes=7)

CASES = [
    # name, config, weight dtype, seed, fixed-point iterations, with init_solution
    ("dit-p2", dict(SMALL, architecture="dit", depth=2, in_channels=3, learn_sigma=True), "bf16", 11, None, False),
    ("dit-p4-nosigma", dict(WIDE_P4, architecture="dit", depth=1, in_channels=3, learn_sigma=False), "f16", 12, None, False),
    ("dit-hd12", dict(architecture="dit", hidden_size=36, num_heads=3, patch_size=2, input_size=8, num_classes=5,
                      depth=1, in_channels=4, learn_sigma=True, mlp_ratio=2.0), "bf16", 13, None, False),
    ("fpdm", dict(SMALL, architecture="fpdm", pre_depth=1, post_depth=1, in_channels=4,
                  pre_post_timestep_conditioning=True), "bf16", 21, 4, False),
    ("fpdm-nocond", dict(SMALL, architecture="fpdm", pre_depth=1, post_depth=1, in_channels=4,
                         pre_post_timestep_conditioning=False), "bf16", 22, 3, False),
    ("fpdm-init", dict(SMALL, architecture="fpdm", pre_depth=0, post_depth=1, in_channels=4), "bf16", 23, 2, True),
    ("fpdm-p4-nosigma", dict(WIDE_P4, architecture="fpdm", pre_depth=1, post_depth=0, in_channels=3,
                             learn_sigma=False), "f16", 24, 3, False),
    ("fpdm-zero-iters", dict(SMALL, architecture="fpdm", pre_depth=1, post_depth=1, in_channels=4), "bf16", 25, 0, False),
    ("fpdm-deep", dict(SMALL, architecture="fpdm", pre_depth=2, post_depth=2, in_channels=4,
                       equivalent_depth=12), "bf16", 26, 8, False),
    # The official train.py --unsupervised: one class, its null row untrained.
    ("fpdm-unconditional", dict(SMALL, architecture="fpdm", pre_depth=1, post_depth=1, in_channels=4,
                                num_classes=1, unconditional=True), "bf16", 27, 2, False),
]


def make_case(name, cfg, dtype, seed, iters, with_init, out_dir):
    cfg = reference.normalize_config(cfg)
    net = reference.randomize(reference.Net(cfg), seed)
    model_path = os.path.join(out_dir, f"forward-{name}.model.safetensors")
    reference.save_model(net, cfg, model_path, dtype=dtype)

    gen = torch.Generator().manual_seed(1000 + seed)
    size, channels = cfg["input_size"], cfg["in_channels"]
    tokens = (size // cfg["patch_size"]) ** 2
    x = torch.randn(BATCH, channels, size, size, generator=gen, dtype=torch.float64).float()
    t = torch.tensor(TIMESTEPS, dtype=torch.float32)
    y = torch.tensor([cfg["num_classes"], 1, cfg["num_classes"] - 1], dtype=torch.int64)
    init = None
    if with_init:
        init = torch.randn(BATCH, tokens, cfg["hidden_size"], generator=gen, dtype=torch.float64).float()
    io, metadata = reference.forward_io(net, x, t, y, iters=iters, init_solution=init)
    for key, value in io.items():
        if np.issubdtype(value.dtype, np.floating) and not np.all(np.isfinite(value)):
            raise RuntimeError(f"{name}: {key} is not finite")
    safetensors_io.write(os.path.join(out_dir, f"forward-{name}.io.safetensors"), io, metadata)
    print(f"{name}: |out| max {np.abs(io['out']).max():.3f}")


def main():
    out_dir = os.path.join(ROOT, "tests", "golden")
    for case in CASES:
        make_case(*case, out_dir)


if __name__ == "__main__":
    main()
