"""CT through-plane super-resolution with 3D latent ResShift (the seed plan's fourth method).

Task. A thick-slice volume (slice spacing r times the in-plane one: 3-5 mm CT, what most hospitals archive)
in, the thin-slice volume (1-1.25 mm) out, on the thin grid of the same acquisition, in Hounsfield units.

1. Data (``medkit.data.volumes``, ``medkit.data.thickslice``). Volumes keep their geometry (affine, spacing).
   Intensities are clipped to a window (CT: [-1024, 3071] HU; MRI: a robust range of the training volume)
   and mapped to [-1, 1]. Thick slices are real (paired folders) or simulated from thin ones by a
   slice-sensitivity profile along z and decimation by r. The thick slices interpolated back to the thin
   grid (cubic along z) give y, so the thin target x0 and the condition y share one grid, in pixels and in
   latents alike (ResShift's own choice: its y is the bicubic-upsampled low-resolution image).

2. VAE (LDM, Rombach et al., arXiv 2112.10752): MONAI ``AutoencoderKL(spatial_dims=3)``, 4x per axis, trained
   on thin patches with L = |D(z) - x|_1 + beta_KL KL(q(z|x) || N(0, I)); latents scaled by s = 1/std(z).
   Its round trip D(E(x)) is the ceiling of any latent super-resolution and is reported as such.

3. ResShift (Yue et al., NeurIPS 2023; ``medkit.diffusion.resshift``): x_t = x0 + eta_t (y - x0) +
   kappa sqrt(eta_t) eps, t = 0..T-1 (T = 15, or 4), the network f(x_t / c_t, y, t) predicts x0 with
   L = || f - x0 ||^2; sampling starts at y + kappa sqrt(eta_{T-1}) eps and walks the posterior T steps.
   ``space="latent"`` runs this on s * E(x) (the seed's design, default at t4), ``space="pixel"`` on the
   voxels (no VAE ceiling; the cpu-demo default, where a minutes-trained VAE would cap every result).

4. Conditioning on y, two ways (``conditioning``):
   - ``"concat"``: [x_t / c_t, y] at the UNet's input (ResShift's own way);
   - ``"controlnet"``: DiffBIR's IRControlNet (Lin et al., ECCV 2024): a MONAI ``ControlNet`` copy of the UNet
     encoder reads x_t with y added after its first convolution (MONAI's conditioning embedding, one
     zero-initialised conv), and its zero-initialised outputs are added to the UNet's skips and middle block.
     DiffBIR freezes a pretrained UNet; here there is none, so UNet and ControlNet train together (declared).

   Departure, declared: ``residual=True`` (default) makes the network output the correction to y,
   x0_hat = y + f(...), with the same x0 loss. The official code predicts x0 directly; at CPU scale the
   residual form learns the identity-plus-detail far sooner (VDSR's observation, Kim et al. CVPR 2016).

5. Whole volumes (``medkit.methods.ctsr_infer``): overlapping windows blended with Gaussian weights
   (MONAI ``sliding_window_inference``, mode "gaussian") at every denoising step, as DiffBIR's tiled
   sampler; encode and decode by windows too. Memory is bounded by the window, not the volume.

6. Baselines in the same evaluation: linear ("trilinear") and cubic interpolation along z, the VAE round trip
   of the real thin volume (latent ceiling), a regression network (MONAI ``BasicUNet``, L1, residual to y)
   and a conventional DDPM/DDIM-50 with the same denoiser and conditioning (eps-prediction) for the
   few-step claim.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .. import diffusion, nets
from ..diffusion.resshift import PRESETS, ResShiftScheduler

# ---------------------------------------------------------------------------------------------
# Profiles: smoke (CI, seconds on a CPU), cpu-demo (minutes on a laptop CPU), t4 (the plan's scale on one
# 16 GB T4: VAE on 64^3 patches, fp16, checkpointing; latent UNet with attention at the coarse levels).
# A notebook's parameters override single entries.
# ---------------------------------------------------------------------------------------------
PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        voxel_mm=3.0, patch=(16, 16, 16), n_patches=64, space="latent",
        vae_channels=(8, 8, 16), vae_groups=8, vae_batch=2, vae_steps=6, vae_lr=2e-3,
        unet_channels=(16, 32), unet_attention=(False, False), unet_groups=8, unet_res_blocks=1, head_channels=8,
        sr_batch=2, sr_steps=6, sr_lr=1e-3, ddpm_steps=6, reg_features=(8, 8, 16, 16, 32, 8), reg_steps=6,
        reg_lr=1e-3, ckpt_every=3, window=(16, 16, 16), sw_batch=4, sampling_steps_short=4, ddim_steps=10,
        precision="fp32", gradient_checkpointing=False,
    ),
    "cpu-demo": dict(
        voxel_mm=2.0, patch=(32, 32, 16), n_patches=2048, space="pixel",
        vae_channels=(16, 32, 32), vae_groups=8, vae_batch=4, vae_steps=250, vae_lr=2e-3,
        unet_channels=(16, 32, 64), unet_attention=(False, False, False), unet_groups=8, unet_res_blocks=1,
        head_channels=16, sr_batch=4, sr_steps=500, sr_lr=2e-3, ddpm_steps=400,
        reg_features=(16, 16, 32, 64, 64, 16), reg_steps=300, reg_lr=2e-3, ckpt_every=100,
        window=(64, 128, 48), sw_batch=1, sampling_steps_short=4, ddim_steps=50,
        precision="auto", gradient_checkpointing=False,
    ),
    "t4": dict(
        voxel_mm=1.0, patch=(64, 64, 64), n_patches=20_000, space="latent",
        vae_channels=(64, 128, 256), vae_groups=32, vae_batch=1, vae_steps=20_000, vae_lr=1e-4,
        unet_channels=(128, 256, 512), unet_attention=(False, True, True), unet_groups=32, unet_res_blocks=2,
        head_channels=32, sr_batch=4, sr_steps=100_000, sr_lr=5e-5, ddpm_steps=100_000,
        reg_features=(32, 32, 64, 128, 256, 32), reg_steps=20_000, reg_lr=2e-4, ckpt_every=1000,
        window=(128, 128, 128), sw_batch=1, sampling_steps_short=4, ddim_steps=50,
        precision="auto", gradient_checkpointing=True,
    ),
}
COMMON: dict[str, Any] = dict(
    data="mni152",            # "mni152" (embedded real MRI) | a NIfTI file | a DICOM series folder | a paired folder
    factor=4,                 # r: thin slices per thick slice (x4: 1 mm from 4 mm)
    slice_profile="gaussian", # simulated thick slices: "gaussian" (FWHM = r thin slices) | "box" (width r)
    pair_offset=None,         # real pairs: thin slice index = r * k + pair_offset (RPLHR-CT: 3); None: r // 2
    test_slab=(0.45, 0.7),    # one volume: the held-out slab, as fractions of its height (z)
    min_foreground=0.3,       # a training patch needs this fraction of body/brain voxels
    latent_channels=4,
    vae_from=None,            # None: train the kit's 3D VAE | "maisi:PATH.pt" | "diffusers:FOLDER_OR_HUB_ID" (2D, slice by slice)
    vae_factors=None,         # VAE downsampling per axis; None: (4, 4, 4) (set from the pretrained VAE when vae_from)
    kl_weight=1e-6,           # beta_KL of the VAE (KL summed over latent elements, batch mean)
    resshift="v1",            # "v1"/"v2" (T = 15, kappa 2, p 0.3, min noise 0.04) | "v3" (T = 4, min noise 0.2)
    kappa=None,               # ResShift's noise scale kappa; None: the preset's (2.0)
    conditioning="concat",    # "concat" (ResShift) | "controlnet" (DiffBIR's IRControlNet)
    residual=True,            # x0_hat = y + f(...) (declared departure; False: f predicts x0 as the official code)
    skip=True,                # x0_hat += c(t) (x_t - y), the best linear estimate's skip (declared departure)
    residual_var=None,        # var(x0 - y) over the training patches, for the skip; set by notebook 2
    num_train_timesteps=1000, # the DDPM baseline's T (linear betas 1e-4..0.02, eps-prediction)
    intensity_window=None,    # the physical range mapped to [-1, 1], recorded by notebook 1 (a pretrained VAE needs it)
    overlap=None,             # sliding-window overlap; None: 0.5 in latent space (keeps window starts on the VAE's
                              # 4-voxel grid), 0.25 in pixel space (fewer windows)
    ema_decay=0.999,
    seed=0,
)
SPACES = ("latent", "pixel")
CONDITIONINGS = ("concat", "controlnet")
VAE_FACTOR = 4  # three MONAI AutoencoderKL levels: 2 halvings


def config(profile: str = "cpu-demo", **overrides) -> dict:
    """The resolved settings: the profile's, with every override that is not None applied."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}: use one of {sorted(PROFILES)}")
    cfg = {"method": "ctsr", "profile": profile, **COMMON, **PROFILES[profile]}
    unknown = sorted(k for k in overrides if k not in cfg)
    if unknown:
        raise ValueError(f"unknown CT-SR setting(s) {unknown}; known: {sorted(cfg)}")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    if cfg["overlap"] is None:
        cfg["overlap"] = 0.5 if cfg["space"] == "latent" else 0.25
    for k in ("patch", "window", "vae_channels", "unet_channels", "unet_attention", "reg_features", "test_slab"):
        cfg[k] = tuple(cfg[k])
    checks = [("space", cfg["space"] in SPACES, f"one of {SPACES}"),
              ("conditioning", cfg["conditioning"] in CONDITIONINGS, f"one of {CONDITIONINGS}"),
              ("resshift", cfg["resshift"] in PRESETS, f"one of {sorted(PRESETS)}"),
              ("factor", isinstance(cfg["factor"], int) and 2 <= cfg["factor"] <= 8, "an integer 2..8"),
              ("slice_profile", cfg["slice_profile"] in ("gaussian", "box"), "'gaussian' or 'box'"),
              ("overlap", 0 <= cfg["overlap"] < 1, "a fraction in [0, 1)")]
    for name, ok, what in checks:
        if not ok:
            raise ValueError(f"CT-SR setting {name}={cfg[name]!r}: use {what}")
    if cfg["vae_factors"] is None and not str(cfg["vae_from"] or "").startswith("diffusers:"):
        cfg["vae_factors"] = (VAE_FACTOR,) * 3
    halvings = 2 ** (len(cfg["unet_channels"]) - 1)
    f = vae_factors(cfg) if cfg["space"] == "latent" else (1, 1, 1)
    for name in ("patch", "window"):
        need = tuple(halvings * fi for fi in f)
        if any(p % n for p, n in zip(cfg[name], need)):
            raise ValueError(f"{name}={cfg[name]}: each side must be a multiple of {need} (the UNet's "
                             f"{len(cfg['unet_channels']) - 1} halvings x the VAE's downsampling {f} in latent space)")
    return cfg


