"""reference.py - the project's own PyTorch reference of the DiT and FPDM
(Fixed Point Diffusion Model) networks, written from the official semantics
(facebookresearch/DiT and lukemelas/fixed-point-diffusion-models models.py)
with exactly the official state-dict names, so official checkpoints load as is.

    cfg = normalize_config({...})            # see DEFAULTS / REQUIRED below
    net = Net(cfg); randomize(net, seed)
    out, solution = net(x, t, y, iters=None, init_solution=None)
    save_model(net, cfg, "m.safetensors", dtype="bf16"); net, cfg = load_model(path)

Used by the golden generators, the converter, the sampling reference and the
trainer. Works in float32 and, after net.double(), in float64.
"""
import decimal
import math
import os
import sys

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import safetensors_io  # noqa: E402

FREQUENCY_EMBEDDING_SIZE = 256
TIMESTEP_MAX_PERIOD = 10000.0
LAYER_NORM_EPS = 1e-6

REQUIRED = ("architecture", "hidden_size", "num_heads", "patch_size", "input_size",
            "in_channels", "num_classes")
DEFAULTS = {
    "learn_sigma": True,
    "mlp_ratio": 4.0,
    "pre_post_timestep_conditioning": True,
    "equivalent_depth": 28,
    "prediction": "eps",
    "zero_terminal_snr": False,
    "space": "latent",
    "noise_schedule": "linear",
    "num_train_timesteps": 1000,
    "unconditional": False,
}
_INT_KEYS = ("hidden_size", "num_heads", "patch_size", "input_size", "in_channels",
             "num_classes", "depth", "pre_depth", "post_depth", "equivalent_depth",
             "num_train_timesteps")
_BOOL_KEYS = ("learn_sigma", "pre_post_timestep_conditioning", "zero_terminal_snr", "unconditional")
_CHOICES = {
    "architecture": ("dit", "fpdm"),
    "prediction": ("eps", "v", "x0"),
    "space": ("latent", "pixel"),
    "noise_schedule": ("linear", "squaredcos_cap_v2"),
}
METADATA_PREFIX = "fpdm."


def normalize_config(cfg):
    """A copy of cfg with defaults filled in and the values checked."""
    out = dict(DEFAULTS)
    out.update(cfg)
    for key in REQUIRED:
        if key not in out:
            raise ValueError(f"config lacks {key}")
    depth_keys = ("depth",) if out["architecture"] == "dit" else ("pre_depth", "post_depth")
    for key in depth_keys:
        if key not in out:
            raise ValueError(f"config lacks {key} (needed for {out['architecture']})")
    unused = ("pre_depth", "post_depth") if out["architecture"] == "dit" else ("depth",)
    for key in unused:
        out.pop(key, None)
    for key, choices in _CHOICES.items():
        if out[key] not in choices:
            raise ValueError(f"config {key}={out[key]!r} is not one of {choices}")
    for key in _INT_KEYS:
        if key in out:
            out[key] = int(out[key])
    for key in _BOOL_KEYS:
        out[key] = bool(out[key])
    out["mlp_ratio"] = float(out["mlp_ratio"])
    if out["hidden_size"] % out["num_heads"]:
        raise ValueError(f"hidden_size {out['hidden_size']} is not divisible by num_heads {out['num_heads']}")
    if out["hidden_size"] % 4:
        raise ValueError("hidden_size must be divisible by 4 (2-D sin-cos position embedding)")
    if out["input_size"] % out["patch_size"]:
        raise ValueError("input_size must be divisible by patch_size")
    if out["unconditional"] and out["num_classes"] != 1:
        raise ValueError(f"an unconditional model has num_classes 1, not {out['num_classes']}")
    return out


def _format_metadata_value(value):
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        if value.is_integer():
            return str(int(value))
        # repr's shortest round-trip digits, but never its exponent form (below
        # 1e-4): the C reader takes plain decimals only.
        return format(decimal.Decimal(repr(value)), "f")
    return str(value)


