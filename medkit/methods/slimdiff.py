"""SLIM-Diff: joint synthesis of an MRI slice and its lesion mask with one shared U-Net.

Pascual-Gonzalez et al., "SLIM-Diff", arXiv 2602.03372 (code: github MarioPasc/slim-diff). This module
follows the paper's "camera-ready" recipe (the public README describes an older configuration).

Data. x0 = [image, mask] in [-1, 1]^{2 x H x W}: a FLAIR slice scaled to [-1, 1] and its lesion mask in
{-1, +1} (``medkit.data.lesion_slices``). Each slice has a token

    c = z_bin + n_bins * pathology_class      (n_bins = 30 local z-bins x {lesion-free, lesion})

whose learned embedding is added to the time embedding (MONAI's ``num_class_embeds``).

Model. MONAI DiffusionModelUNet, 2 channels in and out (+2 in with self-conditioning); the paper's
sizes (channels 64-128-256-256, attention at the two deepest levels, 26.9M parameters, 160 x 160) in the
t4 profile, small ones for CPUs.

Training. Cosine schedule, T = 1000. The network predicts eps, x0 or v (``prediction``); the loss is an
Lp distance per channel, summed with channel weights:

    L = sum_c w_c * mean_{b,h,w} | f_theta(x_t, t, c)_c - target_c |^p ,   target in {eps, x0, v}

with p = 1.5 (best images) or 2.0 (best masks) in the paper. Self-conditioning (Chen et al., "Analog
Bits", arXiv 2208.04202): with probability ``self_cond_p`` per batch, a first pass with zero
self-conditioning channels gives x0_hat (clamped to [-1, 1], no gradient), which is concatenated to x_t
for the trained pass; otherwise zeros are.

Sampling. DDIM (300 steps, eta 0.2 in the paper) with "trailing" spacing, so it starts at t = T-1 (MONAI's
DDIM uses "leading" spacing and would start at 897), each step's x0 estimate clipped to [-1, 1], the
previous step's clamped x0_hat fed back as self-conditioning; the mask channel is thresholded at 0.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import torch

from .. import diffusion

PREDICTIONS = {"eps": "epsilon", "x0": "sample", "v": "v_prediction"}

PROFILES: dict[str, dict[str, Any]] = {
    "smoke": dict(
        image_size=32, n_subjects=3, unet_channels=(16, 32, 32), attention_levels=(False, False, True),
        num_res_blocks=1, num_head_channels=16, norm_num_groups=8,
        batch=8, train_steps=12, lr=1e-3, warmup_steps=0, ckpt_every=5,
        sampling_steps=5, n_per_class=2, precision="fp32", lesion_radius_mm=(4.0, 14.0), max_lesions=8,
        downstream_steps=3,
    ),
    "cpu-demo": dict(  # 0.3 s/step on a 2-core CPU: about 5 minutes of training
        image_size=64, n_subjects=10, unet_channels=(16, 32, 32, 64), attention_levels=(False, False, False, True),
        num_res_blocks=1, num_head_channels=16, norm_num_groups=8,
        batch=16, train_steps=1000, lr=5e-4, warmup_steps=0, ckpt_every=250,
        sampling_steps=50, n_per_class=64, precision="auto",
        # at 64 px one pixel is 3 mm: larger synthetic lesions (mean ~25 px instead of ~11) give the mask
        # channel something a short CPU run can learn
        lesion_radius_mm=(4.0, 14.0), max_lesions=8,
        # CPU-scale deviation from the paper's (1, 1): lesions cover ~0.4 % of a 64 px slice, and with equal
        # weights 1000 steps learn a constant -1 mask (the model ignored even the t = 50 input's mask:
        # Dice 0.00 on validation lesions); with 5 it reads it back (Dice 0.87 at t = 50, 0.79 at t = 400)
        # and 14 of 32 lesion-token samples have a mask instead of 0 - docs/results/slimdiff
        channel_weights=(1.0, 5.0),
    ),
    "t4": dict(  # the paper's model and recipe
        image_size=160, n_subjects=10, unet_channels=(64, 128, 256, 256), attention_levels=(False, False, True, True),
        num_res_blocks=2, num_head_channels=32, norm_num_groups=32,
        batch=16, train_steps=50_000, lr=1e-4, warmup_steps=0, ckpt_every=1000,
        early_stop_patience=25,  # the recipe: early stop on validation loss, patience 25 (train_steps is the cap)
        sampling_steps=300, n_per_class=500, precision="auto",
    ),
}
COMMON: dict[str, Any] = dict(
    data="mni152-lesions",    # "mni152-lesions" (MNI152 + synthetic WM lesions, labelled synthetic) or a NIfTI folder with masks
    lesion_radius_mm=(1.5, 10.0),  # synthetic lesions only: radius range of the generator's ellipsoids
    max_lesions=12,           # synthetic lesions only: up to this many lesions per subject
    prediction="x0",          # "eps" | "v" | "x0" (the paper's choice)
    lp=1.5,                   # exponent p of the Lp loss (1.5: best images, 2.0: best masks)
    channel_weights=(1.0, 1.0),  # (image, mask) loss weights
    self_cond_p=0.5,          # probability per batch of the self-conditioning pass; 0 = off (and no extra channels)
    n_bins=30,                # local z-bins; tokens = z_bin + n_bins * pathology_class
    num_train_timesteps=1000,
    weight_decay=1e-4,
    grad_clip=1.0,
    lr_min=1e-6,              # cosine LR decay to this
    # warmup_steps (per profile): 0, as the recipe - a linear warm-up is an option (-p warmup_steps N), not measured
    early_stop_patience=None, # validations without improvement before training stops; None: a fixed train_steps
    val_every=None,           # steps between validations; None: one balanced epoch of the training slices
    ema_decay=0.999,
    sampling_eta=0.2,
    timestep_spacing="trailing",  # "trailing" (starts at T-1) | "leading": the official sampler's (MONAI's DDIM: 897, ..., 0 at 300 steps)
    # DDIM re-derives eps from the clipped x0 at each step (diffusers' use_clipped_model_output)? False is the
    # official code's sampler (MONAI's DDIM keeps the network's eps when it clips x0); True is the GLIDE choice.
    sampling_rederive_eps=False,
    # the downstream test's segmenter (about 25 s per training at cpu-demo): small lesions need the higher LR
    # and 1000 steps - at the kit's generic 400 steps and LR 2e-3 every arm scored Dice 0 on real lesions
    downstream_steps=1000,    # training steps per arm and seed
    downstream_lr=1e-2,       # Adam LR (cosine to 0)
    seed=0,
)


def config(profile: str = "cpu-demo", **overrides) -> dict:
    """The resolved settings of a profile with ``overrides``; unknown keys and bad values raise."""
    if profile not in PROFILES:
        raise ValueError(f"profile={profile!r}: use one of {sorted(PROFILES)}")
    cfg = {"method": "slimdiff", "profile": profile, **COMMON, **PROFILES[profile]}
    unknown = sorted(set(overrides) - set(cfg))
    if unknown:
        raise ValueError(f"unknown SLIM-Diff setting(s) {unknown}; known: {sorted(cfg)}")
    cfg.update(overrides)
    for k in ("unet_channels", "attention_levels", "channel_weights", "lesion_radius_mm"):
        cfg[k] = tuple(cfg[k])
    if cfg["prediction"] not in PREDICTIONS:
        raise ValueError(f"prediction={cfg['prediction']!r}: use one of {sorted(PREDICTIONS)} (eps, v or x0)")
    if not (isinstance(cfg["lp"], (int, float)) and cfg["lp"] > 0):
        raise ValueError(f"lp={cfg['lp']!r}: the Lp exponent must be a positive number (the paper uses 1.5-2.5)")
    if not 0.0 <= float(cfg["self_cond_p"]) <= 1.0:
        raise ValueError(f"self_cond_p={cfg['self_cond_p']!r}: a probability in [0, 1]")
    if len(cfg["channel_weights"]) != 2 or min(cfg["channel_weights"]) < 0:
        raise ValueError(f"channel_weights={cfg['channel_weights']!r}: two non-negative weights (image, mask)")
    if len(cfg["attention_levels"]) != len(cfg["unet_channels"]):
        raise ValueError(f"attention_levels {cfg['attention_levels']} needs one entry per level of "
                         f"unet_channels {cfg['unet_channels']}")
    if cfg["image_size"] % 2 ** (len(cfg["unet_channels"]) - 1):
        raise ValueError(f"image_size={cfg['image_size']} must be divisible by {2 ** (len(cfg['unet_channels']) - 1)} "
                         f"(the U-Net halves it {len(cfg['unet_channels']) - 1} times)")
    for c in cfg["unet_channels"]:
        if c % cfg["norm_num_groups"] or c % cfg["num_head_channels"]:
            raise ValueError(f"unet_channels {cfg['unet_channels']}: each must be a multiple of norm_num_groups="
                             f"{cfg['norm_num_groups']} and num_head_channels={cfg['num_head_channels']}")
    return cfg


def self_conditioning(cfg: dict) -> bool:
    return float(cfg["self_cond_p"]) > 0


def build_unet(cfg: dict) -> torch.nn.Module:
    """The shared U-Net on [image, mask] (+ [x0_hat image, x0_hat mask]), token embedding added to time's.

    Initialised from ``cfg['seed']`` without touching the caller's RNG state.
    """
    from monai.networks.nets import DiffusionModelUNet

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(cfg["seed"]))
        return DiffusionModelUNet(
            spatial_dims=2, in_channels=4 if self_conditioning(cfg) else 2, out_channels=2,
            channels=tuple(cfg["unet_channels"]), attention_levels=tuple(cfg["attention_levels"]),
            num_res_blocks=cfg["num_res_blocks"], num_head_channels=cfg["num_head_channels"],
            norm_num_groups=cfg["norm_num_groups"], norm_eps=1e-6, num_class_embeds=2 * cfg["n_bins"])


def build_scheduler(cfg: dict, kind: str = "ddim"):
    """Cosine schedule, T = 1000, x0 estimates clipped to [-1, 1]; sampling spacing ``timestep_spacing``:
    "trailing" (default, starts at T-1) or "leading", the official sampler's (MONAI's DDIM: 0, T/S, ...)."""
    spacing = cfg.get("timestep_spacing", "trailing")
    if spacing not in ("trailing", "leading"):
        raise ValueError(f"timestep_spacing={spacing!r}: use 'trailing' or 'leading' (the official sampler's)")
    return diffusion.make_scheduler(kind, num_train_timesteps=cfg["num_train_timesteps"], beta_schedule="cosine",
                                    prediction_type=PREDICTIONS[cfg["prediction"]], timestep_spacing=spacing,
                                    clip_sample=True, clip_sample_range=1.0)


# ------------------------------------------------------------------------------------------- loss
def lp_loss(pred: torch.Tensor, target: torch.Tensor, p: float, weights=(1.0, 1.0)) -> tuple[torch.Tensor, list]:
    """sum_c w_c * mean |pred_c - target_c|^p, and the per-channel terms (before weighting)."""
    per = (pred.float() - target.float()).abs().pow(p).mean(dim=(0, 2, 3))
    w = torch.as_tensor(weights, dtype=per.dtype, device=per.device)
    return (w * per).sum(), [float(v) for v in per.detach()]


def _net(unet, x_t, cond, t, tokens):
    inp = x_t if cond is None else torch.cat([x_t, cond], 1)
    return unet(inp, t, class_labels=tokens)


def validation_loss(unet, dataset, scheduler, cfg: dict, device, batch_size: int | None = None) -> float:
    """The training loss averaged over every slice of ``dataset`` (the held-out split), in order; random t,
    noise and self-conditioning coins come from the caller's RNG (the Trainer seeds it per validation)."""
    batch_size = int(batch_size or cfg["batch"])
    total, n = 0.0, 0
    for i in range(0, len(dataset), batch_size):
        batch = torch.utils.data.default_collate([dataset[j] for j in range(i, min(i + batch_size, len(dataset)))])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        loss, _ = training_loss(unet, batch, 0, scheduler, cfg)
        k = batch["image"].shape[0]
        total, n = total + float(loss) * k, n + k
    if n == 0:
        raise ValueError("validation_loss: the validation split is empty; early stopping needs held-out slices "
                         "(val_fraction > 0 when building the cache)")
    return total / n


