"""The downstream utility test: does a segmentation net trained on real + synthetic (image, mask) pairs
beat one trained on the real pairs alone? (Siamese-Diffusion, Qiu et al., CVPR 2025, arXiv 2505.06068,
Tables 2-4: a segmenter trained on real data, on real + generated data, and on generated data only,
scored by mDice / mIoU on the real test set.)

    python -m medkit.eval.downstream --profile cpu-demo --out runs/downstream [--synthetic PAIRS_DIR]
                                     [--k 1 3] [--seeds 3] [--n-real 20] [--steps 400]

Arms (one 2D MONAI UNet each, trained from scratch; DiceCE loss with sigmoid):

    real          the n_real real training pairs
    real+kx       the same real pairs + k * n_real synthetic pairs (one arm per k)
    synthetic     max(k) * n_real synthetic pairs, no real pair

Design, and why:

* **Equal optimisation steps** per arm (``steps`` batches of ``batch_size``): the arms differ in their
  data only, not in compute. A larger pool is therefore seen fewer times per pair (fewer epochs).
* **Paired seeds**: seed s gives every arm the same initial weights (and the same batch order where the
  pools have the same size), so the per-seed difference arm - real cancels the init noise. Over
  S >= 3 seeds the mean difference gets a t-interval: d +- t_{0.975, S-1} sd(d) / sqrt(S).
* The synthetic pool and the real subset are fixed across seeds (``data_seed``): like a folder of
  generated pairs, they are the data, not the training noise. Arms with larger k take nested supersets.
* Evaluation: the final weights (no model selection on the held-out set), sigmoid > 0.5, Dice and IoU
  per held-out image (:mod:`medkit.metrics.segmentation`, MONAI's conventions), averaged.

Inputs: arrays, or *pairs folders* that the rest of the kit writes with :func:`save_pairs`::

    DIR/images/<name>.npy|.png     image: NPY float in [-1, 1] ((H,W) or (1,H,W)), or 8/16-bit grey PNG
    DIR/masks/<name>.npy|.png      its mask, same <name> stem: {0,1} (NPY also {-1,+1}; PNG also {0,255})

The embedded demo (real = MNI152 T1 slices with their white-matter masks, 64 px, a few training slices;
held-out = the validation split) has no generative model to draw from yet, so its default synthetic
source is an **augmentation baseline** - random elastic + affine deformations, flips and gamma/intensity
changes of the real training pairs, applied identically to image and mask - not a generative model.
Mask-conditioned generators (Siamese-Diffusion, SLIM-Diff) write pairs folders and come in through
``--synthetic DIR``.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from medkit.train.data import derive_seed

AUG_LABEL = ("augmentation baseline (elastic+affine+intensity of the real pairs), not a generative model")
EXTS = (".npy", ".png")

PROFILES = {
    # smoke: seconds, for CI - the pipeline runs end to end, the numbers mean nothing
    "smoke": dict(image_size=64, n_real=8, k=[1], seeds=3, steps=3, batch_size=4, lr=1e-3,
                  channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
    # cpu-demo: 12 trainings of ~11 s each on a free 2-core CPU (4-5 min measured on a shared one)
    "cpu-demo": dict(image_size=64, n_real=20, k=[1, 3], seeds=3, steps=400, batch_size=16, lr=2e-3,
                     channels=(16, 32, 64), strides=(2, 2), num_res_units=1),
}


class PairsError(ValueError):
    """A pairs folder or pairs arrays that cannot be used as they are (the message says how to fix it)."""


class Pairs(NamedTuple):
    images: torch.Tensor   # (N, 1, H, W) float32 in [-1, 1]
    masks: torch.Tensor    # (N, 1, H, W) float32 in {0, 1}
    names: list


# ---------------------------------------------------------------------------------------------------
# Pairs: checks, folders

def check_pairs(images, masks, name: str = "pairs", allow_empty: bool = True) -> Pairs:
    """Arrays/tensors -> :class:`Pairs`, checked: images (N,[1,]H,W) in [-1,1], masks binary, same size."""
    im = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images).float()
    mk = torch.as_tensor(np.asarray(masks) if not torch.is_tensor(masks) else masks)
    if im.ndim == 3:
        im = im[:, None]
    if mk.ndim == 3:
        mk = mk[:, None]
    if im.ndim != 4 or im.shape[1] != 1:
        raise PairsError(f"{name}: images must be (N, H, W) or (N, 1, H, W) grey images, got {tuple(im.shape)}")
    if mk.shape != im.shape:
        raise PairsError(f"{name}: masks have shape {tuple(mk.shape)} but images {tuple(im.shape)}; each image needs "
                         f"a mask of its own size")
    if len(im) == 0:
        raise PairsError(f"{name}: no pairs (0 images)")
    if not torch.isfinite(im).all():
        raise PairsError(f"{name}: images contain NaN or inf")
    lo, hi = im.min().item(), im.max().item()
    if lo < -1 - 1e-6 or hi > 1 + 1e-6:
        raise PairsError(f"{name}: images span [{lo:g}, {hi:g}], outside [-1, 1]; rescale first, e.g. x / 127.5 - 1 "
                         f"for 0..255 data or 2 * (x - min) / (max - min) - 1")
    mk = _binary_mask(mk, name)
    if not allow_empty:
        empty = (mk.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise PairsError(f"{name}: {len(empty)} of {len(mk)} masks are empty (all background), e.g. index "
                             f"{empty[:5]}; remove them, or pass allow_empty=True (--allow-empty) if lesion-free "
                             f"pairs are intended")
    return Pairs(im.clamp(-1, 1), mk, [f"{i:05d}" for i in range(len(im))])


def _binary_mask(mk: torch.Tensor, name: str) -> torch.Tensor:
    if mk.dtype == torch.bool:
        return mk.float()
    if mk.is_floating_point() and torch.isnan(mk).any():
        raise PairsError(f"{name}: masks contain NaN")
    if ((mk == 0) | (mk == 1)).all():
        return mk.float()
    if ((mk == -1) | (mk == 1)).all():  # SLIM-Diff's {-1, +1} convention
        return (mk > 0).float()
    bad = mk[~((mk == 0) | (mk == 1))].flatten()[0].item()
    raise PairsError(f"{name}: masks are not binary (values such as {bad!r}); threshold them first, e.g. "
                     f"(mask > 0.5) for probabilities or (mask > 0) for [-1, 1] outputs")


def _read(path: Path, kind: str) -> np.ndarray:
    """One image or mask file -> float array (H, W); images in [-1, 1], masks as stored ({0,1} for PNG)."""
    try:
        if path.suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        else:
            from PIL import Image
            with Image.open(path) as im:
                mode = im.mode
                x = np.asarray(im)
    except Exception as e:  # unreadable: truncated, wrong format, pickled object...
        raise PairsError(f"cannot read {path}: {type(e).__name__}: {e}; re-write it (np.save or a grey PNG)") from None
    if path.suffix == ".npy":
        if x.ndim == 3 and x.shape[0] == 1:
            x = x[0]
        if x.ndim != 2 or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
            raise PairsError(f"{path}: expected a 2D (H, W) or (1, H, W) numeric array, got {x.dtype} {x.shape}")
        x = x.astype(np.float32)
        if kind == "image":
            if not np.isfinite(x).all():
                raise PairsError(f"{path}: image contains NaN or inf")
            if x.min() < -1 - 1e-6 or x.max() > 1 + 1e-6:
                raise PairsError(f"{path}: NPY image values span [{x.min():g}, {x.max():g}], outside [-1, 1]; "
                                 f"rescale before saving, e.g. x / 127.5 - 1 for 0..255 data or "
                                 f"2 * (x - min) / (max - min) - 1")
        return x
    if x.ndim != 2:
        raise PairsError(f"{path}: PNG mode {mode} with shape {x.shape}; save grey (mode L or I;16) PNGs, e.g. "
                         f"Image.open(p).convert('L')")
    if kind == "mask":
        x = x.astype(np.float32)
        if x.max() == 255:
            x = x / 255.0  # {0, 255} -> {0, 1}
        return x
    if x.dtype == np.uint8:
        return x.astype(np.float32) / 127.5 - 1.0
    if mode.startswith("I") and x.min() >= 0 and x.max() <= 65535:  # 16-bit grey
        return x.astype(np.float32) / 32767.5 - 1.0
    raise PairsError(f"{path}: PNG mode {mode} ({x.dtype}) is not an 8- or 16-bit grey image")


def load_pairs(directory, allow_empty: bool = False) -> Pairs:
    """Read a pairs folder (``DIR/images/<name>.npy|png`` + ``DIR/masks/<name>.npy|png``), checked.

    Errors (with counts and examples) for: a missing folder, images without a mask (or masks without an
    image), a mask whose size differs from its image's, pairs of different sizes, non-binary masks,
    empty masks (unless ``allow_empty``), NPY images outside [-1, 1], unreadable files.
    """
    d = Path(directory).expanduser()
    idir, mdir = d / "images", d / "masks"
    for sub in (idir, mdir):
        if not sub.is_dir():
            raise PairsError(f"{sub} is not a folder; a pairs folder holds images/<name>.npy|png and "
                             f"masks/<name>.npy|png (write one with medkit.eval.downstream.save_pairs)")

    def index(folder):
        out = {}
        for p in sorted(folder.iterdir()):
            if p.suffix.lower() in EXTS and p.is_file():
                if p.stem in out:
                    raise PairsError(f"{folder}: both {out[p.stem].name} and {p.name} exist; keep one file per name")
                out[p.stem] = p
        return out

    imgs, msks = index(idir), index(mdir)
    if not imgs:
        raise PairsError(f"{idir} holds no .npy or .png images")
    lonely = sorted(set(imgs) - set(msks))
    if lonely:
        raise PairsError(f"{len(lonely)} of {len(imgs)} images in {idir} have no mask in {mdir} (same name, .npy or "
                         f".png), e.g. {[imgs[s].name for s in lonely[:5]]}")
    orphans = sorted(set(msks) - set(imgs))
    if orphans:
        raise PairsError(f"{len(orphans)} masks in {mdir} have no image in {idir}, e.g. "
                         f"{[msks[s].name for s in orphans[:5]]}; remove them or add their images")
    images, masks, names = [], [], sorted(imgs)
    bad_size, bad_bin, empty = [], [], []
    for s in names:
        x, m = _read(imgs[s], "image"), _read(msks[s], "mask")
        if x.shape != m.shape:
            bad_size.append(f"{s} (image {x.shape[0]}x{x.shape[1]}, mask {m.shape[0]}x{m.shape[1]})")
            continue
        if not np.isin(m, (0.0, 1.0)).all():
            if msks[s].suffix == ".npy" and np.isin(m, (-1.0, 1.0)).all():
                m = (m > 0).astype(np.float32)
            else:
                bad_bin.append(f"{msks[s].name} (values {np.unique(m)[:4].tolist()}...)")
                continue
        if not allow_empty and m.max() == 0:
            empty.append(msks[s].name)
        images.append(x)
        masks.append(m)
    if bad_size:
        raise PairsError(f"{len(bad_size)} of {len(names)} pairs in {d} have a mask whose size differs from its "
                         f"image's: {bad_size[:5]}")
    if bad_bin:
        raise PairsError(f"{len(bad_bin)} of {len(names)} masks in {mdir} are not binary: {bad_bin[:5]}; masks must be "
                         f"{{0,1}} (PNG also {{0,255}}, NPY also {{-1,+1}}): threshold them before saving")
    if empty:
        raise PairsError(f"{len(empty)} of {len(names)} masks in {mdir} are empty (all background), e.g. {empty[:5]}; "
                         f"remove them, or pass allow_empty=True (--allow-empty) if lesion-free pairs are intended")
    shapes = {}
    for s, x in zip(names, images):
        shapes.setdefault(x.shape, []).append(s)
    if len(shapes) > 1:
        desc = ", ".join(f"{h}x{w}: {len(v)} (e.g. {v[0]})" for (h, w), v in shapes.items())
        raise PairsError(f"pairs in {d} have different sizes ({desc}); resize them to one size first")
    im = torch.from_numpy(np.stack(images))[:, None].clamp(-1, 1)
    return Pairs(im, torch.from_numpy(np.stack(masks))[:, None], names)


def save_pairs(directory, images, masks, fmt: str = "npy", names=None, overwrite: bool = False) -> Path:
    """Write a pairs folder. ``fmt='npy'``: float32 images in [-1, 1] and uint8 {0,1} masks, exact;
    ``fmt='png'``: 8-bit images round((x + 1) * 127.5) (quantised, +-0.004) and {0,255} masks."""
    if fmt not in ("npy", "png"):
        raise ValueError(f"fmt={fmt!r}: use 'npy' (exact) or 'png' (8-bit)")
    p = check_pairs(images, masks, "save_pairs")
    names = list(names) if names is not None else p.names
    if len(names) != len(p.images) or len(set(names)) != len(names):
        raise ValueError(f"save_pairs: need {len(p.images)} distinct names, got {len(names)} "
                         f"({len(set(names))} distinct)")
    d = Path(directory).expanduser()
    idir, mdir = d / "images", d / "masks"
    for sub in (idir, mdir):
        old = [f for f in sub.iterdir() if f.suffix.lower() in EXTS] if sub.is_dir() else []
        if old and not overwrite:
            raise FileExistsError(f"{sub} already holds {len(old)} pair files; choose a new folder or pass "
                                  f"overwrite=True (which deletes them first)")
        for f in old:
            f.unlink()
        sub.mkdir(parents=True, exist_ok=True)
    for name, x, m in zip(names, p.images[:, 0].numpy(), p.masks[:, 0].numpy()):
        if fmt == "npy":
            np.save(idir / f"{name}.npy", x.astype(np.float32))
            np.save(mdir / f"{name}.npy", m.astype(np.uint8))
        else:
            from PIL import Image
            Image.fromarray(np.round((x + 1.0) * 127.5).clip(0, 255).astype(np.uint8)).save(idir / f"{name}.png")
            Image.fromarray((m * 255).astype(np.uint8)).save(mdir / f"{name}.png")
    return d


# ---------------------------------------------------------------------------------------------------
# The augmentation baseline (the demo's placeholder synthetic source)

def augment_pairs(images: torch.Tensor, masks: torch.Tensor, n_out: int, seed: int = 0) -> Pairs:
    """``n_out`` pairs made from the given ones (cycled) by one random spatial + intensity transform each.

    Spatial, identical for image and mask (MONAI ``Rand2DElasticd`` with its affine part: one
    resampling; bilinear image, nearest mask): elastic grid spacing H/4, magnitude 1-2, rotation +-0.26
    rad (15 deg), scale +-10 %, shift +-H/16; plus a left-right flip with p = 0.5. Intensity, image only
    (on (x + 1) / 2, so the -1 background stays -1): gamma in [0.7, 1.5], scale +-10 %, clipped.
    """
    from monai.transforms import Compose, Rand2DElasticd, RandAdjustContrastd, RandFlipd, RandScaleIntensityd

    h = images.shape[-1]
    tf = Compose([
        Rand2DElasticd(keys=["image", "mask"], spacing=(h // 4, h // 4), magnitude_range=(1.0, 2.0), prob=1.0,
                       rotate_range=0.26, scale_range=(0.1, 0.1), translate_range=(h / 16, h / 16),
                       mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandFlipd(keys=["image", "mask"], spatial_axis=1, prob=0.5),
        RandAdjustContrastd(keys=["image"], gamma=(0.7, 1.5), prob=1.0),
        RandScaleIntensityd(keys=["image"], factors=0.1, prob=1.0),
    ])
    tf.set_random_state(seed=derive_seed("downstream-augment", seed) % (2 ** 32))
    out_i, out_m = [], []
    for j in range(n_out):
        s = j % len(images)
        d = tf({"image": (images[s] + 1) / 2, "mask": masks[s]})
        img, msk = (d[key].as_tensor() if hasattr(d[key], "as_tensor") else torch.as_tensor(d[key])
                    for key in ("image", "mask"))  # MONAI MetaTensor -> plain tensor
        out_i.append(img.float().clamp(0, 1) * 2 - 1)
        out_m.append((msk > 0.5).float())
    return Pairs(torch.stack(out_i), torch.stack(out_m), [f"aug{j:05d}" for j in range(n_out)])


# ---------------------------------------------------------------------------------------------------
# Train and score one segmenter

def build_segmenter(channels=(16, 32, 64), strides=(2, 2), num_res_units=1) -> torch.nn.Module:
    from monai.networks.nets import UNet
    return UNet(spatial_dims=2, in_channels=1, out_channels=1, channels=tuple(channels), strides=tuple(strides),
                num_res_units=num_res_units)


def train_segmenter(images: torch.Tensor, masks: torch.Tensor, *, steps: int, batch_size: int, lr: float,
                    seed: int, channels=(16, 32, 64), strides=(2, 2), num_res_units=1, on_step=None) -> torch.nn.Module:
    """Train a UNet from scratch: Adam, cosine LR to 0, DiceCE (sigmoid) loss, ``steps`` batches.

    Initial weights come from ``seed`` alone (the same for every arm); batches are consecutive chunks of
    a stream of random permutations of the pool (every pair equally often), also drawn from ``seed``.
    """
    from monai.losses import DiceCELoss

    torch.manual_seed(derive_seed("downstream-init", seed))
    net = build_segmenter(channels, strides, num_res_units)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    loss_fn = DiceCELoss(sigmoid=True)
    g = torch.Generator().manual_seed(derive_seed("downstream-order", seed))
    n, bs = len(images), min(batch_size, len(images))
    order = torch.empty(0, dtype=torch.long)
    net.train()
    for step in range(steps):
        while len(order) < bs:
            order = torch.cat([order, torch.randperm(n, generator=g)])
        idx, order = order[:bs], order[bs:]
        loss = loss_fn(net(images[idx]), masks[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if on_step is not None:
            on_step(step, loss.item())
    return net.eval()


@torch.no_grad()
def score_segmenter(net: torch.nn.Module, images: torch.Tensor, masks: torch.Tensor, batch_size: int = 64) -> dict:
    """Per-image Dice and IoU of sigmoid(logits) > 0.5 (= logits > 0) on held-out pairs, and their means."""
    from medkit.metrics.segmentation import dice, iou

    pred = torch.cat([net(images[i:i + batch_size]) > 0 for i in range(0, len(images), batch_size)])
    d, j = dice(pred, masks, per_image=True), iou(pred, masks, per_image=True)
    return {"dice": d, "iou": j, "mdice": float(np.nanmean(d.numpy())), "miou": float(np.nanmean(j.numpy()))}


# ---------------------------------------------------------------------------------------------------
# Statistics over seeds

def t_interval(values, level: float = 0.95) -> dict:
    """Mean, sample std (ddof 1) and the t-interval mean +- t_{(1+level)/2, n-1} std / sqrt(n)."""
    from scipy.stats import t

    v = np.asarray(values, dtype=np.float64)
    n = v.size
    mean = float(v.mean())
    if n < 2:
        return {"mean": mean, "std": math.nan, "ci95": [math.nan, math.nan], "n": n}
    std = float(v.std(ddof=1))
    half = float(t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"mean": mean, "std": std, "ci95": [mean - half, mean + half], "n": n}


def paired_difference(arm, reference, level: float = 0.95) -> dict:
    """Per-seed differences arm - reference (same seeds, same order) and their t-interval."""
    a, b = np.asarray(arm, dtype=np.float64), np.asarray(reference, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.size} vs {b.size} values; pair them seed by seed")
    out = t_interval(a - b, level)
    out["diffs"] = (a - b).tolist()
    return out


# ---------------------------------------------------------------------------------------------------
# The experiment

def run_downstream(real: Pairs, heldout: Pairs, synthetic: Pairs, *, k=(1, 3), seeds: int = 3, steps: int = 400,
                   batch_size: int = 16, lr: float = 2e-3, channels=(16, 32, 64), strides=(2, 2), num_res_units=1,
                   data_seed: int = 0, progress: bool = True, synthetic_name: str = "",
                   include_real: bool = True) -> list[dict]:
    """Train every arm for every seed; one row per (arm, seed) with its mDice / mIoU on ``heldout``.

    ``synthetic_name`` tags the synthetic arms ("real+1x (random masks)"), so rows of several synthetic
    sources can be concatenated; ``include_real=False`` leaves out the "real" arm (already in other rows).
    """
    from tqdm.auto import tqdm

    k = sorted({int(x) for x in k})
    if not k or k[0] < 1:
        raise ValueError(f"k={k}: use one or more integers >= 1 (synthetic pairs per real pair)")
    if seeds < 2:
        raise ValueError(f"seeds={seeds}: use >= 2 (>= 3 recommended) for a paired interval over seeds")
    n_real, need = len(real.images), max(k) * len(real.images)
    if len(synthetic.images) < need:
        raise PairsError(f"k={max(k)} needs {need} synthetic pairs ({max(k)} x {n_real} real), the synthetic source "
                         f"has {len(synthetic.images)}; lower --k or generate more pairs")
    if real.images.shape[-2:] != synthetic.images.shape[-2:] or real.images.shape[-2:] != heldout.images.shape[-2:]:
        raise PairsError(f"sizes differ: real {tuple(real.images.shape[-2:])}, synthetic "
                         f"{tuple(synthetic.images.shape[-2:])}, held-out {tuple(heldout.images.shape[-2:])}")
    perm = torch.randperm(len(synthetic.images), generator=torch.Generator().manual_seed(data_seed))[:need]
    syn_i, syn_m = synthetic.images[perm], synthetic.masks[perm]
    tag = f" ({synthetic_name})" if synthetic_name else ""
    arms = {"real": (real.images, real.masks, n_real, 0)} if include_real else {}
    for kk in k:
        m = kk * n_real
        arms[f"real+{kk}x{tag}"] = (torch.cat([real.images, syn_i[:m]]), torch.cat([real.masks, syn_m[:m]]), n_real, m)
    arms[f"synthetic{tag}"] = (syn_i, syn_m, 0, need)

    rows = []
    bar = tqdm(total=len(arms) * seeds * steps, desc="downstream", disable=not progress, mininterval=1.0)
    for seed in range(seeds):
        for arm, (xi, xm, nr, ns) in arms.items():
            bar.set_postfix_str(f"{arm} seed {seed}")
            t0 = time.perf_counter()
            net = train_segmenter(xi, xm, steps=steps, batch_size=batch_size, lr=lr, seed=seed, channels=channels,
                                  strides=strides, num_res_units=num_res_units, on_step=lambda s, l: bar.update(1))
            sc = score_segmenter(net, heldout.images, heldout.masks)
            rows.append({"arm": arm, "seed": seed, "n_real": nr, "n_synthetic": ns, "steps": steps,
                         "mdice": sc["mdice"], "miou": sc["miou"], "train_s": round(time.perf_counter() - t0, 2)})
    bar.close()
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per arm: mean/std/t-CI over seeds of mDice and mIoU, and the paired difference to ``real``."""
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    by = {a: sorted((r for r in rows if r["arm"] == a), key=lambda r: r["seed"]) for a in arms}
    seeds_ref = [r["seed"] for r in by["real"]]
    out = []
    for a in arms:
        rs = by[a]
        if [r["seed"] for r in rs] != seeds_ref:
            raise ValueError(f"arm {a} has seeds {[r['seed'] for r in rs]}, real has {seeds_ref}: not paired")
        s = {"arm": a, "n_real": rs[0]["n_real"], "n_synthetic": rs[0]["n_synthetic"], "steps": rs[0]["steps"],
             "seeds": len(rs)}
        for met in ("mdice", "miou"):
            ti = t_interval([r[met] for r in rs])
            s.update({f"{met}_mean": ti["mean"], f"{met}_std": ti["std"], f"{met}_ci95_lo": ti["ci95"][0],
                      f"{met}_ci95_hi": ti["ci95"][1]})
            if a != "real":
                pd_ = paired_difference([r[met] for r in rs], [r[met] for r in by["real"]])
                s.update({f"{met}_diff": pd_["mean"], f"{met}_diff_std": pd_["std"],
                          f"{met}_diff_ci95_lo": pd_["ci95"][0], f"{met}_diff_ci95_hi": pd_["ci95"][1]})
        out.append(s)
    return out