_FPDM_ONLY_KEYS = ("pre_depth", "post_depth", "pre_post_timestep_conditioning", "equivalent_depth")


def config_to_metadata(cfg):
    """The "fpdm.<key>" string metadata documented in host/model_config.h. The
    C reader refuses FPDM-only keys in a DiT file, so they are left out there;
    "unconditional" is written only when true, so that the files of ordinary
    models stay readable by builds that predate the key."""
    cfg = normalize_config(cfg)
    return {METADATA_PREFIX + key: _format_metadata_value(value) for key, value in cfg.items()
            if (cfg["architecture"] == "fpdm" or key not in _FPDM_ONLY_KEYS)
            and (key != "unconditional" or value)}


def metadata_to_config(metadata):
    """Inverse of config_to_metadata; keys outside "fpdm." are ignored, unknown
    "fpdm." keys are an error (as in the C reader)."""
    known = set(REQUIRED) | set(DEFAULTS) | {"depth", "pre_depth", "post_depth"}
    cfg = {}
    for full_key, text in metadata.items():
        if not full_key.startswith(METADATA_PREFIX):
            continue
        key = full_key[len(METADATA_PREFIX):]
        if key not in known:
            raise ValueError(f"unknown metadata key {full_key}")
        if key in _BOOL_KEYS:
            if text not in ("true", "false"):
                raise ValueError(f"{full_key}={text!r} is not true/false")
            cfg[key] = text == "true"
        elif key in _INT_KEYS:
            cfg[key] = int(text)
        elif key == "mlp_ratio":
            cfg[key] = float(text)
        else:
            cfg[key] = text
    return normalize_config(cfg)


def sincos_pos_embed_2d(hidden_size, grid_size):
    """[grid*grid, D] float64: the official fixed embedding. Token i*G+j (row i,
    column j) gets [sin(j w), cos(j w)] in the first half of the channels and
    [sin(i w), cos(i w)] in the second, w_k = 10000^(-k/(D/4)); the column (w)
    coordinate comes first because the official grid is meshgrid(grid_w, grid_h)."""
    quarter = hidden_size // 4
    omega = 1.0 / TIMESTEP_MAX_PERIOD ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows, cols = np.divmod(np.arange(grid_size * grid_size), grid_size)

    def one_axis(positions):
        angles = np.outer(positions.astype(np.float64), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return np.concatenate([one_axis(cols), one_axis(rows)], axis=1)


def timestep_frequencies(t, dim=FREQUENCY_EMBEDDING_SIZE):
    """[N, dim] = [cos(t f), sin(t f)], f_k = 10000^(-k/(dim/2)), in t's dtype."""
    half = dim // 2
    freqs = torch.exp(-math.log(TIMESTEP_MAX_PERIOD)
                      * torch.arange(half, dtype=t.dtype, device=t.device) / half)
    angles = t[:, None] * freqs[None, :]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def layer_norm(x):
    return F.layer_norm(x, (x.shape[-1],), eps=LAYER_NORM_EPS)


def modulate(x, shift, scale):
    return x * (1 + scale[:, None, :]) + shift[:, None, :]


def gelu_tanh(x):
    return F.gelu(x, approximate="tanh")


class PatchEmbed(nn.Module):
    def __init__(self, patch_size, in_channels, hidden_size):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, hidden_size, kernel_size=patch_size, stride=patch_size)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)  # [N, T, D], tokens row-major


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQUENCY_EMBEDDING_SIZE, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))

    def forward(self, t):
        return self.mlp(timestep_frequencies(t.to(self.mlp[0].weight.dtype)))


class LabelEmbedder(nn.Module):
    def __init__(self, num_classes, hidden_size):
        super().__init__()
        # The extra last row is the "null" class used for classifier-free guidance.
        self.embedding_table = nn.Embedding(num_classes + 1, hidden_size)

    def forward(self, y):
        return self.embedding_table(y)


