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
# # SBLDM 1/4 - the slice VAE
#
# *SBLDM as planned in the seed*: a 2D latent diffusion model for MRI slices. Its origin is the
# slice-based LDM of Kebaili et al., "3D MRI Synthesis with Slice-Based Latent Diffusion Models"
# (ISBI 2024, [arXiv 2406.05421](https://arxiv.org/abs/2406.05421)); this pipeline is the seed's 2D
# variant, not a reproduction of that paper.
#
# This first stage trains the autoencoder that every later stage works through. An encoder maps a
# slice $x \in [-1,1]^{1\times H\times W}$ to a Gaussian posterior $q(z|x)=\mathcal N(\mu,\sigma^2)$ with
# $z \in \mathbb R^{4\times H/4\times W/4}$; a decoder maps $z$ back. The loss is
#
# $$\mathcal L_{VAE} = \lVert D(z) - x\rVert_2^2 + \beta_{KL}\,\mathrm{KL}\big(q(z|x)\,\Vert\,\mathcal N(0,I)\big),\qquad z=\mu+\sigma\epsilon,$$
#
# with $\beta_{KL}$ raised from 0 over the first steps (KL annealing) and kept small, so the latent stays
# informative (a reconstruction bottleneck, not a generative prior). The seed's success criterion for this
# stage: SSIM > 0.85 and PSNR > 25 dB on held-out slices.
#
# **How long:** `smoke` seconds; `cpu-demo` about 2 minutes on a 2-core CPU (1000 steps); `t4` (20k steps at 128 px, fp16) about 16 minutes on an H100 (0.049 s/step measured), longer on a T4 (not yet timed).
# Re-running the notebook resumes from the newest checkpoint in the run directory.

# %% [markdown]
# ## Setup
# Makes `medkit` importable wherever this runs: installed, this repository checkout, a Kaggle dataset
# holding the repository (offline kernels), or `pip install $MEDKIT_PIP` (e.g. `git+https://...`).

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
profile = "auto"       # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" (CI, seconds) | "cpu-demo" (minutes on a CPU) | "t4" (seed settings, one 16 GB T4)
data = "mni152"        # "mni152" (real MRI shipped with nilearn), a folder of NIfTI volumes or "kaggle:OWNER/SLUG" (a Kaggle dataset, attached on push)
run_dir = ""           # run directory shared by the four SBLDM notebooks; empty: <run root>/sbldm-<profile>
image_size = None      # pixels per side; None: profile value (smoke 32, cpu-demo 64, t4 128)
vae_steps = None       # optimiser steps; None: the profile value
vae_batch = None       # slices per step; None: the profile value
device = "auto"        # "auto" (CUDA if present) | "cpu" | "cuda"
budget_s = "auto"      # wall-clock limit for training in seconds; "auto": 11h15m on Kaggle, none elsewhere
processes = 1          # training processes: 2 on Kaggle's "GPU T4 x2" (one GPU each); on a CPU, gloo processes (a trial, not faster)

# %%
import torch

import medkit
from medkit import data as mdata, env, metrics, session, viz
from medkit.data import locate
from medkit.methods import sbldm
from medkit.run import RunDir
from medkit.eval import entry
from medkit.train import Trainer, launch, load_weights, lr_schedule

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
cfg = sbldm.config(profile, data=data, image_size=image_size, vae_steps=vae_steps, vae_batch=vae_batch)
run = RunDir(run_dir, default_name=f"sbldm-{profile}")
dev = env.pick_device(device)
run.save_config("vae", cfg)
from medkit import fidelity

fidelity.show("sbldm", profile, cfg, run=run)  # where this run departs from the seed plan, and why
print(f"run directory: {run.path}")
print({k: v for k, v in cfg.items()})

# %% [markdown]
# ## Data
# Axial slices of each volume, intensities mapped to [-1, 1] by the volume's (0.5, 99.5) foreground
# percentiles, slices with less than 5% brain dropped, padded square and resized. The split keeps
# contiguous blocks of slices together (with a guard slice), so no validation slice has its direct
# neighbour in the training set. The slice cache is rebuilt only when the data or these settings change.

