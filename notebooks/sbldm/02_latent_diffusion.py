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
# # SBLDM 2/4 - latent diffusion
#
# *SBLDM as planned in the seed* (origin: Kebaili et al., ISBI 2024,
# [arXiv 2406.05421](https://arxiv.org/abs/2406.05421)). The VAE from notebook 1 is frozen; every training
# slice is encoded once into its posterior $(\mu, \sigma)$ (the latent cache), and a denoising diffusion
# model (DDPM, Ho et al. 2020) learns the distribution of $z_0 = s\,z$, $z=\mu+\sigma\epsilon$:
#
# $$x_t = \sqrt{\bar\alpha_t}\,z_0 + \sqrt{1-\bar\alpha_t}\,\epsilon,\qquad
#   \mathcal L_{LDM} = \mathbb E_{t\sim U\{0..T-1\},\,\epsilon\sim\mathcal N(0,I)}\lVert \epsilon - \epsilon_\theta(x_t, t)\rVert^2,$$
#
# with $T=1000$ and a linear $\beta_t \in [10^{-4}, 0.02]$ (or cosine) schedule. The scale
# $s = 1/\mathrm{std}(z)$ (LDM, Rombach et al. 2022, sec. 4.3.2) gives the diffusion model unit-variance
# data, as its noise schedule assumes; it is stored in the run directory for sampling.
#
# **How long:** `smoke` seconds; `cpu-demo` about 4 minutes on a 2-core CPU (2000 steps); `t4` (50k steps, fp16) about 80 minutes on an H100 (0.097 s/step measured), longer on a T4 (not yet timed).
# Re-running resumes from the newest checkpoint.

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
profile = "auto"       # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" (CI, seconds) | "cpu-demo" (minutes on a CPU) | "t4" (seed settings, one 16 GB T4)
run_dir = ""           # the run directory of notebook 1; empty: <run root>/sbldm-<profile>
ldm_steps = None       # optimiser steps; None: profile value (cpu-demo 2000, t4 50k)
ldm_batch = None       # latents per step; None: the profile value
beta_schedule = None   # "linear" | "cosine" | "gamma"; None: linear
schedule_gamma = None  # gamma of the "gamma" schedule (0.5 noisier early, 1 linear, 2 later); None: 1
freq_lambda = None     # weight of the frequency-aware loss term; None or 0: off
freq_loss = None       # "focal" (Focal Frequency Loss) | "fft" (MSE of FFTs); None: focal
cutmix_p = None        # probability of latent CutMix per training sample; None or 0: off
device = "auto"        # "auto" (CUDA if present) | "cpu" | "cuda"
budget_s = "auto"      # wall-clock limit for training in seconds; "auto": 11h15m on Kaggle, none elsewhere
processes = 1          # training processes: 2 on Kaggle's "GPU T4 x2" (one GPU each); on a CPU, gloo processes (a trial, not faster)

# %%
import torch

import medkit
from medkit import env, session, viz
from medkit.methods import sbldm
from medkit.run import RunDir
from medkit.train import Trainer, launch, load_weights, lr_schedule

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"sbldm-{profile}")
vae_cfg = run.load_config("vae", needed_by="latent diffusion")
# The data and the VAE's shape come from notebook 1; only the diffusion settings are set here.
cfg = sbldm.config(profile, **{k: vae_cfg[k] for k in ("data", "image_size", "vae_channels", "vae_res_blocks",
                                                        "vae_groups", "latent_channels", "seed")},
                   ldm_steps=ldm_steps, ldm_batch=ldm_batch, beta_schedule=beta_schedule,
                   schedule_gamma=schedule_gamma, freq_lambda=freq_lambda, freq_loss=freq_loss, cutmix_p=cutmix_p)
dev = env.pick_device(device)
run.save_config("ldm", cfg)
print(f"run directory: {run.path}")

# %% [markdown]
# ## Latent cache
# The frozen EMA VAE encodes every training slice and its left-right mirror (a plausible brain) once;
# the posteriors are saved in the run directory and reused until the VAE checkpoint changes. Each
# training item is then a fresh draw $z=\mu+\sigma\epsilon$, scaled by $s$.

# %%
vae = sbldm.build_vae(cfg)
vae_meta = load_weights(run.path, "vae", vae, ema=True)
enc_dev = dev if processes == 1 else torch.device("cpu")  # several processes: CUDA untouched here until launch()
vae = vae.to(enc_dev).eval().requires_grad_(False)
mu, sigma, scale = sbldm.latent_cache(run.path / "cache" / "latents.safetensors", vae, vae_meta["checkpoint"], cfg, enc_dev)
latents = sbldm.LatentDataset(mu, sigma, scale)
latent_shape = tuple(mu.shape[1:])
# One draw z = mu + sigma * eps from a generator seeded by the run's seed: the statistics below and the
# histogram are the same numbers in every run of the same command, interrupted or not.
z_draw = mu + sigma * torch.randn(mu.shape, generator=torch.Generator().manual_seed(cfg["seed"]))
run.update_metrics("latents", {"scale": scale, "shape": list(latent_shape), "n": len(latents),
                               "mean_per_channel": mu.mean((0, 2, 3)).tolist(),
                               "std_per_channel": z_draw.std((0, 2, 3)).tolist(),
                               "mean_sigma": sigma.mean().item(), "vae_step": vae_meta.get("step"),
                               "abs_max": (scale * mu).abs().max().item()})
print(f"{len(latents)} latents of shape {latent_shape}; scale s = 1/std(z) = {scale:.4f}")

