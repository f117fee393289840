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
# # CT super-resolution 3/4 - super-resolve the held-out volume
#
# Every method runs on the same thick slices of the held-out slab (with two thick slices of context on each
# side), by Gaussian-blended overlapping windows (MONAI `sliding_window_inference`, mode "gaussian") at every
# denoising step, so memory is bounded by the window, not the volume:
#
# | method | what it is | network calls |
# |---|---|---|
# | `trilinear`, `cubic` | interpolation along $z$ (in-plane is already thin) - what a viewer shows | 0 |
# | `vae` | the VAE round trip of the *real thin* volume: the latent ceiling | encode + decode |
# | `regression` | BasicUNet trained with L1 (the perception-distortion reference) | 1 |
# | `resshift-T` | ResShift, all $T$ steps | $T$ |
# | `resshift-k` | the same network, $k$ of the $T$ steps (respaced posterior) | $k$ |
# | `resshift-T-det`, `resshift-k-det` | the same chains without sampling noise (this kit's option: PSNR over detail) | $T$, $k$ |
# | `ddim-50` | conventional DDPM (eps) with the same denoiser, DDIM 50 steps | 50 |
#
# **How long:** `smoke` seconds; `cpu-demo` about 3 minutes on a 2-core CPU.

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
run_dir = ""           # the run directory of notebooks 1-2; empty: <run root>/ctsr-<profile>
short_steps = None     # the few-step ResShift variant (respaced); None: the profile value (4)
ddim_steps = None      # DDIM steps of the DDPM baseline; None: the profile value (50)
seed = 0               # sampling seed: the same seed gives the same volumes
device = "auto"        # "auto" | "cpu" | "cuda"

# %%
import numpy as np
import torch

from medkit import env, session, viz
from medkit.data import srdata, thickslice as ts, volumes as V
from medkit.methods import ctsr, ctsr_infer
from medkit.run import RunDir
from medkit.train import load_weights

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"ctsr-{profile}")
cfg = run.load_config("resshift", needed_by="super-resolution")
short_steps = short_steps or cfg["sampling_steps_short"]
ddim_steps = ddim_steps or cfg["ddim_steps"]
dev = env.pick_device(device)
sr_data = srdata.load_sr_data(cfg)
has_baselines = (run.path / "checkpoints" / "ddpm" / "latest").exists()

# %% [markdown]
# ## Trained networks

# %%
vae = ctsr.load_vae(run, cfg, dev)
scale = run.metrics()["vae"]["scale"]
model = ctsr.build_denoiser(cfg)
load_weights(run.path, "resshift", model, ema=True)
T = ctsr.scheduler(cfg).num_train_timesteps
models = {f"resshift-{T}": ("resshift", model, None, 1.0), f"resshift-{short_steps}": ("resshift", model, short_steps, 1.0),
          f"resshift-{T}-det": ("resshift", model, None, 0.0), f"resshift-{short_steps}-det": ("resshift", model, short_steps, 0.0)}
if has_baselines:
    reg, eps_model = ctsr.Regression(cfg), ctsr.build_denoiser(cfg, target="eps")
    load_weights(run.path, "regression", reg, ema=True)
    load_weights(run.path, "ddpm", eps_model, ema=True)
    models.update({"regression": ("regression", reg, None, 1.0), f"ddim-{ddim_steps}": ("ddim", eps_model, ddim_steps, 1.0)})

# %% [markdown]
# ## Super-resolve
# The scored region is the test slab trimmed to whole thick slices; thin slice $rk+\text{offset}$ of the region
# lies on thick slice $k$, so re-degrading an output gives back its thick slices (notebook 4 checks that).

# %%
r, off = sr_data.factor, sr_data.offset
timing = {}
for case in sr_data.test:
    a, b = case.test_z
    a, b = -(-a // r) * r, b // r * r          # whole thick slices: [a, b) = thick slices a/r .. b/r - 1
    k0, k1 = max(0, a // r - 2), min(case.lr.shape[2], b // r + 2)
    y = ts.upsample_z(case.lr[..., k0:k1], r, off, kind="cubic")       # the condition: cubic along z
    region = slice(a - r * k0, b - r * k0)
    out = {"thin": case.hr[..., a:b], "trilinear": ts.upsample_z(case.lr[..., k0:k1], r, off, kind="linear")[..., region],
           "cubic": y[..., region]}
    res = ctsr_infer.super_resolve(case.hr[..., r * k0:r * k1], "vae", cfg, vae=vae, scale=scale, device=dev)
    out["vae"] = res.volume[..., region]
    timing["vae"] = {"seconds": res.seconds, "nfe": 2}
    for name, (method, net, steps, noise) in models.items():
        res = ctsr_infer.super_resolve(y, method, cfg, model=net, vae=vae, scale=scale, steps=steps, seed=seed, device=dev,
                                       noise_scale=noise)
        out[name] = res.volume[..., region]
        timing[name] = {"seconds": res.seconds, "nfe": res.nfe}
        print(f"{case.name}: {name:14s} {res.seconds:7.1f} s, {res.nfe} network calls")
    np.savez_compressed(run.samples / f"sr_{case.name.split('.')[0]}.npz", **out, thick=case.lr[..., a // r:b // r],
                        z_range=np.array([a, b]), factor=r, offset=off, n_thin=case.hr.shape[2])
    # the ResShift volume as NIfTI, in physical units, on the thin grid of the region
    aff = case.affine.copy()
    aff[:3, 3] = aff[:3, 3] + a * aff[:3, 2]
    V.write_nifti(sr_data.to_physical(out[f"resshift-{T}"]), aff, run.samples / f"resshift_{case.name.split('.')[0]}.nii.gz")

run.update_metrics("super_resolve", {"methods": list(out)[1:], "timing": timing, "seed": seed,
                                     "region_z": [int(a), int(b)], "window": list(cfg["window"]),
                                     "overlap": cfg["overlap"]})
fig = viz.volume_views({k: v for k, v in out.items()}, path=run.figures / "sr_views.png")
