"""convert.py - converts an official DiT / FPDM PyTorch checkpoint into this
project's model file (.safetensors with the official tensor names and
"fpdm.*" metadata, see host/model_config.h).

Run:
    /usr/bin/python3 tools/convert.py CHECKPOINT OUT.safetensors [--heads N | --model DiT-XL/2]
        [--[no-]pre-post-timestep-conditioning] [--[no-]predict-v]
        [--[no-]zero-terminal-snr] [--[no-]unconditional] [--space latent|pixel]
        [--equivalent-depth 28] [--dtype f32|bf16|f16]

CHECKPOINT is a plain state dict (the released DiT checkpoints) or a train.py
checkpoint {'model', 'ema', 'opt', 'args', ...} (the EMA weights are taken);
'module.' and '_orig_mod.' key prefixes are removed. The architecture is
inferred from the tensor shapes; anything that does not add up is refused
with a message and exit code 1, and so is an output that cannot be written
(before the checkpoint is read). Settings recorded in a train.py checkpoint's
args are used unless given on the command line; where neither says,
pre/post timestep conditioning is taken as off, the default of the official
train.py and sample.py. The heads come from --heads, --model or a train.py
checkpoint's args.model (so a released state dict needs one of the first
two); a model name must match the tensors' hidden size and patch size (and
a DiT's depth).

Unconditional models (the official train.py --unsupervised: one class, no
class dropout, for FFHQ, CelebA-HQ, LSUN) are recorded as such, and
fpdm-sample then samples them without guidance, as the official sample.py
requires.
"""
import argparse
import math
import os
import re
import sys
import tempfile

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import reference  # noqa: E402
import safetensors_io  # noqa: E402

CONVERTER_VERSION = "1"
# The official model names' sizes (DiT's models.py): depth, hidden size, heads.
MODEL_SIZES = {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12), "S": (12, 384, 6)}
PREFIXES = ("module.", "_orig_mod.")


class ConversionError(Exception):
    """A refusal; main prints it after the file it concerns: path, else the checkpoint."""

    def __init__(self, message, path=None):
        super().__init__(message)
        self.path = path


OFFICIAL_NAME = r"DiT-(XL|L|B|S)/(\d+)"


def parse_model_name(name):
    """(depth, hidden size, heads, patch size) of an official name such as DiT-XL/2."""
    match = re.fullmatch(OFFICIAL_NAME, name)
    if not match:
        raise ConversionError(f"unknown model name {name!r} (expected e.g. DiT-XL/2, DiT-B/4; "
                              "give --heads N for another)")
    return (*MODEL_SIZES[match.group(1)], int(match.group(2)))


def name_mismatch(name, cfg):
    """How the official model `name` differs from the architecture the tensors
    give ('' when it does not). An FPDM's name keeps the depth of the DiT it
    replaces, so only a DiT's depth is compared."""
    depth, hidden, _, patch = parse_model_name(name)
    found = [("hidden size", hidden, cfg["hidden_size"]), ("patch size", patch, cfg["patch_size"])]
    if cfg["architecture"] == "dit":
        found.append(("depth", depth, cfg["depth"]))
    return ", ".join(f"{what} {named} where the checkpoint has {actual}"
                     for what, named, actual in found if named != actual)


def with_heads(cfg, num_heads):
    if num_heads <= 0 or cfg["hidden_size"] % num_heads:
        raise ConversionError(f"{num_heads} heads do not divide the hidden size {cfg['hidden_size']}")
    return dict(cfg, num_heads=num_heads)


