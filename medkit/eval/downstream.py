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

Inputs: arrays, or *pairs folders* (:mod:`medkit.data.pairs_io`: ``DIR/images/<name>.png|npy`` +
``DIR/masks/<name>.png|npy``), grey or RGB - the segmenter takes as many input channels as the images have,
and real, held-out and synthetic pairs must agree in channels and size.

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

from medkit.data.pairs_io import Pairs, PairsError, check_pairs, load_pairs, save_pairs  # noqa: F401 (re-exported)
from medkit.train.data import derive_seed

AUG_LABEL = ("augmentation baseline (elastic+affine+intensity of the real pairs), not a generative model")

PROFILES = {
    # smoke: seconds, for CI - the pipeline runs end to end, the numbers mean nothing
    "smoke": dict(image_size=64, n_real=8, k=[1], seeds=3, steps=3, batch_size=4, lr=1e-3,
                  channels=(4, 8, 16), strides=(2, 2), num_res_units=1),
    # cpu-demo: 12 trainings of ~11 s each on a free 2-core CPU (4-5 min measured on a shared one)
    "cpu-demo": dict(image_size=64, n_real=20, k=[1, 3], seeds=3, steps=400, batch_size=16, lr=2e-3,
                     channels=(16, 32, 64), strides=(2, 2), num_res_units=1),
}


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

def build_segmenter(channels=(16, 32, 64), strides=(2, 2), num_res_units=1, in_channels: int = 1) -> torch.nn.Module:
    from monai.networks.nets import UNet
    return UNet(spatial_dims=2, in_channels=in_channels, out_channels=1, channels=tuple(channels), strides=tuple(strides),
                num_res_units=num_res_units)


def train_segmenter(images: torch.Tensor, masks: torch.Tensor, *, steps: int, batch_size: int, lr: float,
                    seed: int, channels=(16, 32, 64), strides=(2, 2), num_res_units=1, on_step=None,
                    segmenter=None, device="cpu") -> torch.nn.Module:
    """Train a UNet from scratch: Adam, cosine LR to 0, DiceCE (sigmoid) loss, ``steps`` batches.

    ``segmenter``: a callable ``in_channels -> nn.Module`` (one logit channel out) to train instead of the UNet
    (:func:`medkit.eval.seg_protocol.make_segmenter` builds one by name).

    Initial weights come from ``seed`` alone (the same for every arm); batches are consecutive chunks of
    a stream of random permutations of the pool (every pair equally often), also drawn from ``seed``.
    """
    from monai.losses import DiceCELoss

    torch.manual_seed(derive_seed("downstream-init", seed))
    in_ch = int(images.shape[1])
    net = segmenter(in_ch) if segmenter is not None else build_segmenter(channels, strides, num_res_units, in_ch)
    net = net.to(device)
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
        out = net(images[idx].to(device))
        loss = loss_fn(out[0] if isinstance(out, (list, tuple)) else out, masks[idx].to(device))
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
    shapes = {what: tuple(p.images.shape[1:]) for what, p in (("real", real), ("held-out", heldout),
                                                               ("synthetic", synthetic))}
    if len(set(shapes.values())) > 1:
        raise PairsError("the pair sets differ in (channels, height, width): " + ", ".join(
            f"{w} {s}" for w, s in shapes.items()) + "; resize them to one size, and give all of them grey (1) or "
            "all RGB (3) images")
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
            real = real.subset(idx)
        cfg["n_real"] = len(real.images)
    else:
        real, held, dataset = _mni_pairs(cfg["image_size"], cfg["n_real"])
    if args.synthetic:
        synthetic = load_pairs(args.synthetic, allow_empty=args.allow_empty)
        source = f"pairs folder {Path(args.synthetic).name} ({len(synthetic.images)} pairs)"
    else:
        synthetic = augment_pairs(real.images, real.masks, max(cfg["k"]) * len(real.images), seed=0)
        source = AUG_LABEL
    cfg.update(synthetic_source=source, dataset=dataset, real_source=args.real or "mni152 train split",
               image_channels=real.channels)
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
