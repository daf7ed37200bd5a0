"""test_train.py - tests of tools/train.py's training process (GaussianDiffusion):
eps and v prediction, the zero-terminal-SNR schedule, and the agreement of
its x0 with the sampler reference's (tools/reference_sampling.py); the FPDM
training's iteration ranges; and its command line: what it refuses before
reading the data, and one-step runs on a few made-up digits.

    /usr/bin/python3 tests/test_train.py BUILD_DIR      (run from the repository root)

Exits 77 (skipped) without torch/numpy; prints "N passed, M failed".
"""
import contextlib
import gzip
import io
import math
import os
import struct
import sys
import tempfile

from harness import run_tests, test  # skips without numpy/torch; tools/ on the path

import numpy as np  # noqa: E402
import torch  # noqa: E402

import reference_sampling  # noqa: E402
import safetensors_io  # noqa: E402
import train  # noqa: E402



def diffusion_for(architecture="dit", predict_v=False):
    cfg = train.model_config(architecture, predict_v=predict_v)
    return cfg, train.GaussianDiffusion.for_config(cfg)


def batch(diffusion, seed=0, count=6):
    """x0 in [-1, 1] on the 256-level grid, timesteps covering both ends."""
    gen = torch.Generator().manual_seed(seed)
    x_start = torch.randint(0, 256, (count, 1, 32, 32), generator=gen).double() / 127.5 - 1.0
    t = torch.tensor([1, 2, 300, 700, diffusion.num_timesteps - 2, diffusion.num_timesteps - 1][:count])
    noise = torch.randn(x_start.shape, generator=gen, dtype=torch.float64)
    return x_start, t, noise, diffusion.q_sample(x_start, t, noise)


def exact_output(diffusion, x_start, t, noise, var_values):
    """The network output that predicts exactly: eps, or v = sqrt(a) eps - sqrt(1 - a) x0."""
    if diffusion.prediction == "v":
        a = diffusion._take(diffusion.alphas_cumprod, t, x_start)
        target = a.sqrt() * noise - (1 - a).sqrt() * x_start
    else:
        target = noise
    return torch.cat([target, var_values], dim=1)


@test
def default_config_is_eps_over_linear_betas():
    cfg, diffusion = diffusion_for()
    assert cfg["prediction"] == "eps" and not cfg["zero_terminal_snr"]
    expected = np.linspace(1e-4, 0.02, 1000)
    assert np.allclose(diffusion.betas, expected, rtol=0, atol=1e-15)
    assert diffusion.alphas_cumprod[-1] > 0


@test
def predict_v_config_has_zero_terminal_snr():
    cfg, diffusion = diffusion_for("fpdm", predict_v=True)
    assert cfg["prediction"] == "v" and cfg["zero_terminal_snr"]
    assert diffusion.alphas_cumprod[-1] == 0.0
    # The first alpha_bar is kept (the rescaling of Lin et al.).
    linear = np.cumprod(1 - np.linspace(1e-4, 0.02, 1000))
    assert math.isclose(diffusion.alphas_cumprod[0], linear[0], rel_tol=1e-12)
    assert np.all(np.isfinite(diffusion.v_loss_weight))
    assert diffusion.v_loss_weight[-1] == 0.0 and diffusion.v_loss_weight[500] > 0


@test
def exact_prediction_has_zero_mse_and_kl():
    """With the true eps / v and the posterior's own variance (var = -1 picks
    it), the MSE is 0 and so is the KL for every t > 0."""
    for predict_v in (False, True):
        _, diffusion = diffusion_for(predict_v=predict_v)
        x_start, t, noise, x_t = batch(diffusion)
        output = exact_output(diffusion, x_start, t, noise, -torch.ones_like(x_start))
        loss, mse, vb = diffusion.training_losses(output, x_start, x_t, t, noise)
        assert torch.all(mse.abs() < 1e-20), (predict_v, mse)
        # t = 1: the clipped posterior log variance is the posterior's own.
        assert torch.all(vb.abs() < 1e-9), (predict_v, vb)
        assert torch.allclose(loss, mse + vb)


