# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#       format_version: '1.3'
#       jupytext_version: 1.19.6
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # SLIM-Diff 2/4 - training the joint image + mask model
#
# One shared MONAI `DiffusionModelUNet` denoises the 2-channel [image, mask] slice, conditioned on the token
# (z-bin and lesion class, its embedding added to the time embedding). The paper's recipe:
#
# $$\mathcal L = \sum_{c\in\{\text{img},\text{mask}\}} w_c\,\mathbb E\,\big|f_\theta(x_t, t, c)_c - \text{target}_c\big|^p,
#   \qquad \text{target} \in \{\epsilon,\ x_0,\ v\},$$
#
# cosine schedule ($T=1000$), x0-prediction and $p=1.5$ by default (Table 1 compares eps / v / x0 and
# $p\in\{1.5, 2, 2.5\}$), self-conditioning with probability 0.5 per batch (a no-grad pass gives a clamped
# $\hat x_0$ that is fed back as two extra input channels), AdamW (lr 1e-4, wd 1e-4 on the t4 profile),
# gradient clipping 1.0, cosine LR decay to 1e-6, EMA 0.999, 50/50 lesion/lesion-free batches, fp16 on a T4.
# The loop is the kit's resumable `Trainer`.
#
# **How long:** `smoke` seconds; `cpu-demo` about 8 minutes on a 2-core CPU; `t4` hours.

# %% [markdown]
# ## Setup

# %%
import importlib.util, os, subprocess, sys
from pathlib import Path

if importlib.util.find_spec("medkit") is None:
    here = [p for p in (Path.cwd(), *Path.cwd().parents) if (p / "medkit" / "__init__.py").is_file()]
    kaggle = [p.parent.parent for d in ("*", "*/*", "*/*/*") for p in Path("/kaggle/input").glob(f"{d}/medkit/__init__.py")]
    if here or kaggle:
        sys.path.insert(0, str((here or kaggle)[0]))
    elif os.environ.get("MEDKIT_PIP"):
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", os.environ["MEDKIT_PIP"]], check=True)
    else:
        raise ImportError("medkit not found: run from the repository checkout, attach the medkit repository as a "
                          "Kaggle dataset, or set MEDKIT_PIP to a pip spec of the repository.")
    root = (here or kaggle or [None])[0]
    if root is not None and importlib.util.find_spec("monai") is None:  # Kaggle/Colab images lack MONAI
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(root / "requirements.txt")], check=True)

# %% tags=["parameters"]
profile = "auto"       # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" | "cpu-demo" | "t4"
run_dir = ""           # the run directory of notebook 1; empty: <run root>/slimdiff-<profile>
prediction = None      # "eps" | "v" | "x0"; None: x0 (the paper's choice)
lp = None              # exponent p of the Lp loss; None: 1.5
self_cond_p = None     # self-conditioning probability per batch (0: off); None: 0.5
train_steps = None     # optimiser steps; None: the profile's
batch = None           # slices per step; None: the profile's (t4: 16)
lr = None              # learning rate; None: the profile's
warmup_steps = None    # linear LR warm-up steps; None: the profile's (0, as the recipe)
early_stop_patience = None  # validations without improvement before stopping; None: the profile's (t4: 25); 0: off
val_every = None       # steps between validations (early stopping only); None: one balanced epoch
device = "auto"        # "auto" | "cpu" | "cuda"
budget_s = "auto"      # wall-clock limit in seconds; "auto": 11h15m on Kaggle, none elsewhere
processes = 1          # training processes: 2 on Kaggle's "GPU T4 x2" (one GPU each); on a CPU, gloo processes (a trial, not faster)

# %%
import math

import torch

import medkit
from medkit import env, session, viz
from medkit.data.lesion_slices import LesionSliceDataset, balanced_indices
from medkit.methods import slimdiff
from medkit.run import RunDir
from medkit.train import Trainer, launch, lr_schedule

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"slimdiff-{profile}")
data_cfg = run.load_config("cache", needed_by="training")
overrides = dict(prediction=prediction, lp=lp, self_cond_p=self_cond_p, train_steps=train_steps, batch=batch, lr=lr,
                 warmup_steps=warmup_steps, early_stop_patience=early_stop_patience, val_every=val_every)
cfg = slimdiff.config(profile, **{k: data_cfg[k] for k in ("data", "image_size", "n_subjects", "n_bins", "seed",
                                                            "lesion_radius_mm", "max_lesions")},
                      **{k: v for k, v in overrides.items() if v is not None})
cfg["cache"] = data_cfg["cache"]
cfg["early_stop_patience"] = cfg["early_stop_patience"] or None  # 0: off
dev = env.pick_device(device)
run.save_config("train", cfg)
train = LesionSliceDataset(cfg["cache"], "train")
# 50/50 lesion / lesion-free: an epoch is a balanced draw (with replacement) of the training slices
balanced = torch.utils.data.Subset(train, balanced_indices(train, 2 * len(train), seed=cfg["seed"]).tolist())
print(f"{len(train)} training slices -> balanced epoch of {len(balanced)}; prediction {cfg['prediction']}, "
      f"p = {cfg['lp']}, self-conditioning {cfg['self_cond_p']}")

