"""How much does the Trainer cost on top of a bare PyTorch loop?

    python -m medkit.train.bench [--device cpu|cuda] [--steps 300] [--width 64] [--ckpt-every 100]

Trains the same small conv net twice on random 1x64x64 images: once with a bare loop
(autocast + backward + optimizer step, nothing else) and once with ``Trainer`` (EMA, logging,
clipping, non-finite checks, checkpoints, loss plots). Prints seconds per step of each, the
difference in %, and the Trainer's own accounting of checkpoint/log/plot/EMA time. The same
numbers are used to decide ``ckpt_every``: a checkpoint costs roughly ``checkpoint_s_each``.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time

import torch
from torch import nn

from medkit import env
from medkit.train.loop import Trainer


def saved_activation_bytes(fn, dtype: torch.dtype | None = torch.bfloat16, device_type: str = "cpu") -> int:
    """Bytes of the distinct tensors autograd saves for the backward pass while ``fn()`` runs (under autocast of
    ``device_type`` to ``dtype`` when given: on a CPU bfloat16 has the bytes of the fp16 a T4 uses), counted with
    ``torch.autograd.graph.saved_tensors_hooks``. Tensors saved inside ``torch.utils.checkpoint`` use their own
    hooks and are not seen: count without checkpointing (an upper bound)."""
    import contextlib

    seen, total = set(), [0]

    def pack(t):
        key = (t.data_ptr(), t.numel(), t.dtype)
        if key not in seen:
            seen.add(key)
            total[0] += t.numel() * t.element_size()
        return t
    amp = torch.autocast(device_type, dtype=dtype) if dtype is not None else contextlib.nullcontext()
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), amp:
        out = fn()
    del out
    return total[0]


def _model(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, width, 3, padding=1), nn.SiLU(),
        nn.Conv2d(width, width, 3, padding=1, stride=2), nn.GroupNorm(8, width), nn.SiLU(), nn.Dropout(0.1),
        nn.Conv2d(width, width, 3, padding=1), nn.SiLU(),
        nn.ConvTranspose2d(width, width, 4, stride=2, padding=1), nn.SiLU(),
        nn.Conv2d(width, 1, 3, padding=1))


def _loss(model, batch, step):
    x = batch[0]
    noise = torch.randn_like(x)
    return nn.functional.mse_loss(model(x + noise).float(), noise)


def run(device=None, steps: int = 300, width: int = 64, batch_size: int = 16, ckpt_every: int = 100,
        precision: str = "auto") -> dict:
    dev = env.pick_device(device)
    data = torch.utils.data.TensorDataset(torch.randn(512, 1, 64, 64))
    amp = env.autocast_dtype(dev, precision)

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    # bare loop
    torch.manual_seed(0)
    model = _model(width).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler(dev.type) if amp == torch.float16 else None
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True, drop_last=True)
    it, done, t0 = iter(loader), 0, None
    while done < steps + 10:
        if done == 10:  # warm-up excluded
            sync()
            t0 = time.perf_counter()
        try:
            (x,) = next(it)
        except StopIteration:
            it = iter(loader)
            continue
        x = x.to(dev, non_blocking=True)
        opt.zero_grad(set_to_none=True)
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            loss = _loss(model, (x,), done)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
        else:
            loss.backward()
            opt.step()
        done += 1
    sync()
    bare = (time.perf_counter() - t0) / steps

    # Trainer (warm-up: 10 steps in a first call, then the timed call resumes from that checkpoint)
    with tempfile.TemporaryDirectory() as rd:
        def trainer(max_steps):
            torch.manual_seed(0)
            m = _model(width)
            o = torch.optim.AdamW(m.parameters(), lr=1e-4)
            return Trainer(m, o, run_dir=rd, stage="bench", config={"width": width}, max_steps=max_steps,
                           ema_decay=0.999, precision=precision, ckpt_every=ckpt_every, log_every=10,
                           budget_s=None, device=dev, progress=False, log=lambda s: None)
        trainer(10).fit(data, batch_size, _loss)
        sync()
        r = trainer(steps + 10).fit(data, batch_size, _loss)
        sync()
        n_ckpt = r.checkpoints
    per_step = r.seconds / r.steps_run
    n_params = sum(p.numel() for p in _model(width).parameters())
    return {
        "device": str(dev), "precision": str(amp or torch.float32), "params": n_params, "steps": steps,
        "bare_s_per_step": bare, "trainer_s_per_step": per_step,
        "trainer_vs_bare_pct": 100 * (per_step - bare) / bare,
        "overhead_pct_of_step_time": 100 * r.overhead_seconds / (r.seconds - r.overhead_seconds),
        "overhead_s": {k: round(v, 4) for k, v in r.overhead.items()},
        "checkpoints": n_ckpt, "checkpoint_s_each": r.overhead["checkpoint"] / max(1, n_ckpt),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default=None)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--ckpt-every", type=int, default=100)
    ap.add_argument("--precision", default="auto")
    a = ap.parse_args(argv)
    print(json.dumps(run(a.device, a.steps, a.width, a.batch_size, a.ckpt_every, a.precision), indent=1))


if __name__ == "__main__":
    main()
