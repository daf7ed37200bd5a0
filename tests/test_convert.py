"""test_convert.py - tests tools/convert.py on official-style checkpoints.

Run: /usr/bin/python3 tests/test_convert.py BUILD_DIR   (from the repository root;
exit 77 = skipped when torch is missing).

Random DiT and FPDM networks from tools/reference.py are saved the way the
official code saves them (a plain state dict, and a train.py checkpoint
{'model', 'ema' with 'module.' prefixes, 'opt', 'args'}), converted, and the
converted file is checked: metadata, tensor values and dtypes, and the C
forward pass (BUILD_DIR/test_forward MODEL IO against the reference's float64
outputs). Broken checkpoints and unusable paths must be refused with a
one-line message and exit code 1.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile

try:
    import torch
except ImportError:
    print("torch is not installed: skipped")
    sys.exit(77)
import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tools"))
import reference  # noqa: E402
import safetensors_io  # noqa: E402

CONVERT = os.path.join(ROOT, "tools", "convert.py")
RESULTS = {"passed": 0, "failed": 0}


def check(condition, what):
    if condition:
        RESULTS["passed"] += 1
        print(f"ok   {what}")
    else:
        RESULTS["failed"] += 1
        print(f"FAIL {what}")
    return condition


def run_convert(*args, **run_options):
    result = subprocess.run([sys.executable, CONVERT, *args], capture_output=True, text=True, **run_options)
    return result.returncode, result.stdout + result.stderr


def official_state_dict(cfg, seed):
    net = reference.randomize(reference.Net(cfg), seed)
    return net, {name: value.clone() for name, value in net.state_dict().items()}


def train_checkpoint(model_sd, ema_sd, args):
    """As train.py saves it: the EMA copy's names carry the DDP 'module.' prefix
    when it was deep-copied from a wrapped model."""
    return {"model": model_sd, "ema": {"module." + k: v for k, v in ema_sd.items()},
            "opt": {}, "args": args, "train_steps": 5000}


def check_c_forward(build_dir, model_path, net, label, iters=None):
    program = os.path.join(build_dir, "test_forward")
    if not os.path.exists(program):
        print(f"note {label}: {program} not built; C forward check not run (not counted)")
        return
    gen = torch.Generator().manual_seed(7)
    size, channels = net.cfg["input_size"], net.cfg["in_channels"]
    x = torch.randn(2, channels, size, size, generator=gen)
    t = torch.tensor([999.0, 17.25])
    y = torch.tensor([net.cfg["num_classes"], 0])
    io, metadata = reference.forward_io(net, x, t, y, iters=iters)
    io_path = model_path.replace(".safetensors", ".io.safetensors")
    safetensors_io.write(io_path, io, metadata)
    result = subprocess.run([program, model_path, io_path], capture_output=True, text=True)
    if not check(result.returncode == 0, f"{label}: C forward matches the reference"):
        print(result.stdout + result.stderr)


def test_dit_plain_state_dict(tmp, build_dir):
    cfg = dict(architecture="dit", hidden_size=24, num_heads=2, patch_size=2, input_size=8,
               in_channels=4, num_classes=10, depth=2, learn_sigma=True)
    net, sd = official_state_dict(cfg, 1)
    checkpoint = os.path.join(tmp, "dit.pt")
    torch.save(sd, checkpoint)
    out = os.path.join(tmp, "dit.safetensors")
    code, text = run_convert(checkpoint, out, "--heads", "2")
    if not check(code == 0, f"DiT state dict converts (exit {code})"):
        print(text)
        return
    tensors, metadata = safetensors_io.read(out)
    expected = reference.config_to_metadata(cfg)
    check(all(metadata.get(k) == v for k, v in expected.items()), "DiT metadata as documented")
    check(metadata.get("source") == "dit.pt" and "converter" in metadata, "DiT provenance recorded")
    check(not any(k in metadata for k in ("fpdm.pre_depth", "fpdm.equivalent_depth",
                                          "fpdm.pre_post_timestep_conditioning")), "no FPDM-only keys in a DiT file")
    check(set(tensors) == set(sd), "DiT tensor names are the official ones")
    check(all(np.array_equal(tensors[k], sd[k].numpy()) for k in sd), "DiT f32 weights copied exactly")
    check(set(safetensors_io.read_dtypes(out).values()) == {"F32"}, "default dtype keeps f32")
    loaded, loaded_cfg = reference.load_model(out)
    check(loaded_cfg == reference.normalize_config(cfg), "DiT config reads back")
    check_c_forward(build_dir, out, loaded, "DiT f32")


def test_fpdm_train_checkpoint(tmp, build_dir):
    cfg = dict(architecture="fpdm", hidden_size=32, num_heads=4, patch_size=2, input_size=8,
               in_channels=4, num_classes=5, pre_depth=1, post_depth=2, learn_sigma=True)
    ema_net, ema_sd = official_state_dict(cfg, 2)
    _, model_sd = official_state_dict(cfg, 3)
    args = argparse.Namespace(model="DiT-XL/2", fixed_point=True, fixed_point_pre_depth=1,
                              fixed_point_post_depth=2, fixed_point_pre_post_timestep_conditioning=False,
                              predict_v=True, use_zero_terminal_snr=True, flow=False)
    checkpoint = os.path.join(tmp, "0005000.pt")
    torch.save(train_checkpoint(model_sd, ema_sd, args), checkpoint)

    out = os.path.join(tmp, "fpdm.safetensors")
    code, text = run_convert(checkpoint, out, "--heads", "4", "--dtype", "bf16", "--equivalent-depth", "7")
    if not check(code == 0, f"FPDM train.py checkpoint converts (exit {code})"):
        print(text)
        return
    check("args.model DiT-XL/2 does not match its tensors (hidden size 1152 where the checkpoint has 32"
          in text, "a recorded name that the tensors contradict: --heads used, with a warning")
    tensors, metadata = safetensors_io.read(out)
    check(metadata.get("fpdm.architecture") == "fpdm" and metadata.get("fpdm.pre_depth") == "1"
          and metadata.get("fpdm.post_depth") == "2", "FPDM depths inferred")
    check(metadata.get("fpdm.pre_post_timestep_conditioning") == "false", "conditioning setting taken from args")
    check(metadata.get("fpdm.prediction") == "v" and metadata.get("fpdm.zero_terminal_snr") == "true",
          "prediction and zero-SNR taken from args")
    check(metadata.get("fpdm.equivalent_depth") == "7" and metadata.get("fpdm.num_heads") == "4",
          "command-line heads and equivalent depth")
    dtypes = safetensors_io.read_dtypes(out)
    check(dtypes.pop("pos_embed") == "F32" and set(dtypes.values()) == {"BF16"}, "bf16 weights, f32 pos_embed")
    rounded = all(np.array_equal(tensors[k], safetensors_io.round_to_bf16(ema_sd[k].numpy()))
                  for k in ema_sd if k != "pos_embed")
    check(rounded, "EMA weights taken (not 'model') and rounded to bf16")

    override = os.path.join(tmp, "fpdm-cond.safetensors")
    code, text = run_convert(checkpoint, override, "--heads", "4", "--pre-post-timestep-conditioning")
    _, md = safetensors_io.read(override) if code == 0 else (None, {})
    check(md.get("fpdm.pre_post_timestep_conditioning") == "true", "command line overrides args")
    code, text = run_convert(checkpoint, override, "--heads", "4", "--no-predict-v", "--no-zero-terminal-snr")
    _, md = safetensors_io.read(override) if code == 0 else (None, {})
    check(md.get("fpdm.prediction") == "eps" and md.get("fpdm.zero_terminal_snr") == "false",
          "--no-predict-v and --no-zero-terminal-snr override args")
    code, text = run_convert(checkpoint, override)
    check(code == 1 and "the checkpoint's args.model DiT-XL/2 has hidden size 1152 where the checkpoint has 32"
          in text, "a recorded name the tensors contradict, alone: refused")

    loaded, _ = reference.load_model(out)
    check_c_forward(build_dir, out, loaded, "FPDM bf16, no pre/post timestep conditioning", iters=3)

    # A plain state dict records no setting: taken as off, the official
    # train.py's and sample.py's default, with a warning saying so.
    plain = os.path.join(tmp, "fpdm-plain.pt")
    torch.save(ema_sd, plain)
    plain_out = os.path.join(tmp, "fpdm-plain.safetensors")
    code, text = run_convert(plain, plain_out, "--heads", "4")
    _, md = safetensors_io.read(plain_out) if code == 0 else (None, {})
    check(md.get("fpdm.pre_post_timestep_conditioning") == "false" and "assuming it was off" in text,
          "unrecorded pre/post timestep conditioning: off, with a warning")

    # An EMA kept by torch.optim.swa_utils.AveragedModel: "module." names and
    # its integer count of averaged models, which is not a weight.
    averaged = {"module." + k: v for k, v in ema_sd.items()}
    averaged["n_averaged"] = torch.tensor(17, dtype=torch.long)
    averaged_path = os.path.join(tmp, "fpdm-averaged.pt")
    torch.save(averaged, averaged_path)
    averaged_out = os.path.join(tmp, "fpdm-averaged.safetensors")
    code, text = run_convert(averaged_path, averaged_out, "--heads", "4")
    tensors = safetensors_io.read(averaged_out)[0] if code == 0 else {}
    plain_tensors = safetensors_io.read(plain_out)[0] if os.path.exists(plain_out) else {}
    check(code == 0 and tensors.keys() == plain_tensors.keys()
          and all(np.array_equal(tensors[k], plain_tensors[k]) for k in tensors),
          f"AveragedModel EMA: its weights, n_averaged dropped ({text.strip()})")


def test_model_name_and_compiled_prefix(tmp, build_dir):
    # DiT-S's width (384, 6 heads): the name's hidden size must match.
    cfg = dict(architecture="fpdm", hidden_size=384, num_heads=6, patch_size=4, input_size=16,
               in_channels=3, num_classes=4, pre_depth=0, post_depth=1, learn_sigma=False)
    _, sd = official_state_dict(cfg, 4)
    args = {"model": "DiT-S/4", "fixed_point_pre_post_timestep_conditioning": True, "predict_v": False}
    checkpoint = os.path.join(tmp, "compiled.pt")
    torch.save({"model": sd, "ema": {"_orig_mod." + k: v for k, v in sd.items()}, "opt": {}, "args": args},
               checkpoint)
    out = os.path.join(tmp, "compiled.safetensors")
    code, text = run_convert(checkpoint, out, "--dtype", "f16", "--space", "pixel")
    if not check(code == 0, f"'_orig_mod.' prefix and heads from args.model (exit {code})"):
        print(text)
        return
    _, metadata = safetensors_io.read(out)
    check(metadata.get("fpdm.num_heads") == "6" and metadata.get("fpdm.learn_sigma") == "false"
          and metadata.get("fpdm.space") == "pixel" and metadata.get("fpdm.pre_depth") == "0"
          and metadata.get("fpdm.input_size") == "16", "S heads, no sigma, pixel space, pre depth 0")
    loaded, _ = reference.load_model(out)
    check_c_forward(build_dir, out, loaded, "FPDM f16 patch 4", iters=2)

    def refused_name(what, expect_in_message, *extra):
        refused_out = os.path.join(tmp, "refused-name.safetensors")
        code, text = run_convert(checkpoint, refused_out, *extra)
        if not check(code == 1 and expect_in_message in text and not os.path.exists(refused_out),
                     f"refused: {what}"):
            print(f"  exit {code}: {text.strip()}")

    refused_name("a model name with the wrong patch size", "--model DiT-S/2 has patch size 2 where the "
                 "checkpoint has 4", "--model", "DiT-S/2")
    refused_name("a model name with the wrong width", "--model DiT-B/4 has hidden size 768 where the "
                 "checkpoint has 384", "--model", "DiT-B/4")
    refused_name("--heads against the recorded args.model", "--heads 4 contradicts the checkpoint's "
                 "args.model DiT-S/4 (6 heads)", "--heads", "4")

    # A recorded name that is not official, or that the tensors contradict,
    # leaves the choice to the command line (with a warning), and alone it
    # is refused.
    for recorded, warning in (("FPDM-S/4", "is not an official model name"),
                              ("DiT-XL/4", "does not match its tensors")):
        torch.save({"model": sd, "ema": sd, "opt": {}, "args": dict(args, model=recorded)}, checkpoint)
        for flags in (("--heads", "6"), ("--model", "DiT-S/4")):
            code, text = run_convert(checkpoint, out, *flags)
            _, md = safetensors_io.read(out) if code == 0 else (None, {})
            check(md.get("fpdm.num_heads") == "6" and warning in text,
                  f"recorded {recorded}, {' '.join(flags)}: converted with a warning (exit {code})")
        code, text = run_convert(checkpoint, out)
        check(code == 1 and recorded in text, f"recorded {recorded} alone: refused (exit {code})")
    # A DiT's name also gives its depth: DiT-S has 12 blocks.
    dit_cfg = dict(architecture="dit", hidden_size=384, num_heads=6, patch_size=2, input_size=8,
                   in_channels=4, num_classes=3, depth=1)
    _, dit_sd = official_state_dict(dit_cfg, 9)
    dit_path = os.path.join(tmp, "dit-s-shallow.pt")
    torch.save(dit_sd, dit_path)
    code, text = run_convert(dit_path, os.path.join(tmp, "dit-s.safetensors"), "--model", "DiT-S/2")
    check(code == 1 and "--model DiT-S/2 has depth 12 where the checkpoint has 1" in text,
          "refused: a DiT name with the wrong depth")


def test_unconditional(tmp, build_dir):
    """The official train.py --unsupervised (FFHQ, CelebA-HQ, LSUN): one class,
    no class dropout, so its null class row is untrained; the file records it
    and fpdm-sample samples it without guidance."""
    cfg = dict(architecture="fpdm", hidden_size=32, num_heads=4, patch_size=2, input_size=8,
               in_channels=4, num_classes=1, pre_depth=1, post_depth=1)
    _, sd = official_state_dict(cfg, 10)
    args = {"model": "DiT-XL/2", "unsupervised": True, "dino_supervised": False,
            "fixed_point_pre_post_timestep_conditioning": False}
    checkpoint = os.path.join(tmp, "unsupervised.pt")
    torch.save(train_checkpoint(sd, sd, args), checkpoint)
    out = os.path.join(tmp, "unconditional.safetensors")
    code, text = run_convert(checkpoint, out, "--heads", "4")
    _, md = safetensors_io.read(out) if code == 0 else (None, {})
    if not check(md.get("fpdm.unconditional") == "true", f"args.unsupervised recorded (exit {code})"):
        print(text)
        return
    sampler = os.path.join(build_dir, "fpdm-sample")
    if os.path.exists(sampler):
        report = os.path.join(tmp, "unconditional.json")
        result = subprocess.run([sampler, "-m", out, "-n", "2", "--steps", "2", "--device", "cpu", "--quiet",
                                 "--latents-out", os.path.join(tmp, "u.npy"), "--report", report],
                                capture_output=True, text=True)
        settings = {}
        if result.returncode == 0:
            import json
            with open(report) as f:
                settings = json.load(f)["settings"]
        check(settings.get("cfg_scale") == 1 and settings.get("classes") == [0, 0],
              f"fpdm-sample samples it unguided by default (exit {result.returncode})")
        result = subprocess.run([sampler, "-m", out, "-n", "2", "--steps", "2", "--device", "cpu",
                                 "--cfg-scale", "4", "--latents-out", os.path.join(tmp, "g.npy")],
                                capture_output=True, text=True)
        check(result.returncode == 2 and "unconditional" in result.stderr
              and not os.path.exists(os.path.join(tmp, "g.npy")), "fpdm-sample refuses to guide it")
    else:
        print(f"note: {sampler} not built; sampling checks not run (not counted)")

    code, text = run_convert(checkpoint, out, "--heads", "4", "--no-unconditional")
    _, md = safetensors_io.read(out) if code == 0 else (None, {"fpdm.unconditional": "not converted"})
    # Written only when true, so older builds still read ordinary files.
    check("fpdm.unconditional" not in md, "--no-unconditional overrides args")
    plain = os.path.join(tmp, "one-class.pt")
    torch.save(sd, plain)
    code, text = run_convert(plain, out, "--heads", "4")
    check(code == 0 and "one-class checkpoint that does not record args.unsupervised" in text,
          "a one-class plain state dict: converted conditional, with a warning")
    code, text = run_convert(plain, out, "--heads", "4", "--unconditional")
    _, md = safetensors_io.read(out) if code == 0 else (None, {})
    check(md.get("fpdm.unconditional") == "true" and "one-class" not in text, "--unconditional for a plain state dict")

    many = dict(cfg, num_classes=3)
    _, many_sd = official_state_dict(many, 11)
    torch.save(train_checkpoint(many_sd, many_sd, args), checkpoint)
    code, text = run_convert(checkpoint, os.path.join(tmp, "many.safetensors"), "--heads", "4")
    check(code == 1 and "an unconditional model has one class" in text, "refused: unsupervised with 3 classes")
    torch.save(train_checkpoint(sd, sd, dict(args, unsupervised=False, dino_supervised=True)), checkpoint)
    code, text = run_convert(checkpoint, os.path.join(tmp, "dino.safetensors"), "--heads", "4")
    check(code == 1 and "DINO" in text, "refused: DINO-conditioned")


def test_mlp_ratio_round_trip(tmp, build_dir):
    """The C loader must rebuild the checkpoint's MLP width from the ratio
    written: 1/3 takes 16 digits, and 15/44 is rounded so that
    int(44 * 15 / 44) is 14 (the official code needs the next double up)."""
    for hidden, ratio, mlp_hidden in ((48, 1 / 3, 16), (44, 0.34090909090909094, 15)):
        cfg = dict(architecture="dit", hidden_size=hidden, num_heads=4, patch_size=2, input_size=8,
                   in_channels=4, num_classes=3, depth=1, mlp_ratio=ratio)
        net, sd = official_state_dict(cfg, 8)
        label = f"hidden {hidden}, MLP {mlp_hidden}"
        if not check(sd["blocks.0.mlp.fc1.weight"].shape[0] == mlp_hidden, f"{label}: network built as meant"):
            continue
        checkpoint = os.path.join(tmp, "ratio.pt")
        torch.save(sd, checkpoint)
        out = os.path.join(tmp, f"ratio-{hidden}.safetensors")
        code, text = run_convert(checkpoint, out, "--heads", "4")
        if not check(code == 0, f"{label}: converts (exit {code})"):
            print(text)
            continue
        check_c_forward(build_dir, out, net, label)
    # Too wide a network to convert here; test_model_config loads this value.
    tiny = reference.config_to_metadata(dict(architecture="dit", hidden_size=16380, num_heads=4, patch_size=2,
                                             input_size=8, in_channels=4, num_classes=3, depth=1,
                                             mlp_ratio=1 / 16380))["fpdm.mlp_ratio"]
    check(tiny == "0.00006105006105006105", f"a ratio below 1e-4 is written without an exponent ({tiny})")


def test_pos_embed_mismatch_warns(tmp):
    cfg = dict(architecture="dit", hidden_size=24, num_heads=2, patch_size=2, input_size=8,
               in_channels=4, num_classes=3, depth=1)
    _, sd = official_state_dict(cfg, 5)
    sd["pos_embed"] = sd["pos_embed"] + 0.5
    checkpoint = os.path.join(tmp, "pos.pt")
    torch.save(sd, checkpoint)
    out = os.path.join(tmp, "pos.safetensors")
    code, text = run_convert(checkpoint, out, "--heads", "2")
    tensors = safetensors_io.read(out)[0] if code == 0 else {}
    check(code == 0 and "pos_embed" in text and "warning" in text
          and np.array_equal(tensors.get("pos_embed"), sd["pos_embed"].numpy()),
          "changed pos_embed: warning, stored one kept")
    # A checkpoint saved in bf16 or fp16 holds the table rounded: no warning.
    _, sd = official_state_dict(cfg, 5)
    for dtype in (torch.bfloat16, torch.float16):
        rounded = {name: value.to(dtype) for name, value in sd.items()}
        torch.save(rounded, checkpoint)
        code, text = run_convert(checkpoint, out, "--heads", "2")
        check(code == 0 and "pos_embed" not in text, f"{dtype} checkpoint: its rounded pos_embed passes ({text.strip()})")


def test_refusals(tmp):
    cfg = dict(architecture="fpdm", hidden_size=24, num_heads=2, patch_size=2, input_size=8,
               in_channels=4, num_classes=10, pre_depth=1, post_depth=1)
    _, good = official_state_dict(cfg, 6)

    def refused(sd, what, expect_in_message, *extra):
        path = os.path.join(tmp, "bad.pt")
        torch.save(sd, path)
        out = os.path.join(tmp, "bad.safetensors")
        if os.path.exists(out):
            os.unlink(out)
        code, text = run_convert(path, out, *(extra or ("--heads", "2")))
        ok = code == 1 and expect_in_message in text and not os.path.exists(out)
        if not check(ok, f"refused: {what}"):
            print(f"  exit {code}: {text.strip()}")

    missing = dict(good)
    del missing["block_fixed_point.attn.proj.bias"]
    refused(missing, "missing tensor", "block_fixed_point.attn.proj.bias")
    wrong = dict(good)
    wrong["blocks_post.0.mlp.fc2.weight"] = torch.zeros(24, 95)
    refused(wrong, "wrong shape", "blocks_post.0.mlp.fc2.weight")
    extra = dict(good, **{"blocks_post.0.attn.q_norm.weight": torch.ones(12)})
    refused(extra, "unknown tensor", "q_norm")
    refused(good, "heads not dividing hidden", "heads", "--heads", "5")
    # The name is judged before its heads (16, which do not divide 24).
    refused(good, "a model name of another width", "--model DiT-XL/2 has hidden size 1152 where the checkpoint "
            "has 24", "--model", "DiT-XL/2")
    not_square = dict(good, pos_embed=torch.zeros(1, 15, 24))
    refused(not_square, "pos_embed not square", "square")
    odd_sigma = dict(good)
    odd_sigma["final_layer.linear.weight"] = torch.zeros(20, 24)
    odd_sigma["final_layer.linear.bias"] = torch.zeros(20)
    refused(odd_sigma, "final layer size fits neither sigma setting", "final_layer.linear.weight")
    code, text = run_convert(os.path.join(tmp, "bad.pt"), os.path.join(tmp, "x.safetensors"))
    check(code != 0 and "heads" in text, "refused: no heads given and none in the checkpoint")

    # Files fpdm-sample would refuse, or settings a DiT file has no place for.
    refused(good, "zero terminal SNR with eps prediction", "--predict-v", "--heads", "2", "--zero-terminal-snr")
    args = {"use_zero_terminal_snr": True, "predict_v": False}
    refused(train_checkpoint(good, good, args), "zero terminal SNR with eps prediction in args", "--predict-v")
    dit_cfg = dict(architecture="dit", hidden_size=24, num_heads=2, patch_size=2, input_size=8,
                   in_channels=4, num_classes=10, depth=1)
    _, dit = official_state_dict(dit_cfg, 7)
    refused(dit, "--equivalent-depth for a DiT", "--equivalent-depth", "--heads", "2", "--equivalent-depth", "7")
    refused(dit, "--no-pre-post-timestep-conditioning for a DiT", "pre-post-timestep-conditioning",
            "--heads", "2", "--no-pre-post-timestep-conditioning")


def test_file_errors(tmp):
    """Unusable paths: one line naming the path once, exit 1, no traceback,
    nothing left behind."""
    cfg = dict(architecture="dit", hidden_size=24, num_heads=2, patch_size=2, input_size=8,
               in_channels=4, num_classes=3, depth=1)
    _, sd = official_state_dict(cfg, 9)
    checkpoint = os.path.join(tmp, "paths.pt")
    torch.save(sd, checkpoint)

    def refused(what, checkpoint_path, out, expect_in_message, **run_options):
        code, text = run_convert(checkpoint_path, out, "--heads", "2", **run_options)
        leftovers = [name for name in os.listdir(tmp) if name.startswith(".convert-")]
        ok = (code == 1 and expect_in_message in text and "Traceback" not in text and len(text.splitlines()) == 1
              and not leftovers and not os.path.isfile(out))
        if not check(ok, f"refused: {what}"):
            print(f"  exit {code}, left {leftovers}: {text.strip()}")

    missing_folder = os.path.join(tmp, "missing")
    refused("output in a missing folder", checkpoint, os.path.join(missing_folder, "x.safetensors"),
            f"folder {missing_folder} does not exist")
    refused("output is a folder", checkpoint, tmp, f"{tmp}: is a folder")
    refused("output checked before the checkpoint is read", os.path.join(tmp, "missing.pt"),
            os.path.join(missing_folder, "x.safetensors"), "does not exist")
    # As a full disk would: writes past 4 KiB fail (Python ignores SIGXFSZ).
    refused("write fails", checkpoint, os.path.join(tmp, "big.safetensors"), "big.safetensors: cannot be written",
            preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)))
    if os.geteuid() == 0:
        print("note output in a read-only folder: root writes anyway; not run (not counted)")
    else:
        read_only = os.path.join(tmp, "read-only")
        os.mkdir(read_only, 0o555)
        refused("output in a read-only folder", checkpoint, os.path.join(read_only, "x.safetensors"),
                "is not writable")

    # The output must not replace the checkpoint, however it is named.
    before = open(checkpoint, "rb").read()
    for out in (checkpoint, os.path.join(tmp, ".", "paths.pt")):
        code, text = run_convert(checkpoint, out, "--heads", "2")
        check(code == 1 and "is the checkpoint itself" in text and open(checkpoint, "rb").read() == before,
              f"output {out} over its checkpoint refused ({text.strip()})")
    # An output that is a link replaces the file it names; the link stays.
    linked_target = os.path.join(tmp, "linked-target.safetensors")
    with open(linked_target, "wb") as sink:
        sink.write(b"old")
    link = os.path.join(tmp, "link.safetensors")
    os.symlink("linked-target.safetensors", link)
    code, text = run_convert(checkpoint, link, "--heads", "2")
    check(code == 0 and os.path.islink(link) and open(linked_target, "rb").read(8) != b"old",
          f"output through a link ({text.strip()})")
    # A file converted already is named as such.
    converted = os.path.join(tmp, "converted.safetensors")
    code, _ = run_convert(checkpoint, converted, "--heads", "2")
    code, text = run_convert(converted, os.path.join(tmp, "again.safetensors"), "--heads", "2")
    check(code == 1 and "is a .safetensors file already" in text, f"a converted file as input ({text.strip()})")

    missing = os.path.join(tmp, "missing.pt")
    code, text = run_convert(missing, os.path.join(tmp, "x.safetensors"), "--heads", "2")
    check(code == 1 and text.count(missing) == 1 and "cannot be read" in text,
          f"unreadable checkpoint named once ({text.strip()})")

    # The file gets the umask's mode, as a plainly created file does (a
    # temporary file's 0600 would hide it from a service's user).
    for umask, mode in ((0o022, 0o644), (0o027, 0o640)):
        out = os.path.join(tmp, f"mode-{umask:o}.safetensors")
        code, text = run_convert(checkpoint, out, "--heads", "2", preexec_fn=lambda: os.umask(umask))
        found = os.stat(out).st_mode & 0o777 if code == 0 else None
        check(found == mode, f"umask {umask:03o}: mode {mode:o} (found {found and format(found, 'o')})")


def main():
    if len(sys.argv) != 2:
        print("usage: test_convert.py BUILD_DIR")
        return 2
    build_dir = sys.argv[1]
    with tempfile.TemporaryDirectory(prefix="fpdm-convert-") as tmp:
        test_dit_plain_state_dict(tmp, build_dir)
        test_fpdm_train_checkpoint(tmp, build_dir)
        test_model_name_and_compiled_prefix(tmp, build_dir)
        test_unconditional(tmp, build_dir)
        test_mlp_ratio_round_trip(tmp, build_dir)
        test_pos_embed_mismatch_warns(tmp)
        test_refusals(tmp)
        test_file_errors(tmp)
    print(f"{RESULTS['passed']} passed, {RESULTS['failed']} failed")
    return 1 if RESULTS["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
