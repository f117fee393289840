"""Augmentations written for this kit: latent CutMix (training) and random masks (mask-to-image sampling).

Latent CutMix (the seed plan's extension, not from a published diffusion paper): CutMix (Yun et al.,
ICCV 2019, arXiv 1905.04899) applied to clean diffusion latents z0 *before* they are noised. With
probability ``p`` a sample i receives a box from a partner j (a random permutation of the batch):

    lambda ~ Beta(alpha, alpha);  box side = side * sqrt(1 - lambda), centre uniform, clipped to the latent;
    z0_i <- M * z0_j + (1 - M) * z0_i,   M the box's indicator.

Target handling: the mixed z0 *is* the training sample - it is noised with the step's eps, so the
eps-prediction target stays eps and an x0/v target is computed from the mixed z0 (``training_target``).
Mixing is a training-data change only; it is never applied at sampling. Prior work warns that
augmentations leak into samples unless handled (EDM/ADA's non-leaking augmentation): keep p moderate
and check samples for box-shaped seams (E2.3 of the grid).
"""
from __future__ import annotations

import torch


def cutmix_boxes(n: int, height: int, width: int, *, p: float, alpha: float = 1.0,
                 generator: torch.Generator | None = None):
    """Draw (applied[n] bool, partner[n] long, boxes[n, 4] = y0, y1, x0, x1) for a batch of n latents."""
    if not 0.0 <= p <= 1.0:
        raise ValueError(f"cutmix p={p}: must be a probability in [0, 1]")
    if alpha <= 0:
        raise ValueError(f"cutmix alpha={alpha}: must be > 0 (1 = uniform box area)")
    applied = torch.rand(n, generator=generator) < p
    partner = torch.randperm(n, generator=generator)
    lam = _beta(alpha, n, generator)
    cut = torch.sqrt(1.0 - lam)
    ch, cw = (cut * height).long(), (cut * width).long()
    cy = (torch.rand(n, generator=generator) * height).long()
    cx = (torch.rand(n, generator=generator) * width).long()
    y0, y1 = (cy - ch // 2).clamp(0, height), (cy + ch - ch // 2).clamp(0, height)
    x0, x1 = (cx - cw // 2).clamp(0, width), (cx + cw - cw // 2).clamp(0, width)
    return applied, partner, torch.stack([y0, y1, x0, x1], 1)


def _beta(alpha: float, n: int, generator: torch.Generator | None) -> torch.Tensor:
    """n draws of Beta(alpha, alpha), reproducible from ``generator`` (numpy's Beta, seeded from it)."""
    if alpha == 1.0:
        return torch.rand(n, generator=generator)  # Beta(1, 1) is uniform
    import numpy as np

    seed = int(torch.randint(0, 2**62, (1,), generator=generator))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n)).float()


def latent_cutmix(z0: torch.Tensor, p: float, *, alpha: float = 1.0, generator: torch.Generator | None = None,
                  return_info: bool = False):
    """CutMix a batch of latents (N, C, H, W) with probability ``p`` per sample; see the module doc.

    p = 0 returns ``z0`` itself and draws no random numbers, so a run with p = 0 is bit-identical to one
    without CutMix. With ``return_info`` also returns the mask M (N, 1, H, W) and the draw.
    """
    if p == 0:
        if return_info:
            n, _, h, w = z0.shape
            return z0, {"mask": z0.new_zeros(n, 1, h, w), "applied": torch.zeros(n, dtype=torch.bool),
                        "partner": torch.arange(n), "boxes": torch.zeros(n, 4, dtype=torch.long)}
        return z0
    if z0.ndim != 4:
        raise ValueError(f"latent_cutmix expects (N, C, H, W) latents, got shape {tuple(z0.shape)}")
    n, _, h, w = z0.shape
    applied, partner, boxes = cutmix_boxes(n, h, w, p=p, alpha=alpha, generator=generator)
    ys = torch.arange(h).view(1, h, 1)
    xs = torch.arange(w).view(1, 1, w)
    inside = ((ys >= boxes[:, 0, None, None]) & (ys < boxes[:, 1, None, None])
              & (xs >= boxes[:, 2, None, None]) & (xs < boxes[:, 3, None, None]))
    mask = (inside & applied.view(n, 1, 1)).unsqueeze(1).to(z0.dtype).to(z0.device)
    mixed = mask * z0[partner.to(z0.device)] + (1 - mask) * z0
    if return_info:
        return mixed, {"mask": mask, "applied": applied, "partner": partner, "boxes": boxes}
    return mixed


# ---------------------------------------------------------------------------------------------------
# Random masks for mask-to-image synthesis

def random_masks(masks: torch.Tensor, *, seed: int = 0, scale: float = 0.15, rotate_deg: float = 20.0,
                 elastic_magnitude: tuple[float, float] = (1.0, 2.0), elastic_spacing: float = 0.25,
                 flip: bool = True) -> torch.Tensor:
    """New masks from real ones: scaling, rotation, elastic deformation and flips (MONAI transforms).

    The "random masks" of Siamese-Diffusion's evaluation (Qiu et al., CVPR 2025): each mask (N, 1, H, W)
    in {0, 1} is scaled by 1 +- ``scale``, rotated by +- ``rotate_deg``, deformed by MONAI's
    ``Rand2DElastic`` (control-point ``elastic_spacing`` x the image size, displacement ``elastic_magnitude``
    in control-point units) and flipped left-right / up-down with probability 0.5 each, then thresholded at
    0.5, so the result stays binary. Deterministic for a given ``seed``. A mask of a few pixels can fall
    below 0.5 everywhere after the bilinear resampling; it is then kept as every pixel the same transform
    reaches (> 1e-3), so a non-empty mask gives an empty one only when the transform moves it out of the image.
    """
    import math

    from monai.transforms import Rand2DElastic, RandFlip

    if masks.ndim != 4 or masks.shape[1] != 1:
        raise ValueError(f"random_masks: masks must be (N, 1, H, W), got {tuple(masks.shape)}")
    h, w = masks.shape[-2:]
    spacing = (max(2.0, elastic_spacing * h), max(2.0, elastic_spacing * w))
    rad = math.radians(rotate_deg)
    elastic = Rand2DElastic(spacing=spacing, magnitude_range=elastic_magnitude, prob=1.0, rotate_range=(rad,),
                            scale_range=(scale, scale), mode="bilinear", padding_mode="zeros")
    flips = [RandFlip(prob=0.5 if flip else 0.0, spatial_axis=ax) for ax in (0, 1)]
    for k, tr in enumerate([elastic, *flips]):
        tr.set_random_state(seed=int(seed) * 7 + k)
    out = []
    for m in masks.float():
        soft = elastic(m)
        for f in flips:
            soft = f(soft)
        soft = soft.as_tensor() if hasattr(soft, "as_tensor") else torch.as_tensor(soft)  # MetaTensor -> Tensor
        x = soft > 0.5
        if not x.any():  # a tiny mask lost to the interpolation: same transform, any coverage counts
            x = soft > 1e-3
        out.append(x.float())
    return torch.stack(out)
