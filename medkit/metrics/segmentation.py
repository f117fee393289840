"""Dice and IoU of binary segmentations, foreground only, per image - MONAI's numbers without MONAI's
one-hot plumbing.

For a prediction P and a target G (sets of foreground pixels/voxels of one image)::

    Dice = 2 |P & G| / (|P| + |G|)        IoU = |P & G| / |P | G|

These equal MONAI's ``DiceMetric(include_background=True)`` and ``MeanIoU(include_background=True)``
on one-channel binary input (tests/test_masks_seg.py checks 2D and 3D). Empty targets follow MONAI:

* ``ignore_empty=True`` (MONAI's default): an image whose target is empty gets NaN, whatever the
  prediction, and the mean is taken over the other images (nan-mean).
* ``ignore_empty=False``: an empty target scores 1 if the prediction is empty too, else 0.

One deliberate difference: when *every* target is empty (so every per-image value is NaN), MONAI's
aggregate returns 0.0; here the mean is NaN, because "no image could be scored" is not "Dice 0".
"""
from __future__ import annotations

import math

import torch


def _binary(x, name: str) -> torch.Tensor:
    x = torch.as_tensor(x)
    if x.dtype == torch.bool:
        return x
    if x.is_floating_point() and torch.isnan(x).any():
        raise ValueError(f"{name} contains NaN; pass binary masks (threshold probabilities first, e.g. p > 0.5).")
    ok = (x == 0) | (x == 1)
    if not ok.all():
        bad = x[~ok].flatten()[0].item()
        raise ValueError(f"{name} is not binary: it holds values such as {bad!r} besides 0 and 1. Threshold it "
                         f"first, e.g. (torch.sigmoid(logits) > 0.5) or (probabilities > 0.5).")
    return x.bool()


def _check(pred, target, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    pred, target = torch.as_tensor(pred), torch.as_tensor(target)
    if pred.shape != target.shape:
        raise ValueError(f"{name}: pred has shape {tuple(pred.shape)} but target {tuple(target.shape)}")
    if pred.ndim not in (4, 5) or pred.shape[1] != 1:
        raise ValueError(f"{name}: expected one-channel binary masks (N, 1, H, W) or (N, 1, D, H, W), got "
                         f"{tuple(pred.shape)}; add the channel axis with x[:, None]")
    return _binary(pred, f"{name} pred"), _binary(target, f"{name} target")


def _reduce(per: torch.Tensor, per_image: bool):
    if per_image:
        return per
    ok = ~torch.isnan(per)
    return per[ok].mean().item() if ok.any() else math.nan


def _counts(pred, target, name):
    p, g = _check(pred, target, name)
    dims = tuple(range(1, p.ndim))
    inter = (p & g).sum(dims).double()
    return inter, p.sum(dims).double(), g.sum(dims).double()


def dice(pred, target, per_image: bool = False, ignore_empty: bool = True):
    """Dice of binary masks (N, 1, H, W) / (N, 1, D, H, W): the mean over images (float), or the (N,)
    per-image values with ``per_image=True``. Empty targets: see the module docstring."""
    inter, sp, sg = _counts(pred, target, "dice")
    score = torch.where(sp + sg > 0, 2 * inter / (sp + sg).clamp_min(1), torch.ones_like(inter))
    if ignore_empty:
        score = torch.where(sg > 0, score, torch.full_like(score, math.nan))
    return _reduce(score, per_image)


def iou(pred, target, per_image: bool = False, ignore_empty: bool = True):
    """Intersection over union (Jaccard) of binary masks; same conventions as :func:`dice`."""
    inter, sp, sg = _counts(pred, target, "iou")
    union = sp + sg - inter
    score = torch.where(union > 0, inter / union.clamp_min(1), torch.ones_like(inter))
    if ignore_empty:
        score = torch.where(sg > 0, score, torch.full_like(score, math.nan))
    return _reduce(score, per_image)