def training_loss(unet, batch: dict, step: int, scheduler, cfg: dict):
    """One SLIM-Diff training step's loss (``Trainer.fit``'s loss_fn); logs the per-channel terms."""
    x0 = torch.cat([batch["image"], batch["mask"]], 1)
    tokens = batch["token"].long()
    b = x0.shape[0]
    eps = torch.randn_like(x0)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), device=x0.device).long()
    x_t = diffusion.add_noise(scheduler, x0, eps, t)
    cond, used = None, 0.0
    if self_conditioning(cfg):
        cond = torch.zeros_like(x0)
        if torch.rand(()) < float(cfg["self_cond_p"]):  # one coin flip per batch, as the paper's code
            with torch.no_grad():
                first = _net(unet, x_t, cond, t, tokens)
                cond = diffusion.predicted_x0(scheduler, x_t, first.float(), t).clamp(-1, 1).to(x0.dtype)
            used = 1.0
    out = _net(unet, x_t, cond, t, tokens)
    target = diffusion.training_target(scheduler, x0, eps, t)
    loss, (l_img, l_mask) = lp_loss(out, target, float(cfg["lp"]), cfg["channel_weights"])
    return loss, {"loss_image": l_img, "loss_mask": l_mask, "self_cond": used}


# -------------------------------------------------------------------------------------- sampling
@torch.no_grad()
def generate(unet, scheduler, tokens, cfg: dict, *, steps: int | None = None, eta: float | None = None,
             seed: int = 0, device="cpu", batch_size: int = 32, progress: bool = True,
             rederive_eps: bool | None = None):
    """Images (N, 1, H, W) in [-1, 1] and binary masks (N, 1, H, W) in {0, 1} for the given tokens.

    DDIM with trailing spacing from x_T ~ N(0, I) (a CPU generator seeded with ``seed``, so CPU and GPU
    draw the same noise), self-conditioning on the previous step's clamped x0 estimate, mask > 0.
    Each step's x0 estimate is clipped to [-1, 1]; ``rederive_eps`` (default: the config's
    ``sampling_rederive_eps``, False as the official code) also re-derives the step's eps from the clipped x0,
    which matters most for eps-prediction, whose early x0 estimates lie far outside [-1, 1].
    """
    from tqdm.auto import tqdm

    steps = int(steps or cfg["sampling_steps"])
    eta = float(cfg["sampling_eta"] if eta is None else eta)
    rederive = bool(cfg.get("sampling_rederive_eps", False) if rederive_eps is None else rederive_eps)
    tokens = torch.as_tensor(tokens, dtype=torch.long)
    unet.eval()
    g = torch.Generator().manual_seed(int(seed))
    size = int(cfg["image_size"])
    images, masks = [], []
    chunks = range(0, len(tokens), batch_size)
    bar = tqdm(total=len(chunks) * steps, desc="SLIM-Diff DDIM", disable=not progress, leave=False)
    for i in chunks:
        tok = tokens[i:i + batch_size].to(device)
        n = len(tok)
        scheduler.set_timesteps(steps, device=device)
        x = torch.randn((n, 2, size, size), generator=g).to(device)
        x0_hat = torch.zeros_like(x) if self_conditioning(cfg) else None
        for t in scheduler.timesteps:
            tb = t.expand(n).to(device)
            out = _net(unet, x, x0_hat, tb, tok).float()
            if x0_hat is not None:
                x0_hat = diffusion.predicted_x0(scheduler, x, out, tb).clamp(-1, 1)
            noise = torch.randn(x.shape, generator=g).to(device) if eta > 0 else None
            x = scheduler.step(out, t, x, eta=eta, variance_noise=noise,
                               use_clipped_model_output=rederive).prev_sample
            bar.update(1)
        images.append(x[:, :1].clamp(-1, 1).cpu())
        masks.append((x[:, 1:2] > 0).float().cpu())
    bar.close()
    return torch.cat(images), torch.cat(masks)


