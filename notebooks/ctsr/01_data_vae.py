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
# # CT super-resolution 1/4 - volumes, thick slices and the 3D VAE
#
# Through-plane super-resolution: thick slices (3-5 mm CT, what most archives hold) in, thin slices
# (1-1.25 mm) out, with **3D latent ResShift** (Yue et al., NeurIPS 2023, [arXiv 2307.12348](https://arxiv.org/abs/2307.12348))
# as the seed plans it. This notebook prepares the data and trains the 3D VAE:
#
# - volumes keep their geometry (DICOM series ordered by position along the slice normal, NIfTI in RAS);
#   intensities are clipped to a window (CT: $[-1024, 3071]$ HU) and mapped to $[-1, 1]$;
# - thick slices are simulated from thin ones by a Gaussian slice-sensitivity profile (FWHM = the thick
#   slice) along $z$ and decimation by $r$ - not plain decimation; real thick/thin pairs can be given instead;
# - $y$ = the thick slices interpolated back to the thin grid (cubic along $z$): condition and target share
#   one grid;
# - MONAI `AutoencoderKL(spatial_dims=3)`, 4x per axis, $\mathcal L = \lVert D(z)-x\rVert_1 + \beta_{KL}\,\mathrm{KL}$.
#   Its round trip $D(E(x))$ is the ceiling of any *latent* super-resolution; it is measured here.
#
# The embedded default data is the MNI152 T1 template from nilearn's wheel: **real MRI, not CT** - this is
# through-plane SR of an MRI, held-out slab scored. The CT path (DICOM, HU) is tested on pydicom's CT slices.
#
# **How long:** `smoke` seconds; `cpu-demo` about 1 minute on a 2-core CPU; `t4` (64^3 patches, fp16,
# gradient checkpointing) hours. Re-running resumes from the newest checkpoint.

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
profile = "auto"       # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" (CI, seconds) | "cpu-demo" (minutes on a CPU) | "t4" (the plan's scale, one 16 GB T4)
run_dir = ""           # run directory shared by the four notebooks; empty: <run root>/ctsr-<profile>
data = "mni152"        # "mni152" (real MRI, nilearn) | a thin-slice NIfTI file | a DICOM series folder | a thin/ + thick/ folder | "kaggle:OWNER/SLUG[/sub]"
factor = 4             # r: thin slices per thick slice (2..8)
slice_profile = "gaussian"  # simulated thick slices: "gaussian" (FWHM of r thin slices) | "box"
space = None           # "latent" (the seed's design) | "pixel" (no VAE ceiling); None: profile (cpu-demo pixel, t4 latent)
vae_steps = None       # VAE optimiser steps; None: the profile value
vae_from = None        # None: train the kit's 3D VAE | "maisi:PATH.pt" (MONAI MAISI) | "diffusers:FOLDER_OR_HUB_ID" (2D)
device = "auto"        # "auto" (CUDA if present) | "cpu" | "cuda"
budget_s = "auto"      # wall-clock limit for training in seconds; "auto": 11h15m on Kaggle, none elsewhere
processes = 1          # training processes: 2 on Kaggle's "GPU T4 x2" (one GPU each); on a CPU, gloo processes (a trial, not faster)

# %%
import numpy as np
import torch

from medkit import env, session, viz
from medkit.data import srdata
from medkit.methods import ctsr, ctsr_infer
from medkit.metrics import volume as vm
from medkit.run import RunDir

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"ctsr-{profile}")
cfg = ctsr.config(profile, data=data, factor=factor, slice_profile=slice_profile, space=space, vae_steps=vae_steps,
                  vae_from=vae_from)
dev = env.pick_device(device)
print(f"run directory: {run.path}\n{ctsr.describe(cfg)}")

# %% [markdown]
# ## Data
# One volume is split along $z$: a held-out test slab with gaps of $2r$ thin slices on each side (so neither a
# training patch nor a thick slice blurred into it sees the test slab); training patches come from the rest.