def vae_factors(cfg: dict) -> tuple[int, int, int]:
    """The VAE's downsampling per axis: (4, 4, 4) for the kit's and MAISI's 3D VAEs, (f, f, 1) for a 2D one."""
    return tuple(cfg.get("vae_factors") or (VAE_FACTOR,) * 3)


def load_vae(run, cfg: dict, device="cpu") -> nn.Module:
    """The frozen VAE of a run: the pretrained one ``vae_from`` names, or the kit's 3D VAE trained in notebook 1."""
    if cfg.get("vae_from"):
        from ..nets.pretrained_vae import load_pretrained_vae

        vae = load_pretrained_vae(cfg["vae_from"], tuple(cfg.get("intensity_window") or (-1024.0, 3071.0)))
    else:
        from ..train import load_weights

        vae = build_vae(cfg)
        load_weights(run.path, "vae", vae, ema=True, log=lambda m: None)
    return vae.to(device).eval().requires_grad_(False)


def scheduler(cfg: dict) -> ResShiftScheduler:
    preset = dict(PRESETS[cfg["resshift"]])
    if cfg.get("kappa") is not None:
        preset["kappa"] = float(cfg["kappa"])
    return ResShiftScheduler(**preset, latent=cfg["space"] == "latent")


def ddpm_scheduler(cfg: dict, kind: str = "ddpm"):
    """The baseline's diffusers scheduler: linear betas, eps-prediction, trailing DDIM spacing."""
    return diffusion.make_scheduler(kind, num_train_timesteps=cfg["num_train_timesteps"], beta_schedule="linear",
                                    clip_sample=cfg["space"] == "pixel", clip_sample_range=1.0)


