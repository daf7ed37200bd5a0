"""experiments.py - the FPDM paper's sampling claims in miniature, on the MNIST
models: quality (tools/eval.py: class accuracy, Frechet distance of classifier
features) against compute (fpdm-sample --report: fixed-point iterations,
transformer-block evaluations, seconds) for the fixed-point solver modes, for
reallocations of one iteration budget, and for FPDM against DiT.

Needs matplotlib for the figure: `apt-get install -y python3-matplotlib` (this
script is the only user; CI does not run it). Run from the repository root:

    # the real run, with the options of docs/experiments/results.json (resumable:
    # finished settings are kept; a results JSON made with other options is refused)
    nice -n 5 /usr/bin/python3 tools/experiments.py --build build
    # a one-minute check of the whole pipeline on tiny random models
    /usr/bin/python3 tools/experiments.py --build build --quick
    # figure and tables again from the saved results, no sampling
    /usr/bin/python3 tools/experiments.py --plot-only

Every setting samples the same images: --per-class images of each class
(classes cycled 0..9 over the image index), the same --seed, so image i starts
from the same noise everywhere. Outputs: the results JSON
(docs/experiments/results.json), markdown tables (docs/experiments/tables.md)
and the figure (docs/experiments.png).
"""
import argparse
import json
import math
import os
import re
import subprocess
import sys
import time

import numpy as np

TOOLS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_DIR = os.path.dirname(TOOLS_DIR)
sys.path.insert(0, TOOLS_DIR)
import mnist  # noqa: E402
import safetensors_io  # noqa: E402

NUM_CLASSES = 10
# The low-compute end of the plan: this many DDPM steps, where one step must
# do more and an unconverged solve should cost quality.
FEW_STEPS = 5
# The machine is shared: OpenMP's busy-waiting barriers make these small
# models several times slower when other work holds the cores (docs/PERFORMANCE.md).
OMP_PASSIVE = "OMP_WAIT_POLICY=passive"
PARAMETERS_LINE = re.compile(r"(\d+) parameters")


# ---- the settings ------------------------------------------------------------

def setting(name, group, model, steps, iters=None, reuse=False, schedule="fixed", budget=None,
            tol=0.0):
    return {"name": name, "group": group, "model": model, "steps": steps, "iters": iters,
            "reuse": reuse, "schedule": schedule, "budget": budget, "tol": tol}