# %%
cache = mdata.build_slice_cache(locate.resolve(cfg["data"]), cfg["image_size"], seed=cfg["seed"])
train_ds, val_ds = mdata.SliceDataset(cache, "train"), mdata.SliceDataset(cache, "val")
print(f"{len(train_ds)} training and {len(val_ds)} validation slices of {cfg['image_size']} px from {cache}")
viz.save_gallery(train_ds.images[:: max(1, len(train_ds) // 16)][:16], val_ds.images[:16],
                 run.figures / "data.png", title="training (left) and validation (right) slices");

# %% [markdown]
# ## Model
# MONAI's `AutoencoderKL`: `len(vae_channels)` levels, one 2x downsampling between levels (4x in all),
# 4 latent channels, GroupNorm, no attention (it adds little at these sizes and costs memory).
# AdamW with a linear warm-up and cosine decay; EMA of the weights (decay 0.999) is what later stages use.

# %%
vae = sbldm.build_vae(cfg)
opt = torch.optim.AdamW(vae.parameters(), lr=cfg["vae_lr"], weight_decay=0.0)
lr_sched = lr_schedule(opt, warmup_steps=cfg["warmup_steps"], total_steps=cfg["vae_steps"], floor=sbldm.LR_FLOOR)
print(f"AutoencoderKL: {medkit.nets.count_parameters(vae) / 1e6:.2f} M parameters")

# %% [markdown]
# ## Train
# One call to medkit's training loop: mixed precision by device (fp16 + GradScaler on a T4, bf16 on
# Ampere+, fp32 on CPU), gradient clipping, EMA, atomic checkpoints every `ckpt_every` steps, a JSON-lines
# log, and a wall-clock budget. Interrupt it at any moment; running the notebook again continues.
# With `processes = 2` every process runs `train()` whole on its own GPU with `vae_batch` slices per step
# (twice the batch per step in all); `launch` starts them (accelerate's `notebook_launcher`).

# %%
def train():
    trainer = Trainer(vae, opt, run_dir=run.path, stage="vae", config=cfg, max_steps=cfg["vae_steps"],
                      lr_scheduler=lr_sched, ema_decay=cfg["ema_decay"], precision=cfg["precision"],
                      ckpt_every=cfg["ckpt_every"], budget_s=budget_s, seed=cfg["seed"], device=dev)
    return trainer.fit(train_ds, cfg["vae_batch"], lambda m, b, step: sbldm.vae_loss(m, b, step, cfg))


result = launch(train, processes=processes)
print(result)
session.end_if_stopped(result, run, "vae")  # a budget stop: the rest of the notebook is skipped, successfully

# %% [markdown]
# ## Curves

# %%
viz.plot_losses({"VAE": viz.read_log(run / "logs" / "vae.jsonl")});  # the trainer saved figures/vae_loss.png

# %% [markdown]
# ## Reconstructions and metrics
# The EMA weights reconstruct the held-out slices from the posterior mean, $\hat x = D(\mu(x))$. SSIM and
# PSNR use the data range of [-1, 1] (equal to [0, 1] images with range 1).

# %%
vae_ema = sbldm.build_vae(cfg)
load_weights(run.path, "vae", vae_ema)  # the EMA weights the training wrote (in this process or in others)
vae_ema = vae_ema.to(dev)
recon = sbldm.reconstruct(vae_ema, val_ds.images, device=dev)
s = metrics.mean_ci(metrics.ssim(recon, val_ds.images, per_image=True))
p = metrics.mean_ci(metrics.psnr(recon, val_ds.images, per_image=True))
val_set = f"{cfg['data']} val ({s['n']} slices, {cfg['image_size']} px)"
run.update_metrics("vae", {"ssim": entry(s["value"], ci95=s["ci95"], std=s["std"], n=s["n"], dataset=val_set),
                           "psnr": entry(p["value"], ci95=p["ci95"], std=p["std"], n=p["n"], dataset=val_set, unit="dB"),
                           "n_val": s["n"], "steps": result.step, "params": medkit.nets.count_parameters(vae),
                           "train_seconds": result.seconds, "loop_overhead_pct": 100 * result.overhead_seconds / max(result.seconds, 1e-9)})
print(f"validation ({s['n']} slices): SSIM {s['value']:.4f} (95% CI {s['ci95'][0]:.4f}-{s['ci95'][1]:.4f}), "
      f"PSNR {p['value']:.2f} dB (95% CI {p['ci95'][0]:.2f}-{p['ci95'][1]:.2f})")
viz.save_reconstructions(val_ds.images, recon, run.figures / "reconstructions.png",
                         title=f"VAE on validation slices: SSIM {s['value']:.3f}, PSNR {p['value']:.1f} dB");