def choose_heads(options, recorded_name, arrays, log):
    """The heads, from --heads, --model or the train.py args' model name, with
    each name checked against the tensors, and the command line against a
    recorded name, so a wrong count cannot pass silently (a file with the
    wrong head count loads and samples noise). Returns the inferred config."""
    name = options.model or recorded_name
    if options.heads is None and not name:
        raise ConversionError("the number of heads is not in the checkpoint: give --heads N or --model DiT-XL/2")
    cfg = infer_config(arrays)
    # A recorded name binds the command line only when it is an official name
    # that fits the tensors; otherwise the command line decides, with a word.
    recorded = str(recorded_name) if recorded_name else None
    recorded_fits = False
    if recorded and (options.heads is not None or options.model):
        recorded_mismatch = (name_mismatch(recorded, cfg) if re.fullmatch(OFFICIAL_NAME, recorded)
                             else None)
        if recorded_mismatch is None:
            log(f"warning: the checkpoint's args.model {recorded} is not an official model name; "
                "using the command line's", file=sys.stderr)
        elif recorded_mismatch:
            log(f"warning: the checkpoint's args.model {recorded} does not match its tensors "
                f"({recorded_mismatch}); using the command line's", file=sys.stderr)
        else:
            recorded_fits = True
    if options.heads is not None:
        recorded_heads = parse_model_name(recorded)[2] if recorded_fits else options.heads
        if recorded_heads != options.heads:
            raise ConversionError(f"--heads {options.heads} contradicts the checkpoint's args.model "
                                  f"{recorded} ({recorded_heads} heads); leave --heads out")
        return with_heads(cfg, options.heads)
    name = str(name)
    source = "--model" if options.model else "the checkpoint's args.model"
    mismatch = name_mismatch(name, cfg)
    if mismatch:
        raise ConversionError(f"{source} {name} has {mismatch}; give the right name, or --heads N")
    if options.model and recorded_fits and recorded != options.model:
        raise ConversionError(f"--model {options.model} contradicts the checkpoint's args.model "
                              f"{recorded}; leave --model out")
    return with_heads(cfg, parse_model_name(name)[2])


def strip_prefixes(key):
    changed = True
    while changed:
        changed = False
        for prefix in PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix):]
                changed = True
    return key


def args_as_dict(args):
    """train.py stores args as a dict (FPDM, Tap.as_dict) or an argparse.Namespace (DiT)."""
    if args is None:
        return {}
    if isinstance(args, dict):
        return dict(args)
    if hasattr(args, "__dict__"):
        return dict(vars(args))
    return {}


def load_checkpoint(path):
    """(state dict of numpy float32 arrays with official names, train args dict,
    which weights were taken: "ema", "model" or "state_dict")."""
    import inspect
    import torch
    # train.py checkpoints pickle their args (a dict or argparse.Namespace),
    # which newer torch refuses to load with its weights-only default.
    extra = {"weights_only": False} if "weights_only" in inspect.signature(torch.load).parameters else {}
    try:
        checkpoint = torch.load(path, map_location="cpu", **extra)
    except OSError as error:
        raise ConversionError(f"cannot be read: {error.strerror or error}")
    except Exception as error:  # torch raises many types for files it cannot parse
        with open(path, "rb") as source:
            start = source.read(9)
        if len(start) == 9 and start[8:9] == b"{":  # a header length, then the header's JSON
            raise ConversionError("is a .safetensors file already (convert.py reads the official "
                                  "PyTorch checkpoints, .pt)")
        raise ConversionError(f"cannot be read by torch.load: {error}")
    if not isinstance(checkpoint, dict):
        raise ConversionError(f"expected a state dict or a checkpoint dict, found {type(checkpoint).__name__}")
    train_args = {}
    source = "state_dict"
    if "ema" in checkpoint or "model" in checkpoint:
        train_args = args_as_dict(checkpoint.get("args"))
        source = "ema" if "ema" in checkpoint else "model"
        state = checkpoint[source]
        if not isinstance(state, dict):
            raise ConversionError("the checkpoint's weights are not a state dict")
    else:
        state = checkpoint
    # torch.optim.swa_utils.AveragedModel, a common EMA: its count of averaged
    # models beside the "module."-prefixed weights.
    if "n_averaged" in state and any(isinstance(key, str) and key.startswith("module.") for key in state):
        state = {key: value for key, value in state.items() if key != "n_averaged"}
    arrays = {}
    for key, value in state.items():
        if not isinstance(key, str) or not torch.is_tensor(value):
            raise ConversionError(f"entry {key!r} is not a named tensor")
        name = strip_prefixes(key)
        if name in arrays:
            raise ConversionError(f"tensor {name} appears twice (with and without a prefix)")
        if not value.is_floating_point():
            raise ConversionError(f"tensor {name} has non-float dtype {value.dtype}")
        arrays[name] = value.detach().float().cpu().numpy()
    return arrays, train_args, source


def _shape(arrays, name):
    if name not in arrays:
        raise ConversionError(f"missing tensor {name}")
    return tuple(arrays[name].shape)


def _count_blocks(arrays, prefix):
    pattern = re.compile(re.escape(prefix) + r"\.(\d+)\.")
    indices = {int(m.group(1)) for name in arrays for m in [pattern.match(name)] if m}
    if indices and indices != set(range(len(indices))):
        raise ConversionError(f"{prefix}: block indices {sorted(indices)} are not 0..{len(indices) - 1}")
    return len(indices)


