"""The ResShift scheduler against the golden values of the official implementation's schedule and posterior
(../REFERENCE section 4 numbers, T = 15 and T = 4), and its defining property: an oracle x0 ends at x0."""
import pytest
import torch

from medkit.diffusion.resshift import PRESETS, ResShiftScheduler

SQRT_ETA_15 = [0.02, 0.117165, 0.176305, 0.233629, 0.291574, 0.351009, 0.412356, 0.475858, 0.541672,
               0.60991, 0.680658, 0.753985, 0.829951, 0.908606, 0.99]


def test_schedule_t15_golden_values():
    s = ResShiftScheduler.from_preset("v1", latent=True)
    torch.testing.assert_close(s.sqrt_etas, torch.tensor(SQRT_ETA_15, dtype=torch.float64), atol=1e-6, rtol=0)
    assert abs(s.posterior_variance[1] - 0.001553) < 1e-6 and abs(s.posterior_variance[14] - 0.520675) < 1e-6
    assert abs(s.posterior_mean_coef1[1] - 0.029138) < 1e-6 and abs(s.posterior_mean_coef1[14] - 0.842328) < 1e-6
    assert s.posterior_variance[0] == 0 and s.posterior_mean_coef1[0] == 0 and s.posterior_mean_coef2[0] == 1


def test_schedule_t4_golden_values():
    s = ResShiftScheduler.from_preset("v3")
    torch.testing.assert_close(s.sqrt_etas, torch.tensor([0.1, 0.520096, 0.761382, 0.99], dtype=torch.float64),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(s.posterior_variance, torch.tensor([0, 0.038521, 0.577119, 0.947297],
                                                                  dtype=torch.float64), atol=1e-6, rtol=0)
    torch.testing.assert_close(s.posterior_mean_coef1, torch.tensor([0, 0.036969, 0.466619, 0.591473],
                                                                    dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("t, x_t, net_in, mean", [(1, 0.52334804, 0.50954526, 0.30650797),
                                                  (14, 1.49592, 0.67438541, 1.30735677)])
def test_forward_input_scaling_and_posterior_golden_values(t, x_t, net_in, mean):
    s = ResShiftScheduler.from_preset("v1", latent=True)
    x0, y, eps = (torch.tensor([v], dtype=torch.float64) for v in (0.3, -0.5, 1.0))
    xt = s.add_noise(x0, y, eps, t)
    assert abs(xt.item() - x_t) < 1e-6
    assert abs(s.scale_model_input(xt, t).item() - net_in) < 1e-6
    out = s.step(x0, t, xt, noise=torch.zeros_like(xt))  # posterior mean: no noise
    assert abs(out.prev_sample.item() - mean) < 1e-6 and out.pred_original_sample is x0


def test_pixel_input_scaling():
    s = ResShiftScheduler.from_preset("v1", latent=False)
    x = torch.tensor([1.0], dtype=torch.float64)
    assert abs(s.scale_model_input(x, 14).item() - 1 / (3 * 2.0 * 0.99 + 1)) < 1e-12


@pytest.mark.parametrize("preset", ["v1", "v3"])
def test_oracle_x0_without_noise_ends_exactly_at_x0(preset):
    s = ResShiftScheduler.from_preset(preset)
    g = torch.Generator().manual_seed(0)
    x0, y = torch.randn(2, 1, 4, 4, 4, generator=g), torch.randn(2, 1, 4, 4, 4, generator=g)
    x = s.prior_sample(y, torch.zeros_like(y))
    assert torch.equal(x, y + 0 * y)
    for t in s.timesteps:
        x = s.step(x0, int(t), x, noise=torch.zeros_like(x)).prev_sample
    torch.testing.assert_close(x, x0, atol=1e-6, rtol=0)
    # with sampling noise the chain still ends at x0: t = 0 adds none and eta_{-1} = 0
    x = s.prior_sample(y, torch.randn(y.shape, generator=g))
    for t in s.timesteps:
        x = s.step(x0, int(t), x, generator=g).prev_sample
    torch.testing.assert_close(x, x0, atol=1e-6, rtol=0)


def test_batched_timesteps_and_marginal_statistics():
    """add_noise with one t per sample; the empirical mean/variance of x_t match eq. (1)."""
    s = ResShiftScheduler.from_preset("v1")
    g = torch.Generator().manual_seed(1)
    n = 200_000
    x0, y = torch.full((n,), 0.3), torch.full((n,), -0.5)
    t = torch.full((n,), 7)
    xt = s.add_noise(x0, y, torch.randn(n, generator=g), t)
    eta = float(s.etas[7])
    assert abs(xt.mean().item() - (0.3 + eta * (-0.8))) < 0.01
    assert abs(xt.var().item() - 4 * eta) / (4 * eta) < 0.02


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="kappa"):
        ResShiftScheduler(kappa=0)
    with pytest.raises(ValueError, match="preset 'v9'"):
        ResShiftScheduler.from_preset("v9")
    with pytest.raises(ValueError, match="timestep=15"):
        ResShiftScheduler().step(torch.zeros(1), 15, torch.zeros(1))
    assert set(PRESETS) == {"v1", "v2", "v3"}


def test_respaced_chain_matches_the_full_one_where_they_coincide():
    """set_timesteps(4) of the T = 15 chain visits 14 .. 0; an oracle still ends at x0, and with all 15 steps the
    respaced code path reproduces the tabulated posterior exactly."""
    s = ResShiftScheduler.from_preset("v1")
    s.set_timesteps(4)
    assert s.timesteps.tolist() == [14, 9, 5, 0]
    g = torch.Generator().manual_seed(0)
    x0, y = torch.randn(3, 5, generator=g), torch.randn(3, 5, generator=g)
    x = s.prior_sample(y, torch.randn(y.shape, generator=g))
    for t in s.timesteps:
        x = s.step(x0, int(t), x, generator=g).prev_sample
    torch.testing.assert_close(x, x0)
    # respaced coefficients for t -> t-1 equal the tables: compare step 9 -> 5 by hand
    e9, e5 = float(s.etas[9]), float(s.etas[5])
    out = s.step(x0, 9, y, noise=torch.zeros_like(y)).prev_sample
    torch.testing.assert_close(out, (e5 / e9 * y + (e9 - e5) / e9 * x0).float())
    with pytest.raises(ValueError, match="not among"):
        s.step(x0, 13, y)
    s.set_timesteps(None)
    assert s.timesteps.tolist() == list(range(14, -1, -1))