@test
def wrong_prediction_costs():
    for predict_v in (False, True):
        _, diffusion = diffusion_for(predict_v=predict_v)
        x_start, t, noise, x_t = batch(diffusion, seed=1)
        output = exact_output(diffusion, x_start, t, noise, -torch.ones_like(x_start))
        output[:, :1] += 0.1
        _, mse, vb = diffusion.training_losses(output, x_start, x_t, t, noise)
        # The eps loss counts every t alike; the official v weight vanishes at
        # the zero-SNR end and is positive elsewhere.
        if predict_v:
            assert mse[-1] == 0 and torch.all(mse[:-1] > 0), mse
        else:
            assert torch.allclose(mse, torch.full_like(mse, 0.01)), mse
        # The VLB sees the prediction detached, but its value still moves
        # (by little at large t, where the posterior mean barely depends on it).
        assert torch.all(vb[:3] > 1e-6) and torch.all(vb >= 0), vb


@test
def x0_matches_the_sampler_reference():
    """train.py's x0 from eps / v is the one reference_sampling.py samples with
    (its Diffusion with no respacing has the same tables)."""
    for predict_v in (False, True):
        cfg, diffusion = diffusion_for(predict_v=predict_v)
        sampler = reference_sampling.Diffusion(cfg["noise_schedule"], cfg["num_train_timesteps"],
                                               cfg["zero_terminal_snr"], "1000")
        assert np.allclose(sampler.alphas_cumprod, diffusion.alphas_cumprod, rtol=1e-12, atol=0)
        gen = torch.Generator().manual_seed(2)
        x = torch.randn(1, 1, 4, 4, generator=gen, dtype=torch.float64)
        out = torch.randn(1, 1, 4, 4, generator=gen, dtype=torch.float64)
        for i in (3, 400, 998):
            ours = diffusion.predict_x0(out, x, torch.tensor([i]))
            theirs, _ = sampler.predict_x0_and_eps(i, x, out, cfg["prediction"])
            assert torch.allclose(ours, theirs, rtol=1e-12, atol=1e-12), (predict_v, i)


@test
def fixed_point_ranges_scale_with_the_default_iterations():
    """The official ranges at its 26 default iterations, the shipped models'
    at 4, and at least one iteration with gradient at 0."""
    assert train.fixed_point_iters(26) == ((0, 10), (1, 12))
    assert train.fixed_point_iters(4) == ((0, 2), (1, 2))
    assert train.fixed_point_iters(12) == ((0, 5), (1, 6))
    assert train.fixed_point_iters(0) == ((0, 0), (1, 1))


def run_train(*argv):
    """(exit status, stdout, stderr) of train.py's main with these arguments."""
    out, err = io.StringIO(), io.StringIO()
    status = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            train.main(list(argv))
        except SystemExit as exit:
            status = exit.code
            if isinstance(status, str):  # SystemExit("message") prints it and exits 1
                print(status, file=err)
                status = 1
    return status, out.getvalue(), err.getvalue()