# %%
sr_data = srdata.load_sr_data(cfg)
case = sr_data.test[0]
print(sr_data.label)
print(f"intensity {sr_data.intensity}, window {sr_data.window}; {ctsr.thin_spacing_note(cfg)}; split {sr_data.split}")
print(f"thin volume {case.hr.shape}, thick {case.lr.shape}, thin slice r*k + {sr_data.offset} = thick slice k")
patches = srdata.patch_dataset(sr_data, cfg)
print(f"{len(patches)} training patches of {cfg['patch']}")
cfg["intensity_window"] = list(sr_data.window)
run.update_metrics("data", {"label": sr_data.label, "split": sr_data.split, "thin_shape": list(case.hr.shape),
                            "thick_shape": list(case.lr.shape), "factor": sr_data.factor, "offset": sr_data.offset,
                            "intensity": sr_data.intensity, "window": list(sr_data.window),
                            "n_patches": len(patches)})

# %% [markdown]
# ### Through-plane views
# Coronal and sagittal sections show what is missing: the thick slices (repeated to the thin grid) are
# staircases along $z$; cubic interpolation smooths them but cannot bring back detail thinner than a slice.

# %%
nearest = np.repeat(case.lr, sr_data.factor, axis=2)[..., :case.hr.shape[2]]
nearest = np.concatenate([nearest, np.repeat(nearest[..., -1:], case.hr.shape[2] - nearest.shape[2], 2)], 2)
fig = viz.volume_views({"thin (target)": case.hr, "thick slices (repeated)": nearest, "cubic along z": case.y},
                       test_z=case.test_z, path=run.figures / "data_views.png")

# %% [markdown]
# ## The 3D VAE
# Trained on thin patches whatever the `space`: its round trip is the latent ceiling every result is set beside.
# With `vae_from` a pretrained autoencoder is loaded instead (frozen, not trained here): MONAI's MAISI CT VAE, or a
# 2D diffusers AutoencoderKL applied slice by slice (latents downsampled in-plane only).

# %%
if cfg["vae_from"]:
    from medkit.nets.pretrained_vae import load_pretrained_vae

    vae = load_pretrained_vae(cfg["vae_from"], tuple(cfg["intensity_window"]))
    cfg["vae_factors"], cfg["latent_channels"] = list(vae.factors), vae.latent_channels
    cfg = ctsr.config(profile, **{k: v for k, v in cfg.items() if k not in ("method", "profile")})  # re-check sizes
    result = None
    print(f"pretrained VAE {cfg['vae_from']}: downsampling {vae.factors}, {vae.latent_channels} latent channels")
else:
    vae = ctsr.build_vae(cfg)
    result = ctsr.train_stage(run, "vae", vae, lambda m, b, step: ctsr.vae_loss(m, b, step, cfg), patches,
                              cfg, steps=cfg["vae_steps"], lr=cfg["vae_lr"], batch=cfg["vae_batch"],
                              device=dev, budget_s=budget_s, processes=processes)
    print(result)
    session.end_if_stopped(result, run, "vae")  # a budget stop: the rest of the notebook is skipped, successfully

# %%
run.save_config("data_vae", cfg)
from medkit import fidelity

fidelity.show("ctsr", profile, cfg, run=run)  # where this run departs from the sources, and why

# %% [markdown]
# ## Latent scale and round trip on the held-out slab
# $s = 1/\mathrm{std}(\mu)$ over training patches (LDM sec. 4.3.2), stored with the run. The round trip
# $D(E(x))$ of the real thin slab, by Gaussian-blended windows as at inference.

# %%
vae = ctsr.load_vae(run, cfg, dev)
scale = ctsr.latent_scale(vae, patches, device=dev)
a, b = case.test_z
recon = ctsr_infer.super_resolve(case.hr[..., a:b], "vae", cfg, vae=vae, scale=scale, device=dev).volume
phys = sr_data.to_physical
rng = tuple(sr_data.window)
unit = "hu" if sr_data.intensity == "HU" else "raw"
vae_metrics = {"scale": scale, "params": ctsr.count(vae), "steps": result.step if result else 0,
               "train_seconds": result.seconds if result else 0.0, "from": cfg["vae_from"] or "trained here",
               f"roundtrip_psnr_{unit}_window": vm.psnr(phys(recon), phys(case.hr[..., a:b]), rng),
               "roundtrip_ssim3d": vm.ssim3d(phys(recon), phys(case.hr[..., a:b]), rng),
               "roundtrip_mae_" + unit: vm.mae(phys(recon), phys(case.hr[..., a:b]))}
run.update_metrics("vae", vae_metrics)
print({k: round(v, 4) if isinstance(v, float) else v for k, v in vae_metrics.items()})
fig = viz.volume_views({"thin (target)": case.hr[..., a:b], "VAE round trip": recon}, path=run.figures / "vae_roundtrip.png")
