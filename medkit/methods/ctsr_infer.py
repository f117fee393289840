"""Whole-volume super-resolution for ``medkit.methods.ctsr``: windows blended with Gaussian weights.

A volume of any size is processed in overlapping windows (MONAI ``sliding_window_inference``, mode
"gaussian", sigma = 0.125 x window, the MONAI default DiffBIR's 0.1 is close to), so memory is bounded by the
window and the batch of windows, not by the volume. Diffusion samplers blend at *every* denoising step: the
network's estimate for the whole volume is assembled from the windows, then the step is taken on the whole
volume with noise drawn once for the whole volume, so neighbouring windows never disagree about the state
they denoise (DiffBIR's tiled sampling; Lin et al., ECCV 2024). Encoding and decoding go by windows too; the
windows' starts stay on the VAE's 4-voxel grid (overlap 0.5 of a window that is a multiple of 8).

All functions take and return (1, C, X, Y, Z) tensors on the CPU and run the network on ``device``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from monai.inferers import sliding_window_inference
from tqdm.auto import tqdm

from .. import diffusion
from . import ctsr


@dataclass
class SRResult:
    volume: np.ndarray   # (X, Y, Z) in [-1, 1] on the thin grid
    seconds: float
    nfe: int             # network evaluations over the whole volume (denoiser calls per window count once)


def pad_to_multiple(x: torch.Tensor, m) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Replicate-pad the last three dims up to multiples of m (an int or one per axis); returns the padded tensor
    and the old size."""
    size = tuple(x.shape[-3:])
    m = (m,) * 3 if isinstance(m, int) else tuple(m)
    pad = [(-s) % mi for s, mi in zip(size, m)]
    if any(pad):
        x = F.pad(x, (0, pad[2], 0, pad[1], 0, pad[0]), mode="replicate")
    return x, size


def _crop(x: torch.Tensor, size) -> torch.Tensor:
    return x[..., :size[0], :size[1], :size[2]]


@torch.no_grad()
def windows(fn, x: torch.Tensor, roi, cfg: dict, device="cpu") -> torch.Tensor:
    """``fn`` over ``x`` by Gaussian-blended windows of ``roi`` (clipped to x's size)."""
    roi = tuple(min(r, s) for r, s in zip(roi, x.shape[-3:]))
    return sliding_window_inference(x, roi, cfg["sw_batch"], fn, overlap=cfg["overlap"], mode="gaussian",
                                    sigma_scale=0.125, sw_device=device, device="cpu")


