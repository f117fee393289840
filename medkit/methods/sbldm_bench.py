"""Will an SBLDM profile fit this GPU, and what does it cost per step?

    python -m medkit.methods.sbldm_bench --profile t4 --precision fp16 [--stage vae ldm] [--steps 1100]
                                         [--no-checkpointing] [--slices slices.npy] [--json out.json]

Trains the profile's real networks (``build_vae`` / ``build_unet``) with the real losses through the
kit's ``Trainer`` - EMA, logging, loss plots and checkpoints at the profile's ``ckpt_every`` - and
reports, per stage: median seconds per optimizer step, images per second, peak GPU memory (allocated and
reserved by PyTorch's caching allocator), the seconds one checkpoint takes, the loop's own overhead as a
% of step time (``TrainResult.overhead``) and the fp16 GradScaler skips; ``--stage sample`` times DDIM
sampling and decoding per image.

The VAE trains on MNI152 slices at the profile's resolution (or on ``--slices``, an (N, 1, H, W) float
array in [-1, 1], where nilearn is not installed); the latent UNet trains on unit-variance latents of the
VAE's latent shape - timing and memory do not depend on the latents' content. ``--precision fp16`` is
the T4 recipe (autocast fp16 + GradScaler) on any GPU; 'auto' picks bf16 on capability >= 8.
"""
from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time

import torch

from .. import env
from ..train.loop import Trainer
from . import sbldm


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: torch.Tensor):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return {"image": self.images[i]}


def _slices(cfg: dict, path: str | None) -> torch.Tensor:
    if path:
        import numpy as np

        try:
            x = torch.from_numpy(np.load(path)).float()
        except (OSError, ValueError, EOFError) as e:
            raise ValueError(f"--slices {path}: not a readable .npy array ({e})") from e
        if x.ndim != 4 or x.shape[1] != 1 or x.shape[-1] != cfg["image_size"]:
            raise ValueError(f"--slices {path}: expected an (N, 1, {cfg['image_size']}, {cfg['image_size']}) "
                             f"array, got {tuple(x.shape)}")
        return x
    from .. import data as mdata

    cache = mdata.build_slice_cache(cfg["data"], cfg["image_size"], seed=cfg["seed"])
    return mdata.SliceDataset(cache, "train").images


class _StepTimer:
    """Wall time between consecutive optimizer steps, read through the loss function's calls."""

    def __init__(self, device):
        self.device, self.times, self.last = device, [], None

    def tick(self):
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        now = time.perf_counter()
        if self.last is not None:
            self.times.append(now - self.last)
        self.last = now


