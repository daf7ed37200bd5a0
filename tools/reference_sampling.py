"""reference_sampling.py - the project's PyTorch reference of the official DiT /
FPDM sampling loop (facebookresearch/DiT and lukemelas/fixed-point-diffusion-models:
diffusion/gaussian_diffusion.py, respace.py, __init__.py, adaptive_controller.py,
sample.py), written from their semantics for the golden files of the C sampler.
The network is tools/reference.py's Net (anything with its forward signature).

    import reference, reference_sampling as rs
    net, cfg = reference.load_model("m.safetensors")
    plan = rs.linear_controller_plan(budget=40, steps=10, kind="increasing")
    latents = rs.sample(net, cfg, labels, steps=10, sampler="ddpm", eta=0.0,
                        cfg_scale=4.0, cfg_all_channels=False, iters_plan=plan,
                        reuse=True, init_noise=z, step_noise=noise)

Schedules are float64 numpy, in the order the official code computes them.
sample() runs the network in float64 (on a copy of net) and returns float64.
"""
import copy
import math
from fractions import Fraction

import numpy as np
import torch


# ---- schedules ---------------------------------------------------------------

def base_betas(schedule, num_train_timesteps):
    """get_named_beta_schedule: "linear" (Ho et al., scaled by 1000 / T) or
    "squaredcos_cap_v2" (betas_for_alpha_bar with max_beta 0.999)."""
    n = num_train_timesteps
    if schedule == "linear":
        scale = 1000 / n
        return np.linspace(scale * 0.0001, scale * 0.02, n, dtype=np.float64)
    if schedule == "squaredcos_cap_v2":
        def alpha_bar(t):
            return math.cos((t + 0.008) / 1.008 * math.pi / 2) ** 2
        return np.array([min(1 - alpha_bar((i + 1) / n) / alpha_bar(i / n), 0.999) for i in range(n)],
                        dtype=np.float64)
    raise ValueError(f"unknown noise schedule {schedule!r}")


def enforce_zero_terminal_snr(betas):
    """Lin et al. (2024) as the FPDM repository does it: shift sqrt(alphas_cumprod)
    so its last entry is 0, rescale so its first is unchanged, back to betas."""
    sqrt_bar = np.sqrt(np.cumprod(1 - betas))
    first, last = sqrt_bar[0], sqrt_bar[-1]
    sqrt_bar = (sqrt_bar - last) * (first / (first - last))
    bar = sqrt_bar ** 2
    alphas = np.concatenate([bar[:1], bar[1:] / bar[:-1]])
    return 1 - alphas


def space_timesteps(num_timesteps, section_counts):
    """The kept original timesteps, sorted: "N", "N1,N2,..." (sections strided
    with Python's round, half to even) or "ddimN" (the first integer stride
    that gives exactly N)."""
    if section_counts.startswith("ddim"):
        desired = int(section_counts[len("ddim"):])
        for stride in range(1, num_timesteps):
            if len(range(0, num_timesteps, stride)) == desired:
                return sorted(range(0, num_timesteps, stride))
        raise ValueError(f"cannot create exactly {desired} steps with an integer stride")
    counts = [int(part) for part in section_counts.split(",")]
    size_per, extra = divmod(num_timesteps, len(counts))
    start, kept = 0, set()
    for index, count in enumerate(counts):
        size = size_per + (1 if index < extra else 0)
        if size < count:
            raise ValueError(f"cannot divide section of {size} steps into {count}")
        stride = 1 if count <= 1 else (size - 1) / (count - 1)
        position = 0.0
        for _ in range(count):
            kept.add(start + round(position))
            position += stride
        start += size
    return sorted(kept)


