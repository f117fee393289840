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
# # Siamese-Diffusion 4/4 - the segmentation protocol (Tables 2-3, Fig. 7)
#
# The paper's headline evidence: a segmenter trained on the real pairs, on the real pairs duplicated
# (**Copy-Paste**, Table 2's baseline), and on the real pairs + generated pairs (from the training masks, and
# from random masks; `volumes` times as many as the real set - Fig. 7 sweeps 1x-4x), each over paired seeds,
# scored per test set and **Overall** (all test images together, as Table 2). Test sets: PraNet's five polyp
# test sets (`test_data` = the folder holding `TestDataset/`), an ISIC Test split (`test_layout = "isic2018"`),
# or - without `test_data` - the run's held-out split.
#
# **Segmenter**: MONAI's UNet by default, any 2D MONAI network by name, or `package.module:function`. The
# paper's SANet / Polyp-PVT / CTNet are not in MONAI, so its numbers are shown as a reference only.
#
# **How long:** `smoke` seconds; `cpu-demo` 3-6 minutes; `t4` minutes per arm and seed at 384 px.

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
run_dir = ""           # the run directory of notebooks 1-2; empty: <run root>/siamese-<backend>-<profile>
test_data = ""         # PraNet: the folder holding TestDataset/; ISIC: the download (with test_layout); a folder or "kaggle:OWNER/SLUG"; "": the run's held-out split
test_layout = "pranet"  # "pranet" | "isic2018" | "isic2016" | a find_pairs layout of one test set
sources = ["real_masks", "random_masks"]  # generated sets from notebook 2 added to the real pairs
volumes = [1]          # generated pairs per real pair, one arm each (Fig. 7: [1, 2, 3, 4])
copy_paste = True      # the Copy-Paste arm (the real pairs twice)
segmenter = "unet"     # "unet" (MONAI UNet) | a monai.networks.nets name | "package.module:function"
seeds = 3              # paired seeds per arm
seg_steps = None       # segmenter training steps; None: smoke 3, cpu-demo 400, t4 2000
device = "auto"        # "auto" | "cpu" | "cuda"

# %%
import json

import torch

from medkit import env, session
from medkit.data import check_pairs, pairs
from medkit.eval import seg_protocol
from medkit.run import RunDir

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"siamese-{backend}-{profile}")
cfg = run.load_config("train", needed_by="the segmentation protocol")
dev = env.pick_device(device)
steps = int(seg_steps or {"smoke": 3, "cpu-demo": 400}.get(profile, 2000))
protocol = "polyps" if test_layout == "pranet" and test_data else (test_layout if test_data else "held-out")

# %% [markdown]
# ## Real pairs, generated pairs, test sets
# The real pairs are the generator's training pairs; when notebook 2 generated fewer than `max(volumes)` per real
# pair, an evenly spread subset of them is used (said below). Test images are resized like the training images.

# %%
train = pairs.PairDataset(cfg["cache"], "train")
real_all = check_pairs(train.images.float() / 127.5 - 1, train.masks.float(), "real training pairs",
                       names=list(train.names))
generated = {}
for name in sources:
    path = run.samples / f"{name}.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run notebook 2 (sampling) with run_dir={str(run.path)!r}")
    g = torch.load(path)
    generated[name.replace("_", " ")] = check_pairs(g["images"], g["masks"], f"generated pairs ({name})")
n_gen = min(len(g.images) for g in generated.values())
n_real = min(len(real_all.images), n_gen // max(volumes))
if n_real < 2:
    raise ValueError(f"{n_gen} generated pairs per source cannot give {max(volumes)}x of >= 2 real pairs; run notebook 2 "
                     f"with n_generate >= {2 * max(volumes)}")
real = real_all.subset((torch.arange(n_real) * len(real_all.images)) // n_real)
if n_real < len(real_all.images):
    print(f"real: {n_real} of the {len(real_all.images)} training pairs (evenly spread), since notebook 2 generated "
          f"{n_gen} per source; run it with n_generate={max(volumes) * len(real_all.images)} for the whole set")
if test_data:
    from medkit.data import locate  # a folder, "kaggle:OWNER/SLUG" (attached) or "fixture:<layout>" (SYNTHETIC, CI)

    tests = seg_protocol.load_test_sets(locate.resolve(test_data), cfg["image_size"], real.channels,
                                        layout=test_layout)
else:
    val = pairs.PairDataset(cfg["cache"], "val")
    tests = {"held-out": check_pairs(val.images.float() / 127.5 - 1, val.masks.float(), "held-out pairs")}
print(f"{len(real.images)} real pairs ({real.channels} channel(s), {cfg['image_size']} px); generated: "
      + ", ".join(f"{k} {len(v.images)}" for k, v in generated.items()) + "; test sets: "
      + ", ".join(f"{k} {len(v.images)}" for k, v in tests.items()))

# %% [markdown]
# ## Train and score every arm

# %%
arms = seg_protocol.make_arms(real, generated, volumes=volumes, copy_paste=copy_paste)
rows = seg_protocol.run_protocol(arms, tests, seeds=seeds, steps=steps, segmenter=segmenter, device=dev)
summary = seg_protocol.summarise(rows)
config = dict(steps=steps, seeds=seeds, volumes=list(volumes), sources=list(sources), copy_paste=copy_paste,
              n_real=n_real, test_data=str(test_data), test_layout=test_layout)
sec = seg_protocol.write_report(run.path / "segmentation", rows, summary, segmenter=segmenter, protocol=protocol,
                                config=config, dataset=f"{cfg['data']} ({n_real} real pairs, {cfg['image_size']} px)")
run.update_metrics("segmentation", sec)
print((run.path / "segmentation" / "protocol.md").read_text())