def run_sampling(cfg: dict, *, device, n: int = 64, steps: int | None = None) -> dict:
    """Seconds per image of DDIM sampling + decoding at the profile's sizes (untrained weights: same cost)."""
    vae, unet = sbldm.build_vae(cfg).to(device).eval(), sbldm.build_unet(cfg).to(device).eval()
    f = 2 ** (len(cfg["vae_channels"]) - 1)
    shape = (cfg["latent_channels"], cfg["image_size"] // f, cfg["image_size"] // f)
    sch = sbldm.build_scheduler(cfg, "ddim", clip=5.0)
    steps = steps or cfg["sampling_steps"]
    amp = env.autocast_dtype(device, cfg["precision"])
    times = []
    for _ in range(3):  # the first call includes cuDNN autotuning; report the median of three
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            sbldm.sample(unet, vae, sch, n, shape, 1.0, steps=steps, device=device, batch_size=n, progress=False)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    out = {"stage": "sample", "n": n, "ddim_steps": steps, "batch": n,
           "precision": str(amp or torch.float32).replace("torch.", ""),
           "seconds_per_image": round(statistics.median(times) / n, 4), "runs_s": [round(x, 2) for x in times]}
    if device.type == "cuda":
        out["peak_allocated_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def run_stage(stage: str, cfg: dict, *, steps: int, device, slices: str | None = None) -> dict:
    if stage == "sample":
        return run_sampling(cfg, device=device, n=min(64, cfg["n_samples"]))
    torch.manual_seed(cfg["seed"])
    if stage == "vae":
        model = sbldm.build_vae(cfg)
        data = _Images(_slices(cfg, slices))
        batch, lr = cfg["vae_batch"], cfg["vae_lr"]

        def loss(m, b, step):
            timer.tick()
            return sbldm.vae_loss(m, b, step, cfg)
    elif stage == "ldm":
        model = sbldm.build_unet(cfg)
        f = 2 ** (len(cfg["vae_channels"]) - 1)
        h = cfg["image_size"] // f
        data = torch.randn(512, cfg["latent_channels"], h, h)
        batch, lr = cfg["ldm_batch"], cfg["ldm_lr"]
        scheduler = sbldm.build_scheduler(cfg, "ddpm")

        def loss(m, z0, step):
            timer.tick()
            return sbldm.ldm_loss(m, z0, step, scheduler)
    else:
        raise ValueError(f"stage={stage!r}: use 'vae' or 'ldm'")
    timer = _StepTimer(device)
    params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    with tempfile.TemporaryDirectory() as rd:
        tr = Trainer(model, opt, run_dir=rd, stage=stage, config=cfg, max_steps=steps, ema_decay=cfg["ema_decay"],
                     precision=cfg["precision"], ckpt_every=cfg["ckpt_every"], budget_s=None, seed=cfg["seed"],
                     device=device, progress=False, log=lambda s: None, persist=False)
        r = tr.fit(data, batch, loss)
    warm = timer.times[20:] or timer.times  # the first steps include cuDNN autotuning and allocator growth
    step_s = statistics.median(warm)
    out = {
        "stage": stage, "params_M": round(params / 1e6, 2), "batch": batch, "steps": r.steps_run,
        "precision": str(env.autocast_dtype(device, cfg["precision"]) or torch.float32).replace("torch.", ""),
        "gradient_checkpointing": cfg["gradient_checkpointing"],
        "median_s_per_step": round(step_s, 4), "images_per_s": round(batch / step_s, 1),
        "fit_seconds": round(r.seconds, 1), "checkpoints": r.checkpoints,
        "checkpoint_s_each": round(r.overhead["checkpoint"] / max(1, r.checkpoints), 3),
        "overhead_pct_of_step_time": round(100 * r.overhead_seconds / (r.seconds - r.overhead_seconds), 2),
        "overhead_s": {k: round(v, 3) for k, v in r.overhead.items()},
        "ckpt_every": cfg["ckpt_every"],
        "checkpoint_pct_at_ckpt_every": round(
            100 * (r.overhead["checkpoint"] / max(1, r.checkpoints)) / (cfg["ckpt_every"] * step_s), 3),
        "skipped_steps": r.skipped_steps, "last_loss": r.last_loss,
    }
    if device.type == "cuda":
        out["peak_allocated_GiB"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
        out["peak_reserved_GiB"] = round(torch.cuda.max_memory_reserved(device) / 2**30, 2)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", default="t4", choices=sorted(sbldm.PROFILES))
    ap.add_argument("--stage", nargs="+", default=["vae", "ldm"], choices=["vae", "ldm", "sample"],
                    help="vae / ldm: training steps; sample: DDIM sampling + decoding, seconds per image")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per stage (default ckpt_every + 100)")
    ap.add_argument("--precision", default=None, help="auto | fp32 | fp16 | bf16 (default: the profile's)")
    ap.add_argument("--no-checkpointing", action="store_true", help="gradient checkpointing off")
    ap.add_argument("--ckpt-every", type=int, default=None)
    ap.add_argument("--slices", default=None, help="(N,1,H,W) .npy of slices in [-1,1] instead of MNI152")
    ap.add_argument("--device", default=None)
    ap.add_argument("--json", default=None, help="also write the results to this file")
    a = ap.parse_args(argv)
    over = {"precision": a.precision, "ckpt_every": a.ckpt_every}
    if a.no_checkpointing:
        over["gradient_checkpointing"] = False
    cfg = sbldm.config(a.profile, **over)
    dev = env.pick_device(a.device)
    steps = a.steps or cfg["ckpt_every"] + 100
    res = {"machine": env.describe(), "torch": torch.__version__, "profile": a.profile,
           "stages": [run_stage(s, cfg, steps=steps, device=dev, slices=a.slices) for s in a.stage]}
    text = json.dumps(res, indent=1)
    print(text)
    if a.json:
        with open(a.json, "w") as f:
            f.write(text + "\n")
    return res


if __name__ == "__main__":
    main()
