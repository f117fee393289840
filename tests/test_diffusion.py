"""Scheduler wiring: diffusers schedules pinned to known values, trailing spacing, exact DDIM inversion."""
import pytest
import torch

from medkit import diffusion


@pytest.mark.parametrize("schedule, abar_mid, abar_last", [
    ("linear", 0.0785872340, 4.0358303e-05),   # DDPM's linear [1e-4, 0.02], T = 1000
    ("cosine", 0.4938434660, 2.4287350e-09),   # Nichol & Dhariwal's cosine (beta capped at 0.999)
])
def test_beta_schedules_pinned(schedule, abar_mid, abar_last):
    s = diffusion.make_scheduler("ddpm", beta_schedule=schedule)
    assert s.alphas_cumprod[499].item() == pytest.approx(abar_mid, rel=1e-6)
    assert s.alphas_cumprod[-1].item() == pytest.approx(abar_last, rel=1e-4)
    if schedule == "linear":
        assert s.betas[0].item() == pytest.approx(1e-4) and s.betas[-1].item() == pytest.approx(0.02)


def test_trailing_spacing_starts_at_pure_noise():
    s = diffusion.make_scheduler("ddim")
    s.set_timesteps(50)
    assert s.timesteps.tolist()[:3] == [999, 979, 959] and s.timesteps.tolist()[-1] == 19
    leading = diffusion.make_scheduler("ddim", timestep_spacing="leading")
    leading.set_timesteps(50)
    assert leading.timesteps[0].item() == 980  # what "leading" (and MONAI's DDIM) would start from


@pytest.mark.parametrize("prediction", ["epsilon", "sample", "v_prediction"])
def test_ddim_with_oracle_model_recovers_x0(prediction):
    """With the exact network output for a known x0, deterministic DDIM lands on x0."""
    s = diffusion.make_scheduler("ddim", prediction_type=prediction)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(2, 3, 4, 4, generator=g) * 2 - 1
    abar = s.alphas_cumprod

    def oracle(x_t, t):
        a = abar[t].view(-1, 1, 1, 1)
        eps = (x_t - a.sqrt() * x0) / (1 - a).sqrt()
        return diffusion.training_target(s, x0, eps, t)

    out = diffusion.sample(oracle, s, x0.shape, num_inference_steps=20, generator=g, progress=False)
    assert torch.allclose(out, x0, atol=1e-4)


def test_sampling_is_seeded():
    s = diffusion.make_scheduler("ddim")
    f = lambda x, t: 0.1 * x  # noqa: E731
    a = diffusion.sample(f, s, (2, 1, 4, 4), num_inference_steps=5, eta=0.5,
                         generator=torch.Generator().manual_seed(3), progress=False)
    b = diffusion.sample(f, s, (2, 1, 4, 4), num_inference_steps=5, eta=0.5,
                         generator=torch.Generator().manual_seed(3), progress=False)
    c = diffusion.sample(f, s, (2, 1, 4, 4), num_inference_steps=5, eta=0.5,
                         generator=torch.Generator().manual_seed(4), progress=False)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_training_targets():
    s = diffusion.make_scheduler("ddpm", prediction_type="v_prediction")
    x0, eps, t = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 2.0), torch.tensor([500])
    a = s.alphas_cumprod[500]
    assert torch.allclose(diffusion.training_target(s, x0, eps, t), a.sqrt() * eps - (1 - a).sqrt() * x0)
    x_t = diffusion.add_noise(s, x0, eps, t)
    assert torch.allclose(x_t, a.sqrt() * x0 + (1 - a).sqrt() * eps)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kind="euler"), "scheduler kind"),
    (dict(beta_schedule="sigmoid"), "beta_schedule"),
    (dict(prediction_type="x0"), "prediction_type"),
    (dict(timestep_spacing="middle"), "timestep_spacing"),
])
def test_bad_scheduler_settings(kwargs, match):
    kind = kwargs.pop("kind", "ddim")
    with pytest.raises(ValueError, match=match):
        diffusion.make_scheduler(kind, **kwargs)


def test_clip_sample_bounds_the_x0_estimate():
    """With clip_sample the last DDIM step returns the clipped z0 estimate, even from a wild network."""
    f = lambda x, t: 1000 * x  # noqa: E731  (eps estimates far off the data)
    clipped = diffusion.make_scheduler("ddim", beta_schedule="cosine", clip_sample=True, clip_sample_range=2.0)
    out = diffusion.sample(f, clipped, (2, 1, 4, 4), num_inference_steps=10,
                           generator=torch.Generator().manual_seed(0), progress=False)
    assert out.abs().max().item() == pytest.approx(2.0)
    free = diffusion.make_scheduler("ddim", beta_schedule="cosine")
    out = diffusion.sample(f, free, (2, 1, 4, 4), num_inference_steps=10,
                           generator=torch.Generator().manual_seed(0), progress=False)
    assert out.abs().max().item() > 100  # unclipped: the 1/sqrt(abar) amplification shows


def test_rederive_eps_changes_only_clipped_steps():
    """rederive_eps takes eps from the clipped x0: a different trajectory when clipping bites, the same one
    (up to rounding) when it does not; schedulers without the choice refuse it by name."""
    f = lambda x, t: 0.5 * x + 0.3  # noqa: E731
    kw = dict(num_inference_steps=8, progress=False)

    def run(s, **extra):
        return diffusion.sample(f, s, (2, 1, 4, 4), generator=torch.Generator().manual_seed(0), **kw, **extra)

    clipped = diffusion.make_scheduler("ddim", clip_sample=True, clip_sample_range=1.0)
    assert not torch.allclose(run(clipped), run(clipped, rederive_eps=True), atol=1e-3)
    free = diffusion.make_scheduler("ddim")
    torch.testing.assert_close(run(free), run(free, rederive_eps=True), rtol=1e-4, atol=1e-4)
    early, steps = diffusion.sample_early_stop(f, clipped, (2, 1, 4, 4), threshold=0.0, rederive_eps=True,
                                               generator=torch.Generator().manual_seed(0), **kw)
    torch.testing.assert_close(early, run(clipped, rederive_eps=True))
    with pytest.raises(ValueError, match="rederive_eps=True needs a DDIM scheduler; DDPMScheduler"):
        run(diffusion.make_scheduler("ddpm"), rederive_eps=True)


def test_official_sampler_spacings_are_selectable():
    """The official samplers' timesteps, by name: Siamese-Diffusion's LDM DDIM (uniform + 1) and SLIM-Diff's
    MONAI DDIM (uniform + 0); trailing stays the default."""
    from medkit.methods import sbldm, siamese, slimdiff

    s = siamese.build_scheduler(siamese.config("smoke", "scratch", timestep_spacing="leading"))
    s.set_timesteps(50)
    assert s.timesteps.tolist() == list(range(981, 0, -20))
    s = siamese.build_scheduler(siamese.config("smoke", "scratch"))
    s.set_timesteps(50)
    assert s.timesteps[0] == 999 and s.timesteps[-1] == 19
    s = slimdiff.build_scheduler(slimdiff.config("t4", timestep_spacing="leading"))
    s.set_timesteps(300)
    assert s.timesteps[0] == 897 and s.timesteps[-1] == 0 and len(s.timesteps) == 300
    s = sbldm.build_scheduler(sbldm.config("smoke", timestep_spacing="leading"))
    s.set_timesteps(50)
    assert s.timesteps[0] == 980 and s.timesteps[-1] == 0
    with pytest.raises(ValueError, match="timestep_spacing='uniform'"):
        slimdiff.build_scheduler(slimdiff.config("smoke", timestep_spacing="uniform"))
