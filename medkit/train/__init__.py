"""Training: one resumable loop (``Trainer``) and atomic, verifiable checkpoints.

Later stages load what earlier ones trained with ``load_weights(run_dir, stage, model)``.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from medkit.train.checkpoint import (CheckpointError, find_resumable, load_checkpoint, load_tensors, read_meta,
                                     save_checkpoint)
from medkit.train.loop import ConfigMismatchError, NonFiniteLossError, Trainer, TrainResult
from medkit.train.parallel import launch
from medkit.train.settings import TrainSettings
from medkit.train.schedules import lr_schedule

__all__ = ["Trainer", "TrainSettings", "TrainResult", "ConfigMismatchError", "NonFiniteLossError", "CheckpointError",
           "save_checkpoint", "load_checkpoint", "find_resumable", "load_weights", "recorded_facts", "lr_schedule",
           "launch"]


def recorded_facts(run_dir, stage: str) -> dict:
    """The where-found facts (``Trainer(facts=...)``: cache folder, weights source, optimizer) that the newest
    valid checkpoint of ``stage`` recorded; {} for a fresh run. A notebook reads them before building what a
    resume must match, e.g. the optimizer whose saved state it will load."""
    path = find_resumable(Path(run_dir) / "checkpoints" / stage, log=lambda m: None)
    return dict(read_meta(path).get("facts") or {}) if path is not None else {}


def load_weights(run_dir, stage: str, model: nn.Module, ema: bool = True, log=print) -> dict:
    """Load the newest valid checkpoint of ``stage`` in ``run_dir`` into ``model``; return its meta.

    ``ema=True`` loads the EMA weights when the checkpoint has them (the ones to sample or encode
    with), else the raw weights. Only the weights are read, not the optimizer state.
    """
    from medkit import persist

    persist.restore(run_dir, [stage], log=log)  # from Kaggle inputs / Google Drive; nothing elsewhere
    ckpt_dir = Path(run_dir) / "checkpoints" / stage
    path = find_resumable(ckpt_dir, log=log)
    if path is None:
        raise CheckpointError(
            f"no trained '{stage}' weights: {ckpt_dir} holds no valid checkpoint. Run the notebook that trains "
            f"the '{stage}' stage first (e.g. run the VAE notebook before the latent diffusion one), with the "
            f"same run_dir, or pass the run_dir of the run that trained it.")
    meta = read_meta(path)
    group = "ema" if ema and (path / "ema.safetensors").exists() else "model"
    tensors = load_tensors(path, group, verify=False)  # find_resumable just verified the manifest
    try:
        model.load_state_dict(tensors)
    except RuntimeError as e:
        raise CheckpointError(f"{path / (group + '.safetensors')} does not fit this model (different architecture "
                              f"or config than the run that trained '{stage}'): {e}") from e
    if not meta.get("finished", True):
        log(f"note: '{stage}' in {run_dir} stopped at step {meta.get('step')}/{meta.get('max_steps')} "
            f"(not finished); using those weights")
    meta = dict(meta, checkpoint=str(path), weights=group)
    return meta
