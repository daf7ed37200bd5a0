"""train.py - trains the small class-conditional pixel-space MNIST models the
project ships (FPDM and its DiT baseline), the way the official
lukemelas/fixed-point-diffusion-models train.py trains, scaled down to two CPU
cores. Reproduce the shipped files (seed fixed, CPU, 1 thread each, 42 and
49 minutes on the shared build machine, the two side by side; see
models/README.md) with:

    nice -n 10 /usr/bin/python3 tools/train.py fpdm --out models/fpdm-mnist.safetensors --seed 0 \
        --steps 8000 --label-lr-scale 10 --predict-v
    nice -n 10 /usr/bin/python3 tools/train.py dit --out models/dit-mnist.safetensors --seed 0 \
        --steps 8000 --label-lr-scale 10 --predict-v

Loss: MSE on eps plus the variational-bound term for the learned variance
(mean frozen), uniform timesteps over a 1000-step linear beta schedule
(`--predict-v`: the official v option instead, the p2-weighted MSE of the
implied x0 over the schedule rescaled to a zero terminal SNR), class
dropout 0.1 (null class = 10), AdamW (no weight decay), an EMA of the weights
(with warm-up) exported. FPDM uses stochastic Jacobian-free backprop: a random number of
fixed-point iterations without gradient, then a random number with gradient
(the official fixed_point_{no,with}_grad_{min,max}_iters; by default the
official ranges for 26 default iterations scaled to this model's).
`--trial-seconds S` stops after S seconds and prints the throughput (and
writes --out as of that step, when given). A loss that is not finite stops
the run (exit 1) before the final model is written (a --save-every snapshot
of an earlier step stays).
"""
import argparse
import copy
import math
import os
import random
import sys
import time

import numpy as np
import torch
import torch.nn as nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from argument_types import float_in, int_at_least  # noqa: E402
import mnist  # noqa: E402
import reference  # noqa: E402
import reference_sampling  # noqa: E402
import safetensors_io  # noqa: E402

NULL_CLASS = 10
CLASS_DROPOUT = 0.1
DEFAULT_SEED = 0

# Shared by both models: only the block layout differs.
COMMON_CONFIG = {
    "hidden_size": 64, "num_heads": 4, "patch_size": 4, "input_size": 32, "in_channels": 1,
    "num_classes": 10, "learn_sigma": True, "mlp_ratio": 4.0, "prediction": "eps",
    "zero_terminal_snr": False, "space": "pixel", "noise_schedule": "linear",
    "num_train_timesteps": 1000,
}
DIT_DEPTH = 6
FPDM_PRE_DEPTH, FPDM_POST_DEPTH = 1, 1

# The official train.py's iteration ranges (no-grad 0..10, with-grad 1..12)
# and the default iterations they were chosen for (DiT-XL/2's depth 28 less
# pre and post).
OFFICIAL_NO_GRAD_ITERS = (0, 10)
OFFICIAL_WITH_GRAD_ITERS = (1, 12)
OFFICIAL_DEFAULT_ITERS = 26

# lr 1e-3 rather than the official 1e-4 and EMA 0.999 (with warm-up) rather
# than 0.9999: a few thousand steps only, so the EMA horizon (~1/(1-decay)
# steps) must be short.
TRAINING_DEFAULTS = {"steps": 4000, "batch_size": 64, "lr": 1e-3, "ema_decay": 0.999}


def model_config(architecture, hidden_size=COMMON_CONFIG["hidden_size"],
                 num_heads=COMMON_CONFIG["num_heads"], patch_size=COMMON_CONFIG["patch_size"],
                 depth=DIT_DEPTH, predict_v=False):
    """The shipped models' configuration; the sizes can be raised for longer
    runs (e.g. on a GPU). depth is the DiT's, and the FPDM's equivalent depth.
    predict_v: v prediction over the zero-terminal-SNR schedule (the official
    train.py's --predict_v --use_zero_terminal_snr)."""
    cfg = dict(COMMON_CONFIG, architecture=architecture, hidden_size=hidden_size,
               num_heads=num_heads, patch_size=patch_size)
    if predict_v:
        cfg.update(prediction="v", zero_terminal_snr=True)
    if architecture == "dit":
        cfg["depth"] = depth
    else:
        if depth < FPDM_PRE_DEPTH + FPDM_POST_DEPTH:
            raise ValueError(f"an FPDM's equivalent depth counts its {FPDM_PRE_DEPTH} pre and {FPDM_POST_DEPTH} "
                             f"post blocks: {depth} is less than {FPDM_PRE_DEPTH + FPDM_POST_DEPTH}")
        cfg.update(pre_depth=FPDM_PRE_DEPTH, post_depth=FPDM_POST_DEPTH,
                   pre_post_timestep_conditioning=True, equivalent_depth=depth)
    return reference.normalize_config(cfg)


