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
# # Siamese-Diffusion 1/4 - training Mask-Diffusion and Image-Diffusion together
#
# *Siamese-Diffusion* (Qiu et al., CVPR 2025, [arXiv 2505.06068](https://arxiv.org/abs/2505.06068)) makes
# images from segmentation masks. One ControlNet serves two branches: **Mask-Diffusion** (hint: the mask)
# and **Image-Diffusion** (hint: the image, mixed with the mask branch's residuals). A Noise Consistency Loss
# pulls the mask branch's noise estimate towards the image branch's, so the mask branch - the only one used
# for sampling - learns the image's morphology:
#
# $$\mathcal L = \underbrace{\|\epsilon_m-\epsilon\|^2}_{L_m} + \underbrace{\|\epsilon_{mix}-\epsilon\|^2}_{L_i}
#   + w_c\,\underbrace{\|\epsilon_m-\mathrm{sg}[\epsilon_{mix}]\|^2}_{L_c} + L_{aug},\qquad
#   c_{mix} = w_m\,\mathrm{sg}[c_m] + \tfrac{k}{N}\,c_i .$$
#
# Online-Augmentation ($L_{aug}$, from step $N/3$, samples with $t\le 200$) re-noises the image branch's
# estimate $z_0'$ and trains the mask branch on it. Every term is computed as the official code does
# (`medkit/methods/siamese.py`), without its per-step deep copies of the networks (same gradients, tested).
#
# **Backends.** `scratch`: MONAI DiffusionModelUNet + ControlNet trained from zero in pixel space (CPU demo,
# T4 at 256 px). `sd15`: Stable Diffusion 1.5 + ControlNet with the Dense Hint Input, fitted to one 16 GB T4
# (fp16 autocast, gradient checkpointing, 8-bit AdamW, gradient accumulation, latents and prompt embedding
# precomputed).
#
# **Data.** Paired image/mask folders (Kvasir-SEG, CVC-ClinicDB, ISIC 2018, the PraNet TrainDataset, the
# official `prompt.json` layout). Default for the CPU profiles: MNI152 T1 slices with their white-matter
# masks, from nilearn's wheel.
#
# **How long:** `smoke` seconds; `cpu-demo` (scratch) about 8 minutes on a 2-core CPU; `t4` hours
# (resumable: Run All again after a disconnect).

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
profile = "auto"       # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" (CI, seconds) | "cpu-demo" (scratch only, minutes on a CPU) | "t4" (one 16 GB T4)
backend = "scratch"    # "scratch" (MONAI, from zero, pixel space) | "sd15" (Stable Diffusion 1.5 + ControlNet)
run_dir = ""           # the run directory; empty: <run root>/siamese-<backend>-<profile>
data = None            # "mni152-tissue" (embedded), a folder of image/mask pairs (Kvasir-SEG, CVC-ClinicDB, ISIC 2016/2018, PraNet, prompt.json), "kaggle:OWNER/SLUG" (a Kaggle dataset, attached on push) or "fixture:<layout>" (synthetic, offline); None: the profile's
layout = "auto"        # pairs folder layout: "auto" | "kvasir-seg" | "cvc-clinicdb" | "isic2018" | "isic2016" | "pranet" | "prompt-json" | "folders"
val_fraction = None    # pairs held out of training (the run's own test split); None: 0.1; 0 when test sets come separately (PraNet)
ablation = ""          # "" (the full method) or a Table 5 setting: "1-controlnet" ... "7-ours"
w_c = None             # Noise Consistency Loss weight (Table 6: 0, 0.5, 1, 1.5, 2); None: 1.0
dhi = None             # Dense Hint Input on/off; None: on
online_aug = None      # Online-Augmentation on/off; None: on
space = None           # scratch: "pixel" | "latent" (an SBLDM VAE's latent space); None: the profile's (cpu-demo latent, else pixel)
vae_run = ""           # scratch in latent space: an SBLDM run whose VAE stage has finished; "": this run trains its VAE first
train_steps = None     # optimiser steps N (w_i grows as k / N); None: the profile's
batch = None           # images per step; None: the profile's
lr = None              # learning rate; None: the profile's
warmup_steps = None    # linear LR warm-up steps (a labelled departure); None: 0, no schedule - as the official code
model = None           # sd15 only: a diffusers folder or Hugging Face id; None: the profile's ("tiny" in smoke)
train_decoder = None   # sd15 only: also train the UNet decoder (the paper does; does not fit a T4 with AdamW)
device = "auto"        # "auto" | "cpu" | "cuda"
budget_s = "auto"      # wall-clock limit in seconds; "auto": 11h15m on Kaggle, none elsewhere
processes = 1          # training processes, one GPU each (scratch backend; 2 on Kaggle's "GPU T4 x2"); on a CPU, gloo processes (a trial)

# %%
import math

import matplotlib.pyplot as plt
import torch