class Attention(nn.Module):
    def __init__(self, hidden_size, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(hidden_size, 3 * hidden_size)
        self.proj = nn.Linear(hidden_size, hidden_size)

    def forward(self, x):
        batch, tokens, hidden = x.shape
        head_dim = hidden // self.num_heads
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]  # [N, H, T, hd]
        weights = torch.softmax((q @ k.transpose(-2, -1)) / math.sqrt(head_dim), dim=-1)
        return self.proj((weights @ v).transpose(1, 2).reshape(batch, tokens, hidden))


class Mlp(nn.Module):
    def __init__(self, hidden_size, mlp_hidden):
        super().__init__()
        self.fc1 = nn.Linear(hidden_size, mlp_hidden)
        self.fc2 = nn.Linear(mlp_hidden, hidden_size)

    def forward(self, x):
        return self.fc2(gelu_tanh(self.fc1(x)))


class Block(nn.Module):
    """A DiT block with adaLN-Zero conditioning: block(x [N,T,D], c [N,D])."""

    def __init__(self, hidden_size, num_heads, mlp_ratio):
        super().__init__()
        self.attn = Attention(hidden_size, num_heads)
        self.mlp = Mlp(hidden_size, int(hidden_size * mlp_ratio))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x, c):
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = \
            self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa[:, None, :] * self.attn(modulate(layer_norm(x), shift_msa, scale_msa))
        return x + gate_mlp[:, None, :] * self.mlp(modulate(layer_norm(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size, patch_size, out_channels):
        super().__init__()
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x, c):
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(layer_norm(x), shift, scale))