def plan(quick, full):
    """All settings, in the order they run. Group names: sweep (20 steps x
    k iterations, three solver modes), realloc (one budget spread
    differently), fewsteps (FEW_STEPS steps x k, with and without reuse: the
    low-compute end, where one step must do more), dit (the baseline's step
    sweep). `full` adds --tol with --reuse and the steps-for-iterations
    trades with --reuse."""
    few_iters = []
    if quick:
        steps, iters_list, tols, cap = 5, [1, 2, 4], [0.3], 4
        budget_splits, dit_steps = [(10, 1)], [3, 5]
    else:
        # tol values bracket the largest per-image residual after the
        # model's default 4 iterations (about 0.05 on the trained model).
        steps, iters_list, tols, cap = 20, [1, 2, 3, 4, 6, 8, 12], [0.1, 0.05, 0.02], 12
        # Budget 80 = 20 x 4, redistributed over fewer or more steps.
        budget_splits = [(10, 8), (40, 2), (80, 1)]
        few_iters = [1, 2, 4, 8]
        # DiT steps whose block evaluations (steps x depth 6) match FPDM's
        # 20 steps x (pre 1 + k + post 1) for k = 1, 2, 4, 8, 12, and its
        # FEW_STEPS x (2 + k) for k = 1, 2, 4, 8 (3, 4, 5, 8), plus 7.
        dit_steps = [3, 4, 5, 7, 8, 10, 13, 20, 33, 47]
    default_iters = iters_list[len(iters_list) // 2] if quick else 4
    out = []
    for reuse in (False, True):
        for k in iters_list:
            out.append(setting(f"fpdm-{steps}x{k}{'-reuse' if reuse else ''}", "sweep", "fpdm", steps,
                               iters=k, reuse=reuse))
        for tol in tols if full or not reuse else []:
            out.append(setting(f"fpdm-{steps}x{cap}-tol{tol:g}{'-reuse' if reuse else ''}", "sweep",
                               "fpdm", steps, iters=cap, reuse=reuse, tol=tol))
    budget = steps * default_iters
    for reuse in (False, True):
        suffix = "-reuse" if reuse else ""
        for schedule in ("increasing", "decreasing"):
            out.append(setting(f"fpdm-{steps}x{default_iters}-{schedule}{suffix}", "realloc", "fpdm", steps,
                               iters=default_iters, reuse=reuse, schedule=schedule, budget=budget))
        for split_steps, split_iters in budget_splits if full or not reuse else []:
            out.append(setting(f"fpdm-{split_steps}x{split_iters}{suffix}", "realloc", "fpdm", split_steps,
                               iters=split_iters, reuse=reuse))
    for reuse in (False, True):
        for k in few_iters:
            out.append(setting(f"fpdm-{FEW_STEPS}x{k}{'-reuse' if reuse else ''}", "fewsteps", "fpdm",
                               FEW_STEPS, iters=k, reuse=reuse))
    for s in dit_steps:
        out.append(setting(f"dit-{s}", "dit", "dit", s))
    return out, steps, default_iters, budget


# ---- running the sampler -------------------------------------------------------

def model_info(args, path):
    """Architecture, block counts and parameter count (from fpdm-sample
    --verbose) of a model file."""
    meta = safetensors_io.read_metadata(path)
    probe_dir = os.path.join(args.work, "probe")
    command = [args.sampler, "-m", path, "-n", "1", "--steps", "1", "--out", probe_dir, "--overwrite",
               "--device", args.device, "--verbose"]
    text = subprocess.run(command, capture_output=True, text=True, check=True).stderr
    match = PARAMETERS_LINE.search(text)
    info = {"path": path, "sha256": mnist.sha256_file(path), "architecture": meta.get("fpdm.architecture"),
            "parameters": int(match.group(1)) if match else None,
            "training_steps": meta.get("training.steps"),
            "training_command": meta.get("training.command")}
    if info["architecture"] == "fpdm":
        info["pre_depth"] = int(meta.get("fpdm.pre_depth", 1))
        info["post_depth"] = int(meta.get("fpdm.post_depth", 1))
        equivalent = int(meta.get("fpdm.equivalent_depth", 0))
        info["default_iters"] = equivalent - info["pre_depth"] - info["post_depth"]
    else:
        info["depth"] = int(meta["fpdm.depth"])
    return info


def sampler_command(args, spec, model_path, out_dir, report_path, latents_path):
    classes = ",".join(str(c) for c in range(NUM_CLASSES))
    command = ["env", OMP_PASSIVE, "nice", "-n", str(args.nice), args.sampler, "-m", model_path,
               "-n", str(args.num_images), "-b", str(args.batch_size), "--class", classes,
               "--seed", str(args.seed), "--steps", str(spec["steps"]), "--cfg-scale", str(args.cfg_scale),
               "--device", args.device, "--threads", str(args.threads), "--out", out_dir, "--overwrite",
               "--quiet",
               "--report", report_path, "--latents-out", latents_path]
    if spec["model"] == "fpdm":
        command += ["--iters", str(spec["iters"]), "--schedule", spec["schedule"]]
        if spec["budget"]:
            command += ["--budget", str(spec["budget"])]
        if spec["reuse"]:
            command.append("--reuse")
        if spec["tol"]:
            command += ["--tol", f"{spec['tol']:g}"]
    return command


class Scorer:
    """tools/eval.py's scores with the classifier and the digits loaded once."""

    def __init__(self, data_dir):
        import torch
        import eval as evaluation
        torch.set_num_threads(1)
        self.evaluation = evaluation
        self.classifier, _ = evaluation.load_classifier(evaluation.DEFAULT_CLASSIFIER)
        self.train = mnist.to_model_space(mnist.load_split(data_dir, "train")[0])
        self.test = mnist.to_model_space(mnist.load_split(data_dir, "t10k")[0])

    def __call__(self, images, labels):
        if images.shape[-1] != self.test.shape[-1]:
            # Only the --quick models (8x8): resized so the pipeline runs; their scores mean nothing.
            import torch
            import torch.nn.functional as F
            images = F.interpolate(torch.from_numpy(images[:, :1]), size=self.test.shape[-2:],
                                   mode="bilinear", align_corners=False).numpy()
        return self.evaluation.score(images[:, :1], labels, self.classifier, self.train, self.test)


def run_setting(args, spec, models, scorer):
    info = models[spec["model"]]
    run_dir = os.path.join(args.work, spec["name"])
    report_path = os.path.join(args.work, spec["name"] + ".json")
    latents_path = os.path.join(args.work, spec["name"] + ".npy")
    command = sampler_command(args, spec, info["path"], run_dir, report_path, latents_path)
    started = time.time()
    subprocess.run(command, check=True)
    wall = time.time() - started
    with open(report_path) as source:
        report = json.load(source)
    images = np.load(latents_path).astype(np.float32)
    labels = np.arange(args.num_images) % NUM_CLASSES
    scores = scorer(images, labels)
    iters_used = [step["iters_used"] / report["totals"]["batches"] for step in report["steps"]]
    if spec["model"] == "fpdm":
        blocks = spec["steps"] * (info["pre_depth"] + info["post_depth"]) + sum(iters_used)
    else:
        blocks = spec["steps"] * info["depth"]
    totals = report["totals"]
    return {"spec": spec, "model_sha256": info["sha256"], "command": " ".join(command),
            "iteration_plan": report["settings"].get("iteration_plan"),
            "iters_used_per_step": iters_used,
            "iterations_per_image": sum(iters_used),
            "residual_per_step": [step["residual"] for step in report["steps"]],
            "block_evaluations_per_image": blocks,
            "model_evaluations": totals["model_evaluations"],
            "fixed_point_iterations": totals["fixed_point_iterations"],
            "seconds": totals["seconds"], "seconds_per_image": totals["seconds"] / args.num_images,
            "wall_seconds_with_startup": wall,
            "class_accuracy": scores["class_accuracy"], "frechet_distance": scores["frechet_distance"],
            "frechet_distance_train_vs_t10k": scores["frechet_distance_train_vs_t10k"],
            "nearest_train_l2_ratio": scores["nearest_train_l2_ratio"]}


def add_distances_to_converged(args, results, reference_name, groups):
    """RMS pixel difference (in [-1, 1] units) of the images of each FPDM
    setting in `groups` to those of the most-iterated setting: every setting
    starts image i from the same noise, so this measures how far the solver's
    choices move the samples, which the population scores can hide."""
    reference_path = os.path.join(args.work, reference_name + ".npy")
    if not os.path.exists(reference_path):
        return
    reference = np.clip(np.load(reference_path), -1.0, 1.0)
    for name, result in results.items():
        path = os.path.join(args.work, name + ".npy")
        if (result["spec"]["model"] == "fpdm" and result["spec"]["group"] in groups
                and os.path.exists(path)):
            images = np.clip(np.load(path), -1.0, 1.0)
            result["rms_to_converged"] = float(np.sqrt(((images - reference) ** 2).mean()))
            result["converged_reference"] = reference_name


def forward_timings(args, models, iters_list):
    """Seconds per image and sampling step (CFG rows included, fastest of
    --repeat runs) from fpdm-bench, one batch of --batch-size images: the
    wall-time axis, measured in one go so load changes between sampling runs
    do not enter it."""
    out = {}
    for key, info in models.items():
        command = ["env", OMP_PASSIVE, "nice", "-n", str(args.nice), args.bench, "--model", info["path"],
                   "--mode", "forward",
                   "--batch-size", str(args.batch_size), "--cfg", "on" if args.cfg_scale > 1 else "off",
                   "--device", args.device, "--threads", str(args.threads), "--repeat", "5", "--json"]
        if info["architecture"] == "fpdm":
            command += ["--iters", ",".join(str(k) for k in iters_list)]
        result = json.loads(subprocess.run(command, capture_output=True, text=True, check=True).stdout)
        out[key] = {"command": " ".join(command), "gflop_per_row_base": result["settings"]["gflop_per_row_base"],
                    "gflop_per_row_iteration": result["settings"]["gflop_per_row_iteration"],
                    "seconds_per_image_step": {str(r["iters"]): r["seconds_min"] / r["batch_size"]
                                               for r in result["results"]}}
    return out


def estimated_seconds(timings, result):
    """Seconds per image of a setting from the forward timings: per step, the
    FPDM forward with that step's iterations (interpolated between the
    measured counts), or the DiT forward."""
    spec = result["spec"]
    table = timings[spec["model"]]["seconds_per_image_step"]
    if spec["model"] == "dit":
        return spec["steps"] * table["-1"]
    ks = sorted(int(k) for k in table)
    secs = [table[str(k)] for k in ks]
    return float(sum(np.interp(k, ks, secs) for k in result["iters_used_per_step"]))


# ---- tables and figure ----------------------------------------------------------

def describe(spec):
    if spec["model"] == "dit":
        return f"DiT, {spec['steps']} steps"
    text = f"{spec['steps']} steps x {spec['iters']}"
    if spec["schedule"] != "fixed":
        text += f", {spec['schedule']} (budget {spec['budget']})"
    if spec["tol"]:
        text += f", tol {spec['tol']:g} (cap {spec['iters']})"
    return text + (", reuse" if spec["reuse"] else "")


def row(result, timings):
    est = estimated_seconds(timings, result) if timings else float("nan")
    return (f"| {describe(result['spec'])} | {result['iterations_per_image']:.1f} | "
            f"{result['block_evaluations_per_image']:.0f} | {est * 1e3:.0f} | "
            f"{result['seconds_per_image'] * 1e3:.0f} | "
            f"{result['class_accuracy'] * 100:.1f} | {result['frechet_distance']:.2f} | "
            f"{result.get('rms_to_converged', float('nan')):.3f} |")


HEADER = ("| setting | FP iterations / image | block evals / image | est. ms / image | measured ms / image "
          "| class accuracy % | Frechet distance | RMS to converged |\n|---|---:|---:|---:|---:|---:|---:|---:|")


def tables(results, order, timings, models, config):
    by_group = {}
    for name in order:
        if name in results:
            by_group.setdefault(results[name]["spec"]["group"], []).append(results[name])
    lines = [f"Images: {config['num_images']} ({config['per_class']} per class), seed {config['seed']}, "
             f"CFG scale {config['cfg_scale']:g}, batch {config['batch_size']}, {config['threads']} threads.", ""]
    for key, info in models.items():
        extra = (f"pre {info['pre_depth']} + k + post {info['post_depth']} blocks, default k = {info['default_iters']}"
                 if info["architecture"] == "fpdm" else f"depth {info['depth']}")
        lines.append(f"- {key}: `{info['path']}` (sha256 {info['sha256'][:12]}), {info['parameters']} parameters, "
                     f"{extra}; `{info['training_command']}`")
    reference = next(iter(results.values()), None)
    if reference:
        lines.append(f"- Frechet distance of 1,000 training digits to t10k (the floor): "
                     f"{reference['frechet_distance_train_vs_t10k']:.2f}")
    titles = {"sweep": "Quality against fixed-point iterations (solver modes)",
              "realloc": "Reallocating one iteration budget",
              "fewsteps": f"Few steps ({FEW_STEPS}): iterations and reuse (RMS to {FEW_STEPS} x 8)",
              "dit": "DiT baseline (steps sweep)"}
    for group in ("sweep", "realloc", "fewsteps", "dit"):
        if group in by_group:
            lines += ["", f"### {titles[group]}", "", HEADER] + [row(r, timings) for r in by_group[group]]
    fpdm_runs = [r for r in by_group.get("sweep", []) + by_group.get("fewsteps", []) if not r["spec"]["tol"]]
    dit_runs = by_group.get("dit", [])
    if fpdm_runs and dit_runs and timings:
        lines += ["", "### FPDM against the nearest DiT setting", "",
                  "| FPDM setting | FPDM acc % / FD | DiT at nearest block evals | DiT acc % / FD "
                  "| DiT at nearest est. time | DiT acc % / FD |", "|---|---|---|---|---|---|"]
        for r in fpdm_runs:
            by_blocks = min(dit_runs, key=lambda d: abs(math.log(d["block_evaluations_per_image"]
                                                                 / r["block_evaluations_per_image"])))
            by_time = min(dit_runs, key=lambda d: abs(math.log(estimated_seconds(timings, d)
                                                               / estimated_seconds(timings, r))))

            def cell(x, measure):
                return (f"{describe(x['spec'])} ({measure(x):.0f}) | "
                        f"{x['class_accuracy'] * 100:.1f} / {x['frechet_distance']:.2f}")
            lines.append(f"| {describe(r['spec'])} ({r['block_evaluations_per_image']:.0f} blocks, "
                         f"{estimated_seconds(timings, r) * 1e3:.0f} ms) | {r['class_accuracy'] * 100:.1f} / "
                         f"{r['frechet_distance']:.2f} | "
                         f"{cell(by_blocks, lambda x: x['block_evaluations_per_image'])} | "
                         f"{cell(by_time, lambda x: estimated_seconds(timings, x) * 1e3)} |")
    if timings:
        lines += ["", "### Forward cost (fpdm-bench, milliseconds per image per step, CFG rows included)", "",
                  "| model | iterations | ms / image-step |", "|---|---:|---:|"]
        for key, timing in timings.items():
            for k, secs in timing["seconds_per_image_step"].items():
                lines.append(f"| {key} | {'-' if k == '-1' else k} | {secs * 1e3:.2f} |")
    return "\n".join(lines) + "\n"


def plot(results, timings, steps, default_iters, budget, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401  (log_axis)

    def log_axis(ax, ticks):
        ax.set_xscale("log")
        ax.set_xticks(sorted(set(round(t) for t in ticks)))
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.minorticks_off()

    def pick(predicate):
        return sorted((r for r in results.values() if predicate(r["spec"])),
                      key=lambda r: r["block_evaluations_per_image"])

    fixed = pick(lambda s: s["group"] == "sweep" and not s["tol"] and not s["reuse"])
    reuse = pick(lambda s: s["group"] == "sweep" and not s["tol"] and s["reuse"])
    few = pick(lambda s: s["group"] == "fewsteps" and not s["reuse"])
    few_reuse = pick(lambda s: s["group"] == "fewsteps" and s["reuse"])
    tol = pick(lambda s: s["group"] == "sweep" and s["tol"] and not s["reuse"])
    tol_reuse = pick(lambda s: s["group"] == "sweep" and s["tol"] and s["reuse"])
    dit = pick(lambda s: s["model"] == "dit")
    fig, axes = plt.subplots(3, 3, figsize=(16, 14))
    nan = float("nan")
    curves = [(fixed, "fixed k, no reuse", "o-"), (reuse, "fixed k, --reuse", "s-"),
              (tol, "--tol (iterations used)", "^--"), (tol_reuse, "--tol --reuse", "v--")]
    metrics = [("frechet_distance", "Frechet distance (lower is better)"),
               ("class_accuracy", "class accuracy (higher is better)"),
               ("rms_to_converged", "RMS pixel difference to the most-iterated run")]
    for col, (metric, label) in enumerate(metrics):
        ax = axes[col, 0]
        for runs, name, style in curves:
            if runs:
                ax.plot([r["iterations_per_image"] for r in runs], [r.get(metric, nan) for r in runs], style,
                        label=name)
        for runs in (tol, tol_reuse):
            for r in runs:
                ax.annotate(f"{r['spec']['tol']:g}", (r["iterations_per_image"], r.get(metric, nan)), fontsize=7,
                            xytext=(3, 3), textcoords="offset points")
        ax.set_xlabel(f"fixed-point iterations per image ({steps} steps; --tol points labelled with tol)")
        ax.set_ylabel(label)
        log_axis(ax, [r["iterations_per_image"] for r in fixed])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        if metric == "rms_to_converged":
            continue
        ax = axes[col, 2]
        for runs, name, style in [(fixed, f"FPDM {steps} steps, no reuse", "o-"),
                                  (reuse, f"FPDM {steps} steps, --reuse", "s-"),
                                  (few, f"FPDM {FEW_STEPS} steps, no reuse", "o:"),
                                  (few_reuse, f"FPDM {FEW_STEPS} steps, --reuse", "s:"),
                                  (dit, "DiT (steps sweep)", "D-")]:
            if runs:
                ax.plot([r["block_evaluations_per_image"] for r in runs], [r[metric] for r in runs], style,
                        label=name)
        ax.set_xlabel("transformer-block evaluations per image (CFG doubling not counted)")
        ax.set_ylabel(label)
        log_axis(ax, [r["block_evaluations_per_image"] for r in dit + fixed])
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower left")
    realloc = [r for r in results.values()
               if r["spec"]["group"] == "realloc"
               or (r["spec"]["group"] == "sweep" and not r["spec"]["tol"] and r["spec"]["iters"] == default_iters
                   and r["spec"]["steps"] == steps)]
    order = {"fixed": 0, "increasing": 1, "decreasing": 2}
    realloc.sort(key=lambda r: (r["spec"]["reuse"], r["spec"]["steps"] != steps,
                                order[r["spec"]["schedule"]], r["spec"]["steps"]))
    labels = [f"{r['spec']['steps']}x{r['spec']['iters']}"
              + ("" if r["spec"]["schedule"] == "fixed" else f" {r['spec']['schedule'][:3]}")
              + (" R" if r["spec"]["reuse"] else "") for r in realloc]
    for col, (metric, label) in enumerate(metrics):
        ax = axes[col, 1]
        colors = ["tab:orange" if r["spec"]["reuse"] else "tab:blue" for r in realloc]
        ax.bar(range(len(realloc)), [r.get(metric, nan) for r in realloc], color=colors)
        ax.set_xticks(range(len(realloc)))
        ax.set_xticklabels(labels, rotation=60, fontsize=8, ha="right")
        ax.set_ylabel(label)
        ax.set_title(f"budget {budget} iterations per image (R: --reuse; FD/accuracy axes zoomed)", fontsize=9)
        values = [r[metric] for r in realloc if metric in r]
        if values and metric != "rms_to_converged":
            # Zoomed: the differences are small next to the values (the axis does not start at 0).
            spread = max(max(values) - min(values), 1e-3 * max(abs(v) for v in values))
            ax.set_ylim(min(values) - 0.3 * spread, max(values) + 0.3 * spread)
        ax.grid(axis="y", alpha=0.3)
    ax = axes[2, 2]
    for r in tol + tol_reuse:
        ax.plot(range(1, len(r["iters_used_per_step"]) + 1), r["iters_used_per_step"],
                "v--" if r["spec"]["reuse"] else "^-", markersize=4,
                label=f"tol {r['spec']['tol']:g}{', reuse' if r['spec']['reuse'] else ''}")
    for r in realloc:
        if r["spec"]["schedule"] != "fixed" and not r["spec"]["reuse"]:
            ax.plot(range(1, len(r["iteration_plan"]) + 1), r["iteration_plan"], ":", color="gray")
    ax.set_xlabel("sampling step (1 = noisiest); dotted: the increasing / decreasing plans")
    ax.set_ylabel("fixed-point iterations used")
    ax.set_title("iterations per step", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    axes[0, 0].set_title("solver modes")
    axes[0, 2].set_title("FPDM against DiT at equal block evaluations")
    if timings and dit and fixed:
        inset = axes[0, 2].inset_axes([0.56, 0.5, 0.41, 0.4])
        for runs, style in [(fixed, "o-"), (reuse, "s-"), (dit, "D-")]:
            inset.plot([estimated_seconds(timings, r) * 1e3 for r in runs], [r["frechet_distance"] for r in runs],
                       style, markersize=3)
        inset.set_xlabel("est. ms / image", fontsize=6)
        inset.set_title("FD at equal wall time (fpdm-bench)", fontsize=7)
        inset.tick_params(labelsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


# ---- main ------------------------------------------------------------------------

def kept_results(saved, config, model_hashes, discard_stale):
    """The saved results this run keeps: a result stays valid while the
    sampling options and its own model file are unchanged. The results JSON
    holds hours of sampling (the committed one by default), so results that
    no longer match are dropped only with discard_stale; otherwise ValueError
    says why they do not match."""
    def sampling_config(c):  # "full" changes which settings run, not how
        return {key: value for key, value in (c or {}).items() if key != "full"}
    results = saved.get("results", {})
    if not results:
        return {}
    old, new = sampling_config(saved.get("config")), sampling_config(config)
    if old != new:
        stale = list(results)
        differences = ", ".join(f"{key} {old.get(key)} (this run: {new.get(key)})"
                                for key in sorted(set(old) | set(new)) if old.get(key) != new.get(key))
        reason = f"were made with {differences}"
    else:
        stale = [name for name, r in results.items() if r.get("model_sha256") != model_hashes[r["spec"]["model"]]]
        changed = sorted({results[name]["spec"]["model"] for name in stale})
        reason = f"were sampled from another {' and '.join(changed)} model file"
    if stale and not discard_stale:
        raise ValueError(f"{len(stale)} of its {len(results)} results {reason}: give the options they were made "
                         "with, another --results file, or --discard-stale to drop them")
    return {name: r for name, r in results.items() if name not in stale}


def parse_arguments(argv=None):
    """(parser, args) with the run's image count and batch size worked out."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--build", default="build", help="build folder with fpdm-sample and fpdm-bench")
    parser.add_argument("--fpdm", default="models/fpdm-mnist.safetensors")
    parser.add_argument("--dit", default="models/dit-mnist.safetensors")
    parser.add_argument("--per-class", type=int, default=20,
                        help="images per class (default: 20, as docs/experiments/results.json)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg-scale", type=float, default=3.0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="cpu",
                        help="fpdm-sample / fpdm-bench device (default: cpu, as the recorded results)")
    parser.add_argument("--nice", type=int, default=5)
    parser.add_argument("--data", default="/work/shared/data/mnist")
    parser.add_argument("--work", default="/tmp/fpdm-experiments", help="scratch folder for PNGs and reports")
    parser.add_argument("--results", help="results JSON (default: docs/experiments/results.json, "
                                          "or <work>/quick/results.json with --quick)")
    parser.add_argument("--tables", help="markdown tables (default: next to the results JSON)")
    parser.add_argument("--figure", help="figure (default: docs/experiments.png; with --results, "
                        "experiments.png beside it; with --quick, <work>/quick/experiments.png)")
    parser.add_argument("--quick", action="store_true", help="tiny random models, 2 images per class")
    parser.add_argument("--full", action="store_true",
                        help="also --tol with --reuse and the steps/iterations trades with --reuse")
    parser.add_argument("--plot-only", action="store_true", help="no sampling: redraw from the results JSON")
    parser.add_argument("--estimate", action="store_true",
                        help="time the forwards with fpdm-bench, print the plan's estimated sampling time, stop")
    parser.add_argument("--discard-stale", action="store_true",
                        help="drop the saved results that this run's options or model files do not match "
                             "(all of them when the options differ) instead of refusing to run")
    parser.add_argument("--only", help="comma-separated setting names, or fpdm / dit for all of one model, "
                                       "to (re)run; the forward timings are measured once every setting has a result")
    args = parser.parse_args(argv)
    for flag in ("per_class", "batch_size", "threads"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')}: {getattr(args, flag)} is less than 1")
    # main works from the repository; a path given is the caller's, read
    # from where it ran (and written relative to the repository when inside
    # it, so the recorded commands stay the same from any checkout). A value
    # equal to the default is the default: repository-relative.
    for key in ("build", "fpdm", "dit", "data", "work", "results", "tables", "figure"):
        given = getattr(args, key)
        if given is not None and given != parser.get_default(key):
            path = os.path.abspath(given)
            inside = os.path.commonpath([path, REPO_DIR]) == REPO_DIR
            setattr(args, key, os.path.relpath(path, REPO_DIR) if inside else path)
    args.sampler = os.path.join(args.build, "fpdm-sample")
    args.bench = os.path.join(args.build, "fpdm-bench")
    if args.quick:
        args.work = os.path.join(args.work, "quick")
        args.per_class = 2
    args.num_images = args.per_class * NUM_CLASSES
    args.batch_size = min(args.batch_size, args.num_images)
    return parser, args


def require_build(args):
    """Exits (1) naming the first of the build's two programs that is not there."""
    for program in (args.sampler, args.bench):
        if not os.access(program, os.X_OK):
            raise SystemExit(f"experiments.py: {program}: no such program (--build names the folder "
                             "that holds fpdm-sample and fpdm-bench)")


def run_config(args):
    """The options that the results JSON records and its results depend on."""
    return {"num_images": args.num_images, "per_class": args.per_class, "seed": args.seed,
            "cfg_scale": args.cfg_scale, "batch_size": args.batch_size, "threads": args.threads,
            "quick": args.quick, "full": args.full or args.quick}


def main():
    parser, args = parse_arguments()
    os.chdir(REPO_DIR)
    results_path = args.results or (os.path.join(args.work, "results.json") if args.quick
                                    else "docs/experiments/results.json")
    tables_path = args.tables or os.path.join(os.path.dirname(results_path), "tables.md")
    # A results file of its own keeps its figure beside it, as its tables.
    figure_path = args.figure or (os.path.join(args.work, "experiments.png") if args.quick
                                  else os.path.join(os.path.dirname(results_path), "experiments.png")
                                  if args.results else "docs/experiments.png")
    os.makedirs(args.work, exist_ok=True)
    os.makedirs(os.path.dirname(results_path) or ".", exist_ok=True)
    settings, steps, default_iters, budget = plan(args.quick, args.full or args.quick)
    order = [s["name"] for s in settings]
    unknown = {name for name in args.only.split(",") if name} - set(order) - {"fpdm", "dit"} if args.only else set()
    if unknown:
        parser.error(f"--only: no setting named {', '.join(sorted(unknown))} (allowed: fpdm, dit, "
                     f"{', '.join(order)})")

    config = run_config(args)
    saved = {}
    if os.path.exists(results_path):
        try:
            with open(results_path) as source:
                saved = json.load(source)
        except (OSError, ValueError) as error:
            raise SystemExit(f"experiments.py: {results_path}: not a readable results JSON ({error})")
    ran = False  # whether the results file changes
    if args.plot_only:
        if not saved:
            parser.error(f"--plot-only: no results in {results_path}")
        settings, steps, default_iters, budget = plan(saved["config"]["quick"], saved["config"]["full"])
        order = [s["name"] for s in settings]
        config, models, timings, results = saved["config"], saved["models"], saved.get("timings"), saved["results"]
    else:
        if args.quick:
            require_build(args)
            for key, name in (("fpdm", "tiny-fpdm"), ("dit", "tiny-dit")):
                path = os.path.join(args.work, f"{name}.safetensors")
                subprocess.run([args.bench, "--config", name, "--write-model", path], check=True,
                               capture_output=True)
                setattr(args, key, path)
        for key in ("fpdm", "dit"):
            if not os.path.isfile(getattr(args, key)):
                raise SystemExit(f"experiments.py: --{key} {getattr(args, key)}: no such model file")
        if not args.estimate:
            try:
                results = kept_results(saved, config, {key: mnist.sha256_file(getattr(args, key))
                                                       for key in ("fpdm", "dit")}, args.discard_stale)
            except ValueError as error:
                parser.error(f"{results_path}: {error}")
        require_build(args)
        models = {"fpdm": model_info(args, args.fpdm), "dit": model_info(args, args.dit)}
        if args.estimate:
            timings = forward_timings(args, models, sorted({s["iters"] for s in settings if s["model"] == "fpdm"}))
            per_image = 0.0
            for spec in settings:
                # --tol settings counted at the model's default iterations: a guess.
                k = spec["iters"] if not spec["tol"] else models["fpdm"]["default_iters"]
                per_image += estimated_seconds(timings, {"spec": spec, "iters_used_per_step": [k] * spec["steps"]})
            print(json.dumps(timings, indent=1))
            print(f"{len(settings)} settings: about {per_image:.2f} s per image (without scoring), "
                  f"{per_image * args.num_images / 60:.0f} min for {args.num_images} images")
            return
        machine = saved.get("machine") if results else None
        if not machine:
            cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                                 capture_output=True, text=True).stdout.strip()
            machine = {"cpu": cpu, "cores": os.cpu_count(), "load_at_start": os.getloadavg()}
        wanted = {name for name in args.only.split(",") if name} if args.only else None
        # Saved timings stay with the results they were measured beside: a
        # rerun that samples nothing leaves the file (and the tables' times)
        # as they were, rather than mixing another moment's timings in.
        timings = saved.get("timings") if results else None
        scorer = Scorer(args.data)
        for spec in settings:
            if wanted is not None:
                if spec["name"] not in wanted and spec["model"] not in wanted:
                    continue
            elif spec["name"] in results:
                continue
            started = time.time()
            ran = True
            results[spec["name"]] = run_setting(args, spec, models, scorer)
            r = results[spec["name"]]
            print(f"{spec['name']}: {r['iterations_per_image']:.1f} it/img, {r['block_evaluations_per_image']:.0f} "
                  f"blocks/img, acc {r['class_accuracy']:.3f}, FD {r['frechet_distance']:.2f} "
                  f"({time.time() - started:.0f}s)", flush=True)
            with open(results_path, "w") as sink:
                json.dump({"config": config, "machine": machine, "models": models, "timings": timings,
                           "results": results}, sink, indent=1)
        if len(results) == len(settings) and (ran or not timings):
            ran = True
            sweep = [s for s in settings if s["group"] == "sweep" and not s["tol"] and not s["reuse"]]
            add_distances_to_converged(args, results, max(sweep, key=lambda s: s["iters"])["name"],
                                       ("sweep", "realloc"))
            few = [s for s in settings if s["group"] == "fewsteps" and not s["reuse"]]
            if few:
                add_distances_to_converged(args, results, max(few, key=lambda s: s["iters"])["name"],
                                           ("fewsteps",))
            sweep_iters = sorted({s["iters"] for s in settings if s["model"] == "fpdm"})
            timings = forward_timings(args, models, sweep_iters)
        if ran:
            machine["load_at_end"] = os.getloadavg()
            with open(results_path, "w") as sink:
                json.dump({"config": config, "machine": machine, "models": models, "timings": timings,
                           "results": results}, sink, indent=1)
    text = tables(results, order, timings, models, config)
    with open(tables_path, "w") as sink:
        sink.write(text)
    print(text)
    plot(results, timings, steps, default_iters, budget, figure_path)
    print(f"wrote {results_path + ', ' if ran else ''}{tables_path}, {figure_path}")


if __name__ == "__main__":
    main()