import medkit
from medkit import env, session, viz
from medkit.data import pairs
from medkit.methods import siamese
from medkit.run import RunDir
from medkit.train import Trainer, launch, lr_schedule, recorded_facts

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"siamese-{backend}-{profile}")
overrides = dict(siamese.ABLATIONS[ablation]) if ablation else {}
overrides.update({k: v for k, v in dict(w_c=w_c, dhi=dhi, online_aug=online_aug, train_steps=train_steps, batch=batch,
                                        lr=lr, warmup_steps=warmup_steps, data=data, model=model, train_decoder=train_decoder, space=space,
                                        vae_run=vae_run or None).items()
                  if v is not None})
cfg = siamese.config(profile, backend, **overrides)
if ablation:
    cfg["ablation"] = ablation
dev = env.pick_device(device)
if processes != 1 and backend != "scratch":
    raise ValueError(f"processes={processes} is for the scratch backend: sd15 computes its latents and prompt embeddings "
                     f"on the GPU (and may load bitsandbytes) before training, and accelerate can only start one "
                     f"process per GPU from a kernel that has not touched the GPU. Use processes=1 with sd15.")
prep_dev = dev if processes == 1 else torch.device("cpu")  # several processes: the GPU stays untouched until launch()

# %% [markdown]
# ## Data
# Masks are thresholded at 127 (as the official code), images and masks resized to the profile's size
# (aspect not kept, as the official code's 384 x 384). Bad pairs stop here with counts and file names.

# %%
if cfg["data"] in ("", None):
    raise ValueError("data is empty: set data to a folder of image/mask pairs, to a Kaggle dataset (e.g. "
                     "'kaggle:debeshjha1/kvasirseg' for Kvasir-SEG, attached when medkit pushes the kernel) or to "
                     "'mni152-tissue' for the embedded demo data")
if cfg["data"].startswith("mni152"):
    cache = pairs.mni152_pairs(cfg["image_size"], kind=cfg["data"].split("-", 1)[1], seed=cfg["seed"])
else:
    from medkit.data import locate  # a folder, "kaggle:OWNER/SLUG" (attached) or "fixture:<layout>" (SYNTHETIC, CI)

    cache = pairs.build_pair_cache(locate.resolve(cfg["data"]), cfg["image_size"], layout=layout, seed=cfg["seed"],
                                   val_fraction=0.1 if val_fraction is None else float(val_fraction))
cfg["cache"] = str(cache)
train = pairs.PairDataset(cache, "train")
if cfg["n_train"]:
    train = torch.utils.data.Subset(train, range(min(cfg["n_train"], len(train))))
first = train[0]
image_channels = first["image"].shape[0]
cfg["image_channels"] = image_channels
print(f"{len(train)} training pairs, {image_channels}-channel images of {cfg['image_size']} px; cache {cache}")