class Diffusion:
    """The respaced process: betas from the kept alphas_cumprod, then every
    table GaussianDiffusion derives from them."""

    def __init__(self, schedule, num_train_timesteps, zero_terminal_snr, respacing):
        betas = base_betas(schedule, num_train_timesteps)
        if zero_terminal_snr:
            betas = enforce_zero_terminal_snr(betas)
        base_cumprod = np.cumprod(1.0 - betas)
        self.timesteps = space_timesteps(num_train_timesteps, respacing)
        new_betas, last = [], 1.0
        for t in self.timesteps:
            new_betas.append(1 - base_cumprod[t] / last)
            last = base_cumprod[t]
        self.betas = np.array(new_betas, dtype=np.float64)
        self.num_steps = len(self.betas)
        with np.errstate(divide="ignore"):
            self.alphas_cumprod = np.cumprod(1.0 - self.betas)
            self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
            self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
            self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1)
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        if self.num_steps > 1:
            self.posterior_log_variance_clipped = np.log(
                np.append(self.posterior_variance[1], self.posterior_variance[1:]))
            self.fixed_large_variance = np.append(self.posterior_variance[1], self.betas[1:])
        else:
            self.posterior_log_variance_clipped = np.zeros(1)
            self.fixed_large_variance = np.zeros(1)
        self.posterior_mean_coef1 = self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = ((1.0 - self.alphas_cumprod_prev) * np.sqrt(1.0 - self.betas)
                                     / (1.0 - self.alphas_cumprod))

    def predict_x0_and_eps(self, i, x, out, prediction):
        """pred_xstart as p_mean_variance, and eps as ddim_sample derives it."""
        ac = self.alphas_cumprod[i]
        if prediction == "eps":
            x0 = self.sqrt_recip_alphas_cumprod[i] * x - self.sqrt_recipm1_alphas_cumprod[i] * out
        elif prediction == "v":
            x0 = math.sqrt(ac) * x - math.sqrt(1 - ac) * out
        elif prediction == "x0":
            x0 = out
        else:
            raise ValueError(prediction)
        if prediction == "v" and math.isinf(self.sqrt_recip_alphas_cumprod[i]):
            eps = math.sqrt(ac) * out + math.sqrt(1 - ac) * x
        else:
            eps = (self.sqrt_recip_alphas_cumprod[i] * x - x0) / self.sqrt_recipm1_alphas_cumprod[i]
        return x0, eps

    def p_sample(self, i, x, model_out, noise, prediction, learn_sigma, fixed_small=False):
        channels = x.shape[1]
        out = model_out[:, :channels]
        if learn_sigma:
            frac = (model_out[:, channels:2 * channels] + 1) / 2
            log_variance = (frac * math.log(self.betas[i])
                            + (1 - frac) * self.posterior_log_variance_clipped[i])
        elif fixed_small:
            log_variance = torch.full_like(x, self.posterior_log_variance_clipped[i])
        else:
            log_variance = torch.full_like(x, math.log(self.fixed_large_variance[i]))
        x0, _ = self.predict_x0_and_eps(i, x, out, prediction)
        mean = self.posterior_mean_coef1[i] * x0 + self.posterior_mean_coef2[i] * x
        if i == 0:
            return mean
        return mean + torch.exp(0.5 * log_variance) * noise

    def ddim_sample(self, i, x, model_out, noise, prediction, eta):
        out = model_out[:, :x.shape[1]]
        x0, eps = self.predict_x0_and_eps(i, x, out, prediction)
        ac, ac_prev = self.alphas_cumprod[i], self.alphas_cumprod_prev[i]
        sigma = eta * math.sqrt((1 - ac_prev) / (1 - ac)) * math.sqrt(1 - ac / ac_prev)
        mean = x0 * math.sqrt(ac_prev) + math.sqrt(1 - ac_prev - sigma ** 2) * eps
        if i == 0:
            return mean
        return mean + sigma * noise


# ---- the iteration plan ----------------------------------------------------

