"""Pixel metrics in 2D and 3D, computed with torchmetrics (not re-derived): SSIM, PSNR, MAE.

Images live in [-1, 1], so the default ``data_range=2.0``: PSNR and SSIM then equal those of the same
images rescaled to [0, 1] with data_range 1. For data in native units (HU, raw MRI) pass its range
explicitly. (N, C, H, W) tensors are 2D, (N, C, D, H, W) 3D (SSIM with a 3D Gaussian window).
Tested against scikit-image.
"""
from __future__ import annotations

import math

import torch
from torchmetrics.functional import mean_absolute_error
from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure


_SSIM_PAD = 5  # half of the 11-tap window of a sigma-1.5 Gaussian (radius int(3.5 sigma + 0.5))


def _check(pred: torch.Tensor, target: torch.Tensor, name: str) -> None:
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred has shape {tuple(pred.shape)} but target {tuple(target.shape)}")
    if pred.ndim not in (4, 5):
        raise ValueError(f"{name}: expected (N, C, H, W) or (N, C, D, H, W) tensors, got {pred.ndim}D")
    if not (torch.isfinite(pred).all() and torch.isfinite(target).all()):
        raise ValueError(f"{name}: inputs contain NaN or inf")


def ssim(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0, per_image: bool = False):
    """Structural similarity (Wang et al., IEEE TIP 2004): Gaussian window sigma 1.5 (11 taps), 2D or 3D.

    The SSIM map comes from torchmetrics; as in Wang et al.'s reference code and scikit-image, only the
    positions where the whole window lies inside the image are averaged (torchmetrics' own mean also
    counts a reflect-padded border, which gives slightly different numbers).
    """
    _check(pred, target, "ssim")
    spatial = pred.shape[2:]
    if min(spatial) < 2 * _SSIM_PAD + 1:
        raise ValueError(f"ssim: images of spatial size {tuple(spatial)} are smaller than the 11-pixel window.")
    _, full = structural_similarity_index_measure(pred.float(), target.float(), data_range=data_range,
                                                  return_full_image=True)
    inner = full[(Ellipsis, *(slice(_SSIM_PAD, -_SSIM_PAD) for _ in spatial))]
    per = inner.flatten(1).mean(1)
    return per if per_image else per.mean()


def psnr(pred: torch.Tensor, target: torch.Tensor, data_range: float = 2.0, per_image: bool = False):
    """Peak signal-to-noise ratio in dB: 10 log10(range^2 / MSE)."""
    _check(pred, target, "psnr")
    if per_image:
        dims = tuple(range(1, pred.ndim))
        return peak_signal_noise_ratio(pred.float(), target.float(), data_range=data_range,
                                       reduction="none", dim=dims)
    return peak_signal_noise_ratio(pred.float(), target.float(), data_range=data_range)


def mae(pred: torch.Tensor, target: torch.Tensor, value_range: tuple[float, float] | None = None,
        per_image: bool = False):
    """Mean absolute error, in native units when ``value_range`` is given.

    ``value_range=(lo, hi)`` says which native interval [-1, 1] stands for, e.g. ``(-1000, 1000)`` for CT
    windowed to [-1000, 1000] HU: the MAE is then in HU (HU-MAE), ``(hi - lo) / 2`` times the MAE in
    [-1, 1] units. Without it, the MAE of the tensors as given.
    """
    _check(pred, target, "mae")
    scale = 1.0
    if value_range is not None:
        lo, hi = value_range
        if not hi > lo:
            raise ValueError(f"mae: value_range={value_range!r} must be (low, high) with high > low.")
        scale = (hi - lo) / 2.0
    if per_image:
        return (pred.float() - target.float()).abs().flatten(1).mean(1) * scale
    return mean_absolute_error(pred.float(), target.float()) * scale


def mean_ci(values, z: float = 1.96) -> dict:
    """Mean, standard deviation and a normal-approximation 95% CI of per-image values."""
    v = torch.as_tensor(values, dtype=torch.float64).flatten()
    n = v.numel()
    mean = v.mean().item()
    std = v.std().item() if n > 1 else float("nan")
    half = z * std / math.sqrt(n) if n > 1 else float("nan")
    return {"value": mean, "std": std, "ci95": [mean - half, mean + half], "n": n}