def latent_window(cfg: dict):
    return tuple(w // f for w, f in zip(cfg["window"], ctsr.vae_factors(cfg)))


@torch.no_grad()
def encode_volume(vae, vol: torch.Tensor, scale: float, cfg: dict, device="cpu") -> torch.Tensor:
    """s * mu(x) of a (1, 1, X, Y, Z) volume (sides multiples of 4) by windows -> (1, C, X/4, Y/4, Z/4)."""
    return windows(lambda w: vae.encode(w)[0].float() * scale, vol, cfg["window"], cfg, device)


@torch.no_grad()
def decode_volume(vae, z: torch.Tensor, scale: float, cfg: dict, device="cpu") -> torch.Tensor:
    return windows(lambda w: vae.decode(w / scale).float(), z, latent_window(cfg), cfg, device)


@torch.no_grad()
def resshift_sample(model, sched, y: torch.Tensor, cfg: dict, steps: int | None = None, seed: int = 0,
                    device="cpu", progress: bool = True, noise_scale: float = 1.0) -> tuple[torch.Tensor, int]:
    """The ResShift chain over a whole (1, C, ...) condition y: x_{T-1} = y + kappa sqrt(eta_{T-1}) eps, then
    one posterior step per visited t, x0_hat assembled from Gaussian-blended windows.

    ``noise_scale`` multiplies the prior's and every posterior step's noise (1: the paper's sampler; 0: a
    deterministic chain; this kit's option, the usual perception-distortion knob of diffusion SR)."""
    model.eval()
    sched.set_timesteps(steps)
    g = torch.Generator().manual_seed(seed)
    c = y.shape[1]
    roi = latent_window(cfg) if cfg["space"] == "latent" else cfg["window"]
    clip = 1.0 if cfg["space"] == "pixel" else None  # the official sampler clamps x0_hat in pixel space only
    x = sched.prior_sample(y, noise_scale * torch.randn(y.shape, generator=g))
    for t in tqdm(sched.timesteps.tolist(), desc="ResShift", disable=not progress, leave=False):
        tt = torch.tensor([t], device=device)
        inp = torch.cat([sched.scale_model_input(x, t), y], 1)
        out = windows(lambda w: model(w[:, :c], tt, w[:, c:]).float(), inp, roi, cfg, device)
        x0_hat = ctsr.predict_x0(model, sched, x, t, y, cfg, net_out=out)
        noise = noise_scale * torch.randn(x.shape, generator=g)
        x = sched.step(x0_hat, t, x, noise=noise, clip=clip).prev_sample
    return x, len(sched.timesteps)


@torch.no_grad()
def ddim_sample(model, y: torch.Tensor, cfg: dict, steps: int = 50, seed: int = 0, device="cpu",
                progress: bool = True) -> tuple[torch.Tensor, int]:
    """The conventional baseline: DDIM (eta 0, trailing spacing) from x_T ~ N(0, I), eps from windows."""
    model.eval()
    sched = ctsr.ddpm_scheduler(cfg, "ddim")
    c = y.shape[1]
    roi = latent_window(cfg) if cfg["space"] == "latent" else cfg["window"]

    def eps(x, t):  # the whole volume's eps, from windows of [x_t, y] (the volume stays on the CPU)
        return windows(lambda w: model(w[:, :c], t.to(w.device), w[:, c:]).float(), torch.cat([x, y], 1), roi, cfg,
                       device)
    x = diffusion.sample(eps, sched, tuple(y.shape), num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                         device="cpu", progress=progress, desc="DDIM")
    return x, len(sched.timesteps)


def super_resolve(y_unit: np.ndarray, method: str, cfg: dict, *, model=None, vae=None, scale: float = 1.0,
                  steps: int | None = None, seed: int = 0, device="cpu", progress: bool = True,
                  noise_scale: float = 1.0) -> SRResult:
    """One method over a whole thin-grid condition y (X, Y, Z) in [-1, 1] (thick slices interpolated along z).

    method: "resshift" (``steps`` None = all T), "ddim" (``steps``), "regression", "vae" (the VAE round trip of
    the given volume: pass the real thin volume as ``y_unit`` for the latent ceiling).
    """
    t0 = time.perf_counter()
    halvings = 2 ** (len(cfg["unet_channels"]) - 1)
    m = tuple(max(16, f * halvings) for f in ctsr.vae_factors(cfg))  # 16: BasicUNet's four halvings
    y, size = pad_to_multiple(torch.as_tensor(y_unit, dtype=torch.float32)[None, None], m)
    latent = cfg["space"] == "latent" and method in ("resshift", "ddim")
    nfe = 0
    if method == "vae" or latent:
        if vae is None:
            raise ValueError(f"method {method!r} in latent space needs the trained VAE (vae=...)")
        vae = vae.to(device).eval()
    if method == "regression":
        out = windows(lambda w: model(w).float(), y, cfg["window"], cfg, device)
        nfe = 1
    elif method == "vae":
        out = decode_volume(vae, encode_volume(vae, y, scale, cfg, device), scale, cfg, device)
    elif method in ("resshift", "ddim"):
        model = model.to(device)
        cond = encode_volume(vae, y, scale, cfg, device) if latent else y
        if method == "resshift":
            x0, nfe = resshift_sample(model, ctsr.scheduler(cfg), cond, cfg, steps, seed, device, progress, noise_scale)
        else:
            x0, nfe = ddim_sample(model, cond, cfg, steps or cfg["ddim_steps"], seed, device, progress)
        out = decode_volume(vae, x0, scale, cfg, device) if latent else x0
    else:
        raise ValueError(f"method={method!r}: use 'resshift', 'ddim', 'regression' or 'vae'")
    vol = _crop(out, size)[0, 0].clamp(-1, 1).numpy()
    return SRResult(volume=vol, seconds=time.perf_counter() - t0, nfe=nfe)
