"""SBLDM building blocks: settings, KL against torch.distributions, latent scale and cache, LR schedule."""
import pytest
import torch

from medkit.methods import sbldm


def test_config_resolution_and_errors():
    cfg = sbldm.config("cpu-demo", vae_steps=5, image_size=None)
    assert cfg["vae_steps"] == 5 and cfg["image_size"] == 64 and cfg["profile"] == "cpu-demo"
    t4 = sbldm.config("t4")
    assert (t4["image_size"], t4["vae_batch"], t4["ldm_batch"], t4["ldm_steps"]) == (128, 32, 16, 50_000)
    assert not t4["gradient_checkpointing"] and t4["unet_channels"] == (64, 128, 256)  # fits 16 GB without it (measured)
    assert sbldm.config("smoke", vae_channels=[8, 16, 16])["vae_channels"] == (8, 16, 16)  # JSON lists back to tuples
    with pytest.raises(ValueError, match="profile='gpu'"):
        sbldm.config("gpu")
    with pytest.raises(ValueError, match=r"unknown SBLDM setting\(s\) \['vae_step'\]"):
        sbldm.config("smoke", vae_step=3)
    with pytest.raises(ValueError, match="image_size=30 must be divisible by the VAE's downsampling factor 4"):
        sbldm.config("smoke", image_size=30)


def test_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    mu, sigma = torch.randn(3, 4, 2, 2, generator=g), torch.rand(3, 4, 2, 2, generator=g) + 0.1
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu, sigma),
                                            torch.distributions.Normal(0.0, 1.0)).flatten(1).sum(1).mean()
    assert sbldm.kl_divergence(mu, sigma).item() == pytest.approx(ref.item(), rel=1e-6)


def test_kl_weight_is_annealed():
    cfg = sbldm.config("smoke", vae_steps=100, kl_warmup=0.2, kl_weight=1.0)
    vae = sbldm.build_vae(cfg)
    batch = {"image": torch.zeros(2, 1, 32, 32)}
    torch.manual_seed(0)
    loss0, parts0 = sbldm.vae_loss(vae, batch, 0, cfg)
    assert loss0.item() == pytest.approx(parts0["mse"].item(), rel=1e-6)  # step 0: no KL
    torch.manual_seed(0)
    loss10, parts10 = sbldm.vae_loss(vae, batch, 10, cfg)                  # half-way through the warm-up
    assert loss10.item() == pytest.approx(parts10["mse"].item() + 0.5 * parts10["kl"].item(), rel=1e-5)


def test_latent_scale_is_inverse_std():
    g = torch.Generator().manual_seed(1)
    mu, sigma = 3 * torch.randn(500, 4, 4, 4, generator=g), torch.full((500, 4, 4, 4), 1e-3)
    assert sbldm.latent_scale(mu, sigma) == pytest.approx(1 / 3, rel=0.01)


def test_latent_cache_is_reused_until_the_vae_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("MEDKIT_CACHE", str(tmp_path / "slices"))
    cfg = sbldm.config("smoke")
    vae = sbldm.build_vae(cfg)
    path = tmp_path / "latents.safetensors"
    mu, sigma, s = sbldm.latent_cache(path, vae, "step_00000012", cfg)
    assert mu.shape[1:] == (4, 8, 8) and len(mu) % 2 == 0 and s > 0  # slices and their mirrors
    calls = []
    monkeypatch.setattr(sbldm, "encode", lambda *a, **k: calls.append(1) or (mu, sigma))
    mu2, _, s2 = sbldm.latent_cache(path, vae, "step_00000012", cfg)
    assert calls == [] and torch.equal(mu, mu2) and s2 == s
    sbldm.latent_cache(path, vae, "step_00000020", cfg)
    assert calls == [1]


def test_warmup_cosine_schedule():
    from medkit.train import lr_schedule

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = lr_schedule(opt, warmup_steps=10, total_steps=110, floor=sbldm.LR_FLOOR)
    lrs = []
    for _ in range(111):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert lrs[60] == pytest.approx(0.55) and lrs[110] == pytest.approx(0.1)


def test_ldm_loss_and_sampling_shapes():
    cfg = sbldm.config("smoke")
    unet, vae = sbldm.build_unet(cfg), sbldm.build_vae(cfg)
    sched = sbldm.build_scheduler(cfg, "ddpm")
    loss = sbldm.ldm_loss(unet, torch.randn(4, 4, 8, 8), 0, sched)
    assert loss.ndim == 0 and torch.isfinite(loss)
    x = sbldm.sample(unet, vae, sbldm.build_scheduler(cfg), 3, (4, 8, 8), 1.0, steps=3, progress=False)
    assert x.shape == (3, 1, 32, 32) and x.min() >= -1 and x.max() <= 1


def test_gpu_benchmark_runs_a_profile_and_refuses_bad_slices(tmp_path):
    """sbldm_bench on the smoke profile (CPU): the real networks and trainer, figures that add up."""
    import numpy as np

    from medkit.methods import sbldm_bench

    res = sbldm_bench.main(["--profile", "smoke", "--steps", "8", "--stage", "ldm", "sample",
                            "--json", str(tmp_path / "b.json")])
    st, smp = res["stages"]
    assert smp["stage"] == "sample" and smp["n"] == 16 and smp["ddim_steps"] == 5 and smp["seconds_per_image"] > 0
    assert st["stage"] == "ldm" and st["steps"] == 8 and st["checkpoints"] >= 2  # ckpt_every 5 in smoke, and the last step
    assert st["median_s_per_step"] > 0 and st["images_per_s"] > 0
    assert st["checkpoint_s_each"] > 0 and st["overhead_pct_of_step_time"] > 0
    assert (tmp_path / "b.json").is_file()
    np.save(tmp_path / "wrong.npy", np.zeros((4, 1, 16, 16), dtype="float32"))
    with pytest.raises(ValueError, match=r"--slices .*wrong.npy: expected an \(N, 1, 32, 32\) array"):
        sbldm_bench.main(["--profile", "smoke", "--stage", "vae", "--steps", "3", "--slices", str(tmp_path / "wrong.npy")])
    (tmp_path / "junk.npy").write_text("not an array")
    with pytest.raises(ValueError, match="not a readable .npy"):
        sbldm_bench.main(["--profile", "smoke", "--stage", "vae", "--steps", "3", "--slices", str(tmp_path / "junk.npy")])