def mlp_ratio_for(hidden, mlp_hidden):
    """A ratio that the official int(hidden * ratio) turns back into mlp_hidden:
    mlp_hidden / hidden, unless that quotient is rounded down so far that the
    product falls just short (44 * (15 / 44) gives 14.999...); the next double
    up then gives mlp_hidden exactly."""
    ratio = mlp_hidden / hidden
    if int(hidden * ratio) < mlp_hidden:
        ratio = math.nextafter(ratio, math.inf)
    return ratio


def infer_config(arrays):
    """The architecture implied by the tensor shapes (without the heads, which
    no tensor shape gives, and without training settings)."""
    weight = _shape(arrays, "x_embedder.proj.weight")
    if len(weight) != 4 or weight[2] != weight[3]:
        raise ConversionError(f"x_embedder.proj.weight has shape {list(weight)}, expected [D, C, p, p]")
    hidden, in_channels, patch = weight[0], weight[1], weight[2]
    pos = _shape(arrays, "pos_embed")
    if len(pos) != 3 or pos[0] != 1 or pos[2] != hidden:
        raise ConversionError(f"pos_embed has shape {list(pos)}, expected [1, T, {hidden}]")
    grid = int(round(pos[1] ** 0.5))
    if grid * grid != pos[1]:
        raise ConversionError(f"pos_embed has {pos[1]} tokens, not a square grid")
    table = _shape(arrays, "y_embedder.embedding_table.weight")
    if len(table) != 2 or table[1] != hidden or table[0] < 2:
        raise ConversionError(f"y_embedder.embedding_table.weight has shape {list(table)}, expected [classes+1, {hidden}]")
    final = _shape(arrays, "final_layer.linear.weight")
    if len(final) != 2 or final[1] != hidden:
        raise ConversionError(f"final_layer.linear.weight has shape {list(final)}, expected [p*p*out, {hidden}]")
    if final[0] == patch * patch * in_channels:
        learn_sigma = False
    elif final[0] == patch * patch * in_channels * 2:
        learn_sigma = True
    else:
        raise ConversionError(f"final_layer.linear.weight has {final[0]} outputs, expected "
                              f"{patch * patch * in_channels} or {2 * patch * patch * in_channels}")
    fixed_point = any(name.startswith("block_fixed_point.") for name in arrays)
    block_name = "block_fixed_point" if fixed_point else "blocks.0"
    fc1 = _shape(arrays, f"{block_name}.mlp.fc1.weight")
    if len(fc1) != 2 or fc1[1] != hidden or fc1[0] <= 0:
        raise ConversionError(f"{block_name}.mlp.fc1.weight has shape {list(fc1)}, expected [mlp_hidden, {hidden}]")
    if hidden % 4:
        raise ConversionError(f"hidden size {hidden} is not divisible by 4")
    cfg = {
        "architecture": "fpdm" if fixed_point else "dit",
        "hidden_size": hidden, "patch_size": patch,
        "input_size": grid * patch, "in_channels": in_channels, "num_classes": table[0] - 1,
        "learn_sigma": learn_sigma, "mlp_ratio": mlp_ratio_for(hidden, fc1[0]),
    }
    if fixed_point:
        cfg["pre_depth"] = _count_blocks(arrays, "blocks_pre")
        cfg["post_depth"] = _count_blocks(arrays, "blocks_post")
    else:
        cfg["depth"] = _count_blocks(arrays, "blocks")
        if cfg["depth"] == 0:
            raise ConversionError("no transformer blocks (blocks.N.*) found")
    return cfg


def check_tensors(arrays, cfg):
    """Every tensor the architecture needs, with its exact shape, and nothing else."""
    expected = {name: tuple(value.shape) for name, value in reference.Net(cfg).state_dict().items()}
    for name, shape in expected.items():
        found = _shape(arrays, name)
        if found != shape:
            raise ConversionError(f"tensor {name} has shape {list(found)}, expected {list(shape)}")
    unknown = sorted(set(arrays) - set(expected))
    if unknown:
        raise ConversionError(f"unknown tensors (not part of a DiT/FPDM with this shape): {', '.join(unknown[:8])}"
                              + (" ..." if len(unknown) > 8 else ""))
    for name, array in arrays.items():
        if not np.all(np.isfinite(array)):
            raise ConversionError(f"tensor {name} holds non-finite values")


