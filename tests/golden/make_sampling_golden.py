"""make_sampling_golden.py - golden data for the C sampler, from the PyTorch
reference (tools/reference.py, tools/reference_sampling.py).

    /usr/bin/python3 tests/golden/make_sampling_golden.py

Writes, next to this script:
  diffusion.safetensors        schedule tables (kept timesteps and respaced
                               alphas_cumprod, F64) and LinearController plans
  sample-model-*.safetensors   small random models (bf16), shared by the cases
  sample-<case>.safetensors    one sampling run each: labels, init_noise,
                               step_noise, iters_plan (FPDM), latents (the
                               float64 result stored float32) and its settings
Everything is seeded; rerunning reproduces the files.
"""
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import reference  # noqa: E402
import reference_sampling as rs  # noqa: E402
import safetensors_io  # noqa: E402

torch.set_num_threads(1)

SMALL = dict(hidden_size=24, num_heads=2, input_size=8, patch_size=2, in_channels=4, num_classes=10,
             mlp_ratio=4.0, space="latent", noise_schedule="linear", num_train_timesteps=1000)

MODELS = {
    "dit": dict(SMALL, architecture="dit", depth=2, learn_sigma=True),
    "dit-nosigma": dict(SMALL, architecture="dit", depth=2, learn_sigma=False),
    "fpdm": dict(SMALL, architecture="fpdm", pre_depth=1, post_depth=1, equivalent_depth=6,
                 learn_sigma=True, pre_post_timestep_conditioning=True),
    "fpdm-v": dict(SMALL, architecture="fpdm", pre_depth=1, post_depth=1, equivalent_depth=6,
                   learn_sigma=False, prediction="v", zero_terminal_snr=True,
                   pre_post_timestep_conditioning=False),
    # What tools/train.py --predict-v trains: learned variance over a
    # zero-terminal-SNR schedule (log beta of the last step is 0).
    "fpdm-v-sigma": dict(SMALL, architecture="fpdm", pre_depth=1, post_depth=1, equivalent_depth=6,
                         learn_sigma=True, prediction="v", zero_terminal_snr=True,
                         pre_post_timestep_conditioning=True),
}

# name: model, steps, sampler, eta, cfg_scale, cfg_all_channels, reuse, plan
# (schedule, budget, iters or an explicit list), N
CASES = [
    dict(name="dit-ddpm-cfg", model="dit", steps=8, sampler="ddpm", cfg_scale=4.0, n=3),
    dict(name="dit-ddpm-nocfg", model="dit", steps=6, sampler="ddpm", cfg_scale=1.0, n=2),
    dict(name="dit-ddim", model="dit", steps=6, sampler="ddim", cfg_scale=1.5, n=2),
    dict(name="dit-nosigma-ddpm", model="dit-nosigma", steps=6, sampler="ddpm", cfg_scale=2.0, n=2),
    dict(name="dit-cfg-all-channels", model="dit", steps=5, sampler="ddpm", cfg_scale=3.0,
         cfg_all_channels=True, n=2),
    dict(name="fpdm-ddpm-fixed", model="fpdm", steps=6, sampler="ddpm", cfg_scale=4.0,
         schedule="fixed", iters=3, n=2),
    dict(name="fpdm-reuse", model="fpdm", steps=6, sampler="ddpm", cfg_scale=4.0, reuse=True,
         schedule="fixed", iters=2, n=2),
    dict(name="fpdm-increasing", model="fpdm", steps=7, sampler="ddpm", cfg_scale=1.5, reuse=True,
         schedule="increasing", budget=30, n=2),
    dict(name="fpdm-decreasing", model="fpdm", steps=7, sampler="ddpm", cfg_scale=1.0,
         schedule="decreasing", budget=25, n=2),
    dict(name="fpdm-explicit", model="fpdm", steps=5, sampler="ddpm", cfg_scale=2.0,
         explicit=[1, 6, 2, 1, 3], n=2),
    dict(name="fpdm-ddim-eta", model="fpdm", steps=6, sampler="ddim", eta=0.5, cfg_scale=1.5,
         schedule="fixed", iters=4, n=2),
    dict(name="fpdm-v-ztsnr-ddim", model="fpdm-v", steps=6, sampler="ddim", cfg_scale=1.5,
         reuse=True, schedule="fixed", iters=3, n=2),
    dict(name="fpdm-v-ztsnr-ddpm", model="fpdm-v", steps=5, sampler="ddpm", cfg_scale=1.0,
         schedule="fixed", iters=3, n=2),
    dict(name="fpdm-v-ztsnr-sigma-ddpm", model="fpdm-v-sigma", steps=6, sampler="ddpm",
         cfg_scale=3.0, schedule="fixed", iters=3, n=2),
]

SCHEDULE_TABLES = [
    ("linear", 1000, False, "250"), ("linear", 1000, False, "3"), ("linear", 1000, False, "10,15,20"),
    ("linear", 1000, False, "ddim50"), ("linear", 1000, True, "7"),
    ("squaredcos_cap_v2", 1000, False, "25"), ("squaredcos_cap_v2", 1000, True, "ddim20"),
    ("linear", 300, False, "1,2,3"), ("squaredcos_cap_v2", 500, False, "17"),
]

