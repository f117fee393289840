"""SBLDM as planned in the seed: 2D slice latent diffusion for MRI.

Origin: Kebaili, Lapuyade-Lahorgue, Vera, Ruan, "3D MRI Synthesis with Slice-Based Latent Diffusion
Models", ISBI 2024 (arXiv 2406.05421). That paper stacks per-slice latents into a volume for a 3D
UNet; this module is the 2D pipeline of the seed plan, *not* a reproduction of that paper.

Stage 1 - VAE (Kingma & Welling; LDM, Rombach et al., arXiv 2112.10752). An encoder E maps a slice
x in [-1, 1]^{1xHxW} to q(z|x) = N(mu, sigma^2) with z in R^{4 x H/4 x W/4}; a decoder D maps back:

    L_VAE = || D(z) - x ||^2 + beta_KL * KL(q(z|x) || N(0, I)),   z = mu + sigma * eps

with beta_KL raised linearly from 0 over the first ``kl_warmup`` fraction of steps (KL annealing).

Latent scale. Latents are multiplied by s = 1 / std(z) over the training set (LDM sec. 4.3.2), so the
diffusion model sees unit-variance data as its noise schedule assumes; s is stored with the run.

Stage 2 - latent DDPM (Ho et al., arXiv 2006.11239) on z0 = s * z, eps-prediction:

    x_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps,   L_LDM = E_{t, eps} || eps - eps_theta(x_t, t) ||^2

with T = 1000 and a linear [1e-4, 0.02] or cosine beta schedule.

Stage 3 - sampling: DDIM (Song et al., arXiv 2010.02502), 50 steps, eta = 0, trailing timestep
spacing, then x = D(z0 / s). Each step's estimate of z0 is clipped to the range of the scaled training
latents, as DDPM clips its x0 estimate to the pixel range (see ``diffusion.make_scheduler``).
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from .. import diffusion, nets

# ---------------------------------------------------------------------------------------------
# Profiles: smoke (CI, seconds on a CPU), cpu-demo (minutes on a laptop CPU), t4 (the seed's
# settings on one 16 GB T4). A notebook's parameters override single entries.
# ---------------------------------------------------------------------------------------------
LR_FLOOR = 0.1  # both stages: linear warm-up, then cosine decay to 0.1 x the base LR (medkit.train.lr_schedule)

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        image_size=32, vae_channels=(8, 16, 16), vae_res_blocks=1, vae_groups=8, vae_batch=16,
        vae_steps=12, vae_lr=2e-3,
        unet_channels=(16, 16, 32), unet_res_blocks=1, unet_groups=8, unet_head_channels=8, dropout=0.0,
        ldm_batch=16, ldm_steps=12, ldm_lr=1e-3, warmup_steps=2,
        ckpt_every=5, n_samples=16, sampling_steps=5, precision="fp32", gradient_checkpointing=False,
    ),
    "cpu-demo": dict(
        image_size=64, vae_channels=(16, 32, 64), vae_res_blocks=1, vae_groups=16, vae_batch=8,
        vae_steps=1000, vae_lr=2e-3,
        unet_channels=(32, 64, 64), unet_res_blocks=1, unet_groups=16, unet_head_channels=16, dropout=0.0,
        ldm_batch=32, ldm_steps=2000, ldm_lr=1e-3, warmup_steps=50,
        ckpt_every=200, n_samples=16, sampling_steps=50, precision="auto", gradient_checkpointing=False,
    ),
    "t4": dict(
        image_size=128, vae_channels=(64, 128, 256), vae_res_blocks=2, vae_groups=32, vae_batch=32,
        vae_steps=20_000, vae_lr=1e-4,
        unet_channels=(64, 128, 256), unet_res_blocks=2, unet_groups=32, unet_head_channels=32, dropout=0.1,
        ldm_batch=16, ldm_steps=50_000, ldm_lr=2e-4, warmup_steps=500,
        ckpt_every=1000, n_samples=64, sampling_steps=50, precision="auto", gradient_checkpointing=False,
    ),
}
COMMON: dict[str, Any] = dict(
    data="mni152",            # "mni152" (embedded real MRI) or a folder of NIfTI volumes
    latent_channels=4,        # the seed's 4 latent channels
    kl_weight=1e-6,           # beta_KL (KL summed over latent elements, averaged over the batch)
    kl_warmup=0.2,            # fraction of VAE steps over which beta_KL rises from 0
    beta_schedule="linear",   # "linear" [1e-4, 0.02] | "cosine" | "gamma" (this kit's extension)
    schedule_gamma=1.0,       # gamma of the "gamma" schedule: beta_t = b0 + (b1 - b0) (t/(T-1))^gamma
    num_train_timesteps=1000,
    # This kit's extensions of the seed plan (off by default; the E2 grid switches them on):
    freq_loss="focal",        # "fft" (MSE of ortho FFTs) | "focal" (Focal Frequency Loss) when freq_lambda > 0
    freq_lambda=0.0,          # lambda of L = L_mse + lambda * L_freq; 0 = off
    cutmix_p=0.0,             # probability per sample of latent CutMix in training; 0 = off
    early_stop=0.0,           # adaptive early-stop threshold of DDIM sampling; 0 = all steps
    ema_decay=0.999,
    sampling_eta=0.0,
    timestep_spacing="trailing",  # DDIM: "trailing" (starts at T-1) | "leading" (0, T/S, ...; the original DDIM's)
    seed=0,
)


def config(profile: str = "cpu-demo", **overrides) -> dict:
    """The resolved settings: the profile's, with every override that is not None applied."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}: use one of {sorted(PROFILES)}")
    cfg = {"method": "sbldm", "profile": profile, **COMMON, **PROFILES[profile]}
    unknown = sorted(k for k in overrides if k not in cfg)
    if unknown:
        raise ValueError(f"unknown SBLDM setting(s) {unknown}; known: {sorted(cfg)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    for k in ("vae_channels", "unet_channels"):
        cfg[k] = tuple(cfg[k])
    checks = [("beta_schedule", cfg["beta_schedule"] in ("linear", "cosine", "gamma"), "'linear', 'cosine' or 'gamma'"),
              ("schedule_gamma", isinstance(cfg["schedule_gamma"], (int, float)) and cfg["schedule_gamma"] > 0,
               "a positive number (1 = linear)"),
              ("freq_loss", cfg["freq_loss"] in ("fft", "focal"), "'fft' or 'focal'"),
              ("freq_lambda", isinstance(cfg["freq_lambda"], (int, float)) and cfg["freq_lambda"] >= 0, "a number >= 0"),
              ("cutmix_p", isinstance(cfg["cutmix_p"], (int, float)) and 0 <= cfg["cutmix_p"] <= 1,
               "a probability in [0, 1]"),
              ("early_stop", isinstance(cfg["early_stop"], (int, float)) and cfg["early_stop"] >= 0,
               "a threshold >= 0 (0 = all steps)")]
    for name, ok, what in checks:
        if not ok:
            raise ValueError(f"SBLDM setting {name}={cfg[name]!r}: use {what}")
    if cfg["image_size"] % 2 ** (len(cfg["vae_channels"]) - 1):
        raise ValueError(f"image_size={cfg['image_size']} must be divisible by the VAE's downsampling "
                         f"factor {2 ** (len(cfg['vae_channels']) - 1)}")
    return cfg


# --------------------------------------------------------------------------------------- VAE
def build_vae(cfg: dict) -> torch.nn.Module:
    """The VAE of ``cfg``, its weights initialised from ``cfg['seed']`` (same seed, same network)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"])
        return nets.make_vae(spatial_dims=2, in_channels=cfg.get("image_channels", 1),
                             latent_channels=cfg["latent_channels"],
                             channels=cfg["vae_channels"], num_res_blocks=cfg["vae_res_blocks"],
                             norm_num_groups=cfg["vae_groups"],
                             gradient_checkpointing=cfg["gradient_checkpointing"])


def kl_divergence(mu: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, 1)), summed over latent elements, mean over the batch."""
    kl = 0.5 * (mu.pow(2) + sigma.pow(2) - 2 * torch.log(sigma) - 1)
    return kl.flatten(1).sum(1).mean()


def vae_loss(vae, batch, step: int, cfg: dict):
    """L_VAE = MSE(D(z), x) + beta_KL(step) * KL; returns (loss, parts to log)."""
    x = batch["image"]
    x_hat, mu, sigma = vae(x)
    rec = F.mse_loss(x_hat.float(), x.float())
    kl = kl_divergence(mu.float(), sigma.float())
    warm = max(1, int(cfg["kl_warmup"] * cfg["vae_steps"]))
    beta_kl = cfg["kl_weight"] * min(1.0, step / warm)
    return rec + beta_kl * kl, {"mse": rec.detach(), "kl": kl.detach()}


@torch.no_grad()
def encode(vae, images: torch.Tensor, batch_size: int = 64, device="cpu"):
    """Posterior mean and std of every image: (mu, sigma), each (N, C, h, w) on the CPU."""
    vae.eval()
    mus, sigmas = [], []
    for i in range(0, len(images), batch_size):
        mu, sigma = vae.encode(images[i:i + batch_size].to(device))
        mus.append(mu.float().cpu())
        sigmas.append(sigma.float().cpu())
    return torch.cat(mus), torch.cat(sigmas)


@torch.no_grad()
def reconstruct(vae, images: torch.Tensor, batch_size: int = 64, device="cpu") -> torch.Tensor:
    """D(mu(x)): the deterministic reconstruction, clamped to [-1, 1]."""
    vae.eval()
    out = [vae.decode(vae.encode(images[i:i + batch_size].to(device))[0]).float().clamp(-1, 1).cpu()
           for i in range(0, len(images), batch_size)]
    return torch.cat(out)


class LatentDataset(torch.utils.data.Dataset):
    """Cached posteriors; each item is a fresh draw z0 = s * (mu + sigma * eps)."""

    def __init__(self, mu: torch.Tensor, sigma: torch.Tensor, scale: float):
        self.mu, self.sigma, self.scale = mu, sigma, float(scale)

    def __len__(self):
        return len(self.mu)

    def __getitem__(self, i):
        return self.scale * (self.mu[i] + self.sigma[i] * torch.randn_like(self.mu[i]))


def latent_cache(path, vae, vae_checkpoint: str, cfg: dict, device="cpu"):
    """Posteriors (mu, sigma) of every training slice and its mirror, and the scale s; cached in ``path``.

    Reused while ``vae_checkpoint`` (the VAE checkpoint they were encoded with) and the data settings
    are unchanged; rebuilt otherwise.
    """
    from pathlib import Path

    from safetensors.torch import load_file, safe_open, save_file

    from .. import data as mdata

    path = Path(path)
    key = {"vae_checkpoint": str(vae_checkpoint), "data": str(cfg["data"]), "image_size": str(cfg["image_size"]),
           "seed": str(cfg["seed"])}
    if path.exists():
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
        if all(meta.get(k) == v for k, v in key.items()):
            t = load_file(str(path))
            return t["mu"], t["sigma"], float(meta["scale"])
    cache = mdata.build_slice_cache(cfg["data"], cfg["image_size"], seed=cfg["seed"])
    images = mdata.SliceDataset(cache, "train").images
    images = torch.cat([images, images.flip(-1)])  # left-right mirror: a plausible brain
    mu, sigma = encode(vae, images, device=device)
    scale = latent_scale(mu, sigma, seed=cfg["seed"])
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    save_file({"mu": mu.contiguous(), "sigma": sigma.contiguous()}, str(tmp), metadata={**key, "scale": repr(scale)})
    tmp.replace(path)
    return mu, sigma, scale


def latent_scale(mu: torch.Tensor, sigma: torch.Tensor, seed: int = 0) -> float:
    """s = 1 / std(z) over one draw of z ~ q(z|x) for the whole training set."""
    g = torch.Generator().manual_seed(seed)
    z = mu + sigma * torch.randn(mu.shape, generator=g)
    return 1.0 / z.std().item()


# ------------------------------------------------------------------------------ latent diffusion
def build_unet(cfg: dict) -> torch.nn.Module:
    """The latent UNet of ``cfg``, its weights initialised from ``cfg['seed']`` (same seed, same network)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg["seed"] + 1)
        return nets.make_unet(spatial_dims=2, in_channels=cfg["latent_channels"], channels=cfg["unet_channels"],
                              num_res_blocks=cfg["unet_res_blocks"], num_head_channels=cfg["unet_head_channels"],
                              norm_num_groups=cfg["unet_groups"], dropout=cfg["dropout"],
                              gradient_checkpointing=cfg["gradient_checkpointing"])


def build_scheduler(cfg: dict, kind: str = "ddim", clip: float | None = None):
    """The diffusers scheduler; ``clip`` bounds each step's z0 estimate to [-clip, clip] (sampling only)."""
    return diffusion.make_scheduler(kind, num_train_timesteps=cfg["num_train_timesteps"],
                                    beta_schedule=cfg["beta_schedule"], gamma=cfg.get("schedule_gamma", 1.0),
                                    clip_sample=clip is not None,
                                    clip_sample_range=float(clip) if clip is not None else 1.0,
                                    timestep_spacing=cfg.get("timestep_spacing", "trailing"))


def ldm_loss(unet, z0: torch.Tensor, step: int, scheduler, cfg: dict | None = None):
    """L_LDM: t ~ U{0..T-1}, eps ~ N(0, I), x_t = q(x_t | z0), MSE(eps_theta(x_t, t), eps).

    With ``cfg`` this kit's extensions apply: latent CutMix of z0 before noising with probability
    ``cutmix_p`` (``augment.latent_cutmix``; the target follows the mixed z0), and
    L = L_mse + freq_lambda * L_freq with L_freq the ``freq_loss`` ("fft" or "focal") between the
    network output and its target. Returns the loss, or (loss, parts) when an extension is on.
    """
    cfg = cfg or {}
    if cfg.get("cutmix_p", 0.0) > 0:
        from ..augment import latent_cutmix

        z0 = latent_cutmix(z0, cfg["cutmix_p"])
    t = torch.randint(0, scheduler.config.num_train_timesteps, (z0.shape[0],), device=z0.device)
    eps = torch.randn_like(z0)
    x_t = diffusion.add_noise(scheduler, z0, eps, t)
    out = unet(x_t, t).float()
    target = diffusion.training_target(scheduler, z0, eps, t).float()
    mse = F.mse_loss(out, target)
    lam = cfg.get("freq_lambda", 0.0)
    if not lam:
        return mse
    from ..losses import frequency_loss

    freq = frequency_loss(out, target, kind=cfg.get("freq_loss", "focal"))
    return mse + lam * freq, {"mse": mse.detach(), "freq": freq.detach()}


@torch.no_grad()
def sample(unet, vae, scheduler, n: int, latent_shape, scale: float, *, steps: int = 50, eta: float = 0.0,
           seed: int = 0, device="cpu", batch_size: int = 64, progress: bool = True, early_stop: float = 0.0,
           return_steps: bool = False, rederive_eps: bool = False):
    """n slices: DDIM from x_T ~ N(0, I) in latent space, then x = D(z0 / s), clamped to [-1, 1].

    ``early_stop`` > 0 uses ``diffusion.sample_early_stop`` with that threshold; ``return_steps`` also
    returns the network calls each sample had (a long tensor).
    ``rederive_eps``: each DDIM step re-derives eps from the clipped z0 estimate (see ``diffusion.sample``).
    """
    unet.eval()
    vae.eval()
    g = torch.Generator().manual_seed(seed)
    out, taken = [], []
    for i in range(0, n, batch_size):
        b = min(batch_size, n - i)
        if early_stop > 0:
            z0, k = diffusion.sample_early_stop(lambda x, t: unet(x, t), scheduler, (b, *latent_shape),
                                                threshold=early_stop, num_inference_steps=steps, eta=eta,
                                                generator=g, device=device, progress=progress,
                                                rederive_eps=rederive_eps)
        else:
            z0 = diffusion.sample(lambda x, t: unet(x, t), scheduler, (b, *latent_shape),
                                  num_inference_steps=steps, eta=eta, generator=g, device=device,
                                  progress=progress, rederive_eps=rederive_eps)
            k = torch.full((b,), steps, dtype=torch.long)
        out.append(vae.decode(z0 / scale).float().clamp(-1, 1).cpu())
        taken.append(k)
    images = torch.cat(out)
    return (images, torch.cat(taken)) if return_steps else images