class Net(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        cfg = normalize_config(cfg)
        self.cfg = cfg
        hidden, heads, ratio = cfg["hidden_size"], cfg["num_heads"], cfg["mlp_ratio"]
        self.fixed_point = cfg["architecture"] == "fpdm"
        self.patch_size = cfg["patch_size"]
        self.out_channels = cfg["in_channels"] * (2 if cfg["learn_sigma"] else 1)
        self.grid_size = cfg["input_size"] // cfg["patch_size"]

        self.x_embedder = PatchEmbed(cfg["patch_size"], cfg["in_channels"], hidden)
        self.t_embedder = TimestepEmbedder(hidden)
        self.y_embedder = LabelEmbedder(cfg["num_classes"], hidden)
        pos = sincos_pos_embed_2d(hidden, self.grid_size)
        self.register_buffer("pos_embed", torch.from_numpy(pos).float().unsqueeze(0))
        if self.fixed_point:
            self.blocks_pre = nn.ModuleList([Block(hidden, heads, ratio) for _ in range(cfg["pre_depth"])])
            self.block_pre_projection = nn.Linear(hidden, hidden)
            self.block_fixed_point_projection_fc1 = nn.Linear(2 * hidden, 2 * hidden)
            self.block_fixed_point_projection_fc2 = nn.Linear(2 * hidden, hidden)
            self.block_fixed_point = Block(hidden, heads, ratio)
            self.blocks_post = nn.ModuleList([Block(hidden, heads, ratio) for _ in range(cfg["post_depth"])])
        else:
            self.blocks = nn.ModuleList([Block(hidden, heads, ratio) for _ in range(cfg["depth"])])
        self.final_layer = FinalLayer(hidden, cfg["patch_size"], self.out_channels)

    def default_iters(self):
        cfg = self.cfg
        return max(cfg["equivalent_depth"] - cfg["pre_depth"] - cfg["post_depth"], 0)

    def first_block(self):
        """The block the golden "block0_out" checks (None for FPDM without pre blocks)."""
        if not self.fixed_point:
            return self.blocks[0] if len(self.blocks) else None
        return self.blocks_pre[0] if len(self.blocks_pre) else None

    def embed(self, x, t, y):
        dtype = self.pos_embed.dtype
        x_embed = self.x_embedder(x.to(dtype)) + self.pos_embed
        t_emb = self.t_embedder(t.to(dtype))
        y_emb = self.y_embedder(y.long())
        c = t_emb + y_emb
        c_pp = c if (not self.fixed_point or self.cfg["pre_post_timestep_conditioning"]) else y_emb
        return {"x_embed": x_embed, "t_emb": t_emb, "y_emb": y_emb, "c": c, "c_pp": c_pp}

    def fixed_point_step(self, z, injection, c):
        """One application of the fixed-point map (the block FPDM iterates)."""
        h = self.block_fixed_point_projection_fc2(
            gelu_tanh(self.block_fixed_point_projection_fc1(torch.cat([z, injection], dim=-1))))
        return self.block_fixed_point(h, c)

    def unpatchify(self, tokens):
        batch, p, c, g = tokens.shape[0], self.patch_size, self.out_channels, self.grid_size
        x = tokens.reshape(batch, g, g, p, p, c)
        return torch.einsum("nhwpqc->nchpwq", x).reshape(batch, c, g * p, g * p)

    def forward(self, x, t, y, iters=None, init_solution=None):
        e = self.embed(x, t, y)
        h = e["x_embed"]
        if not self.fixed_point:
            for block in self.blocks:
                h = block(h, e["c"])
            return self.unpatchify(self.final_layer(h, e["c"])), None
        for block in self.blocks_pre:
            h = block(h, e["c_pp"])
        injection = self.block_pre_projection(h)
        z = h if init_solution is None else init_solution.to(h.dtype)
        for _ in range(self.default_iters() if iters is None else iters):
            z = self.fixed_point_step(z, injection, e["c"])
        solution = z
        for block in self.blocks_post:
            z = block(z, e["c_pp"])
        return self.unpatchify(self.final_layer(z, e["c_pp"])), solution


@torch.no_grad()
def randomize(net, seed):
    """Random weights under which every term of the forward pass matters:
    adaLN outputs (gates, shifts, scales) far from zero, a nonzero final layer,
    and a fixed-point map that is contractive in z (its z-half of fc1 is small)
    so that many iterations stay bounded. pos_embed stays the sin-cos one."""
    gen = torch.Generator().manual_seed(int(seed))
    hidden = net.cfg["hidden_size"]

    def normal(tensor, std, mean=0.0):
        tensor.copy_(torch.randn(tensor.shape, generator=gen, dtype=torch.float64) * std + mean)

    def linear(layer, weight_std, bias_std=0.1):
        normal(layer.weight, weight_std)
        normal(layer.bias, bias_std)

    def block(b):
        linear(b.attn.qkv, 1.0 / math.sqrt(hidden))
        linear(b.attn.proj, 1.0 / math.sqrt(hidden))
        linear(b.mlp.fc1, 1.0 / math.sqrt(hidden))
        linear(b.mlp.fc2, 1.0 / math.sqrt(b.mlp.fc1.out_features))
        linear(b.adaLN_modulation[1], 0.5 / math.sqrt(hidden), 0.3)

    proj = net.x_embedder.proj
    linear(proj, 1.0 / math.sqrt(proj.weight[0].numel()))
    linear(net.t_embedder.mlp[0], 1.0 / math.sqrt(FREQUENCY_EMBEDDING_SIZE))
    linear(net.t_embedder.mlp[2], 1.0 / math.sqrt(hidden))
    normal(net.y_embedder.embedding_table.weight, 1.0)
    if net.fixed_point:
        for b in net.blocks_pre:
            block(b)
        linear(net.block_pre_projection, 1.0 / math.sqrt(hidden))
        fc1 = net.block_fixed_point_projection_fc1
        linear(fc1, 1.0 / math.sqrt(hidden))
        fc1.weight[:, :hidden] *= 0.5
        linear(net.block_fixed_point_projection_fc2, 1.0 / math.sqrt(2 * hidden))
        block(net.block_fixed_point)
        for b in net.blocks_post:
            block(b)
    else:
        for b in net.blocks:
            block(b)
    linear(net.final_layer.linear, 1.0 / math.sqrt(hidden))
    linear(net.final_layer.adaLN_modulation[1], 0.5 / math.sqrt(hidden), 0.3)
    net.pos_embed.copy_(torch.from_numpy(sincos_pos_embed_2d(hidden, net.grid_size)).unsqueeze(0))
    return net


_TORCH_DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


@torch.no_grad()
def round_parameters(net, dtype):
    """Rounds the parameters (not pos_embed, which is stored float32) in place to
    the values `dtype` can hold, so the reference computes with what is stored."""
    if dtype == "f32":
        target = torch.float32
    elif dtype in _TORCH_DTYPES:
        target = _TORCH_DTYPES[dtype]
    else:
        raise ValueError(f"dtype must be f32, f16 or bf16, not {dtype!r}")
    for param in net.parameters():
        param.copy_(param.float().to(target).to(param.dtype))


def state_dict_arrays(net):
    """{official name: float32 numpy array} of the network's state."""
    return {name: value.detach().float().cpu().numpy() for name, value in net.state_dict().items()}


def save_model(net, cfg, path, dtype="f32", extra_metadata=None):
    """Writes the model file: official tensor names, "fpdm.*" metadata, weights
    in dtype (pos_embed always float32). Rounds net's parameters in place first."""
    round_parameters(net, dtype)
    tensors = {}
    for name, array in state_dict_arrays(net).items():
        if name == "pos_embed" or dtype == "f32":
            tensors[name] = array
        elif dtype == "f16":
            tensors[name] = array.astype(np.float16)
        else:
            tensors[name] = ("bf16", array)
    metadata = config_to_metadata(cfg)
    if extra_metadata:
        metadata.update(extra_metadata)
    safetensors_io.write(path, tensors, metadata)


def forward_io(net, x, t, y, iters=None, init_solution=None):
    """The tensors of a forward-pass check file (as tests/golden/forward-*.io):
    inputs and expected results computed in float64 on a copy of net from its
    current weights, stored float32, plus the metadata ("iters" for FPDM)."""
    import copy
    net64 = copy.deepcopy(net).double().eval()
    x, t = x.float(), t.float()
    with torch.no_grad():
        pieces = net64.embed(x.double(), t.double(), y)
        init64 = None if init_solution is None else init_solution.float().double()
        if net64.fixed_point and iters is None:
            iters = net64.default_iters()
        out, solution = net64(x.double(), t.double(), y, iters=iters, init_solution=init64)
        first = net64.first_block()
        condition = pieces["c_pp"] if net64.fixed_point else pieces["c"]
        block0 = None if first is None else first(pieces["x_embed"], condition)

    def f32(tensor):
        return tensor.detach().float().numpy()

    io = {"x": f32(x), "t": f32(t), "y": y.long().numpy(), "out": f32(out), "t_emb": f32(pieces["t_emb"]),
          "y_emb": f32(pieces["y_emb"]), "x_embed": f32(pieces["x_embed"])}
    if block0 is not None:
        io["block0_out"] = f32(block0)
    metadata = {}
    if net64.fixed_point:
        io["solution"] = f32(solution)
        metadata["iters"] = str(iters)
        if init_solution is not None:
            io["init_solution"] = f32(init_solution)
    return io, metadata


def load_model(path):
    tensors, metadata = safetensors_io.read(path)
    cfg = metadata_to_config(metadata)
    net = Net(cfg)
    state = {name: torch.from_numpy(np.array(array, dtype=np.float32)) for name, array in tensors.items()}
    net.load_state_dict(state, strict=True)
    return net, cfg