# --------------------------------------------------------------------------------------- networks
def _seeded(seed: int, build):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build()


def build_vae(cfg: dict) -> nn.Module:
    """MONAI AutoencoderKL(spatial_dims=3), 4x per axis, seeded from the run's seed."""
    return _seeded(cfg["seed"], lambda: nets.make_vae(
        spatial_dims=3, in_channels=1, latent_channels=cfg["latent_channels"], channels=cfg["vae_channels"],
        num_res_blocks=1, norm_num_groups=cfg["vae_groups"], gradient_checkpointing=cfg["gradient_checkpointing"]))


def channels_of(cfg: dict) -> int:
    """Channels of the space the denoiser works in: the VAE's latent channels, or 1 voxel intensity."""
    return cfg["latent_channels"] if cfg["space"] == "latent" else 1


class Denoiser(nn.Module):
    """f(x_t / c_t, y, t) of either conditioning, with the optional residual-to-y output.

    ``target="x0"``: returns x0_hat (ResShift); ``target="eps"``: returns eps_hat (the DDPM baseline; no residual).
    """

    def __init__(self, cfg: dict, target: str = "x0"):
        super().__init__()
        c = channels_of(cfg)
        self.conditioning, self.target = cfg["conditioning"], target
        self.residual = bool(cfg["residual"]) and target == "x0"
        kw = dict(spatial_dims=3, channels=cfg["unet_channels"], attention_levels=cfg["unet_attention"],
                  num_res_blocks=cfg["unet_res_blocks"], num_head_channels=cfg["head_channels"],
                  norm_num_groups=cfg["unet_groups"], gradient_checkpointing=cfg["gradient_checkpointing"])
        seed = cfg["seed"] + (1 if target == "x0" else 2)
        if self.conditioning == "concat":
            self.unet = _seeded(seed, lambda: nets.make_unet(in_channels=2 * c, out_channels=c, **kw))
            self.controlnet = None
        else:
            self.unet = _seeded(seed, lambda: nets.make_unet(in_channels=c, out_channels=c, **kw))
            self.controlnet = _seeded(seed + 10, lambda: nets.make_controlnet(
                in_channels=c, unet=self.unet, hint="standard", hint_channels=c, downsample=0, **kw))

    def forward(self, x_in: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        t = t.expand(x_in.shape[0]) if t.dim() == 1 and t.numel() == 1 else t
        if self.controlnet is None:
            out = self.unet(torch.cat([x_in, y], 1), t)
        else:
            down, mid = self.controlnet(x_in, t, controlnet_cond=y)
            out = self.unet(x_in, t, down_block_additional_residuals=down, mid_block_additional_residual=mid)
        return y + out if self.residual else out


def build_denoiser(cfg: dict, target: str = "x0") -> Denoiser:
    return Denoiser(cfg, target)


class Regression(nn.Module):
    """The regression baseline: x_hat = y + BasicUNet(y), trained with L1 (the perception-distortion reference)."""

    def __init__(self, cfg: dict):
        super().__init__()
        from monai.networks.nets import BasicUNet

        # GroupNorm, not BasicUNet's default InstanceNorm: a 16-voxel patch is 1 voxel after four halvings
        self.net = _seeded(cfg["seed"] + 3, lambda: BasicUNet(spatial_dims=3, in_channels=1, out_channels=1,
                                                               features=cfg["reg_features"],
                                                               norm=("group", {"num_groups": 8})))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y + self.net(y)


# ------------------------------------------------------------------------------------------ losses
def vae_loss(vae, batch, step: int, cfg: dict):
    """L_VAE = |D(z) - x|_1 + beta_KL KL on thin patches; returns (loss, parts)."""
    from .sbldm import kl_divergence

    x = batch["hr"]
    x_hat, mu, sigma = vae(x)
    rec = F.l1_loss(x_hat.float(), x.float())
    kl = kl_divergence(mu.float(), sigma.float())
    return rec + cfg["kl_weight"] * kl, {"l1": rec.detach(), "kl": kl.detach()}


@torch.no_grad()
def to_space(batch: dict, vae: nn.Module | None, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, y) in the denoiser's space: the voxels, or s * mu of the frozen VAE (posterior mode, as DiffBIR)."""
    if vae is None:
        return batch["hr"], batch["y"]
    both = torch.cat([batch["hr"], batch["y"]])
    mu = vae.encode(both)[0] * scale
    return mu[:len(batch["hr"])].float(), mu[len(batch["hr"]):].float()


def predict_x0(model: Denoiser, sched: ResShiftScheduler, x_t: torch.Tensor, t, y: torch.Tensor, cfg: dict,
               net_out: torch.Tensor | None = None) -> torch.Tensor:
    """x0_hat = f(x_t / c_t, y, t) [+ c(t) (x_t - y) with ``skip``]; ``net_out`` if f was already evaluated."""
    out = model(sched.scale_model_input(x_t, t), t, y) if net_out is None else net_out
    if cfg.get("skip") and cfg.get("residual_var"):
        out = out + sched.skip_coefficient(t, float(cfg["residual_var"]), x_t) * (x_t - y)
    return out


def _patch_batches(dataset, n: int, batch: int, device="cpu"):
    """The first n training patches as stacked {"hr", "y"} batches."""
    for j in range(0, min(n, len(dataset)), batch):
        items = [dataset[i] for i in range(j, min(n, len(dataset), j + batch))]
        yield {k: torch.stack([it[k] for it in items]).to(device) for k in ("hr", "y")}


@torch.no_grad()
def residual_variance_in_space(dataset, vae=None, scale: float = 1.0, n: int = 64, batch: int = 4) -> float:
    """var(x0 - y) over the first n training patches, in the denoiser's space (voxels, or scaled latents):
    how far the interpolated thick slices are from the target - the v of the skip coefficient."""
    d = [x0 - y for x0, y in (to_space(b, vae, scale) for b in _patch_batches(dataset, n, batch))]
    return float(torch.cat(d).float().pow(2).mean())


def resshift_loss(model: Denoiser, batch, step: int, sched: ResShiftScheduler, vae=None, scale: float = 1.0,
                  cfg: dict | None = None):
    """L = || x0_hat(x_t, y, t) - x0 ||^2 with t ~ U{0..T-1}, x_t from eq. (1) of ResShift."""
    x0, y = to_space(batch, vae, scale)
    t = torch.randint(0, sched.num_train_timesteps, (x0.shape[0],), device=x0.device)
    x_t = sched.add_noise(x0, y, torch.randn_like(x0), t)
    return F.mse_loss(predict_x0(model, sched, x_t, t, y, cfg or {}).float(), x0.float())


def ddpm_loss(model: Denoiser, batch, step: int, sched, vae=None, scale: float = 1.0):
    """The baseline: L = || eps_theta([x_t, y], t) - eps ||^2, x_t = sqrt(abar_t) x0 + sqrt(1 - abar_t) eps."""
    x0, y = to_space(batch, vae, scale)
    t = torch.randint(0, sched.config.num_train_timesteps, (x0.shape[0],), device=x0.device)
    eps = torch.randn_like(x0)
    return F.mse_loss(model(diffusion.add_noise(sched, x0, eps, t), t, y).float(), eps.float())


def regression_loss(model: Regression, batch, step: int):
    return F.l1_loss(model(batch["y"]).float(), batch["hr"].float())


@torch.no_grad()
def latent_scale(vae: nn.Module, dataset, n: int = 64, batch: int = 4, device="cpu") -> float:
    """s = 1 / std(mu) over the first n training patches (LDM sec. 4.3.2)."""
    vae.eval()
    mus = [vae.encode(b["hr"])[0] for b in _patch_batches(dataset, n, batch, device)]
    return float(1.0 / torch.cat(mus).float().std())


def train_stage(run, stage: str, model: nn.Module, loss_fn, dataset, cfg: dict, *, steps: int, lr: float,
                batch: int, device, budget_s="auto", processes: int = 1, frozen: nn.Module | None = None):
    """One resumable stage through the kit's Trainer (AdamW, EMA, atomic checkpoints); returns its ``TrainResult``.

    ``processes`` > 1: one process per GPU (``medkit.train.launch``), ``batch`` per process; the trained weights
    are in the run directory (``load_weights``). ``frozen``: a module the loss uses but does not train (the VAE
    of the latent space), moved to each process's device. At a wall-clock budget stop ``result.finished`` is
    False: the notebook ends its cell with ``session.end_if_stopped(result, ...)``, which skips the rest of the
    notebook successfully, so that running it again continues."""
    from ..train import Trainer, launch

    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)

    def train():
        trainer = Trainer(model, opt, run_dir=run.path, stage=stage, config=cfg, max_steps=steps,
                          ema_decay=cfg["ema_decay"], precision=cfg["precision"], ckpt_every=cfg["ckpt_every"],
                          budget_s=budget_s, seed=cfg["seed"], device=device)
        if frozen is not None:
            frozen.to(trainer.device)
        return trainer.fit(dataset, batch, loss_fn)

    return launch(train, processes=processes)


def count(model: nn.Module) -> int:
    return nets.count_parameters(model)


def describe(cfg: dict) -> str:
    T = PRESETS[cfg["resshift"]]["num_train_timesteps"]
    return (f"ResShift {cfg['resshift']} (T = {T}) in {cfg['space']} space, {cfg['conditioning']} conditioning"
            f"{', residual to y' if cfg['residual'] else ''}; x{cfg['factor']} through-plane, {cfg['voxel_mm']} mm voxels")


def thin_spacing_note(cfg: dict) -> str:
    return (f"thin {cfg['voxel_mm']:g} mm, thick {cfg['voxel_mm'] * cfg['factor']:g} mm "
            f"({cfg['slice_profile']} slice profile)")