# --------------------------------------------------------------------------------- generation spec
SPEC_CLASSES = ("lesion", "lesion_free")


class SpecError(ValueError):
    """A generation spec that cannot be run; the message names the key and what to do."""


def parse_spec(spec, n_bins: int, available: dict | None = None) -> dict:
    """Validate a generation spec and expand it to ``{"seed", "tokens", "counts"}``.

    A spec (a dict, a JSON string or a path to a JSON file)::

        {"seed": 0,
         "counts": {"all": {"lesion": 4, "lesion_free": 4},     # every z-bin the model was trained on
                    "12":  {"lesion": 20}}}                       # overrides "all" for bin 12

    ``available`` maps class name -> the z-bins that class had in training; "all" expands to those, and an
    explicit bin the model never saw for a class is an error (its token embedding was never trained).
    Everything is checked before anything is generated.
    """
    where = "generation spec"
    if isinstance(spec, (str, Path)) and not str(spec).lstrip().startswith("{"):
        path = Path(spec)
        where = f"generation spec {path}"
        if not path.is_file():
            raise SpecError(f"{where} does not exist.")
        spec = path.read_text()
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as e:
            raise SpecError(f"{where} is not valid JSON ({e}).") from None
    if not isinstance(spec, dict):
        raise SpecError(f"{where}: expected a JSON object with 'seed' and 'counts'.")
    extra = sorted(set(spec) - {"seed", "counts"})
    if extra:
        raise SpecError(f"{where}: unknown key(s) {extra}; a spec has 'seed' and 'counts'.")
    seed = spec.get("seed", 0)
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise SpecError(f"{where}: seed={seed!r} must be a non-negative integer.")
    counts = spec.get("counts")
    if not isinstance(counts, dict) or not counts:
        raise SpecError(f"{where}: 'counts' must be an object like {{\"all\": {{\"lesion\": 4, \"lesion_free\": 4}}}}.")
    avail = {c: sorted(available.get(c, [])) if available else list(range(n_bins)) for c in SPEC_CLASSES}
    per_bin: dict[int, dict[str, int]] = {}
    explicit: dict[int, dict[str, int]] = {}
    for key, val in counts.items():
        if not isinstance(val, dict):
            raise SpecError(f"{where}: counts[{key!r}] must be an object with 'lesion' and/or 'lesion_free' counts.")
        bad = sorted(set(val) - set(SPEC_CLASSES))
        if bad:
            raise SpecError(f"{where}: counts[{key!r}] has unknown class(es) {bad}; use 'lesion' and 'lesion_free'.")
        for c, n in val.items():
            if not isinstance(n, int) or isinstance(n, bool) or n < 0:
                raise SpecError(f"{where}: counts[{key!r}][{c!r}]={n!r} must be a non-negative integer.")
        if key == "all":
            continue
        try:
            b = int(key)
        except ValueError:
            raise SpecError(f"{where}: counts key {key!r} is neither 'all' nor a z-bin number (0..{n_bins - 1}).") from None
        if not 0 <= b < n_bins:
            raise SpecError(f"{where}: z-bin {b} is out of range 0..{n_bins - 1}.")
        for c, n in val.items():
            if n and b not in avail[c]:
                raise SpecError(f"{where}: z-bin {b} has no {c.replace('_', '-')} training slices, so its token was "
                                f"never trained; bins available for {c}: {avail[c]}.")
        explicit[b] = dict(val)
    base = counts.get("all", {})
    for c in SPEC_CLASSES:
        for b in avail[c]:
            if base.get(c):
                per_bin.setdefault(b, {})[c] = base[c]
    for b, val in explicit.items():
        per_bin.setdefault(b, {}).update(val)
    tokens = [b + n_bins * (1 if c == "lesion" else 0)
              for b in sorted(per_bin) for c in SPEC_CLASSES for _ in range(per_bin[b].get(c, 0))]
    if not tokens:
        raise SpecError(f"{where}: asks for 0 samples; give at least one positive count.")
    return {"seed": seed, "tokens": tokens,
            "counts": {str(b): {c: per_bin[b].get(c, 0) for c in SPEC_CLASSES} for b in sorted(per_bin)}}