PLAN_TABLES = [
    (10, 40, "increasing"), (10, 40, "decreasing"), (7, 30, "increasing"), (7, 25, "decreasing"),
    (15, 100, "increasing"), (19, 76, "increasing"), (19, 76, "decreasing"), (18, 90, "decreasing"),
    (250, 6000, "increasing"), (250, 6001, "decreasing"), (1, 9, "increasing"), (2, 3, "decreasing"),
    (5, 5, "increasing"), (3, 10, "increasing"), (12, 26, "decreasing"), (20, 480, "fixed"),
]


def write_diffusion_tables():
    """Metadata "scheduleK" = "<schedule> <train steps> <zero terminal snr 0|1>
    <respacing>" and "planK" = "<steps> <budget> <kind>" describe each table."""
    tensors, metadata = {}, {}
    for k, (schedule, train, ztsnr, respacing) in enumerate(SCHEDULE_TABLES):
        d = rs.Diffusion(schedule, train, ztsnr, respacing)
        tensors[f"schedule{k}.timesteps"] = np.array(d.timesteps, dtype=np.int64)
        tensors[f"schedule{k}.alphas_cumprod"] = d.alphas_cumprod.astype(np.float64)
        metadata[f"schedule{k}"] = f"{schedule} {train} {int(ztsnr)} {respacing}"
    for k, (steps, budget, kind) in enumerate(PLAN_TABLES):
        tensors[f"plan{k}.iters"] = np.array(rs.linear_controller_plan(budget, steps, kind), dtype=np.int64)
        metadata[f"plan{k}"] = f"{steps} {budget} {kind}"
    metadata["num_schedules"] = str(len(SCHEDULE_TABLES))
    metadata["num_plans"] = str(len(PLAN_TABLES))
    safetensors_io.write(os.path.join(HERE, "diffusion.safetensors"), tensors, metadata)


def make_models():
    nets = {}
    for seed, (name, cfg) in enumerate(MODELS.items()):
        cfg = reference.normalize_config(cfg)
        net = reference.randomize(reference.Net(cfg), 100 + seed)
        path = os.path.join(HERE, f"sample-model-{name}.safetensors")
        reference.save_model(net, cfg, path, dtype="bf16")
        nets[name] = reference.load_model(path)
    return nets


def iteration_plan(case, net):
    if "explicit" in case:
        return list(case["explicit"])
    steps = case["steps"]
    if case["schedule"] == "fixed":
        return [case["iters"]] * steps
    return rs.linear_controller_plan(case["budget"], steps, case["schedule"])


def write_case(case, nets, seed):
    net, cfg = nets[case["model"]]
    gen = torch.Generator().manual_seed(1000 + seed)
    n, steps, size, channels = case["n"], case["steps"], cfg["input_size"], cfg["in_channels"]
    labels = torch.randint(0, cfg["num_classes"], (n,), generator=gen)
    init_noise = torch.randn(n, channels, size, size, generator=gen, dtype=torch.float32)
    step_noise = torch.randn(steps, n, channels, size, size, generator=gen, dtype=torch.float32)
    plan = iteration_plan(case, net) if net.fixed_point else None
    settings = dict(steps=steps, sampler=case["sampler"], eta=case.get("eta", 0.0),
                    cfg_scale=case["cfg_scale"], cfg_all_channels=case.get("cfg_all_channels", False),
                    reuse=case.get("reuse", False))
    latents = rs.sample(net, cfg, labels, iters_plan=plan, init_noise=init_noise, step_noise=step_noise,
                        **settings)
    # How far float32 arithmetic alone moves the result: the C sampler's
    # tolerance means something only if this is well below it.
    latents32 = rs.sample(net, cfg, labels, iters_plan=plan, init_noise=init_noise,
                          step_noise=step_noise, dtype=torch.float32, **settings)
    tensors = {"labels": labels.numpy().astype(np.int64), "init_noise": init_noise.numpy(),
               "step_noise": step_noise.numpy(), "latents": latents.float().numpy()}
    metadata = {key: (("true" if value else "false") if isinstance(value, bool) else str(value))
                for key, value in settings.items()}
    metadata["model"] = f"sample-model-{case['model']}.safetensors"
    metadata["schedule"] = "explicit" if "explicit" in case else case.get("schedule", "none")
    if plan is not None:
        tensors["iters_plan"] = np.array(plan, dtype=np.int64)
        metadata["budget"] = str(case.get("budget", sum(plan)))
        metadata["iters"] = str(case.get("iters", -1))
    safetensors_io.write(os.path.join(HERE, f"sample-{case['name']}.safetensors"), tensors, metadata)
    return latents, latents32


def main():
    write_diffusion_tables()
    nets = make_models()
    for seed, case in enumerate(CASES):
        latents, latents32 = write_case(case, nets, seed)
        drift = ((latents32.double() - latents).norm() / latents.norm()).item()
        print(f"{case['name']:24s} rms {latents.pow(2).mean().sqrt().item():8.3f}  "
              f"float32 vs float64 rel_l2 {drift:.2e}")


if __name__ == "__main__":
    main()