def linear_controller_entries(budget, steps, kind):
    """The official LinearController's budget_list (entry i used at respaced
    timestep i), with 1 + (budget - steps) * ratio_i / sum(ratio) evaluated in
    exact rational arithmetic (the official float32 code can land one off where
    that value is an exact integer)."""
    if kind == "fixed":
        if budget % steps:
            raise ValueError("a fixed plan needs a budget that is a multiple of the steps")
        return [budget // steps] * steps
    if steps == 1:
        ratios = [Fraction(1, 2)]
    else:
        ratios = [Fraction(1, 2) + Fraction(i, steps - 1) for i in range(steps)]
    if kind == "decreasing":
        ratios = ratios[::-1]
    elif kind != "increasing":
        raise ValueError(f"unknown plan {kind!r}")
    total = sum(ratios)
    values = [1 + (budget - steps) * r / total for r in ratios]
    threshold = steps // 2
    while True:
        entries = [math.ceil(v) if i < threshold else math.floor(v) for i, v in enumerate(values)]
        if sum(entries) <= budget:
            return entries
        threshold -= 1


def linear_controller_plan(budget, steps, kind):
    """Iterations per step in sampling order: the controller is read from its
    last entry (the noisiest timestep) down."""
    return linear_controller_entries(budget, steps, kind)[::-1]


# ---- the sampling loop -----------------------------------------------------

def guided_channel_count(out_channels, in_channels, cfg_all_channels):
    """forward_with_cfg guides model_out[:, :3]; its commented-out alternative
    (all channels) guides the in_channels prediction channels."""
    return in_channels if cfg_all_channels else min(3, out_channels)


@torch.no_grad()
def sample(net, cfg, labels, steps, sampler, eta, cfg_scale, cfg_all_channels, iters_plan, reuse,
           init_noise, step_noise, fixed_small=False, dtype=torch.float64):
    """Final latents [N, C, H, W] (float64 by default) of the official loop:
    init_noise [N, C, H, W]; step_noise [steps, N, C, H, W], row k added at the
    k-th step taken (k = 0 is the noisiest); iters_plan[k] the fixed-point
    iterations of step k (None: the model's default); reuse starts every solve
    but the first from the previous step's solution of the same batch row.
    dtype float32 only serves to measure how sensitive a run is to rounding."""
    net64 = copy.deepcopy(net).to(dtype).eval()
    diffusion = Diffusion(cfg["noise_schedule"], cfg["num_train_timesteps"], cfg["zero_terminal_snr"],
                          str(steps))
    assert diffusion.num_steps == steps
    labels = torch.as_tensor(labels, dtype=torch.long)
    n = labels.shape[0]
    x = torch.as_tensor(init_noise).to(dtype).clone()
    step_noise = torch.as_tensor(step_noise).to(dtype)
    use_cfg = cfg_scale > 1.0
    if use_cfg:
        # The doubled batch: conditional rows, then the null class. The null
        # rows' state never matters: every step feeds the conditional half twice.
        x = torch.cat([x, x])
        labels = torch.cat([labels, torch.full((n,), cfg["num_classes"], dtype=torch.long)])
    in_channels = cfg["in_channels"]
    last_solution = None
    for k, i in enumerate(reversed(range(steps))):
        model_in = torch.cat([x[:n], x[:n]]) if use_cfg else x
        t = torch.full((model_in.shape[0],), float(diffusion.timesteps[i]), dtype=dtype)
        iters = None
        if net64.fixed_point:
            iters = net64.default_iters() if iters_plan is None else int(iters_plan[k])
        init_solution = last_solution if reuse else None
        out, solution = net64(model_in, t, labels, iters=iters, init_solution=init_solution)
        if reuse:
            last_solution = solution
        if use_cfg:
            guided = guided_channel_count(out.shape[1], in_channels, cfg_all_channels)
            cond, uncond = out[:n, :guided], out[n:, :guided]
            half = uncond + cfg_scale * (cond - uncond)
            out = torch.cat([torch.cat([half, half]), out[:, guided:]], dim=1)
        noise = torch.cat([step_noise[k], step_noise[k]]) if use_cfg else step_noise[k]
        if sampler == "ddpm":
            x = diffusion.p_sample(i, x, out, noise, cfg["prediction"], cfg["learn_sigma"], fixed_small)
        elif sampler == "ddim":
            x = diffusion.ddim_sample(i, x, out, noise, cfg["prediction"], eta)
        else:
            raise ValueError(f"unknown sampler {sampler!r}")
    return x[:n]