def default_spec(cfg: dict, available: dict) -> dict:
    """About ``n_per_class`` samples of each class, spread evenly over the z-bins it was trained on."""
    per_bin = {c: max(1, math.ceil(cfg["n_per_class"] / max(1, len(available.get(c, []))))) for c in SPEC_CLASSES}
    return {"seed": int(cfg["seed"]), "counts": {"all": per_bin}}


# ------------------------------------------------------------------------------- Table 1 layout
PAPER_TABLE1 = {  # KID / LPIPS / MMD-MF of the paper's Table 1 (lower is better); None: not reported
    ("eps", 1.5): (0.376, 0.805, 15.34), ("eps", 2.0): (0.432, 0.821, 15.06), ("eps", 2.5): (0.403, 0.817, 15.40),
    ("v", 1.5): (0.059, None, 2.86), ("v", 2.0): (0.105, None, 6.25), ("v", 2.5): (0.180, None, 6.16),
    ("x0", 1.5): (0.012, 0.305, 1.43), ("x0", 2.0): (0.034, 0.310, 0.95), ("x0", 2.5): (0.048, 0.319, 1.31),
}


def table1(grid_dir, out=None) -> str:
    """The Table 1 grid's results laid out like the paper's: rows eps / v / x0, columns p, each cell
    "KID / LPIPS / MMD-MF +- std" (n/a where a metric was skipped), followed by the paper's numbers and the
    MMD-MF ordering at each p. Written to ``grid_dir/table1.md`` (or ``out``); returns the markdown."""
    import pandas as pd

    grid_dir = Path(grid_dir)
    csv = grid_dir / "results.csv"
    if not csv.is_file():
        raise FileNotFoundError(f"{csv} is missing: run `python -m medkit grid run slimdiff-table1 --out {grid_dir}` first.")
    df = pd.read_csv(csv)
    done = df[df["status"] == "done"]

    def fmt(v, nd=3):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{nd}f}"

    ps = sorted(done["lp"].unique()) if len(done) else []
    lines = ["| prediction | " + " | ".join(f"p = {p:g}" for p in ps) + " |", "|---|" + "---|" * len(ps)]
    order = {}
    for pred in ("eps", "v", "x0"):
        cells = []
        for p in ps:
            r = done[(done["prediction"] == pred) & (done["lp"] == p)]
            if r.empty:
                cells.append("not run")
                continue
            r = r.iloc[0]
            get = lambda k: r[k] if k in r and pd.notna(r[k]) else None  # noqa: E731
            mf, sd = get("eval.mmd_mf"), get("eval.mmd_mf.std")
            lp = get("eval.lpips_vgg")
            cells.append(f"{fmt(get('eval.kid'))} / {fmt(lp)} / {fmt(mf, 2)}" + (f" +- {sd:.2f}" if sd is not None else ""))
            if mf is not None:
                order.setdefault(p, []).append((mf, pred))
        lines.append(f"| {pred} | " + " | ".join(cells) + " |")
    lines += ["", "KID / LPIPS / MMD-MF (+- std over 100 subsets); lower is better. The paper's Table 1:", "",
              "| prediction | p = 1.5 | p = 2.0 | p = 2.5 |", "|---|---|---|---|"]
    for pred in ("eps", "v", "x0"):
        lines.append(f"| {pred} | " + " | ".join(" / ".join("-" if v is None else f"{v:g}" for v in PAPER_TABLE1[(pred, p)])
                                                  for p in (1.5, 2.0, 2.5)) + " |")
    lines += ["", "MMD-MF ordering here (best first) against the paper's x0 < v < eps:", ""]
    for p, items in sorted(order.items()):
        ranked = [pred for _, pred in sorted(items)]
        verdict = ("reproduced" if ranked == ["x0", "v", "eps"] else "not reproduced") if len(ranked) == 3 else \
            f"incomplete ({len(ranked)} of 3 prediction types have an MMD-MF)"
        lines.append(f"- p = {p:g}: {' < '.join(f'{pred} ({v:.2f})' for v, pred in sorted(items))} - {verdict}")
    md = "\n".join(lines) + "\n"
    Path(out or grid_dir / "table1.md").write_text(md)
    return md


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m medkit.methods.slimdiff",
                                description="SLIM-Diff helpers: lay out a Table 1 grid like the paper's table")
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table1", help="GRID_DIR/results.csv -> GRID_DIR/table1.md")
    t.add_argument("grid_dir")
    args = p.parse_args(argv)
    print(table1(args.grid_dir))
    return 0