def write_digits(folder, count=8, truncate=False):
    """A train split of `count` made-up digits, gzipped as MNIST ships it;
    truncate cuts the images file short."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(count, 28, 28), dtype=np.uint8)
    labels = np.arange(count, dtype=np.uint8) % 10
    for name, array in (("train-images-idx3-ubyte.gz", images), ("train-labels-idx1-ubyte.gz", labels)):
        header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
        data = gzip.compress(header + array.tobytes())
        with open(os.path.join(folder, name), "wb") as sink:
            sink.write(data[:len(data) // 2] if truncate and "images" in name else data)


@test
def bad_arguments_are_refused_before_any_work():
    """Usage errors exit 2 with one message and no traceback, before the data
    are read (--data names no folder here) and before --out is written."""
    with tempfile.TemporaryDirectory() as folder:
        out = os.path.join(folder, "m.safetensors")
        no_data = os.path.join(folder, "no-data")
        cases = [
            (("fpdm", "--depth", "1"), "equivalent depth counts its 1 pre and 1 post blocks: 1 is less than 2"),
            (("dit", "--log-every", "0"), "--log-every: 0 is less than 1"),
            (("dit", "--batch-size", "0"), "--batch-size: 0 is less than 1"),
            (("dit", "--steps", "0"), "--steps: 0 is less than 1"),
            (("dit", "--num-heads", "3"), "hidden_size 64 is not divisible by num_heads 3"),
            (("fpdm", "--no-grad-iters", "3", "1"), "--no-grad-iters 3 1: need 0 <= MIN <= MAX"),
            (("fpdm", "--with-grad-iters", "0", "2"), "--with-grad-iters 0 2: need 1 <= MIN <= MAX"),
            (("dit", "--with-grad-iters", "1", "2"), "apply to fpdm only"),
            (("dit", "--device", "nowhere"), "--device nowhere: "),
            (("dit", "--lr", "nan"), "--lr: nan is not a learning rate"),
            (("dit", "--lr", "-1"), "--lr: -1 is not a learning rate"),
            (("dit", "--ema-decay", "1"), "--ema-decay: 1 is not an EMA decay"),
            (("dit", "--label-lr-scale", "inf"), "--label-lr-scale: inf is not a factor"),
            (("dit", "--out", ""), "--out: empty value"),
            (("dit", "--patch-size", "0"), "--patch-size: 0 is less than 1"),
            (("dit", "--num-heads", "-4"), "--num-heads: -4 is less than 1"),
            (("dit", "--out", folder), f"--out {folder}: is a folder"),
        ]
        if not torch.cuda.is_available():
            cases.append((("dit", "--device", "cuda"), "--device cuda: this torch sees no CUDA device"))
        for arguments, message in cases:
            given_out = () if "--out" in arguments else ("--out", out)
            status, _, err = run_train(*arguments, *given_out, "--data", no_data)
            assert status == 2 and message in err and "Traceback" not in err, (arguments, status, err)
        missing = os.path.join(folder, "missing", "m.safetensors")
        status, _, err = run_train("dit", "--out", missing, "--data", no_data)
        assert status == 2 and f"{os.path.dirname(missing)} is not a writable folder" in err, (status, err)
        assert os.listdir(folder) == [], os.listdir(folder)


@test
def data_errors_name_the_file():
    with tempfile.TemporaryDirectory() as folder:
        write_digits(folder, truncate=True)
        out = os.path.join(folder, "m.safetensors")
        status, _, err = run_train("dit", "--out", out, "--data", folder, "--batch-size", "4")
        images = os.path.join(folder, "train-images-idx3-ubyte.gz")
        assert status == 1 and f"{images}: damaged gzip file" in err, (status, err)
        write_digits(folder)
        status, _, err = run_train("dit", "--out", out, "--data", folder, "--batch-size", "9")
        assert status == 2 and "--batch-size 9 is more than the 8 training digits" in err, (status, err)
        assert not os.path.exists(out)


@test
def fpdm_depth_sets_the_training_iterations():
    """--depth 2 trains (one step here) and says that the model samples no
    fixed-point iterations by default; a deeper FPDM trains with ranges scaled
    to its default iterations, or with the ones given, and records them."""
    with tempfile.TemporaryDirectory() as folder:
        write_digits(folder)
        common = ("--data", folder, "--steps", "1", "--batch-size", "4", "--log-every", "1")
        out = os.path.join(folder, "d2.safetensors")
        status, _, err = run_train("fpdm", "--out", out, "--depth", "2", *common)
        assert status == 0 and "--depth 2 leaves no fixed-point iterations by default" in err, (status, err)
        meta = safetensors_io.read_metadata(out)
        assert meta["fpdm.equivalent_depth"] == "2", meta
        assert meta["training.fixed_point_iters"] == "no_grad 0..0, with_grad 1..1", meta
        out = os.path.join(folder, "d8.safetensors")
        status, _, err = run_train("fpdm", "--out", out, "--depth", "8", *common)
        assert status == 0 and "note" not in err, (status, err)
        assert safetensors_io.read_metadata(out)["training.fixed_point_iters"] == "no_grad 0..2, with_grad 1..3"
        status, _, err = run_train("fpdm", "--out", out, "--depth", "8", "--with-grad-iters", "2", "4", *common)
        meta = safetensors_io.read_metadata(out)
        assert status == 0 and meta["training.fixed_point_iters"] == "no_grad 0..2, with_grad 2..4", meta
        assert meta["training.command"].endswith("--depth 8 --with-grad-iters 2 4"), meta["training.command"]


@test
def a_run_shorter_than_its_log_interval_records_its_loss():
    """The final loss comes from the steps after the last log line: all of
    them when the run is shorter than --log-every."""
    with tempfile.TemporaryDirectory() as folder:
        write_digits(folder)
        out = os.path.join(folder, "short.safetensors")
        status, printed, err = run_train("dit", "--out", out, "--data", folder, "--steps", "2", "--batch-size",
                                         "4", "--log-every", "5")
        loss = safetensors_io.read_metadata(out).get("training.final_loss") if status == 0 else None
        assert loss is not None and float(loss) > 0 and f"final loss {loss};" in printed, (status, loss, err)


@test
def a_trial_run_needs_no_out():
    """--trial-seconds measures throughput without a model file; --out is
    required otherwise, and a trial's seconds must be a number, 0 or more."""
    with tempfile.TemporaryDirectory() as folder:
        write_digits(folder)
        before = sorted(os.listdir(folder))
        common = ("--data", folder, "--batch-size", "4", "--steps", "1000")
        status, printed, err = run_train("dit", *common, "--trial-seconds", "0.001")
        assert status == 0 and "trial: 1 steps in" in printed, (status, printed, err)
        assert sorted(os.listdir(folder)) == before, os.listdir(folder)
        # Given --out, the trial writes the model of its steps.
        out = os.path.join(folder, "trial.safetensors")
        status, printed, err = run_train("dit", *common, "--trial-seconds", "0.001", "--out", out)
        assert status == 0 and f"wrote {out}" in printed, (status, printed, err)
        assert safetensors_io.read_metadata(out)["training.steps"] == "1"
        status, _, err = run_train("dit", *common)
        assert status == 2 and "--out is required" in err, (status, err)
        for bad in ("-1", "nan", "x"):
            status, _, err = run_train("dit", *common, "--trial-seconds", bad)
            assert status == 2 and "--trial-seconds" in err and "Traceback" not in err, (bad, status, err)


@test
def a_diverged_run_writes_nothing():
    """A loss that is not finite (here from a NaN weight to start from) stops
    the run with exit 1 before --out is written."""
    with tempfile.TemporaryDirectory() as folder:
        write_digits(folder)
        common = ("--data", folder, "--batch-size", "4", "--log-every", "1")
        start = os.path.join(folder, "start.safetensors")
        status, _, err = run_train("dit", "--out", start, "--steps", "1", *common)
        assert status == 0, err
        header, body = safetensors_io.read_raw(start)
        name = "final_layer.linear.bias"
        begin = header[name]["data_offsets"][0]
        nan = np.array([np.nan], np.float32).tobytes() if header[name]["dtype"] == "F32" else \
            np.array([0x7fc0], "<u2").tobytes()
        safetensors_io.write_raw(start, header, body[:begin] + nan + body[begin + len(nan):])
        out = os.path.join(folder, "diverged.safetensors")
        status, _, err = run_train("dit", "--out", out, "--init-from", start, "--steps", "3", *common)
        assert status == 1 and "step 1: the loss is nan: training diverged" in err, (status, err)
        assert "nothing was written" in err and not os.path.exists(out), (err, os.listdir(folder))


if __name__ == "__main__":
    sys.exit(run_tests())
