"""Learning-rate schedules: one helper over torch's schedulers for every method.

``lr_schedule(opt, warmup_steps=w, total_steps=n, decay="cosine", floor=f)`` is a linear warm-up over the first
``w`` steps (factor ``(step + 1) / w``: the first step already trains, at ``lr / w``) then, for ``decay="cosine"``,
cosine decay from the base LR to ``f`` x the base LR at step ``n``; ``decay="constant"`` keeps the base LR
after the warm-up. Built from ``torch.optim.lr_scheduler``'s ``LinearLR``, ``CosineAnnealingLR`` (its
``eta_min`` is the floor) and ``SequentialLR``; None when there is nothing to schedule (constant, no warm-up).

Who uses what: SBLDM (both stages) warm-up + cosine to 0.1 x; SLIM-Diff warm-up (0 by default) + cosine to
``lr_min``; Siamese-Diffusion constant (the official code has no schedule), warm-up as a labelled option.
"""
from __future__ import annotations

import torch
from torch.optim import lr_scheduler as sched


def lr_schedule(optimizer: torch.optim.Optimizer, *, warmup_steps: int = 0, total_steps: int | None = None,
                decay: str = "cosine", floor: float = 0.0):
    """The schedule described in the module docstring, or None (constant LR and no warm-up)."""
    if decay not in ("cosine", "constant"):
        raise ValueError(f"decay={decay!r}: use 'cosine' or 'constant'")
    if not (isinstance(warmup_steps, int) and warmup_steps >= 0):
        raise ValueError(f"warmup_steps={warmup_steps!r}: an integer >= 0")
    if not 0.0 <= floor <= 1.0:
        raise ValueError(f"floor={floor!r}: the final LR as a fraction of the base LR, in [0, 1]")
    if decay == "cosine" and not (isinstance(total_steps, int) and total_steps > warmup_steps):
        raise ValueError(f"total_steps={total_steps!r}: cosine decay needs the number of training steps, more than "
                         f"warmup_steps={warmup_steps}")
    phases, milestones = [], []
    if warmup_steps >= 1:
        phases.append(sched.LinearLR(optimizer, start_factor=1.0 / warmup_steps, end_factor=1.0,
                                     total_iters=max(warmup_steps - 1, 1)))
        milestones.append(warmup_steps)
    if decay == "cosine":
        base = [g.get("initial_lr", g["lr"]) for g in optimizer.param_groups]
        if len(set(base)) > 1:
            raise ValueError("lr_schedule: cosine decay to a floor needs one base LR for all parameter groups")
        phases.append(sched.CosineAnnealingLR(optimizer, T_max=total_steps - warmup_steps, eta_min=floor * base[0]))
    if not phases:
        return None
    if len(phases) == 1:  # cosine from step 0, or a warm-up that then holds the base LR (LinearLR's end_factor)
        return phases[0]
    return sched.SequentialLR(optimizer, phases, milestones=milestones)
