"""Image metrics, computed with torchmetrics (not re-derived).

Images live in [-1, 1], so ``data_range=2.0``: PSNR and SSIM then equal those of the same images
rescaled to [0, 1] with data_range 1.
"""
from __future__ import annotations

import math

import torch
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


def _check(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred has shape {tuple(pred.shape)} but target {tuple(target.shape)}")
    if pred.ndim not in (4, 5):
        raise ValueError(f"{name}: expected (N, C, H, W) or (N, C, D, H, W) tensors, got {pred.ndim}D")
    if not (torch.isfinite(pred).all() and torch.isfinite(target).all()):
        raise ValueError(f"{name}: inputs contain NaN or inf")


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0, per_image: bool = False):
    """Structural similarity (Wang et al. 2004), Gaussian window 11, sigma 1.5; 2D or 3D."""
    _check(pred, target, "ssim")
    out = structural_similarity_index_measure(pred.float(), target.float(), data_range=data_range,
                                              reduction="none" if per_image else "elementwise_mean")
    return out


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0, per_image: bool = False):
    """Peak signal-to-noise ratio in dB: 10 log10(range^2 / MSE)."""
    _check(pred, target, "psnr")
    if per_image:
        dims = tuple(range(1, pred.ndim))
        return peak_signal_noise_ratio(pred.float(), target.float(), data_range=data_range,
                                       reduction="none", dim=dims)
    return peak_signal_noise_ratio(pred.float(), target.float(), data_range=data_range)


def mean_ci(values, z: float = 1.96) -> dict:
    """Mean, standard deviation and a normal-approximation 95% CI of per-image values."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = v.numel()
    mean = v.mean().item()
    std = v.std().item() if n > 1 else float("nan")
    half = z * std / math.sqrt(n) if n > 1 else float("nan")
    return {"value": mean, "std": std, "ci95": [mean - half, mean + half], "n": n}
