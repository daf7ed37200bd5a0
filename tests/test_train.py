"""test_train.py - tests of tools/train.py's training process (GaussianDiffusion):
eps and v prediction, the zero-terminal-SNR schedule, and the agreement of
its x0 with the sampler reference's (tools/reference_sampling.py).

    /usr/bin/python3 tests/test_train.py BUILD_DIR      (run from the repository root)

Exits 77 (skipped) without torch/numpy; prints "N passed, M failed".
"""
import math
import sys

from harness import run_tests, test  # skips without numpy/torch; tools/ on the path

import numpy as np  # noqa: E402
import torch  # noqa: E402

import reference_sampling  # noqa: E402
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


if __name__ == "__main__":
    sys.exit(run_tests())
