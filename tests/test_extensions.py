"""SBLDM extensions of the seed plan: gamma schedule, latent CutMix, adaptive early-stop sampling."""
import math

import numpy as np
import pytest
import torch

from medkit import diffusion
from medkit.augment import cutmix_boxes, latent_cutmix
from medkit.methods import sbldm


# ------------------------------------------------------------------------------------ gamma schedule
def test_gamma_one_is_the_linear_schedule():
    lin = diffusion.make_scheduler("ddpm", beta_schedule="linear")
    gam = diffusion.make_scheduler("ddpm", beta_schedule="gamma", gamma=1.0)
    assert torch.equal(lin.betas, gam.betas) and torch.equal(lin.alphas_cumprod, gam.alphas_cumprod)


def test_gamma_orders_the_noise_level():
    b = {g: diffusion.gamma_betas(1000, g) for g in (0.5, 1.0, 2.0)}
    for g, betas in b.items():  # endpoints are beta_min and beta_max whatever gamma is
        assert betas[0] == pytest.approx(1e-4) and betas[-1] == pytest.approx(0.02)
        assert np.all(np.diff(betas) > 0)
    mid = slice(1, 999)
    assert np.all(b[0.5][mid] > b[1.0][mid]) and np.all(b[1.0][mid] > b[2.0][mid])
    abar = {g: np.cumprod(1 - v) for g, v in b.items()}
    # gamma < 1 destroys the signal sooner: lower alpha-bar (and SNR) at every interior t
    assert np.all(abar[0.5][mid] < abar[1.0][mid]) and np.all(abar[1.0][mid] < abar[2.0][mid])
    # the formula itself at one point: t = 499 of T = 1000, gamma = 2
    assert b[2.0][499] == pytest.approx(1e-4 + (0.02 - 1e-4) * (499 / 999) ** 2, rel=1e-12)


def test_gamma_schedule_in_ddim_and_sbldm_config(tmp_path):
    sch = diffusion.make_scheduler("ddim", beta_schedule="gamma", gamma=2.0)
    assert torch.allclose(sch.betas.double(), torch.from_numpy(diffusion.gamma_betas(1000, 2.0)), atol=0, rtol=1e-6)
    cfg = sbldm.config("smoke", beta_schedule="gamma", schedule_gamma=0.5)
    assert sbldm.build_scheduler(cfg, "ddpm").betas[500] > sbldm.build_scheduler(sbldm.config("smoke"), "ddpm").betas[500]
    with pytest.raises(ValueError, match="schedule_gamma"):
        sbldm.config("smoke", beta_schedule="gamma", schedule_gamma=0)
    with pytest.raises(ValueError, match="beta_schedule"):
        sbldm.config("smoke", beta_schedule="sigmoid")
    fig = diffusion.plot_schedules({"linear": diffusion.make_scheduler("ddpm"), "gamma 2": sch}, tmp_path / "s.png")
    assert (tmp_path / "s.png").stat().st_size > 5000 and len(fig.axes) == 3
    c = diffusion.schedule_curves(sch)
    assert np.all(np.diff(c["log10_snr"]) < 0)  # SNR falls monotonically with t


# ------------------------------------------------------------------------------------- latent CutMix
def test_cutmix_p0_changes_nothing_and_draws_nothing():
    z = torch.randn(8, 4, 16, 16)
    state = torch.get_rng_state()
    assert latent_cutmix(z, 0.0) is z
    assert torch.equal(torch.get_rng_state(), state)
    # ... so the training loss with p = 0 is the one without CutMix, bit for bit
    cfg = sbldm.config("smoke")
    unet, sch = sbldm.build_unet(cfg), sbldm.build_scheduler(cfg, "ddpm")
    z = torch.randn(4, 4, 8, 8)
    torch.manual_seed(1)
    a = sbldm.ldm_loss(unet, z, 0, sch)
    torch.manual_seed(1)
    b = sbldm.ldm_loss(unet, z, 0, sch, {**cfg, "cutmix_p": 0.0})
    torch.manual_seed(1)
    c = sbldm.ldm_loss(unet, z, 0, sch, {**cfg, "cutmix_p": 1.0})
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_cutmix_pastes_the_partner_box_and_nothing_else():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(16, 4, 12, 10)
    mixed, info = latent_cutmix(z, 1.0, generator=g, return_info=True)
    assert info["applied"].all()
    for i in range(16):
        y0, y1, x0, x1 = info["boxes"][i].tolist()
        assert 0 <= y0 <= y1 <= 12 and 0 <= x0 <= x1 <= 10
        j = int(info["partner"][i])
        inside = torch.zeros(12, 10, dtype=torch.bool)
        inside[y0:y1, x0:x1] = True
        assert torch.equal(mixed[i][:, inside], z[j][:, inside])
        assert torch.equal(mixed[i][:, ~inside], z[i][:, ~inside])
        assert torch.equal(info["mask"][i, 0].bool(), inside)


