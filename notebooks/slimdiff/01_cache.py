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
# # SLIM-Diff 1/4 - the slice cache
#
# *SLIM-Diff* (Pascual-Gonzalez et al., [arXiv 2602.03372](https://arxiv.org/abs/2602.03372)) generates an
# MRI slice **and** its lesion mask together, so a data-scarce segmentation task gets new pairs without any
# mask to start from. This notebook prepares the data as the paper's "camera-ready" recipe does: volumes in
# RAS at 1.25 mm, cropped/padded to 160^3, intensities scaled to [-1, 1] by the (0.5, 99.5) percentiles,
# masks to {-1, +1}, axial slices with enough brain, lesion slices with a minimum lesion area, 30 local
# z-bins, and the conditioning token $c = z_{bin} + 30\cdot\text{class}$ (lesion-free 0, lesion 1).
#
# **Data.** Real FLAIR-lesion data cannot ship with the kit. The default source, `mni152-lesions`, is the
# MNI152 template from nilearn's wheel with **synthetic** white-matter lesions (hyperintense blobs of varied
# size, shape and count) - a labelled stand-in that makes every stage run. Pass your own NIfTI volumes with
# lesion masks as `data` (e.g. MSLesSeg, ISLES, or BraTS FLAIR + a tumour label attached on Kaggle).
#
# **How long:** seconds (the cache is built once and reused).

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
profile = "auto"       # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" (CI, seconds) | "cpu-demo" (minutes on a CPU) | "t4" (the paper's sizes, one 16 GB T4)
run_dir = ""           # the run directory; empty: <run root>/slimdiff-<profile>
data = None            # "mni152-lesions" (synthetic lesions on MNI152), a folder of NIfTI volumes with lesion masks or "kaggle:OWNER/SLUG"; None: mni152-lesions
n_subjects = None      # synthetic subjects (each its own lesions); None: the profile's
image_size = None      # slice size in pixels; None: the profile's (smoke 32, cpu-demo 64, t4 160)

# %%
import matplotlib.pyplot as plt
import numpy as np

from medkit import env, session
from medkit.data import locate
from medkit.data.lesion_slices import LesionSliceDataset, build_lesion_cache
from medkit.methods import slimdiff
from medkit.run import RunDir

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"slimdiff-{profile}")
cfg = slimdiff.config(profile, **{k: v for k, v in dict(data=data, n_subjects=n_subjects, image_size=image_size).items()
                                  if v is not None})
synthetic = cfg["data"] in ("mni152-lesions", "mni152-synthetic-lesions")
cache = build_lesion_cache(locate.resolve(cfg["data"]), cfg["image_size"], n_subjects=cfg["n_subjects"] if synthetic else None,
                           n_bins=cfg["n_bins"], seed=cfg["seed"],
                           lesion_options={"radius_mm": cfg["lesion_radius_mm"], "max_lesions": cfg["max_lesions"]}
                           if synthetic else None)
cfg["cache"] = str(cache)
run.save_config("cache", cfg)
from medkit import fidelity

fidelity.show("slimdiff", profile, cfg, run=run)  # where this run departs from the paper, and why
train, val = LesionSliceDataset(cache, "train"), LesionSliceDataset(cache, "val")
meta = train.meta
print(f"cache {cache}: train {len(train)} slices, val {len(val)}; source {meta['source']}"
      + (" (SYNTHETIC lesions)" if meta.get("synthetic") else ""))

# %% [markdown]
# ## What the cache holds
# Lesion and lesion-free slices per z-bin (training split), and a few lesion slices with their mask outlines.

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 3.4), gridspec_kw={"width_ratios": [1.2, 2]})
bins = np.arange(cfg["n_bins"])
for c, name in ((0, "lesion-free"), (1, "lesion")):
    counts = np.bincount(train.z_bins[train.classes == c].numpy(), minlength=cfg["n_bins"])
    axes[0].bar(bins + (0.2 if c else -0.2), counts, width=0.4, label=name)
axes[0].set_xlabel("z-bin"); axes[0].set_ylabel("training slices"); axes[0].legend()
lesion = np.nonzero(train.classes.numpy() == 1)[0]
pick = lesion[np.linspace(0, len(lesion) - 1, 6).astype(int)] if len(lesion) else []
strip = [np.concatenate([train.images[i, 0].numpy(), train.masks[i, 0].numpy()], 0) for i in pick]
if strip:
    axes[1].imshow(np.concatenate(strip, 1), cmap="gray", vmin=-1, vmax=1)
axes[1].set_title("lesion slices (top) and their masks (bottom)"); axes[1].axis("off")
fig.tight_layout(); fig.savefig(run.figures / "data.png", dpi=110)

run.update_metrics("data", {"source": meta["source"], "synthetic": bool(meta.get("synthetic")), "train": len(train),
                            "val": len(val), "train_lesion": int((train.classes == 1).sum()),
                            "train_lesion_free": int((train.classes == 0).sum()), "image_size": cfg["image_size"]})
