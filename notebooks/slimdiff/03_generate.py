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
# # SLIM-Diff 3/4 - generating image + mask pairs
#
# DDIM from $x_T\sim\mathcal N(0, I)$ on both channels with "trailing" timestep spacing (the first step is
# at $t=T-1$; MONAI's DDIM uses "leading" spacing and would start at 897 with 300 steps), each step's
# $\hat x_0$ clipped to [-1, 1] and fed back as self-conditioning, eta 0.2 (300 steps in the paper); the mask
# channel is thresholded at 0. What to generate is a **generation spec** (JSON): a seed and per-z-bin counts
# of lesion and lesion-free slices, `"all"` for every bin the model was trained on, with per-bin overrides.
# It is checked completely before anything runs.
#
# **How long:** `smoke` seconds; `cpu-demo` about 2 minutes; `t4` (300 steps) minutes on a GPU.

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
run_dir = ""           # the run directory of notebooks 1-2; empty: <run root>/slimdiff-<profile>
spec = ""              # generation spec: a JSON file path or JSON text; empty: the profile's default (per-bin counts over all trained bins)
steps = None           # DDIM steps; None: the profile's (t4: 300)
timestep_spacing = None  # DDIM spacing: "trailing" (starts at T-1) | "leading" (the official sampler's); None: the run's (trailing)
eta = None             # DDIM eta; None: 0.2
rederive_eps = None    # True: each DDIM step re-derives eps from the clipped x0 (diffusers use_clipped_model_output); None: the profile's (False, as the official sampler)
device = "auto"        # "auto" | "cpu" | "cuda"

# %%
import json
import time

import numpy as np
import torch

from medkit import env, session, viz
from medkit.data.lesion_slices import LesionSliceDataset
from medkit.data import save_pairs
from medkit.methods import slimdiff
from medkit.run import RunDir
from medkit.train import load_weights

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"slimdiff-{profile}")
cfg = run.load_config("train", needed_by="generation")
dev = env.pick_device(device)
train = LesionSliceDataset(cfg["cache"], "train")
available = {"lesion": sorted(set(train.z_bins[train.classes == 1].tolist())),
             "lesion_free": sorted(set(train.z_bins[train.classes == 0].tolist()))}
plan = slimdiff.parse_spec(spec or slimdiff.default_spec(cfg, available), cfg["n_bins"], available)
(run.samples / "spec.json").write_text(json.dumps(plan["counts"], indent=1))
print(f"{len(plan['tokens'])} samples over {len(plan['counts'])} z-bins, seed {plan['seed']}")

# %% [markdown]
# ## Sample

# %%
rederive_eps = bool(cfg.get("sampling_rederive_eps", False) if rederive_eps is None else rederive_eps)
unet = slimdiff.build_unet(cfg)
load_weights(run.path, "slimdiff", unet, ema=True)
unet = unet.to(dev).eval()
cfg["timestep_spacing"] = timestep_spacing or cfg.get("timestep_spacing", "trailing")
scheduler = slimdiff.build_scheduler(cfg, "ddim")
t0 = time.perf_counter()
images, masks = slimdiff.generate(unet, scheduler, plan["tokens"], cfg, steps=steps, eta=eta, seed=plan["seed"],
                                  device=dev, rederive_eps=rederive_eps)
seconds = time.perf_counter() - t0
tokens = np.asarray(plan["tokens"])
np.savez_compressed(run.samples / "generated.npz", images=images.numpy(), masks=masks.numpy().astype(np.uint8),
                    tokens=tokens, z_bins=tokens % cfg["n_bins"], classes=tokens // cfg["n_bins"], seed=plan["seed"])
names = [f"{i:05d}_z{t % cfg['n_bins']:02d}_{'lesion' if t >= cfg['n_bins'] else 'free'}" for i, t in enumerate(tokens)]
save_pairs(run.samples / "pairs", images, masks, fmt="npy", names=names, overwrite=True)  # exact; medkit.data.load_pairs reads it
run.update_metrics("generation", {"n": len(tokens), "steps": int(steps or cfg["sampling_steps"]),
                                  "eta": float(cfg["sampling_eta"] if eta is None else eta),
                                  "rederive_eps": rederive_eps, "timestep_spacing": cfg["timestep_spacing"],
                                  "seconds_per_image": seconds / len(tokens),
                                  "n_lesion_requested": int((tokens >= cfg["n_bins"]).sum()),
                                  "lesion_requested_with_empty_mask": int(((tokens >= cfg["n_bins"]) & (masks.flatten(1).sum(1).numpy() == 0)).sum()),
                                  "lesion_free_with_mask_pixels": int(((tokens < cfg["n_bins"]) & (masks.flatten(1).sum(1).numpy() > 0)).sum())})
print(f"{len(tokens)} pairs in {seconds:.1f} s ({seconds / len(tokens):.3f} s each); pairs in {run.samples / 'pairs'}")

# %% [markdown]
# ## Samples
# Generated lesion slices (left) and lesion-free ones (right), mask outlines in red.

# %%
import matplotlib.pyplot as plt

fig, axes = plt.subplots(2, 8, figsize=(14, 3.8))
for row, cls in enumerate((1, 0)):
    idx = np.nonzero(tokens // cfg["n_bins"] == cls)[0]
    idx = idx[np.linspace(0, len(idx) - 1, min(8, len(idx))).astype(int)] if len(idx) else []
    for ax in axes[row]:
        ax.axis("off")
    for ax, i in zip(axes[row], idx):
        ax.imshow(images[i, 0], cmap="gray", vmin=-1, vmax=1)
        if masks[i].sum() > 0:
            ax.contour(masks[i, 0], levels=[0.5], colors="red", linewidths=0.8)
        ax.set_title(f"z{tokens[i] % cfg['n_bins']} {'lesion' if cls else 'free'}", fontsize=7)
fig.tight_layout(); fig.savefig(run.figures / "samples.png", dpi=110)