def _reference_area(n, h, w, rng, alpha=1.0):
    """Mean clipped box area fraction with CutMix's rand_bbox formula (Yun et al. 2019), in numpy."""
    lam = rng.beta(alpha, alpha, n)
    cut = np.sqrt(1 - lam)
    ch, cw = (cut * h).astype(int), (cut * w).astype(int)
    cy, cx = rng.integers(0, h, n), rng.integers(0, w, n)
    y0, y1 = np.clip(cy - ch // 2, 0, h), np.clip(cy + ch - ch // 2, 0, h)
    x0, x1 = np.clip(cx - cw // 2, 0, w), np.clip(cx + cw - cw // 2, 0, w)
    return ((y1 - y0) * (x1 - x0)).mean() / (h * w)


@pytest.mark.parametrize("alpha", [1.0, 2.0])
def test_cutmix_box_statistics(alpha):
    n, h, w, p = 20000, 32, 32, 0.25
    g = torch.Generator().manual_seed(3)
    applied, partner, boxes = cutmix_boxes(n, h, w, p=p, alpha=alpha, generator=g)
    sd = math.sqrt(n * p * (1 - p))
    assert abs(int(applied.sum()) - n * p) < 5 * sd  # each sample mixed with probability p
    assert sorted(partner.tolist()) == list(range(n))  # a permutation
    area = ((boxes[:, 1] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 2])).float().mean().item() / (h * w)
    ref = _reference_area(n, h, w, np.random.default_rng(0), alpha)
    assert abs(area - ref) < 0.01, (area, ref)
    centre_y = ((boxes[:, 0] + boxes[:, 1]).float() / 2).mean().item()
    assert abs(centre_y - h / 2) < 0.5  # centres uniform, clipping symmetric
    with pytest.raises(ValueError, match="cutmix p"):
        cutmix_boxes(4, 8, 8, p=1.5)


# ---------------------------------------------------------------------------- early-stop sampling
def _point_mass_model(scheduler, c: float):
    """The exact eps-predictor when every training sample equals c: eps = (x_t - sqrt(abar) c) / sqrt(1 - abar)."""
    abar = scheduler.alphas_cumprod.double()

    def f(x, t):
        a = abar[t[0]].item()
        return ((x.double() - math.sqrt(a) * c) / math.sqrt(1 - a)).float()
    return f


def _mixture_model(scheduler, means=(-1.0, 0.8), std=0.3, weights=(0.4, 0.6)):
    """The exact eps-predictor for data whose elements are i.i.d. from a two-Gaussian mixture."""
    abar = scheduler.alphas_cumprod.double()

    def f(x, t):
        a = abar[t[0]].item()
        xd = x.double()
        sa, var_n = math.sqrt(a), 1 - a
        logps, post_means = [], []
        for m, w in zip(means, weights):
            var = a * std**2 + var_n  # x_t | component ~ N(sa m, a std^2 + 1 - a)
            logps.append(math.log(w) - 0.5 * (xd - sa * m) ** 2 / var - 0.5 * math.log(var))
            post_means.append(m + std**2 * sa * (xd - sa * m) / var)
        r = torch.softmax(torch.stack(logps), 0)
        x0 = (r * torch.stack(post_means)).sum(0)
        return ((xd - sa * x0) / math.sqrt(var_n)).float()
    return f


def test_early_stop_stops_early_on_an_easy_case():
    # Two narrow, well separated modes: x0_hat leaves the data mean, commits to a mode, then stays.
    sch = diffusion.make_scheduler("ddim")
    model = _mixture_model(sch, means=(-1.0, 1.0), std=0.02, weights=(0.5, 0.5))
    x0, steps = diffusion.sample_early_stop(model, sch, (6, 1, 4, 4), threshold=0.1, num_inference_steps=50,
                                            generator=torch.Generator().manual_seed(0), progress=False)
    assert steps.max() < 50, steps.tolist()  # every sample stopped before the 50 planned steps
    assert ((x0.abs() - 1).abs() < 0.1).all()  # and returned clean samples at a mode, not noise
    full = diffusion.sample(model, sch, (6, 1, 4, 4), num_inference_steps=50,
                            generator=torch.Generator().manual_seed(0), progress=False)
    assert (x0 - full).abs().max() < 0.05


def test_early_stop_on_a_point_mass_returns_it_at_step_two():
    # x0_hat is exact (= c) from the first step; the second confirms it and the sampler stops.
    sch = diffusion.make_scheduler("ddim")
    x0, steps = diffusion.sample_early_stop(_point_mass_model(sch, 0.7), sch, (3, 2, 4, 4), threshold=0.01,
                                            num_inference_steps=20, generator=torch.Generator().manual_seed(0),
                                            progress=False)
    assert steps.tolist() == [2, 2, 2]
    assert torch.allclose(x0, torch.full_like(x0, 0.7), atol=1e-4)


def test_early_stop_threshold_zero_is_the_plain_sampler():
    sch = diffusion.make_scheduler("ddim")
    model = _mixture_model(sch)
    a = diffusion.sample(model, sch, (3, 1, 6, 6), num_inference_steps=20,
                         generator=torch.Generator().manual_seed(5), progress=False)
    b, steps = diffusion.sample_early_stop(model, sch, (3, 1, 6, 6), threshold=0.0, num_inference_steps=20,
                                           generator=torch.Generator().manual_seed(5), progress=False)
    assert torch.equal(a, b) and steps.tolist() == [20, 20, 20]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_early_stop_is_never_further_from_the_full_sample_than_the_last_x_t(seed):
    n_steps, shape = 50, (8, 1, 8, 8)
    sch = diffusion.make_scheduler("ddim")
    model = _mixture_model(sch)
    # The full-length trajectory, recording x_t and the z0 estimate after every step.
    sch.set_timesteps(n_steps)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
    xs = []
    for t in sch.timesteps:
        x = sch.step(model(x, t.expand(shape[0])), t, x).prev_sample
        xs.append(x)
    full = xs[-1]
    stopped_early = 0
    for threshold in (0.005, 0.02, 0.05, 0.1, 0.3):
        out, steps = diffusion.sample_early_stop(model, sch, shape, threshold=threshold, num_inference_steps=n_steps,
                                                 generator=torch.Generator().manual_seed(seed), progress=False)
        for i in range(shape[0]):
            k = int(steps[i])
            stopped_early += k < n_steps
            err_stop = (out[i] - full[i]).norm().item()
            err_naive = (xs[k - 1][i] - full[i]).norm().item()  # what a sampler cut short at k would return
            assert err_stop <= err_naive + 1e-5, (threshold, i, k, err_stop, err_naive)
    assert stopped_early > 0  # the comparison above was about real early stops


def test_early_stop_in_sbldm_sample_reports_steps():
    cfg = sbldm.config("smoke")
    torch.manual_seed(0)
    vae, unet = sbldm.build_vae(cfg), sbldm.build_unet(cfg)
    sch = sbldm.build_scheduler(cfg, "ddim", clip=3.0)
    imgs, steps = sbldm.sample(unet, vae, sch, 5, (4, 8, 8), 1.0, steps=10, early_stop=0.5, progress=False,
                               return_steps=True)
    assert imgs.shape == (5, 1, 32, 32) and steps.shape == (5,)
    assert steps.min() >= 2 and steps.max() <= 10
    with pytest.raises(ValueError, match="early_stop"):
        sbldm.config("smoke", early_stop=-1)