def settings_from_train_args(train_args):
    settings = {}
    if train_args.get("flow"):
        raise ConversionError("flow-matching checkpoints (args.flow) are not supported")
    if train_args.get("dino_supervised"):
        raise ConversionError("DINO-conditioned checkpoints (args.dino_supervised) are not supported")
    if "unsupervised" in train_args:
        settings["unconditional"] = bool(train_args["unsupervised"])
    if "fixed_point_pre_post_timestep_conditioning" in train_args:
        settings["pre_post_timestep_conditioning"] = bool(train_args["fixed_point_pre_post_timestep_conditioning"])
    if "predict_v" in train_args:
        settings["prediction"] = "v" if train_args["predict_v"] else "eps"
    if "use_zero_terminal_snr" in train_args:
        settings["zero_terminal_snr"] = bool(train_args["use_zero_terminal_snr"])
    return settings


def check_output_path(out_path):
    """Refuses an output that cannot be written before the checkpoint is read,
    which takes a while for the large models."""
    if os.path.isdir(out_path):
        raise ConversionError("is a folder; give the name of the file to write", out_path)
    folder = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(folder):
        raise ConversionError(f"folder {folder} does not exist", out_path)
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ConversionError(f"folder {folder} is not writable", out_path)


def write_model_file(out_path, tensors, metadata):
    """Writes a temporary file beside out_path and renames it into place (the
    rename stays on one file system), so a failed write leaves no partial
    output; the temporary file is removed whatever happens. The file gets the
    mode a plainly created one would (mkstemp's is 0600, which would keep a
    shared models folder's users or a service from reading it)."""
    temp_path = None
    target = os.path.realpath(out_path)  # a link's target is what gets replaced
    try:
        handle, temp_path = tempfile.mkstemp(prefix=".convert-", suffix=".tmp",
                                             dir=os.path.dirname(target))
        umask = os.umask(0)
        os.umask(umask)
        os.fchmod(handle, 0o666 & ~umask)
        os.close(handle)
        safetensors_io.write(temp_path, tensors, metadata)
        os.replace(temp_path, target)
    except OSError as error:
        raise ConversionError(f"cannot be written: {error.strerror or error}", out_path)
    finally:
        if temp_path and os.path.exists(temp_path):
            os.unlink(temp_path)