# %% [markdown]
# ## Model and schedule

# %%
unet = slimdiff.build_unet(cfg)
scheduler = slimdiff.build_scheduler(cfg, "ddpm")
opt = torch.optim.AdamW(unet.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"])
# linear warm-up (none by default), then cosine decay to lr_min
lr_sched = lr_schedule(opt, warmup_steps=cfg["warmup_steps"], total_steps=cfg["train_steps"], floor=cfg["lr_min"] / cfg["lr"])
print(f"DiffusionModelUNet: {medkit.nets.count_parameters(unet) / 1e6:.2f} M parameters "
      f"(the paper's t4 model: 26.9 M); tokens: {2 * cfg['n_bins']}")

# %% [markdown]
# ## Train
# `slimdiff.training_loss` is the step written out: noise [image, mask] at a random $t$, the optional
# self-conditioning pass, the network output against the parameterisation's target, Lp per channel.

# %%
# Early stopping (the recipe's; t4 profile): the loss on the held-out subjects' slices, once per balanced epoch
# unless val_every says otherwise; training stops after early_stop_patience validations without improvement.
early = cfg["early_stop_patience"]
val_set = LesionSliceDataset(cfg["cache"], "val") if early else None
val_every = int(cfg["val_every"] or math.ceil(len(balanced) / (cfg["batch"] * processes)))
if early:
    print(f"early stopping: validation on {len(val_set)} held-out slices every {val_every} steps, patience {early}")


def validate(m):
    return slimdiff.validation_loss(m, val_set, scheduler, cfg, next(m.parameters()).device)


def train():  # every process runs this whole (processes > 1: one GPU each, `batch` slices per process)
    trainer = Trainer(unet, opt, run_dir=run.path, stage="slimdiff", config=cfg, max_steps=cfg["train_steps"],
                      lr_scheduler=lr_sched, ema_decay=cfg["ema_decay"], precision=cfg["precision"],
                      clip_grad=cfg["grad_clip"], ckpt_every=cfg["ckpt_every"], budget_s=budget_s, seed=cfg["seed"],
                      device=dev, patience=early, validate_every=val_every, validate=validate if early else None)
    return trainer.fit(balanced, cfg["batch"], lambda m, b, step: slimdiff.training_loss(m, b, step, scheduler, cfg))


result = launch(train, processes=processes)
print(result)
session.end_if_stopped(result, run, "slimdiff")  # a budget stop: the rest of the notebook is skipped, successfully

# %% [markdown]
# ## Curves
# The image and mask terms separately: the mask term of eps- and v-prediction stays high much longer.

# %%
import matplotlib.pyplot as plt

log = [r for r in viz.read_log(run / "logs" / "slimdiff.jsonl") if "loss" in r or "val_loss" in r]
fig, ax = plt.subplots(figsize=(6.5, 3.4))
for key in ("loss", "loss_image", "loss_mask", "val_loss"):
    pts = [(r["step"], r[key]) for r in log if key in r]
    if pts:
        ax.plot(*zip(*pts), label=key, alpha=0.8)
ax.set_yscale("log"); ax.set_xlabel("step"); ax.legend(); ax.grid(alpha=0.3)
ax.set_title(f"SLIM-Diff {cfg['prediction']}-prediction, p = {cfg['lp']}")
fig.tight_layout(); fig.savefig(run.figures / "loss_terms.png", dpi=110)
vals = [r for r in log if "val_loss" in r]
log = [r for r in log if "loss" in r]
tail = log[-max(1, len(log) // 10):]
run.update_metrics("train", {"final_loss": sum(r["loss"] for r in tail) / len(tail),
                             "final_loss_image": sum(r.get("loss_image", float("nan")) for r in tail) / len(tail),
                             "final_loss_mask": sum(r.get("loss_mask", float("nan")) for r in tail) / len(tail),
                             "steps": result.step, "params": medkit.nets.count_parameters(unet),
                             "prediction": cfg["prediction"], "lp": cfg["lp"], "self_cond_p": cfg["self_cond_p"],
                             "train_seconds": result.seconds, "stopped_early": result.reason == "early_stop"
                             or (early is not None and result.finished and result.step < cfg["train_steps"])})
if vals:
    best = min(vals, key=lambda r: r["val_loss"])
    run.update_metrics("train", {"val_loss_best": best["val_loss"], "val_loss_best_step": best["step"],
                                 "val_loss_last": vals[-1]["val_loss"], "validations": len(vals)})
    print(f"validation loss: best {best['val_loss']:.5g} at step {best['step']}, last {vals[-1]['val_loss']:.5g} "
          f"({len(vals)} validations)")
