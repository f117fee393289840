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

# %%

# %% [markdown]
# # CT super-resolution 2/4 - ResShift, and the baselines' networks
#
# **ResShift** (Yue et al., NeurIPS 2023) shifts the residual between the thin target $x_0$ and the
# condition $y$ (thick slices interpolated to the thin grid) in a short Markov chain, $t = 0..T-1$:
#
# $$x_t = x_0 + \eta_t\,(y - x_0) + \kappa\sqrt{\eta_t}\,\epsilon,\qquad \mathcal L = \lVert f_\theta(x_t/c_t,\ y,\ t) - x_0\rVert^2,$$
#
# with $\sqrt{\eta_t}$ rising geometrically from 0.04/$\kappa$ to 0.99 ($T=15$, $\kappa=2$, $p=0.3$; v3: $T=4$),
# $c_t = \sqrt{\kappa^2\eta_t+1}$ in latent space, $3\kappa\sqrt{\eta_t}+1$ in pixel space. The scheduler is
# `medkit.diffusion.resshift` (golden values of the official schedule pinned in its tests).
#
# The denoiser is MONAI's `DiffusionModelUNet(spatial_dims=3)`; $y$ enters either concatenated at the
# input (`concat`, ResShift's way) or through an IRControlNet (`controlnet`, DiffBIR): a MONAI `ControlNet`
# encoder copy whose zero-initialised outputs are added to the UNet's skips. With `residual=True` (declared
# departure) the network outputs $x_0 - y$.
#
# Baselines trained here on the same patches (`baselines=True`): a regression network (MONAI `BasicUNet`,
# L1, residual to $y$) and a conventional DDPM with the same denoiser and conditioning (eps-prediction,
# $T = 1000$, sampled with DDIM-50 in notebook 3) to test ResShift's few-step claim.
#
# **How long:** `smoke` seconds; `cpu-demo` about 6 minutes on a 2-core CPU; `t4` many hours.

# %% [markdown]
# ## Setup

# %%

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
profile = "auto"       # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" | "cpu-demo" | "t4"
run_dir = ""           # the run directory of notebook 1; empty: <run root>/ctsr-<profile>
resshift = None        # "v1" (15 steps) | "v3" (4 steps); None: "v1"
conditioning = None    # "concat" (ResShift) | "controlnet" (IRControlNet, DiffBIR); None: "concat"
residual = None        # True: the network outputs x0 - y (declared departure) | False: x0 itself; None: True
sr_steps = None        # ResShift optimiser steps; None: the profile value
baselines = True       # also train the regression network and the DDPM baseline
device = "auto"        # "auto" | "cpu" | "cuda"
budget_s = "auto"      # wall-clock limit for training in seconds; "auto": 11h15m on Kaggle, none elsewhere
processes = 1          # training processes: 2 on Kaggle's "GPU T4 x2" (one GPU each); on a CPU, gloo processes (a trial, not faster)

# %%
import torch

from medkit import env, session, viz
from medkit.data import srdata
from medkit.methods import ctsr
from medkit.run import RunDir

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"ctsr-{profile}")
base = run.load_config("data_vae", needed_by="ResShift training")
cfg = ctsr.config(profile, **{k: base.get(k) for k in ("data", "factor", "slice_profile", "space", "seed", "vae_from",
                                                       "vae_factors", "latent_channels", "intensity_window")},
                  resshift=resshift, conditioning=conditioning, residual=residual, sr_steps=sr_steps)
dev = env.pick_device(device)
patches = srdata.patch_dataset(srdata.load_sr_data(cfg), cfg)
print(ctsr.describe(cfg))

# %% [markdown]
# ## The frozen VAE (latent space only), and the residual's variance
# The skip connection $\hat x_0 = y + c(t)\,(x_t - y) + f$ (this kit's, declared) uses the best linear
# estimate of $x_0$ from $x_t$ given $y$: $c(t) = (1-\eta_t)\,v / ((1-\eta_t)^2 v + \kappa^2\eta_t)$ with
# $v = \mathrm{var}(x_0 - y)$ over the training patches (in the denoiser's space), stored in the config.

# %%
vae, scale = None, 1.0
if cfg["space"] == "latent":
    # with several processes CUDA must stay untouched here until launch() starts one process per GPU
    vae = ctsr.load_vae(run, cfg, dev if processes == 1 else "cpu")
    scale = run.metrics()["vae"]["scale"]
if cfg["skip"]:
    cfg["residual_var"] = ctsr.residual_variance_in_space(patches, vae, scale)
run.save_config("resshift", cfg)
print(f"space {cfg['space']}, latent scale {scale:.4f}, var(x0 - y) = {cfg['residual_var']}")

# %% [markdown]
# ## ResShift training
# The training step, as the paper's eq. (6): draw $t$ and $\epsilon$, shift, predict $x_0$ (`ctsr.resshift_loss`).

# %%
sched = ctsr.scheduler(cfg)
print(sched)
model = ctsr.build_denoiser(cfg)
result = ctsr.train_stage(run, "resshift", model, lambda m, b, step: ctsr.resshift_loss(m, b, step, sched, vae, scale, cfg),
                          patches, cfg, steps=cfg["sr_steps"], lr=cfg["sr_lr"], batch=cfg["sr_batch"],
                          device=dev, budget_s=budget_s, processes=processes, frozen=vae)
print(result)
session.end_if_stopped(result, run, "resshift")  # a budget stop: the rest of the notebook is skipped, successfully

# %%
run.update_metrics("resshift", {"params": ctsr.count(model), "steps": result.step, "final_loss": result.last_loss,
                                "train_seconds": result.seconds, "conditioning": cfg["conditioning"],
                                "preset": cfg["resshift"], "T": sched.num_train_timesteps, "space": cfg["space"]})

# %% [markdown]
# ## Baselines: regression network and DDPM (eps-prediction)

# %%
if baselines:
    reg = ctsr.Regression(cfg)
    r_reg = ctsr.train_stage(run, "regression", reg, ctsr.regression_loss, patches, cfg, steps=cfg["reg_steps"],
                             lr=cfg["reg_lr"], batch=cfg["sr_batch"], device=dev, budget_s=budget_s,
                             processes=processes)
    session.end_if_stopped(r_reg, run, "regression")

# %%
if baselines:
    ddpm = ctsr.ddpm_scheduler(cfg)
    eps_model = ctsr.build_denoiser(cfg, target="eps")
    r_ddpm = ctsr.train_stage(run, "ddpm", eps_model, lambda m, b, step: ctsr.ddpm_loss(m, b, step, ddpm, vae, scale),
                              patches, cfg, steps=cfg["ddpm_steps"], lr=cfg["sr_lr"], batch=cfg["sr_batch"],
                              device=dev, budget_s=budget_s, processes=processes, frozen=vae)
    session.end_if_stopped(r_ddpm, run, "ddpm")

# %%
if baselines:
    run.update_metrics("baselines", {"regression_params": ctsr.count(reg), "regression_final_l1": r_reg.last_loss,
                                     "regression_train_seconds": r_reg.seconds, "ddpm_params": ctsr.count(eps_model),
                                     "ddpm_final_loss": r_ddpm.last_loss, "ddpm_train_seconds": r_ddpm.seconds})

# %% [markdown]
# ## Loss curves

# %%
stages = ["resshift"] + (["regression", "ddpm"] if baselines else [])
fig = viz.plot_losses({s: viz.read_log(run.path / "logs" / f"{s}.jsonl") for s in stages},
                      path=run.figures / "loss_curves.png")