def convert(checkpoint_path, out_path, options, log=print):
    check_output_path(out_path)
    if os.path.exists(out_path) and os.path.exists(checkpoint_path) and os.path.samefile(checkpoint_path, out_path):
        raise ConversionError("is the checkpoint itself, which the output would replace; give another name",
                              out_path)
    arrays, train_args, source = load_checkpoint(checkpoint_path)
    settings = settings_from_train_args(train_args)

    cfg = choose_heads(options, train_args.get("model"), arrays, log)

    if cfg["architecture"] == "dit":
        # A DiT file has no place for these, so they would be dropped unseen.
        for given, flag in ((options.equivalent_depth, "--equivalent-depth"),
                            (options.pre_post_timestep_conditioning, "--[no-]pre-post-timestep-conditioning")):
            if given is not None:
                raise ConversionError(f"{flag} applies to FPDM checkpoints; this one is a DiT")
    if options.pre_post_timestep_conditioning is not None:
        settings["pre_post_timestep_conditioning"] = options.pre_post_timestep_conditioning
    if options.predict_v is not None:
        settings["prediction"] = "v" if options.predict_v else "eps"
    if options.zero_terminal_snr is not None:
        settings["zero_terminal_snr"] = options.zero_terminal_snr
    if options.unconditional is not None:
        settings["unconditional"] = options.unconditional
    if settings.get("unconditional") and cfg["num_classes"] != 1:
        raise ConversionError(f"an unconditional model has one class (and its null class); this checkpoint "
                              f"has {cfg['num_classes']}")
    if cfg["num_classes"] == 1 and "unconditional" not in settings:
        log("warning: a one-class checkpoint that does not record args.unsupervised: taken as "
            "class-conditional, so guidance may use its null class; give --unconditional if it was "
            "trained with --unsupervised (no class dropout)", file=sys.stderr)
    if settings.get("zero_terminal_snr") and settings.get("prediction") != "v":
        raise ConversionError("zero terminal SNR without v prediction: fpdm-sample cannot sample such a model "
                              "(its first step has alpha_cumprod 0); give --predict-v if the model predicts v")
    if cfg["architecture"] == "fpdm" and "pre_post_timestep_conditioning" not in settings:
        # The official train.py and sample.py both default it to False (only
        # models.py's constructor defaults to True, and they always pass it).
        log("warning: the checkpoint does not record fixed_point_pre_post_timestep_conditioning; "
            "assuming it was off, the official train.py's default (override with "
            "--pre-post-timestep-conditioning)", file=sys.stderr)
        settings["pre_post_timestep_conditioning"] = False
    cfg.update(settings)
    cfg["space"] = options.space
    if options.equivalent_depth is not None:
        cfg["equivalent_depth"] = options.equivalent_depth
    if cfg["architecture"] == "fpdm" and cfg.get("equivalent_depth", 28) < cfg["pre_depth"] + cfg["post_depth"]:
        raise ConversionError("equivalent depth is smaller than pre + post depth")
    try:
        cfg = reference.normalize_config(cfg)
    except ValueError as error:
        raise ConversionError(str(error))
    check_tensors(arrays, cfg)

    grid = cfg["input_size"] // cfg["patch_size"]
    computed = reference.sincos_pos_embed_2d(cfg["hidden_size"], grid).astype(np.float32)
    # A 16-bit checkpoint stores the table rounded (by up to 2^-9 in bf16):
    # the deviation that counts is from the nearest of the three.
    deviation = min(float(np.abs(arrays["pos_embed"][0] - table).max())
                    for table in (computed, computed.astype(np.float16).astype(np.float32),
                                  safetensors_io.round_to_bf16(computed)))
    if deviation > 1e-5:
        log(f"warning: pos_embed differs from the 2-D sin-cos embedding by up to {deviation:.3g}; "
            "keeping the stored one", file=sys.stderr)

    tensors = {}
    for name, array in arrays.items():
        if name == "pos_embed" or options.dtype == "f32":
            tensors[name] = array
        elif options.dtype == "f16":
            if np.abs(array).max(initial=0.0) > 65504.0:
                raise ConversionError(f"tensor {name} overflows float16; use --dtype bf16 or f32")
            tensors[name] = array.astype(np.float16)
        else:
            tensors[name] = ("bf16", array)
    metadata = reference.config_to_metadata(cfg)
    metadata["converter"] = f"tools/convert.py version {CONVERTER_VERSION}"
    metadata["source"] = os.path.basename(checkpoint_path)
    metadata["source_weights"] = source

    write_model_file(out_path, tensors, metadata)
    log(f"wrote {out_path}: {cfg['architecture']} hidden {cfg['hidden_size']} heads {cfg['num_heads']} "
        f"patch {cfg['patch_size']} input {cfg['input_size']} classes {cfg['num_classes']}")
    return cfg


def parse_args(argv):
    parser = argparse.ArgumentParser(description="Convert an official DiT/FPDM checkpoint to a .safetensors model file.")
    parser.add_argument("checkpoint")
    parser.add_argument("output")
    parser.add_argument("--heads", type=int, help="attention heads (not stored in checkpoints)")
    parser.add_argument("--model", help="official model name, e.g. DiT-XL/2 (gives the heads)")
    # Each setting both ways, so that the command line can override what a
    # train.py checkpoint's args record either way.
    switch = argparse.BooleanOptionalAction
    parser.add_argument("--pre-post-timestep-conditioning", action=switch, default=None,
                        help="FPDM: pre/post blocks see the timestep (args.fixed_point_pre_post_timestep_conditioning)")
    parser.add_argument("--predict-v", action=switch, default=None, help="v prediction (args.predict_v)")
    parser.add_argument("--zero-terminal-snr", action=switch, default=None,
                        help="zero-terminal-SNR betas (args.use_zero_terminal_snr)")
    parser.add_argument("--unconditional", action=switch, default=None,
                        help="trained with one class and no class dropout (args.unsupervised)")
    parser.add_argument("--space", choices=("latent", "pixel"), default="latent")
    parser.add_argument("--equivalent-depth", type=int, default=None,
                        help="depth of the DiT an FPDM replaces (default 28; FPDM checkpoints only)")
    parser.add_argument("--dtype", choices=("f32", "bf16", "f16"), default="f32")
    options = parser.parse_args(argv)
    if options.heads is not None and options.model is not None:
        parser.error("give --heads or --model, not both")
    return options


def main(argv=None):
    options = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        convert(options.checkpoint, options.output, options)
    except ConversionError as error:
        print(f"convert.py: {error.path or options.checkpoint}: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