k = min(6, len(train))
fig, axes = plt.subplots(2, k, figsize=(2 * k, 4.2), squeeze=False)
for j in range(k):
    s = train[j * (len(train) // k)]
    axes[0, j].imshow(((s["image"].permute(1, 2, 0) + 1) / 2).clamp(0, 1).squeeze(-1), cmap="gray")
    axes[1, j].imshow(s["mask"][0], cmap="gray")
    axes[0, j].axis("off"); axes[1, j].axis("off")
axes[0, 0].set_title("images"); axes[1, 0].set_title("masks")
fig.tight_layout(); fig.savefig(run.figures / "data.png", dpi=100)

# %% [markdown]
# ## Model and schedule
# scratch: the UNet and a ControlNet whose encoder starts as a copy of the UNet's, everything trained; in
# pixel space, or in the latent space of an SBLDM VAE (`space = "latent"`, the cpu-demo default): the one of
# `vae_run`, or one this run trains first on its own training images (stage `vae`, SBLDM's VAE recipe).
# sd15: SD 1.5's UNet, VAE and CLIP text encoder frozen; `ControlNetModel.from_unet` + DHI trained (and the
# decoder when `train_decoder`). The latents and the prompt's embedding are computed once here.

# %%
ctx = ctx_uncond = sd = None
if backend == "scratch":
    dataset = train
    if cfg["space"] == "latent":  # the diffusion runs on z0 = s * mu(x) of the frozen SBLDM VAE
        if not cfg["vae_run"]:  # this run's first stage: SBLDM's VAE trained on these training images
            vae_result = siamese.train_vae(run, cfg, train, image_channels, device=dev, budget_s=budget_s,
                                           processes=processes)
            print(vae_result)
            session.end_if_stopped(vae_result, run, "vae")  # a budget stop: the rest is skipped, successfully
            run.update_metrics("vae", {"steps": vae_result.step, "train_seconds": vae_result.seconds,
                                       "final_loss": vae_result.last_loss})
        vae, vae_cfg = siamese.load_sbldm_vae(cfg, prep_dev, run_dir=run.path)
        dataset, cfg["latent_scale"], cfg["latent_clip"] = siamese.sbldm_latents(vae, train, prep_dev, seed=cfg["seed"])
        cfg["latent_channels"] = int(vae_cfg["latent_channels"])
        cfg["vae_factor"] = 2 ** (len(vae_cfg["vae_channels"]) - 1)
        print(f"SBLDM VAE latents: {cfg['latent_channels']} x {cfg['image_size'] // cfg['vae_factor']}^2, "
              f"scale {cfg['latent_scale']:.3f}, clip +-{cfg['latent_clip']}")
    net = siamese.build_scratch(cfg, image_channels)
else:
    sd = siamese.load_sd15_components(cfg)
    net = siamese.build_sd15(cfg, sd)
    ctx, ctx_uncond = siamese.prompt_embeddings(sd, cfg["prompt"], dev)
    dataset = siamese.precompute_latents(sd, train, dev, batch_size=8)
    cfg["latent_scale"] = sd.latent_scaling
    cfg["model_source"] = sd.source
net.to(prep_dev)
params = siamese.trainable(net, cfg)
scheduler = siamese.build_scheduler(cfg, "ddpm")
before = recorded_facts(run.path, "siamese")  # resuming: the optimizer the run started with, whatever is installed now
opt, opt_name = siamese.make_optimizer(params, cfg, dev, like=before.get("optimizer"))
cfg["optimizer"] = opt_name
run.save_config("train", cfg)
from medkit import fidelity

fidelity.show("siamese", f"{backend}/{profile}", cfg, run=run)  # where this run departs from the official code, and why
print(f"UNet {medkit.nets.count_parameters(net.unet) / 1e6:.2f} M, ControlNet "
      f"{medkit.nets.count_parameters(net.controlnet) / 1e6:.2f} M parameters ({'DHI' if cfg['dhi'] else 'standard hint block'}); "
      f"trained: {medkit.nets.count_parameters(params, trainable_only=True) / 1e6:.2f} M with {opt_name}")

# %% [markdown]
# ## Train
# `siamese.training_loss` is the step written out; the log keeps `loss_mask`, `loss_image`,
# `loss_consistency`, `loss_aug` and `w_i` for every logged step.

# %%
# The official code trains at a constant LR; `warmup_steps > 0` adds a linear warm-up (a labelled option).
lr_sched = lr_schedule(opt, warmup_steps=cfg["warmup_steps"], decay="constant")  # None without a warm-up


def train():  # every process runs this whole (processes > 1: one GPU each, `batch` pairs per process)
    trainer = Trainer(params, opt, run_dir=run.path, stage="siamese", config=cfg, max_steps=cfg["train_steps"],
                      lr_scheduler=lr_sched, ema_decay=cfg["ema_decay"], precision=cfg["precision"],
                      grad_accum=cfg.get("grad_accum", 1), clip_grad=cfg["grad_clip"], ckpt_every=cfg["ckpt_every"],
                      log_every=1, budget_s=budget_s, seed=cfg["seed"], device=dev)  # every step's terms in the log
    net.to(trainer.device)  # the frozen parts too (the loss calls the whole net)
    return trainer.fit(dataset, cfg["batch"],
                       lambda m, b, step: siamese.training_loss(net, b, step, scheduler, cfg, ctx, ctx_uncond))


result = launch(train, processes=processes)
print(result)
session.end_if_stopped(result, run, "siamese")  # a budget stop: the rest of the notebook is skipped, successfully

# %% [markdown]
# ## Curves
# The four terms and $w_i$. $L_{aug}$ starts at $K_\tau = N/3$ and is zero for samples with $t > 200$.

# %%
log = viz.read_log(run / "logs" / "siamese.jsonl")
fig, ax = plt.subplots(1, 2, figsize=(11, 3.4))
for key in ("loss", "loss_mask", "loss_image", "loss_consistency", "loss_aug"):
    pts = [(r["step"], r[key]) for r in log if r.get(key, 0) > 0]
    if pts:
        ax[0].plot(*zip(*pts), label=key, alpha=0.8)
ax[0].set_yscale("log"); ax[0].set_xlabel("step"); ax[0].legend(fontsize=8); ax[0].grid(alpha=0.3)
ax[1].plot([r["step"] for r in log if "w_i" in r], [r["w_i"] for r in log if "w_i" in r])
ax[1].set_xlabel("step"); ax[1].set_ylabel("w_i = k / N")
fig.tight_layout(); fig.savefig(run.figures / "loss_terms.png", dpi=110)
tail = log[-max(1, len(log) // 10):]
run.update_metrics("train", {**{f"final_{k}": v for k, v in siamese.log_every_term(tail).items()},
                             "steps": result.step, "seconds": result.seconds, "optimizer": opt_name,
                             "trainable_params": medkit.nets.count_parameters(params, trainable_only=True),
                             "ablation": ablation or "7-ours (full method)", "w_c": cfg["w_c"], "dhi": cfg["dhi"],
                             "online_aug": cfg["online_aug"], "image_branch": cfg["image_branch"]})
