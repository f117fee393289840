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
# # Siamese-Diffusion 2/4 - images from masks
#
# Sampling uses **Mask-Diffusion alone**: DDIM 50 steps, eta 0, classifier-free guidance (sd15: scale 9 on
# the text prompt, the unconditional branch keeping the mask; scratch: the hint dropped in training is the
# condition that guidance amplifies). Two sources of masks:
#
# * **real masks** - the training masks (each sample has a real image to compare with; the downstream test
#   adds these pairs to the training set, so the held-out test masks are never used here);
# * **random masks** - real masks scaled, rotated, elastically deformed and flipped
#   (`medkit.augment.random_masks`), the paper's way to make new pairs without new annotations.
#
# Each set is written as an image/mask pairs folder with a `prompt.json` (the official layout), which the
# kit's loaders and the evaluation notebook read back.
#
# **How long:** `smoke` seconds; `cpu-demo` about 3 minutes (2 x 40 images, guidance doubles the cost); `t4` minutes per thousand samples.

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
backend = "scratch"    # "scratch" | "sd15"
run_dir = ""           # the run directory of notebook 1; empty: <run root>/siamese-<backend>-<profile>
n_generate = None      # samples per mask source; None: the profile's (masks are reused in turn if there are fewer)
guidance_scale = None  # classifier-free guidance; None: the profile's (sd15 9.0, scratch 2.0, scratch cpu-demo 4.0); 1.0 turns it off
steps = None           # DDIM steps; None: 50
timestep_spacing = None  # DDIM spacing: "trailing" (starts at T-1) | "leading" (the official sampler's); None: the run's (trailing)
seed = 0               # noise and random-mask seed
device = "auto"        # "auto" | "cpu" | "cuda"

# %%
import json
import time

import matplotlib.pyplot as plt
import torch

from medkit import augment, env, session
from medkit.data import pairs, save_pairs
from medkit.methods import siamese
from medkit.run import RunDir
from medkit.train import load_weights

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"siamese-{backend}-{profile}")
cfg = run.load_config("train", needed_by="sampling")
dev = env.pick_device(device)
n_generate = int(n_generate or cfg["n_generate"])
guidance = float(cfg["guidance_scale"] if guidance_scale is None else guidance_scale)

# %% [markdown]
# ## The trained Mask-Diffusion
# EMA weights when the run kept them (scratch), else the trained ones.

# %%
ctx = ctx_uncond = sd = None
if cfg["backend"] == "scratch":
    net = siamese.build_scratch(cfg, cfg["image_channels"])
    if cfg.get("space") == "latent":
        sd, _ = siamese.load_sbldm_vae(cfg, dev, run_dir=run.path)  # its decoder turns the sampled latents into images
else:
    sd = siamese.load_sd15_components(cfg)
    net = siamese.build_sd15(cfg, sd)
    ctx, ctx_uncond = siamese.prompt_embeddings(sd, cfg["prompt"], dev)
net.to(dev)
load_weights(run.path, "siamese", siamese.trainable(net, cfg), ema=True)
cfg["timestep_spacing"] = timestep_spacing or cfg.get("timestep_spacing", "trailing")
ddim = siamese.build_scheduler(cfg, "ddim")

# %% [markdown]
# ## Masks: real (the training masks) and random (transformed training masks)

# %%
train = pairs.PairDataset(cfg["cache"], "train")
real_masks = torch.stack([train[i]["mask"] for i in range(len(train))])
real_images = torch.stack([train[i]["image"] for i in range(len(train))])
idx = siamese.mask_indices(n_generate, len(real_masks))  # each mask in turn, or evenly spread over them
sources = {"real_masks": real_masks[idx], "random_masks": augment.random_masks(real_masks[idx], seed=seed)}
print({k: tuple(v.shape) for k, v in sources.items()})

# %% [markdown]
# ## Sample
# DDIM with trailing spacing (it starts at t = T - 1), guidance batched with the conditional branch.