def fixed_point_iters(default_iters):
    """The (no-grad, with-grad) iteration ranges, inclusive, that an FPDM
    sampled with default_iters iterations trains with by default: the official
    ranges scaled by default_iters / 26 (0..2 and 1..2 for the shipped
    models' 4), with at least one iteration with gradient, as the official
    minimum, so that the fixed-point block always learns."""
    def scaled(bound):
        return round(bound * default_iters / OFFICIAL_DEFAULT_ITERS)
    return ((OFFICIAL_NO_GRAD_ITERS[0], scaled(OFFICIAL_NO_GRAD_ITERS[1])),
            (OFFICIAL_WITH_GRAD_ITERS[0], max(OFFICIAL_WITH_GRAD_ITERS[0], scaled(OFFICIAL_WITH_GRAD_ITERS[1]))))


# ---- the Gaussian diffusion (official semantics, our code) -----------------

def approx_standard_normal_cdf(x):
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x, means, log_scales):
    """log p(x) for x on the 256-level grid of [-1, 1] under N(means, exp(log_scales)^2)."""
    centered = x - means
    inv_stdv = torch.exp(-log_scales)
    cdf_plus = approx_standard_normal_cdf(inv_stdv * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_stdv * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def normal_kl(mean1, logvar1, mean2, logvar2):
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def mean_flat(tensor):
    return tensor.mean(dim=list(range(1, tensor.ndim)))


class GaussianDiffusion:
    """The training side of the official GaussianDiffusion: epsilon or v
    prediction with the learned-range variance (sampling is
    tools/reference_sampling.py)."""

    def __init__(self, betas, prediction="eps"):
        self.prediction = prediction
        self.betas = np.asarray(betas, dtype=np.float64)
        self.num_timesteps = len(self.betas)
        alphas = 1.0 - self.betas
        self.alphas_cumprod = np.cumprod(alphas)
        self.alphas_cumprod_prev = np.append(1.0, self.alphas_cumprod[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(self.alphas_cumprod)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - self.alphas_cumprod)
        with np.errstate(divide="ignore"):  # infinite at a zero terminal SNR, used by eps only
            self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod)
            self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / self.alphas_cumprod - 1.0)
        # The official v-prediction loss weight ("p2"): SNR x sqrt(1 - alpha_bar).
        self.v_loss_weight = (self.alphas_cumprod / (1.0 - self.alphas_cumprod)
                              * self.sqrt_one_minus_alphas_cumprod)
        self.posterior_variance = self.betas * (1.0 - self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        # The variance at t=0 is 0; the official code clips its log to the t=1 value.
        self.posterior_log_variance_clipped = np.log(
            np.append(self.posterior_variance[1], self.posterior_variance[1:]))
        self.posterior_mean_coef1 = self.betas * np.sqrt(self.alphas_cumprod_prev) / (1.0 - self.alphas_cumprod)
        self.posterior_mean_coef2 = (1.0 - self.alphas_cumprod_prev) * np.sqrt(alphas) / (1.0 - self.alphas_cumprod)

    @classmethod
    def for_config(cls, cfg):
        """The training process of a model configuration: its schedule, zero
        terminal SNR and prediction."""
        betas = reference_sampling.base_betas(cfg["noise_schedule"], cfg["num_train_timesteps"])
        if cfg["zero_terminal_snr"]:
            betas = reference_sampling.enforce_zero_terminal_snr(betas)
        return cls(betas, cfg["prediction"])

    @staticmethod
    def _take(array, t, like):
        values = torch.from_numpy(array).to(device=like.device, dtype=like.dtype)[t]
        return values.reshape(-1, *([1] * (like.ndim - 1)))

    def q_sample(self, x_start, t, noise):
        return (self._take(self.sqrt_alphas_cumprod, t, x_start) * x_start
                + self._take(self.sqrt_one_minus_alphas_cumprod, t, x_start) * noise)

    def q_posterior(self, x_start, x_t, t):
        mean = (self._take(self.posterior_mean_coef1, t, x_t) * x_start
                + self._take(self.posterior_mean_coef2, t, x_t) * x_t)
        return mean, self._take(self.posterior_log_variance_clipped, t, x_t)

    def predict_x0(self, prediction, x_t, t):
        if self.prediction == "v":
            return (self._take(self.sqrt_alphas_cumprod, t, x_t) * x_t
                    - self._take(self.sqrt_one_minus_alphas_cumprod, t, x_t) * prediction)
        return (self._take(self.sqrt_recip_alphas_cumprod, t, x_t) * x_t
                - self._take(self.sqrt_recipm1_alphas_cumprod, t, x_t) * prediction)

    def p_mean_log_variance(self, model_output, x_t, t):
        """(mean, log variance, predicted x0) of p(x_{t-1} | x_t) from the
        network output [eps or v, var] (var in [-1, 1] interpolates the log
        variance between the posterior's and beta's)."""
        prediction, var_values = model_output.chunk(2, dim=1)
        min_log = self._take(self.posterior_log_variance_clipped, t, x_t)
        max_log = self._take(np.log(self.betas), t, x_t)
        fraction = (var_values + 1.0) / 2.0
        log_variance = fraction * max_log + (1.0 - fraction) * min_log
        pred_x0 = self.predict_x0(prediction, x_t, t)
        mean, _ = self.q_posterior(pred_x0, x_t, t)
        return mean, log_variance, pred_x0

    def training_losses(self, model_output, x_start, x_t, t, noise):
        """Per-example loss: the prediction's MSE + the VLB term in bits/dim,
        the VLB seeing the prediction detached so that it trains the variance
        only. eps: MSE against the noise; v: the official p2-weighted MSE of
        the x0 it implies."""
        prediction, var_values = model_output.chunk(2, dim=1)
        frozen = torch.cat([prediction.detach(), var_values], dim=1)
        true_mean, true_log_variance = self.q_posterior(x_start, x_t, t)
        mean, log_variance, _ = self.p_mean_log_variance(frozen, x_t, t)
        kl = mean_flat(normal_kl(true_mean, true_log_variance, mean, log_variance)) / math.log(2.0)
        decoder_nll = -mean_flat(discretized_gaussian_log_likelihood(
            x_start, means=mean, log_scales=0.5 * log_variance)) / math.log(2.0)
        vb = torch.where(t == 0, decoder_nll, kl)
        if self.prediction == "v":
            weight = self._take(self.v_loss_weight, t, x_start)
            mse = mean_flat(weight * (x_start - self.predict_x0(prediction, x_t, t)) ** 2)
        else:
            mse = mean_flat((noise - prediction) ** 2)
        return mse + vb, mse, vb


# ---- the networks' training forward ----------------------------------------

@torch.no_grad()
def initialize_like_official(net):
    """The official DiT initialisation: xavier-uniform linears (and patch
    embedding) with zero biases, N(0, 0.02) label table and timestep MLP,
    zero adaLN modulations and a zero final layer."""
    for module in net.modules():
        if isinstance(module, nn.Linear):
            nn.init.xavier_uniform_(module.weight)
            nn.init.zeros_(module.bias)
    proj = net.x_embedder.proj
    nn.init.xavier_uniform_(proj.weight.view(proj.weight.shape[0], -1))
    nn.init.zeros_(proj.bias)
    nn.init.normal_(net.y_embedder.embedding_table.weight, std=0.02)
    nn.init.normal_(net.t_embedder.mlp[0].weight, std=0.02)
    nn.init.normal_(net.t_embedder.mlp[2].weight, std=0.02)
    blocks = (list(net.blocks_pre) + [net.block_fixed_point] + list(net.blocks_post)
              if net.fixed_point else list(net.blocks))
    for block in blocks:
        nn.init.zeros_(block.adaLN_modulation[1].weight)
        nn.init.zeros_(block.adaLN_modulation[1].bias)
    for layer in (net.final_layer.adaLN_modulation[1], net.final_layer.linear):
        nn.init.zeros_(layer.weight)
        nn.init.zeros_(layer.bias)


def training_forward(net, x, t, y, rng, iters):
    """The network output during training. For FPDM the fixed-point part runs
    a random number of iterations without gradient from the pre blocks'
    output, then a random number with gradient (Jacobian-free backprop), each
    drawn from its inclusive range in iters = (no-grad, with-grad)."""
    if not net.fixed_point:
        return net(x, t, y)[0]
    e = net.embed(x, t, y)
    h = e["x_embed"]
    for block in net.blocks_pre:
        h = block(h, e["c_pp"])
    no_grad_iters, with_grad_iters = iters
    injection = net.block_pre_projection(h)
    z = h.detach()
    with torch.no_grad():
        for _ in range(rng.randint(*no_grad_iters)):
            z = net.fixed_point_step(z, injection.detach(), e["c"])
    for _ in range(rng.randint(*with_grad_iters)):
        z = net.fixed_point_step(z, injection, e["c"])
    for block in net.blocks_post:
        z = block(z, e["c_pp"])
    return net.unpatchify(net.final_layer(z, e["c_pp"]))


@torch.no_grad()
def update_ema(ema, net, decay, step):
    """EMA with the usual warm-up min(decay, (1 + step) / (10 + step)): with a
    few thousand steps a constant decay would leave a large share of the
    (zero-output) initial weights in the export."""
    decay = min(decay, (1.0 + step) / (10.0 + step))
    # One launch for all tensors (the same arithmetic as a loop over them):
    # on a GPU, per-tensor launches would dominate a small model's step.
    ema_params, params = list(ema.parameters()), list(net.parameters())
    torch._foreach_mul_(ema_params, decay)
    torch._foreach_add_(ema_params, params, alpha=1.0 - decay)


def save(ema, cfg, path, metadata):
    """Writes beside `path` and renames, so that a run stopped at any moment
    (a time limit) leaves the last complete snapshot. A link's target is
    what gets replaced."""
    exported = copy.deepcopy(ema).cpu()
    path = os.path.realpath(path)
    partial = path + ".partial"
    reference.save_model(exported, cfg, partial, dtype="f32", extra_metadata=metadata)
    os.replace(partial, path)


seconds = float_in(0.0, math.inf, "a number of seconds (0 or more)")


def check_device(parser, device):
    """Refuses a device this torch cannot use before any work, with one line
    (torch's own error comes from deep inside the first use)."""
    try:
        if torch.device(device).type == "cuda" and not torch.cuda.is_available():
            parser.error(f"--device {device}: this torch sees no CUDA device")
        torch.Generator(device=device)
    except RuntimeError as error:
        parser.error(f"--device {device}: {str(error).splitlines()[0]}")


def iteration_ranges(parser, args, scaled):
    """The (no-grad, with-grad) ranges of an FPDM's training: the flags', else
    the scaled defaults."""
    ranges = list(scaled)
    for index, (flag, given, least) in enumerate((("--no-grad-iters", args.no_grad_iters, 0),
                                                  ("--with-grad-iters", args.with_grad_iters, 1))):
        if given is None:
            continue
        if not least <= given[0] <= given[1]:
            parser.error(f"{flag} {given[0]} {given[1]}: need {least} <= MIN <= MAX"
                         + (" (with no iteration with gradient the fixed-point block would not learn)"
                            if least else ""))
        ranges[index] = tuple(given)
    return tuple(ranges)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("architecture", choices=("fpdm", "dit"))
    parser.add_argument("--out", help="the model file to write (required except with --trial-seconds)")
    parser.add_argument("--data", default=mnist.DEFAULT_DIR)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument("--steps", type=int_at_least(1), default=TRAINING_DEFAULTS["steps"])
    parser.add_argument("--batch-size", type=int_at_least(1), default=TRAINING_DEFAULTS["batch_size"])
    parser.add_argument("--lr", type=float_in(1e-12, 1e3, "a learning rate (1e-12..1e3)"),
                        default=TRAINING_DEFAULTS["lr"])
    parser.add_argument("--ema-decay", type=float_in(0.0, 1.0, "an EMA decay (0 <= d < 1)", high_included=False),
                        default=TRAINING_DEFAULTS["ema_decay"])
    parser.add_argument("--init-from", help="start from this model file's weights instead of the "
                        "official initialisation (a second training stage)")
    parser.add_argument("--label-lr-scale", type=float_in(0.0, 1e6, "a factor (0..1e6; 0 freezes the table)"),
                        default=1.0,
                        help="learning-rate factor of the class embedding table")
    parser.add_argument("--threads", type=int_at_least(1), default=1,
                        help="1: on a shared 2-core machine one thread per run is several times faster than 2")
    parser.add_argument("--device", default="cpu",
                        help="torch device, e.g. cuda; the data, batches and noise live there too")
    parser.add_argument("--hidden-size", type=int_at_least(1), default=COMMON_CONFIG["hidden_size"])
    parser.add_argument("--num-heads", type=int_at_least(1), default=COMMON_CONFIG["num_heads"])
    parser.add_argument("--patch-size", type=int_at_least(1), default=COMMON_CONFIG["patch_size"])
    parser.add_argument("--depth", type=int_at_least(1), default=DIT_DEPTH,
                        help="DiT depth; for FPDM the equivalent depth: it samples depth - 2 fixed-point "
                        "iterations by default (at least 2; 2 leaves none) and trains with ranges scaled to them")
    for flag, kind, official in (("no-grad", "without", OFFICIAL_NO_GRAD_ITERS),
                                 ("with-grad", "with", OFFICIAL_WITH_GRAD_ITERS)):
        parser.add_argument(f"--{flag}-iters", type=int_at_least(0), nargs=2, metavar=("MIN", "MAX"),
                            help=f"FPDM: fixed-point iterations {kind} gradient per training step, drawn from "
                            f"MIN..MAX (the official fixed_point_{flag.replace('-', '_')}_min/max_iters; default: "
                            f"the official {official[0]}..{official[1]} for 26 default iterations, scaled to "
                            "--depth - 2)")
    parser.add_argument("--predict-v", action="store_true",
                        help="v prediction over a zero-terminal-SNR schedule (the official "
                        "--predict_v --use_zero_terminal_snr); recorded in the model file")
    parser.add_argument("--log-every", type=int_at_least(1), default=100)
    parser.add_argument("--save-every", type=int_at_least(0), default=250,
                        help="rewrite --out with the current EMA every this many steps (0: only at the end)")
    parser.add_argument("--trial-seconds", type=seconds, default=0.0,
                        help="stop after this many seconds and print the throughput (--out optional: "
                        "written as of that step when given)")
    args = parser.parse_args(argv)

    # Everything that can be refused is, before the data are read and any step runs.
    try:
        cfg = model_config(args.architecture, args.hidden_size, args.num_heads, args.patch_size,
                           args.depth, args.predict_v)
    except ValueError as error:
        parser.error(str(error))
    iters = scaled_iters = None
    if args.architecture == "fpdm":
        scaled_iters = fixed_point_iters(cfg["equivalent_depth"] - cfg["pre_depth"] - cfg["post_depth"])
        iters = iteration_ranges(parser, args, scaled_iters)
    elif args.no_grad_iters or args.with_grad_iters:
        parser.error("--no-grad-iters and --with-grad-iters apply to fpdm only")
    if args.out == "":
        parser.error("--out: empty value")
    if args.out is None and not args.trial_seconds:
        parser.error("--out is required (a --trial-seconds run may leave it out)")
    out_folder = os.path.dirname(os.path.abspath(args.out)) if args.out else None
    if out_folder and (not os.path.isdir(out_folder) or not os.access(out_folder, os.W_OK)):
        parser.error(f"--out {args.out}: {out_folder} is not a writable folder")
    if args.out and os.path.isdir(args.out):
        parser.error(f"--out {args.out}: is a folder (allowed: a file name)")
    check_device(parser, args.device)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    rng = random.Random(args.seed)
    # Batches, timesteps and noise are drawn where the model runs: on a GPU
    # that keeps the host out of the step (a CPU-drawn batch held a small
    # model to ~25 steps/s on an H100). Each device has its own stream of
    # draws, so a file reproduces on the device type it was trained on.
    batch_gen = torch.Generator(device=args.device).manual_seed(args.seed)
    if args.init_from:
        try:
            net, loaded_cfg = reference.load_model(args.init_from)
            init_metadata = safetensors_io.read_metadata(args.init_from)
        except (OSError, ValueError) as error:
            raise SystemExit(f"train.py: --init-from {args.init_from}: {error}")
        if loaded_cfg != cfg:
            differing = ", ".join(f"{key} {loaded_cfg.get(key)!r} (this run: {cfg.get(key)!r})"
                                  for key in sorted(set(loaded_cfg) | set(cfg))
                                  if loaded_cfg.get(key) != cfg.get(key))
            raise SystemExit(f"train.py: --init-from {args.init_from}: its model differs from this run's "
                             f"{args.architecture}: {differing} (give the flags it was trained with)")
    else:
        net = reference.Net(cfg)
        initialize_like_official(net)
    if iters and net.default_iters() == 0:
        print(f"train.py: note: --depth {args.depth} leaves no fixed-point iterations by default: the model trains "
              f"with {iters[1][0]}..{iters[1][1]} with gradient but samples with none unless given --iters "
              "(fpdm-sample)", file=sys.stderr)

    try:
        images, labels, paths = mnist.load_split(args.data, "train")
    except (OSError, ValueError) as error:
        raise SystemExit(f"train.py: {error}")
    if args.batch_size > len(images):
        parser.error(f"--batch-size {args.batch_size} is more than the {len(images)} training digits in {args.data}")
    data = torch.from_numpy(mnist.to_model_space(images)).to(args.device)
    targets = torch.from_numpy(labels).to(args.device)
    net.to(args.device)
    ema = copy.deepcopy(net).eval()
    for param in ema.parameters():
        param.requires_grad_(False)
    net.train()
    diffusion = GaussianDiffusion.for_config(cfg)
    # Class conditioning is learnt slowly from the eps loss alone (it matters
    # mostly at large t, where that loss is small); a larger step for the
    # label table speeds it up within a short CPU budget.
    label_table = net.y_embedder.embedding_table.weight
    other_params = [p for p in net.parameters() if p is not label_table]
    opt = torch.optim.AdamW([{"params": other_params},
                             {"params": [label_table], "lr": args.lr * args.label_lr_scale}],
                            lr=args.lr, weight_decay=0.0)

    def command_for(steps):
        # The learning rate is constant and every random draw comes from the
        # seed in step order, so a snapshot after N steps is exactly what
        # --steps N produces: each file records that command.
        return (f"nice -n 10 /usr/bin/python3 tools/train.py {args.architecture} --out {args.out} "
                f"--seed {args.seed} --steps {steps} --batch-size {args.batch_size} --lr {args.lr!r} "
                f"--ema-decay {args.ema_decay!r}"
                + (f" --label-lr-scale {args.label_lr_scale!r}" if args.label_lr_scale != 1.0 else "")
                + (f" --init-from {args.init_from}" if args.init_from else "")
                + "".join(f" --{flag} {value}" for flag, value, default in (
                    ("hidden-size", args.hidden_size, COMMON_CONFIG["hidden_size"]),
                    ("num-heads", args.num_heads, COMMON_CONFIG["num_heads"]),
                    ("patch-size", args.patch_size, COMMON_CONFIG["patch_size"]),
                    ("depth", args.depth, DIT_DEPTH)) if value != default)
                + "".join(f" --{flag} {given[0]} {given[1]}" for flag, given, default in zip(
                    ("no-grad-iters", "with-grad-iters"), (args.no_grad_iters, args.with_grad_iters),
                    scaled_iters or ())
                    if given and tuple(given) != default)
                + (" --predict-v" if args.predict_v else "")
                + (f" --device {args.device}" if args.device != "cpu" else ""))
    command = command_for(args.steps)
    metadata = {
        "training.seed": str(args.seed),
        "training.batch_size": str(args.batch_size),
        "training.lr": repr(args.lr),
        "training.ema_decay": repr(args.ema_decay),
        "training.data": ",".join(f"{os.path.basename(p)}:sha256={mnist.sha256_file(p)}" for p in paths),
    }
    if args.init_from:
        # The stage this one continues: its command and the hash of its file.
        metadata["training.init_from"] = f"{args.init_from}:sha256={mnist.sha256_file(args.init_from)}"
        metadata["training.init_from_command"] = init_metadata.get("training.command", "")
        metadata["training.init_from_wall_seconds"] = init_metadata.get("training.wall_seconds", "")
    if iters:
        (no_grad_min, no_grad_max), (with_grad_min, with_grad_max) = iters
        metadata["training.fixed_point_iters"] = (f"no_grad {no_grad_min}..{no_grad_max}, "
                                                  f"with_grad {with_grad_min}..{with_grad_max}")
    print(f"{command}\nparameters {sum(p.numel() for p in net.parameters()):,}", flush=True)

    def snapshot_metadata(steps, wall):
        return {"training.command": command_for(steps), "training.steps": str(steps),
                "training.wall_seconds": f"{wall:.0f}"}

    start = time.time()
    running_loss = running_mse = 0.0
    order = torch.randperm(len(data), generator=batch_gen, device=args.device)
    cursor = 0
    step = saved_step = 0
    for step in range(1, args.steps + 1):
        if cursor + args.batch_size > len(order):
            order = torch.randperm(len(data), generator=batch_gen, device=args.device)
            cursor = 0
        index = order[cursor:cursor + args.batch_size]
        cursor += args.batch_size
        x_start, y = data[index], targets[index].clone()
        y[torch.rand(len(y), generator=batch_gen, device=args.device) < CLASS_DROPOUT] = NULL_CLASS
        t = torch.randint(0, diffusion.num_timesteps, (len(y),), generator=batch_gen,
                          device=args.device)
        noise = torch.randn(x_start.shape, generator=batch_gen, device=args.device)
        x_t = diffusion.q_sample(x_start, t, noise)
        output = training_forward(net, x_t, t.float(), y, rng, iters)
        loss, mse, _ = diffusion.training_losses(output, x_start, x_t, t, noise)
        loss = loss.mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        update_ema(ema, net, args.ema_decay, step)
        loss_value = loss.item()
        if not math.isfinite(loss_value):
            kept = (f"{args.out} keeps the snapshot of step {saved_step}" if saved_step
                    else "nothing was written")
            raise SystemExit(f"train.py: step {step}: the loss is {loss_value}: training diverged "
                             f"(try a smaller --lr); {kept}")
        running_loss += loss_value
        running_mse += mse.mean().item()
        elapsed = time.time() - start
        if step % args.log_every == 0:
            print(f"step {step} loss {running_loss / args.log_every:.4f} mse {running_mse / args.log_every:.4f} "
                  f"{step / elapsed:.2f} steps/s elapsed {elapsed:.0f}s", flush=True)
            metadata["training.final_loss"] = f"{running_loss / args.log_every:.4f}"
            running_loss = running_mse = 0.0
        if args.out and args.save_every and step % args.save_every == 0 and step < args.steps:
            save(ema, cfg, args.out, dict(metadata, **snapshot_metadata(step, elapsed)))
            saved_step = step
        if args.trial_seconds and elapsed > args.trial_seconds:
            print(f"trial: {step} steps in {elapsed:.1f}s = {step / elapsed:.2f} steps/s", flush=True)
            break
    wall = time.time() - start
    since_log = step % args.log_every
    if since_log:
        # The steps after the last log line (all of them in a run shorter
        # than --log-every) give the final loss.
        metadata["training.final_loss"] = f"{running_loss / since_log:.4f}"
    if args.out:
        save(ema, cfg, args.out, dict(metadata, **snapshot_metadata(step, wall)))
    print(f"done: {step} steps in {wall:.0f}s, final loss {metadata.get('training.final_loss')}"
          + (f"; wrote {args.out}" if args.out else ""), flush=True)


if __name__ == "__main__":
    main()