if __name__ == "__main__":
    import sys

    sys.exit(main())


def estimate_training_memory(cfg: dict, batch: int | None = None, device="cpu") -> dict:
    """An estimate (not a GPU measurement) of one training step's memory at ``cfg``'s model and batch:

    - weights fp32 + gradients fp32 + AdamW's two moments + the EMA copy: 5 x 4 bytes per parameter;
    - activations: the bytes of every tensor autograd saves for the backward pass, counted with
      ``torch.autograd.graph.saved_tensors_hooks`` during one forward of the trained pass (the
      self-conditioning pass runs under no_grad and saves nothing) under 16-bit autocast - bfloat16 on a
      CPU, the same size as the fp16 a T4 uses.
    Allocator fragmentation and cuDNN workspaces are not included; allow ~10-20% on top.
    """
    batch = int(batch or cfg["batch"])
    unet = build_unet(cfg).to(device)
    n_params = sum(p.numel() for p in unet.parameters())
    size = int(cfg["image_size"])
    x = torch.randn(batch, 4 if self_conditioning(cfg) else 2, size, size, device=device)
    t = torch.randint(0, 1000, (batch,), device=device)
    tok = torch.randint(0, 2 * cfg["n_bins"], (batch,), device=device)
    from ..train.bench import saved_activation_bytes

    dtype = torch.bfloat16 if str(device) == "cpu" else torch.float16
    act = saved_activation_bytes(lambda: unet(x, t, class_labels=tok), dtype, device_type=str(device).split(":")[0])
    states = 5 * 4 * n_params
    gib = 1024 ** 3
    return {"params": n_params, "batch": batch, "image_size": size, "states_gib": states / gib,
            "activations_gib": act / gib, "total_gib": (states + act) / gib,
            "method": "estimate: parameter states + autograd-saved activations under 16-bit autocast"}