# %% [markdown]
# ### Latent statistics
# Per-channel histograms of $s\,z$: roughly centred, unit spread, no dead channel. A channel with
# near-zero spread would mean the VAE ignores it; a much wider one, that the KL weight is too small.

# %%
import matplotlib.pyplot as plt

zs = (scale * z_draw).transpose(0, 1).flatten(1)
fig, ax = plt.subplots(figsize=(6, 3.2))
for c, v in enumerate(zs):
    ax.hist(v.numpy(), bins=80, histtype="step", density=True, label=f"channel {c}: std {v.std():.2f}")
ax.set_xlabel("s * z"); ax.legend(fontsize=8); ax.set_title("scaled latents"); fig.tight_layout()
fig.savefig(run.figures / "latent_histogram.png", dpi=110)

# %% [markdown]
# ## Model and noise schedule
# MONAI's `DiffusionModelUNet` (residual blocks, self-attention only at the deepest level, sinusoidal
# time embedding) and a diffusers DDPM schedule; models and schedulers stay separate.
#
# Besides DDPM's linear and the cosine schedule (Nichol & Dhariwal 2021), this kit offers the seed
# plan's **gamma-rebalanced** schedule (an extension, not a published one),
# $\beta_t = \beta_{min} + (\beta_{max}-\beta_{min})\,(t/(T-1))^\gamma$: $\gamma=1$ is linear, $\gamma<1$
# adds noise earlier, $\gamma>1$ later. The figure compares the schedules by $\beta_t$, $\bar\alpha_t$ and
# the signal-to-noise ratio $\mathrm{SNR}_t=\bar\alpha_t/(1-\bar\alpha_t)$.

# %%
from medkit import diffusion

compare = {"linear": sbldm.build_scheduler({**cfg, "beta_schedule": "linear"}, "ddpm"),
           "cosine": sbldm.build_scheduler({**cfg, "beta_schedule": "cosine"}, "ddpm"),
           **{f"gamma {g}": sbldm.build_scheduler({**cfg, "beta_schedule": "gamma", "schedule_gamma": g}, "ddpm")
              for g in (0.5, 2.0)}}
if cfg["beta_schedule"] == "gamma" and cfg["schedule_gamma"] not in (0.5, 1.0, 2.0):
    compare[f"gamma {cfg['schedule_gamma']}"] = sbldm.build_scheduler(cfg, "ddpm")
diffusion.plot_schedules(compare, run.figures / "schedules.png");

# %%
unet = sbldm.build_unet(cfg)
scheduler = sbldm.build_scheduler(cfg, "ddpm")
opt = torch.optim.AdamW(unet.parameters(), lr=cfg["ldm_lr"], weight_decay=0.0)
lr_sched = lr_schedule(opt, warmup_steps=cfg["warmup_steps"], total_steps=cfg["ldm_steps"], floor=sbldm.LR_FLOOR)
print(f"DiffusionModelUNet: {medkit.nets.count_parameters(unet) / 1e6:.2f} M parameters; "
      f"{cfg['beta_schedule']} betas, T = {cfg['num_train_timesteps']}")

# %% [markdown]
# ## Train
# The training step is $\mathcal L_{LDM}$ above (`sbldm.ldm_loss`): draw $t$ and $\epsilon$, noise the
# latent, regress the noise. Two of this kit's extensions (off unless set above):
# - **frequency-aware loss** $\mathcal L = \mathcal L_{mse} + \lambda\,\mathcal L_{freq}$ on the network output
#   and its target: `focal` is the Focal Frequency Loss (Jiang et al., ICCV 2021), which weights each
#   frequency by its current error; `fft` is the MSE of orthonormal FFTs - by Parseval's theorem that
#   equals the pixel MSE, so on its own it only rescales the loss;
# - **latent CutMix** with probability $p$: a random box of another sample's $z_0$ is pasted in before
#   noising; the target follows the mixed latent. Never applied at sampling.

# %%
def train():  # every process runs this whole (processes > 1: one GPU each, `ldm_batch` latents per process)
    trainer = Trainer(unet, opt, run_dir=run.path, stage="ldm", config=cfg, max_steps=cfg["ldm_steps"],
                      lr_scheduler=lr_sched, ema_decay=cfg["ema_decay"], precision=cfg["precision"],
                      ckpt_every=cfg["ckpt_every"], budget_s=budget_s, seed=cfg["seed"], device=dev)
    return trainer.fit(latents, cfg["ldm_batch"], lambda m, z0, step: sbldm.ldm_loss(m, z0, step, scheduler, cfg))


result = launch(train, processes=processes)
print(result)
session.end_if_stopped(result, run, "ldm")  # a budget stop: the rest of the notebook is skipped, successfully

# %% [markdown]
# ## Curves

# %%
log = viz.read_log(run / "logs" / "ldm.jsonl")
viz.plot_losses({"latent diffusion": log});  # the trainer saved figures/ldm_loss.png
tail = [r["loss"] for r in log[-max(1, len(log) // 10):]]
run.update_metrics("ldm", {"final_loss": sum(tail) / len(tail), "steps": result.step,
                           "params": medkit.nets.count_parameters(unet), "beta_schedule": cfg["beta_schedule"],
                           "schedule_gamma": cfg["schedule_gamma"], "freq_lambda": cfg["freq_lambda"],
                           "freq_loss": cfg["freq_loss"], "cutmix_p": cfg["cutmix_p"],
                           "train_seconds": result.seconds, "loop_overhead_pct": 100 * result.overhead_seconds / max(result.seconds, 1e-9)})
print(f"final loss (mean of the last {len(tail)} logged values): {sum(tail) / len(tail):.4f}")