# %%
timing = {}
for name, masks in sources.items():
    t0 = time.perf_counter()
    x = siamese.sample(net, ddim, masks, cfg, latent_shape=siamese.latent_shape(cfg, net, sd), ctx=ctx,
                       ctx_uncond=ctx_uncond, guidance_scale=guidance, steps=steps, seed=seed, device=dev,
                       batch_size=16)
    images = siamese.decode(sd, x, cfg, dev) if sd is not None else x.clamp(-1, 1)
    timing[name] = (time.perf_counter() - t0) / len(masks)
    save_pairs(run.samples / name, images, masks, prompt=cfg.get("prompt"), overwrite=True)
    torch.save({"images": images, "masks": masks}, run.samples / f"{name}.pt")
    print(f"{name}: {len(masks)} samples, {timing[name]:.2f} s each -> {run.samples / name}")

# %% [markdown]
# ## Do the samples follow their masks?
# Dice between each mask and a simple threshold segmentation of its sample (Otsu on the foreground); the same
# measure on the real training images of the same masks is the ceiling this crude segmenter reaches.

# %%
follow = {"real_images": siamese.mask_following_dice(real_images[idx], real_masks[idx])}  # the same masks
for name in sources:
    d = torch.load(run.samples / f"{name}.pt")
    follow[name] = siamese.mask_following_dice(d["images"], d["masks"])
for name, d in follow.items():
    print(f"{name:13s} mask-following Dice {d['mean']:.3f} +- {d['std']:.3f} (empty segmentations {d['empty_fraction']:.0%})")
run.update_metrics("sampling", {"n_per_source": n_generate, "guidance_scale": guidance,
                                "timestep_spacing": cfg["timestep_spacing"],
                                "steps": int(steps or cfg["sampling_steps"]), "seconds_per_image": timing,
                                "mask_following_dice": {k: {kk: v[kk] for kk in ("mean", "std", "empty_fraction")}
                                                        for k, v in follow.items()}})

# 8 masks evenly spaced over the generated set (the masks run from the smallest, most inferior slices upwards),
# each with the real image of that mask above it; one grey scale for all panels ([-1, 1] -> black..white)
k = min(8, n_generate)
show = siamese.mask_indices(k, n_generate).tolist()
def grey(x):
    return ((x.permute(1, 2, 0) + 1) / 2).clamp(0, 1).squeeze(-1)
rows = [("real image", real_images[idx]), ("real masks", None), ("generated", "real_masks"),
        ("random masks", None), ("generated", "random_masks")]
fig, axes = plt.subplots(len(rows), k, figsize=(1.6 * k, 1.7 * len(rows)), squeeze=False)
for r, (label, what) in enumerate(rows):
    for c, j in enumerate(show):
        ax = axes[r, c]
        if r == 0:
            ax.imshow(grey(what[j]), cmap="gray", vmin=0, vmax=1)
        elif what is None:
            ax.imshow(sources[label.replace(" ", "_")][j, 0], cmap="gray", vmin=0, vmax=1)
        else:
            ax.imshow(grey(torch.load(run.samples / f"{what}.pt")["images"][j]), cmap="gray", vmin=0, vmax=1)
        ax.axis("off")
    axes[r, 0].set_title(label, fontsize=9, loc="left")
fig.tight_layout(); fig.savefig(run.figures / "samples.png", dpi=100)

# %% [markdown]
# Every sample from the real masks (up to 80), in mask order, its mask's outline in red: the failures as well.

# %%
d = torch.load(run.samples / "real_masks.pt")
n_all = min(80, len(d["images"]))
cols = min(10, n_all)
fig, axes = plt.subplots((n_all + cols - 1) // cols, cols, figsize=(1.3 * cols, 1.3 * ((n_all + cols - 1) // cols)),
                         squeeze=False)
for ax in axes.ravel():
    ax.axis("off")
for j in range(n_all):
    ax = axes.ravel()[j]
    ax.imshow(grey(d["images"][j]), cmap="gray", vmin=0, vmax=1)
    ax.contour(d["masks"][j, 0].float().numpy(), levels=[0.5], colors="red", linewidths=0.5)
fig.suptitle(f"all {n_all} samples from real masks (mask outlines in red)", fontsize=9)
fig.tight_layout(); fig.savefig(run.figures / "samples_all.png", dpi=100)