def write_report(out_dir, rows: list[dict], summary: list[dict], *, dataset: str, synthetic_source: str,
                 config: dict, command: str = "", wall_s: float | None = None) -> dict:
    """``downstream.md``, ``downstream.csv`` (summary), ``downstream_seeds.csv``, ``downstream.png`` and the
    ``downstream`` section of ``metrics.json`` in ``out_dir``; returns the section written."""
    import pandas as pd

    from medkit.eval.results import entry, update_metrics

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(summary).to_csv(out / "downstream.csv", index=False, float_format="%.6g")
    pd.DataFrame(rows).to_csv(out / "downstream_seeds.csv", index=False, float_format="%.6g")

    def f(x):
        return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"

    def diff(s, met):
        if s["arm"] == "real":
            return "(reference)"
        return f"{s[met + '_diff']:+.4f} [{s[met + '_diff_ci95_lo']:+.4f}, {s[met + '_diff_ci95_hi']:+.4f}]"

    n_seeds = summary[0]["seeds"]
    lines = [
        "# Downstream segmentation utility",
        "",
        f"Synthetic source: **{synthetic_source}**.",
        f"Held-out (real) test set: {dataset}.",
        f"Each arm: a MONAI UNet {tuple(config['channels'])} trained from scratch for {config['steps']} steps "
        f"(batch {config['batch_size']}, Adam lr {config['lr']:g}, cosine), same steps and same {n_seeds} paired "
        f"seeds for every arm; final weights, sigmoid > 0.5. Mean +- std over seeds; "
        f"Delta = paired per-seed difference to `real` with its 95% t-interval over seeds.",
        "",
        "| arm | real pairs | synthetic pairs | mDice | mIoU | Delta mDice vs real [95% CI] "
        "| Delta mIoU vs real [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    for s in summary:
        lines.append(f"| {s['arm']} | {s['n_real']} | {s['n_synthetic']} | {f(s['mdice_mean'])} +- "
                     f"{f(s['mdice_std'])} | {f(s['miou_mean'])} +- {f(s['miou_std'])} | {diff(s, 'mdice')} | "
                     f"{diff(s, 'miou')} |")
    lines += ["", "Per seed (mDice):", ""]
    arms = [s["arm"] for s in summary]
    lines.append("| seed | " + " | ".join(arms) + " |")
    lines.append("|---" * (len(arms) + 1) + "|")
    for seed in sorted({r["seed"] for r in rows}):
        vals = {r["arm"]: r["mdice"] for r in rows if r["seed"] == seed}
        lines.append(f"| {seed} | " + " | ".join(f(vals[a]) for a in arms) + " |")
    lines.append("")
    if command:
        lines.append(f"Command: `{command}`" + (f" ({wall_s / 60:.1f} min wall)" if wall_s else ""))
    (out / "downstream.md").write_text("\n".join(lines) + "\n")
    _plot(out / "downstream.png", rows, summary, synthetic_source)

    section = {}
    for s in summary:
        a = s["arm"]
        for met in ("mdice", "miou"):
            section[f"{a}.{met}"] = entry(s[f"{met}_mean"], std=s[f"{met}_std"], n=s["seeds"], dataset=dataset,
                                          ci95=(s[f"{met}_ci95_lo"], s[f"{met}_ci95_hi"]))
            if a != "real":
                section[f"{a}.{met}_minus_real"] = entry(
                    s[f"{met}_diff"], std=s[f"{met}_diff_std"], n=s["seeds"], dataset=dataset,
                    ci95=(s[f"{met}_diff_ci95_lo"], s[f"{met}_diff_ci95_hi"]))
    section["synthetic_source"] = synthetic_source
    section["config"] = config
    update_metrics(out, "downstream", section)
    return section


def _plot(path: Path, rows, summary, synthetic_source: str) -> None:
    """mDice and mIoU per arm (bars: mean +- std over seeds; dots: seeds), and the paired differences to
    ``real`` with their 95% t-intervals (the panel that answers the question)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    arms = [s["arm"] for s in summary]
    colors = ["0.55" if a == "real" else "C1" if a.startswith("synthetic") else "C0" for a in arms]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    x = np.arange(len(arms))
    for ax, met, name in zip(axes, ("mdice", "miou"), ("mDice", "mIoU")):
        ax.bar(x, [s[f"{met}_mean"] for s in summary], yerr=[s[f"{met}_std"] for s in summary], capsize=4,
               color=colors, alpha=0.8)
        for i, a in enumerate(arms):
            v = [r[met] for r in rows if r["arm"] == a]
            ax.plot(np.full(len(v), i) + np.linspace(-0.15, 0.15, len(v)), v, "k.", ms=4)
        ax.set_ylim(max(0.0, min(r[met] for r in rows) - 0.1), min(1.0, max(r[met] for r in rows) + 0.05))
        ax.set_xticks(x, arms)
        ax.set_title(f"{name}, held-out real (mean +- std; dots: seeds)\ny axis does not start at 0", fontsize=9)
    ax = axes[2]
    others = [s for s in summary if s["arm"] != "real"]
    for j, (met, name) in enumerate((("mdice", "mDice"), ("miou", "mIoU"))):
        xs = np.arange(len(others)) + (j - 0.5) * 0.3
        mean = np.array([s[f"{met}_diff"] for s in others])
        lo = mean - np.array([s[f"{met}_diff_ci95_lo"] for s in others])
        hi = np.array([s[f"{met}_diff_ci95_hi"] for s in others]) - mean
        ax.errorbar(xs, mean, yerr=[lo, hi], fmt="o", capsize=4, label=f"delta {name}")
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xticks(np.arange(len(others)), [f"{s['arm']}\n- real" for s in others])
    ax.set_title("paired difference to real, 95% t-interval over seeds", fontsize=9)
    ax.legend(fontsize=8)
    fig.suptitle(f"synthetic = {synthetic_source}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# ---------------------------------------------------------------------------------------------------
# Command line

def _mni_pairs(image_size: int, n_real: int) -> tuple[Pairs, Pairs, str]:
    """n_real training slices evenly spaced through the MNI152 train split, and the whole val split."""
    from medkit import data as mdata

    cache = mdata.build_slice_cache("mni152", image_size)
    tr, va = mdata.SliceDataset(cache, "train"), mdata.SliceDataset(cache, "val")
    if not 2 <= n_real <= len(tr):
        raise ValueError(f"--n-real {n_real}: the MNI152 train split has {len(tr)} slices; use 2..{len(tr)}")
    idx = np.unique(np.linspace(0, len(tr) - 1, n_real).round().astype(int))
    real = check_pairs(tr.images[idx], tr.masks[idx], "mni152 train")
    held = check_pairs(va.images, va.masks, "mni152 val")
    desc = f"MNI152 T1 val split ({len(held.images)} slices, {image_size} px, white-matter masks)"
    return real, held, desc


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m medkit.eval.downstream",
                                 description="Downstream segmentation test: real vs real+synthetic vs synthetic.")
    ap.add_argument("--profile", choices=sorted(PROFILES), default="cpu-demo",
                    help="smoke (seconds) or cpu-demo (3-5 min on 2 CPU cores)")
    ap.add_argument("--out", required=True, help="output folder (downstream.md/.csv/.png, metrics.json)")
    ap.add_argument("--synthetic", default=None,
                    help="pairs folder of generated pairs (default: augmentation baseline)")
    ap.add_argument("--real", default=None, help="pairs folder of real training pairs (default: MNI152 train slices)")
    ap.add_argument("--heldout", default=None, help="pairs folder of real test pairs (default: MNI152 val slices)")
    ap.add_argument("--k", type=int, nargs="+", default=None, help="synthetic pairs per real pair, e.g. 1 3")
    ap.add_argument("--seeds", type=int, default=None, help="number of paired seeds (>= 3 for a useful CI)")
    ap.add_argument("--n-real", type=int, default=None, help="real training pairs (MNI152: evenly spaced slices)")
    ap.add_argument("--steps", type=int, default=None, help="optimisation steps per arm and seed")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None)
    ap.add_argument("--allow-empty", action="store_true", help="accept empty (lesion-free) masks in pairs folders")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--no-progress", action="store_true")
    return ap


def main(argv=None) -> int:
    import sys

    args = build_parser().parse_args(argv)
    t0 = time.perf_counter()
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = dict(PROFILES[args.profile], profile=args.profile, threads=torch.get_num_threads())
    for key in ("k", "seeds", "n_real", "steps", "batch_size", "lr"):
        if getattr(args, key) is not None:
            cfg[key] = getattr(args, key)
    if bool(args.real) != bool(args.heldout):
        raise SystemExit("--real and --heldout go together: real training pairs and real test pairs, both pairs "
                         "folders (or neither, for the MNI152 demo)")
    if args.real:
        real = load_pairs(args.real, allow_empty=args.allow_empty)
        held = load_pairs(args.heldout, allow_empty=args.allow_empty)
        dataset = f"{Path(args.heldout).name} ({len(held.images)} pairs)"
        if cfg["n_real"] < len(real.images):  # evenly spaced through the (sorted) names
            idx = np.unique(np.linspace(0, len(real.images) - 1, cfg["n_real"]).round().astype(int))
            real = Pairs(real.images[idx], real.masks[idx], [real.names[i] for i in idx])
        cfg["n_real"] = len(real.images)
    else:
        real, held, dataset = _mni_pairs(cfg["image_size"], cfg["n_real"])
    if args.synthetic:
        synthetic = load_pairs(args.synthetic, allow_empty=args.allow_empty)
        source = f"pairs folder {Path(args.synthetic).name} ({len(synthetic.images)} pairs)"
    else:
        synthetic = augment_pairs(real.images, real.masks, max(cfg["k"]) * len(real.images), seed=0)
        source = AUG_LABEL
    cfg.update(synthetic_source=source, dataset=dataset, real_source=args.real or "mni152 train split")
    print("downstream config:", json.dumps(cfg))
    rows = run_downstream(real, held, synthetic, k=cfg["k"], seeds=cfg["seeds"], steps=cfg["steps"],
                          batch_size=cfg["batch_size"], lr=cfg["lr"], channels=cfg["channels"], strides=cfg["strides"],
                          num_res_units=cfg["num_res_units"], progress=not args.no_progress)
    summary = summarise(rows)
    wall = time.perf_counter() - t0
    cfg["wall_s"] = round(wall, 1)
    command = "python -m medkit.eval.downstream " + " ".join(sys.argv[1:] if argv is None else argv)
    write_report(args.out, rows, summary, dataset=dataset, synthetic_source=source, config=cfg, command=command,
                 wall_s=wall)
    print((Path(args.out) / "downstream.md").read_text())
    print(f"wrote {args.out}/downstream.md, downstream.csv, downstream_seeds.csv, downstream.png, metrics.json "
          f"({wall:.0f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
