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


def rbf_mmd(feats_a, feats_b, sigma: float | str = 10.0, scale: float = 1000.0) -> float:
    """Squared MMD with a Gaussian RBF kernel, the CMMD estimator (Jayasumana et al., CVPR 2024):

        MMD^2 = scale * ( mean_{i!=j} k(a_i, a_j) + mean_{i!=j} k(b_i, b_j) - 2 mean_{i,j} k(a_i, b_j) ),
        k(x, y) = exp(-||x - y||^2 / (2 sigma^2))

    (the unbiased U-statistic: the diagonal terms are left out). CMMD's own values are sigma = 10 and
    scale = 1000 on CLIP ViT-L/14@336 embeddings; on another embedding say which one you used.
    ``sigma="median"`` takes the median pairwise distance of the pooled features (the median heuristic),
    for embeddings whose scale is unlike CLIP's. Features are (N, D) arrays or tensors, N >= 2 each.
    """
    a = torch.as_tensor(feats_a, dtype=torch.float64).flatten(1)
    b = torch.as_tensor(feats_b, dtype=torch.float64).flatten(1)
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"rbf_mmd: feature sizes differ ({a.shape[1]} vs {b.shape[1]})")
    if len(a) < 2 or len(b) < 2:
        raise ValueError(f"rbf_mmd needs at least 2 samples on each side (got {len(a)} and {len(b)})")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("rbf_mmd: features contain NaN or inf")
    if sigma == "median":
        pooled = torch.cat([a, b])
        d = torch.cdist(pooled, pooled)
        sigma = d[torch.triu(torch.ones_like(d, dtype=torch.bool), 1)].median().item()
    if not isinstance(sigma, (int, float)) or sigma <= 0:
        raise ValueError(f"rbf_mmd: sigma={sigma!r} must be a positive number or 'median'")
    gamma = 1.0 / (2.0 * float(sigma) ** 2)

    def k(x, y):
        return torch.exp(-gamma * torch.cdist(x, y).pow(2))

    kaa, kbb, kab = k(a, a), k(b, b), k(a, b)
    n, m = len(a), len(b)
    xx = (kaa.sum() - kaa.diagonal().sum()) / (n * (n - 1))
    yy = (kbb.sum() - kbb.diagonal().sum()) / (m * (m - 1))
    return float(scale * (xx + yy - 2 * kab.mean()))
