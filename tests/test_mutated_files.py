"""test_mutated_files.py - fpdm-sample on a few hundred model and VAE files whose
metadata was rewritten at random (depths, sizes, heads, schedules, group counts,
scaling factors, malformed numbers), each with a random choice of flags. Every
run must end as a program should: exit 0 with its outputs, 1 or 2 with one
"fpdm-sample: ..." message, never a crash, a hang, a non-finite latent or (in
test.sh's sanitizer pass, whose fpdm-sample this runs there) a memory or
undefined-behaviour report. The cases are drawn from a fixed seed, so a failure
reproduces; the first failing command is printed.

    python3 tests/test_mutated_files.py BUILD_DIR      (from the repository root)
"""
import json
import os
import random
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import run_tests, test  # noqa: E402

import numpy as np  # noqa: E402
from safetensors_io import read_raw, write_raw  # noqa: E402

BUILD = sys.argv[1] if len(sys.argv) > 1 else "build"
SAMPLE = os.path.join(BUILD, "fpdm-sample")
GOLDEN = "tests/golden"
CASES = 240
MODELS = ["forward-fpdm.model.safetensors", "forward-dit-p2.model.safetensors",
          "forward-fpdm-deep.model.safetensors", "forward-fpdm-p4-nosigma.model.safetensors",
          "forward-dit-hd12.model.safetensors"]
# Values near the valid ones (so that some files still load and run deeper
# paths) and values no file should have.
MODEL_VALUES = {
    "fpdm.num_heads": ["1", "2", "3", "4", "5", "6", "8", "12", "24", "48", "0", "-2"],
    "fpdm.input_size": ["1", "2", "3", "4", "6", "8", "10", "16", "0", "99999"],
    "fpdm.equivalent_depth": ["0", "1", "2", "3", "5", "28", "100", "2147483647"],
    "fpdm.pre_depth": ["0", "1", "2", "3"], "fpdm.post_depth": ["0", "1", "2", "3"],
    "fpdm.depth": ["0", "1", "2", "3", "-1"],
    "fpdm.num_train_timesteps": ["1", "2", "10", "1000", "4000", "0"],
    "fpdm.noise_schedule": ["linear", "squaredcos_cap_v2", "cosine", ""],
    "fpdm.prediction": ["eps", "v", "x0"], "fpdm.zero_terminal_snr": ["true", "false", "1"],
    "fpdm.pre_post_timestep_conditioning": ["true", "false", "yes"],
    "fpdm.learn_sigma": ["true", "false"], "fpdm.mlp_ratio": ["4", "4.0", "2", "1", "0", "nan"],
    "fpdm.num_classes": ["10", "9", "11", "1", "0"], "fpdm.in_channels": ["1", "3", "4", "0"],
    "fpdm.hidden_size": ["24", "36", "12", "0"], "fpdm.patch_size": ["1", "2", "4", "0"],
    "fpdm.space": ["latent", "pixel", "x"], "fpdm.architecture": ["dit", "fpdm", "unet"],
}
VAE_VALUES = {
    "vae.norm_num_groups": ["1", "2", "4", "8", "16", "3", "0"],
    "vae.scaling_factor": ["0.5", "1", "0.18215", "0", "-1", "1e30", "nan", "inf"],
    "vae.latent_channels": ["4", "3", "0"], "vae.layers_per_block": ["0", "1", "2"],
    "vae.block_out_channels": ["8,16", "16,8", "8,16,16", "8", "0,16", "8,,16", "[]"],
}
FLAGS = [["--reuse"], ["--schedule", "increasing"], ["--schedule", "decreasing", "--budget", "7"],
         ["--tol", "0.5"], ["--tol", "1e-3", "--carry-over"], ["--sampler", "ddim"],
         ["--sampler", "ddim", "--eta", "1"], ["--cfg-scale", "1"], ["--cfg-channels", "all"],
         ["--iters", "0"], ["--iters", "3"], ["--first-index", "7"], ["-b", "1"], ["--class", "9"]]


def mutate(metadata, values, rng, changes):
    for _ in range(changes):
        key = rng.choice(sorted(values))
        if key in metadata and rng.random() < 0.1:
            del metadata[key]
        else:
            metadata[key] = rng.choice(values[key])


@test
def mutated_metadata_is_refused_or_sampled():
    assert os.access(SAMPLE, os.X_OK), f"{SAMPLE} is not built"
    rng = random.Random(20261127)
    vae_header, vae_body = read_raw(os.path.join(GOLDEN, "vae-small.safetensors"))
    outcomes = {0: 0, 1: 0, 2: 0}
    with tempfile.TemporaryDirectory() as tmp:
        model_path, vae_path = os.path.join(tmp, "model.safetensors"), os.path.join(tmp, "vae.safetensors")
        latents_path = os.path.join(tmp, "latents.npy")
        for case in range(CASES):
            header, body = read_raw(os.path.join(GOLDEN, rng.choice(MODELS)))
            vae = json.loads(json.dumps(vae_header))
            mutate(header["__metadata__"], MODEL_VALUES, rng, rng.randint(0, 3))
            mutate(vae["__metadata__"], VAE_VALUES, rng, rng.randint(0, 2))
            write_raw(model_path, header, body)
            write_raw(vae_path, vae, vae_body)
            out_dir = os.path.join(tmp, f"out{case}")
            command = [SAMPLE, "-m", model_path, "-n", str(rng.choice([1, 2, 3])),
                       "--steps", str(rng.choice([1, 2, 5])), "--quiet", "--out", out_dir,
                       "--latents-out", latents_path]
            if header["__metadata__"].get("fpdm.space") != "pixel":
                command += ["--vae", vae_path]
            for flags in rng.sample(FLAGS, rng.randint(0, 3)):
                command += flags
            if os.path.exists(latents_path):
                os.remove(latents_path)
            where = f"case {case}: {' '.join(command)}\n  metadata {header['__metadata__']}\n" \
                    f"  vae metadata {vae['__metadata__']}"
            try:
                run = subprocess.run(command, capture_output=True, text=True, timeout=120,
                                     env=dict(os.environ, FPDM_DEVICE="cpu"))
            except subprocess.TimeoutExpired:
                raise AssertionError(f"hung: {where}")
            stderr = run.stderr
            assert run.returncode in outcomes, f"exit {run.returncode}: {where}\n{stderr[-3000:]}"
            assert "Sanitizer" not in stderr and "runtime error" not in stderr, \
                f"sanitizer report: {where}\n{stderr[-3000:]}"
            outcomes[run.returncode] += 1
            if run.returncode == 0:
                latents = np.load(latents_path)
                assert np.isfinite(latents).all(), f"non-finite latents: {where}"
                pngs = [name for name in os.listdir(out_dir) if name.endswith(".png")]
                assert len(pngs) == int(command[command.index("-n") + 1]), f"PNGs {pngs}: {where}"
            else:
                assert stderr.startswith("fpdm-sample: "), f"message: {where}\n{stderr[-1000:]}"
    print(f"  {CASES} mutated files: {outcomes[0]} sampled, {outcomes[1]} refused at load or run "
          f"(exit 1), {outcomes[2]} refused as usage (exit 2)")
    # Enough of each outcome that both the refusals and the deep paths ran.
    assert outcomes[0] >= CASES // 20 and outcomes[1] >= CASES // 5, outcomes


if __name__ == "__main__":
    sys.exit(run_tests())
