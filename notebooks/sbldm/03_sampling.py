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
# # SBLDM 3/4 - sampling
#
# *SBLDM as planned in the seed* (origin: Kebaili et al., ISBI 2024,
# [arXiv 2406.05421](https://arxiv.org/abs/2406.05421)). New slices come from pure noise
# $x_T\sim\mathcal N(0, I)$ in latent space, denoised with DDIM (Song et al. 2021,
# [arXiv 2010.02502](https://arxiv.org/abs/2010.02502)), 50 steps, $\eta=0$ (deterministic):
#
# $$\hat z_0 = \frac{x_t - \sqrt{1-\bar\alpha_t}\,\epsilon_\theta(x_t,t)}{\sqrt{\bar\alpha_t}},\qquad
#   x_{t'} = \sqrt{\bar\alpha_{t'}}\,\hat z_0 + \sqrt{1-\bar\alpha_{t'}}\,\epsilon_\theta(x_t,t),$$
#
# over 50 timesteps with "trailing" spacing, which starts at $t=T-1$ where training ended (diffusers'
# "leading" default starts at $t=980$, from slightly less noise than training assumed). The decoder then
# maps $\hat z_0/s$ back to a slice. The seed's target: under 5 s per image on a T4.
#
# The estimate $\hat z_0$ is clipped at every step to the range of the scaled training latents (as DDPM
# clips to the pixel range): at $t=999$ it divides the network's error by $\sqrt{\bar\alpha_t}$ (about
# 1/160 for the linear schedule, 1/20000 for the cosine one). Without the clip, about a third of the
# cpu-demo samples end as textured noise, and every cosine-schedule sample does.
#
# **How long:** `smoke` seconds; `cpu-demo` about 20 s on a 2-core CPU.

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
profile = "auto"       # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" (CI, seconds) | "cpu-demo" (minutes on a CPU) | "t4" (seed settings, one 16 GB T4)
run_dir = ""           # the run directory of notebooks 1-2; empty: <run root>/sbldm-<profile>
n_samples = None       # slices to generate; None: profile value (16 smoke/cpu-demo, 64 t4)
sampling_steps = None  # DDIM steps; None: profile value (50)
timestep_spacing = None  # DDIM spacing: "trailing" (starts at T-1) | "leading" (the original DDIM's); None: the run's (trailing)
eta = 0.0              # DDIM eta: 0 deterministic, 1 DDPM-like ancestral noise
early_stop = None      # adaptive early-stop threshold (see below); None: the run's setting, 0: off
clip_latents = True    # clip each step's z0 estimate to the training latents' range (False: no clip)
rederive_eps = False   # with clipping: each DDIM step re-derives eps from the clipped z0 (diffusers use_clipped_model_output)
seed = 0               # sampling seed: the same seed gives the same slices
device = "auto"        # "auto" (CUDA if present) | "cpu" | "cuda"

# %%
import time

import numpy as np
import torch

from medkit import env, session, viz
from medkit.methods import sbldm
from medkit.run import RunDir
from medkit.train import load_weights

profile = session.resolve_profile(profile)  # "auto": which profile, and why
print(env.describe())
run = RunDir(run_dir, default_name=f"sbldm-{profile}")
cfg = run.load_config("ldm", needed_by="sampling")
n = n_samples or cfg["n_samples"]
steps = sampling_steps or cfg["sampling_steps"]
early_stop = cfg.get("early_stop", 0.0) if early_stop is None else float(early_stop)
if early_stop < 0:
    raise ValueError(f"early_stop={early_stop}: must be >= 0 (0 = all steps)")
dev = env.pick_device(device)
lat = run.metrics().get("latents")
if not lat:
    raise FileNotFoundError(f"{run / 'metrics.json'} has no 'latents' section: run notebook 2 with run_dir={str(run.path)!r}")

# %% [markdown]
# ## Models
# The EMA weights of both networks, from the newest valid checkpoints of stages 1 and 2.

# %%
vae, unet = sbldm.build_vae(cfg), sbldm.build_unet(cfg)
load_weights(run.path, "vae", vae, ema=True)
load_weights(run.path, "ldm", unet, ema=True)
vae, unet = vae.to(dev).eval(), unet.to(dev).eval()
clip = lat["abs_max"] if clip_latents else None
cfg["timestep_spacing"] = timestep_spacing or cfg.get("timestep_spacing", "trailing")
scheduler = sbldm.build_scheduler(cfg, "ddim", clip=clip)
scheduler.set_timesteps(steps)
print(f"DDIM, {steps} steps, eta {eta}, z0 clipped to +-{clip}: timesteps {scheduler.timesteps[:3].tolist()} ... "
      f"{scheduler.timesteps[-2:].tolist()}")

# %% [markdown]
# ## Sample
# `sbldm.sample` is an explicit loop over `scheduler.step` (see `medkit/diffusion/__init__.py`): the
# network predicts $\epsilon$, the scheduler applies the DDIM update above.
#
# **Adaptive early stop** (this kit's extension, `early_stop` > 0): a sample leaves the loop once its
# estimate of the clean latent has settled: the relative change
# $r_k=\lVert\hat z_0^{(k)}-\hat z_0^{(k-1)}\rVert/\lVert\hat z_0^{(k)}\rVert$, extrapolated over the
# $N-k$ steps still planned, falls below the threshold. It returns that estimate $\hat z_0$ - not the
# half-noised $x_t$, which is what a sampler planned for N steps returns when simply cut short.

# %%
if dev.type == "cuda":
    torch.cuda.synchronize()
t0 = time.perf_counter()
generated, taken = sbldm.sample(unet, vae, scheduler, n, tuple(lat["shape"]), lat["scale"], steps=steps, eta=eta,
                                seed=seed, device=dev, early_stop=early_stop, return_steps=True,
                                rederive_eps=rederive_eps)
if dev.type == "cuda":
    torch.cuda.synchronize()
seconds = time.perf_counter() - t0
np.savez_compressed(run.samples / "generated.npz", images=generated.numpy(), seed=seed, steps=steps, eta=eta)
run.update_metrics("sampling", {"seconds_per_image": seconds / n, "n": n, "steps": steps, "eta": eta,
                                "timestep_spacing": cfg["timestep_spacing"],
                                "rederive_eps": bool(rederive_eps), "clip": clip, "device": str(dev), "seed": seed, "early_stop": early_stop,
                                "mean_steps_taken": taken.float().mean().item(),
                                "min_steps_taken": int(taken.min()), "max_steps_taken": int(taken.max())})
print(f"{n} slices in {seconds:.1f} s: {seconds / n:.3f} s per image on {dev}; network calls per sample: "
      f"mean {taken.float().mean():.1f} (min {int(taken.min())}, max {int(taken.max())}) of {steps}")

# %%
import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(5, 5))
ax.imshow(viz.grid(generated[:16]), cmap="gray", vmin=0, vmax=1); ax.axis("off"); ax.set_title("generated slices")
fig.savefig(run.figures / "samples.png", dpi=110, bbox_inches="tight")
