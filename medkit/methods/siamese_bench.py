"""The official Siamese-Diffusion step written literally (deep copies every step), and a benchmark against ours.

``literal_loss`` follows ``ControlLDM.apply_model`` / ``p_losses`` of the official code (github
Qiukunpeng/Siamese-Diffusion, ``cldm/cldm.py``) step by step: the image branch deep-copies the ControlNet
(frozen, run under no_grad on the mask for sg[c_m]) and the whole UNet (run on c_mix; its gradients land
on the copy and are thrown away), and Online-Augmentation recomputes the mask branch on x_t'. It exists to
check ``siamese.training_loss`` (same loss, same gradients: ``tests/test_siamese.py``) and to measure what
the copies cost::

    python -m medkit.methods.siamese_bench --out docs/measurements/bench_siamese_step.json

Each implementation runs in a fresh process (so one's allocations do not hide the other's); memory is the
process's peak resident set (VmHWM) and its growth over the resident set before the first step, measured after
the gradient buffers and AdamW moments exist (they are the same for both).
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from .. import diffusion
from . import siamese


def literal_loss(net: siamese.SiameseNet, batch: dict, step: int, scheduler, cfg: dict, ctx=None, ctx_uncond=None):
    """The official step with its deep copies; draws its random numbers in the same order as ours."""
    image, mask = batch["image"], batch["mask"]
    x0 = batch.get("x0", image)
    b = x0.shape[0]
    h_m, h_i = siamese.mask_hint(mask, net.hint_channels).to(x0.dtype), siamese.image_hint(image).to(x0.dtype)
    drop = torch.rand(b, device=x0.device) < float(cfg["p_uncond"])
    if ctx is not None:
        ctx = torch.where(drop[:, None, None], ctx_uncond.expand(b, -1, -1), ctx.expand(b, -1, -1))
    else:
        h_m = torch.where(drop[:, None, None, None], siamese.null_hint(h_m, cfg), h_m)
    T = scheduler.config.num_train_timesteps
    eps = torch.randn_like(x0)
    t = torch.randint(0, T, (b,), device=x0.device).long()
    x_t = diffusion.add_noise(scheduler, x0, eps, t)

    def apply_model(model: siamese.SiameseNet, x, hint):
        return model.denoise(x, t, model.control(x, t, hint, ctx), ctx)

    out_mask = apply_model(net, x_t, h_m)                                     # the mask branch
    loss = siamese.mse_per_sample(out_mask, eps)
    w_i = float(step) / float(cfg["train_steps"])
    if cfg["image_branch"]:
        control_mask = copy.deepcopy(net.controlnet).requires_grad_(False)    # frozen copy for sg[c_m]
        unet_image = copy.deepcopy(net.unet)                                  # the UNet copied every step
        image_net = siamese.SiameseNet(unet_image, net.controlnet, net.kind, net.hint_channels, net.image_channels)
        c_i = net.control(x_t, t, h_i, ctx)
        with torch.no_grad():
            c_m_sg = siamese.SiameseNet(net.unet, control_mask, net.kind, net.hint_channels,
                                        net.image_channels).control(x_t, t, h_m, ctx)
        c_mix = ([float(cfg["w_m"]) * a.detach() + w_i * c for a, c in zip(c_m_sg[0], c_i[0])],
                 float(cfg["w_m"]) * c_m_sg[1].detach() + w_i * c_i[1])
        out_image = image_net.denoise(x_t, t, c_mix, ctx)
        loss = loss + siamese.mse_per_sample(out_image, eps)
        loss = loss + float(cfg["w_c"]) * siamese.mse_per_sample(out_mask, out_image.detach())
        late = (t <= int(cfg["t_tau"]))
        if cfg["online_aug"] and step > siamese.k_tau(cfg) and bool(late.any()):
            abar = scheduler.alphas_cumprod.to(x0.device)[t].view(b, *([1] * (x0.ndim - 1))).to(x0.dtype)
            recon = (x_t - (1 - abar).sqrt() * out_image) / abar.sqrt()       # predict_start_from_noise
            x_aug = diffusion.add_noise(scheduler, recon, eps, t)             # the same eps
            loss = loss + float(cfg["w_a"]) * late.float() * siamese.mse_per_sample(
                apply_model(net, x_aug.detach(), h_m), eps)
    return loss.mean()


# ---------------------------------------------------------------------------------------------- benchmark
# Shaped like SD 1.5 fine-tuning (many parameters, a small latent, batch 1-2), at CPU size: 26M-parameter UNet,
# 16 x 16 input, batch 2; Online-Augmentation active from the first step with the paper's T_tau = 200.
BENCH = dict(backend="scratch", image_size=16, unet_channels=(128, 256, 256), attention_levels=(False, False, True),
             num_res_blocks=2, num_head_channels=32, norm_num_groups=32, batch=2, steps=8)


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status (Linux only)")


def _worker(impl: str, settings: dict) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(int(settings.get("threads", torch.get_num_threads())))
    s = dict(settings)
    n_steps = int(s.pop("steps"))
    s.pop("threads", None)
    backend = s.pop("backend")
    cfg = siamese.config("smoke", backend, train_steps=n_steps, online_aug=True, k_tau=0, p_uncond=0.0, **s)
    net = siamese.build_scratch(cfg)
    params = siamese.trainable(net, cfg)
    opt = torch.optim.AdamW([p for p in params.parameters() if p.requires_grad], lr=1e-5)
    sched = siamese.build_scheduler(cfg, "ddpm")
    n = cfg["image_size"]
    batch = {"image": torch.rand(cfg["batch"], 1, n, n) * 2 - 1,
             "mask": (torch.rand(cfg["batch"], 1, n, n) > 0.5).float()}
    loss_fn = literal_loss if impl == "literal" else (lambda *a: siamese.training_loss(*a)[0])
    # persistent state first (gradient buffers and AdamW moments, the same for both), so the growth below is
    # what a step itself needs: activations, and for the literal step its copies and their gradients
    for p in params.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=False)
    rss0 = _rss_kib("VmRSS")
    times = []
    for k in range(n_steps):
        t0 = time.perf_counter()
        loss = loss_fn(net, batch, k + 1, sched, cfg)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=False)
        times.append(time.perf_counter() - t0)
    peak = _rss_kib("VmHWM")
    return {"impl": impl, "seconds_per_step_median": statistics.median(times[1:]), "step_seconds": times,
            "peak_rss_mib": peak / 1024, "rss_before_steps_mib": rss0 / 1024, "step_growth_mib": (peak - rss0) / 1024,
            "trainable_params": sum(p.numel() for p in params.parameters() if p.requires_grad),
            "unet_params": sum(p.numel() for p in net.unet.parameters()),
            "controlnet_params": sum(p.numel() for p in net.controlnet.parameters())}


def run(settings: dict | None = None, repeats: int = 3) -> dict:
    """Both implementations, each in ``repeats`` fresh processes, alternating; medians and ratios."""
    settings = {**BENCH, **(settings or {})}
    results = {"literal": [], "ours": []}
    for _ in range(repeats):
        for impl in ("literal", "ours"):
            out = subprocess.run([sys.executable, "-m", "medkit.methods.siamese_bench", "--worker", impl,
                                  "--settings", json.dumps(settings)], capture_output=True, text=True,
                                 env={**os.environ, "TQDM_DISABLE": "1"})
            if out.returncode:
                raise RuntimeError(f"benchmark worker {impl} failed:\n{out.stderr[-3000:]}")
            results[impl].append(json.loads(out.stdout.strip().splitlines()[-1]))

    def med(impl, key):
        return statistics.median(r[key] for r in results[impl])

    summary = {k: {impl: med(impl, k) for impl in results} for k in
               ("seconds_per_step_median", "peak_rss_mib", "step_growth_mib")}
    ratios = {k: summary[k]["ours"] / summary[k]["literal"] for k in summary}
    return {"settings": settings, "repeats": repeats, "summary": summary, "ratio_ours_over_literal": ratios,
            "targets": {"step_growth_mib": 0.6, "seconds_per_step_median": 0.8},
            "params": {k: results["ours"][0][k] for k in ("trainable_params", "unet_params", "controlnet_params")},
            "runs": results, "torch": torch.__version__, "threads": torch.get_num_threads()}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m medkit.methods.siamese_bench", description=__doc__.split("\n")[0])
    ap.add_argument("--out", help="write the JSON here")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--settings", default="{}", help="JSON overrides of the benchmark config")
    ap.add_argument("--worker", choices=("literal", "ours"), help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.worker:
        print(json.dumps(_worker(a.worker, {**BENCH, **json.loads(a.settings)})))
        return 0
    res = run(json.loads(a.settings), a.repeats)
    text = json.dumps(res, indent=2)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(text + "\n")
    s, r = res["summary"], res["ratio_ours_over_literal"]
    for k in s:
        print(f"{k:26s} literal {s[k]['literal']:9.3f}  ours {s[k]['ours']:9.3f}  ratio {r[k]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
