"""Siamese-Diffusion's segmentation protocol (Qiu et al., CVPR 2025, arXiv 2505.06068; Tables 2-3, Fig. 7).

Does adding generated (image, mask) pairs to the real training set give a better segmenter? Arms, each a
segmenter trained from scratch for the same number of steps, over paired seeds:

    real                          the real training pairs
    Copy-Paste                    the real pairs twice (Table 2's baseline: as many pairs as real + 1x, no new ones)
    real+<v>x <source>            the real pairs + v times as many generated pairs, per mask source (the training
                                  masks - Table 2, Table 3 "real masks" - or random masks - Table 3, Fig. 7)

scored on each test set: mDice and mIoU (the mean over its images of Dice / IoU of sigmoid > 0.5; MONAI's
conventions, :mod:`medkit.metrics.segmentation`), and **Overall**: the mean over all test images together,
i.e. the test sets weighted by their image counts, as Table 2's "Overall". Each arm's difference to "real" is
paired by seed (mean and 95% t-interval, as :mod:`medkit.eval.downstream`).

Test sets: PraNet's ``TestDataset/{CVC-300, CVC-ClinicDB, Kvasir, CVC-ColonDB, ETIS-LaribPolypDB}/{images,
masks}`` (polyps, Table 2), an ISIC Test/Validation split (Table 3), or any pairs folder.

Segmenters. The paper's Table 2 uses SANet, Polyp-PVT and CTNet and Table 3 a UNet; none of the first three is
in MONAI. :func:`make_segmenter` builds MONAI's UNet by default, any 2D network of ``monai.networks.nets`` by
name, or a user factory ``"package.module:function"``; the report names the one used, so the paper's numbers
(shown beside ours) are a reference for the direction of the effect, not a like-for-like comparison.
"""
from __future__ import annotations

import importlib
import inspect
import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from medkit.data.pairs_io import Pairs, PairsError
from medkit.eval.downstream import paired_difference, t_interval, train_segmenter

PRANET_TEST_SETS = ("CVC-300", "CVC-ClinicDB", "Kvasir", "CVC-ColonDB", "ETIS-LaribPolypDB")
PRANET_TEST_SIZES = {"CVC-300": 60, "CVC-ClinicDB": 62, "Kvasir": 100, "CVC-ColonDB": 380, "ETIS-LaribPolypDB": 196}
OVERALL = "Overall"
COPY_PASTE = "Copy-Paste"
# The paper's Overall mDice / mIoU (%), real -> real + Siamese-Diffusion (REFERENCE section 1; Tables 2, 3)
PAPER = {
    "polyps": {"SANet": ((79.4, 71.4), (83.0, 75.8)), "Polyp-PVT": ((83.3, 76.0), (84.4, 77.3)),
               "CTNet": ((84.2, 77.0), (85.1, 78.1))},
    "isic2018": {"UNet": ((82.19, 78.45), (83.71, 80.09))},
}
SMALL_UNET = dict(channels=(16, 32, 64), strides=(2, 2), num_res_units=1)


# ----------------------------------------------------------------------------------------------- segmenters
def make_segmenter(name: str = "unet", **kwargs) -> Callable[[int], torch.nn.Module]:
    """A factory ``in_channels -> nn.Module`` with one output channel (logits).

    ``"unet"``: MONAI's UNet (``SMALL_UNET`` unless ``kwargs`` say otherwise). A name of ``monai.networks.nets``
    (``"AttentionUnet"``, ``"BasicUNet"``, ``"SegResNet"``, ...): built with ``spatial_dims=2, in_channels,
    out_channels=1`` and ``kwargs``. ``"package.module:function"``: called as ``function(in_channels=...,
    out_channels=1, **kwargs)``. The factory is tried once here, so a bad name fails before any training.
    """
    if name.lower() == "unet":
        from monai.networks.nets import UNet

        cfg = {**SMALL_UNET, **kwargs}
        factory = lambda c: UNet(spatial_dims=2, in_channels=c, out_channels=1, **cfg)  # noqa: E731
    elif ":" in name:
        mod, _, fn = name.partition(":")
        try:
            func = getattr(importlib.import_module(mod), fn)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"segmenter={name!r}: cannot import {fn} from {mod} ({e}); give 'package.module:function'"
                             f" importable here") from None
        factory = lambda c: func(in_channels=c, out_channels=1, **kwargs)  # noqa: E731
    else:
        import monai.networks.nets as nets

        cls = getattr(nets, name, None)
        if not (inspect.isclass(cls) and issubclass(cls, torch.nn.Module)):
            raise ValueError(f"segmenter={name!r} is not a network of monai.networks.nets; use 'unet', a MONAI 2D "
                             f"network such as 'AttentionUnet', 'BasicUNet' or 'SegResNet', or 'package.module:function'")
        params = inspect.signature(cls).parameters
        extra = {k: v for k, v in SMALL_UNET.items() if k in params and params[k].default is inspect._empty}
        factory = lambda c: cls(spatial_dims=2, in_channels=c, out_channels=1, **{**extra, **kwargs})  # noqa: E731
    try:
        probe = factory(3)
        out = probe(torch.zeros(1, 3, 32, 32))
    except Exception as e:
        raise ValueError(f"segmenter={name!r} with {kwargs} could not be built or run on a (1, 3, 32, 32) input: "
                         f"{type(e).__name__}: {e}; pass the network's required arguments") from None
    out = out[0] if isinstance(out, (list, tuple)) else out
    if out.shape[1] != 1:
        raise ValueError(f"segmenter={name!r} gives {out.shape[1]} output channels; it must give 1 (binary logits)")
    return factory


# ----------------------------------------------------------------------------------------------- test sets
def find_test_sets(root: str | Path) -> dict[str, Path]:
    """PraNet's test sets under ``root`` (``root/TestDataset/<set>`` or ``root/<set>``, each with images/ and
    masks/): {name: folder}, in PraNet's order; an error naming what was looked for when none is there."""
    root = Path(root).expanduser()
    base = root
    if not any((root / s).is_dir() for s in PRANET_TEST_SETS):  # TestDataset/ here or a few levels down (Kaggle)
        hits = sorted(p for d in ("", "*", "*/*", "*/*/*") for p in root.glob(f"{d}/TestDataset" if d else "TestDataset")
                      if p.is_dir())
        base = hits[0] if hits else root
    found = {s: base / s for s in PRANET_TEST_SETS if (base / s / "images").is_dir() and (base / s / "masks").is_dir()}
    if not found:
        raise PairsError(f"no PraNet test set under {root}: looked for TestDataset/<set>/{{images,masks}} with <set> in "
                         f"{list(PRANET_TEST_SETS)} (PraNet's TestDataset download)")
    return found


def load_test_sets(root: str | Path, image_size: int, channels: int, *, layout: str = "pranet",
                   cache_root=None, log=print) -> dict[str, Pairs]:
    """The test sets as :class:`Pairs` resized like the training data (through the pair cache, masks > 127).

    ``layout="pranet"``: every PraNet test set found (missing ones are named in the log); ``"isic2018"`` /
    ``"isic2016"``: the ISIC Test split (Validation when there is no Test split); anything else: ``root`` is
    one test set in a layout :func:`medkit.data.find_pairs` reads.
    """
    from medkit.data.pairs import PairDataset, build_pair_cache

    def read(folder, name, lay="auto", split="Training"):
        cache = build_pair_cache(folder, image_size, layout=lay, channels=channels, val_fraction=0.0, split=split,
                                 cache_root=cache_root, log=log)
        ds = PairDataset(cache, "train")
        return Pairs(ds.images.float() / 127.5 - 1.0, ds.masks.float(), list(ds.names))

    if layout == "pranet":
        sets = find_test_sets(root)
        missing = [s for s in PRANET_TEST_SETS if s not in sets]
        if missing:
            log(f"seg-protocol: test sets {missing} are not under {root}; Overall covers {list(sets)} only")
        return {name: read(folder, name, "folders") for name, folder in sets.items()}
    if layout in ("isic2018", "isic2016"):
        from medkit.data.pairs import find_pairs

        for split in ("Test", "Validation"):
            try:
                find_pairs(root, layout, split=split, log=lambda m: None)
            except PairsError:
                continue
            return {f"{layout} {split}": read(root, layout, layout, split)}
        raise PairsError(f"no Test or Validation split of {layout} under {root}; attach the challenge's test data")
    return {Path(root).name: read(root, Path(root).name, layout)}


# ----------------------------------------------------------------------------------------------- the arms
def make_arms(real: Pairs, synthetic: dict[str, Pairs], volumes=(1,), copy_paste: bool = True) -> dict[str, dict]:
    """{arm: {"images", "masks", "n_real", "n_synthetic"}}: real, Copy-Paste, and real + v x each source."""
    n = len(real.images)
    arms = {"real": dict(images=real.images, masks=real.masks, n_real=n, n_synthetic=0)}
    if copy_paste:
        arms[COPY_PASTE] = dict(images=torch.cat([real.images] * 2), masks=torch.cat([real.masks] * 2), n_real=2 * n,
                                n_synthetic=0)
    for source, syn in synthetic.items():
        if syn.images.shape[1:] != real.images.shape[1:]:
            raise PairsError(f"generated pairs ({source}) are {tuple(syn.images.shape[1:])} but the real ones "
                             f"{tuple(real.images.shape[1:])} (channels, height, width); generate at the real size")
        for v in sorted({int(x) for x in volumes}):
            if v < 1 or v * n > len(syn.images):
                raise PairsError(f"volume {v}x needs {v * n} generated pairs from {source} ({v} x {n} real), there are "
                                 f"{len(syn.images)}; generate more (n_generate) or lower the volume")
            arms[f"real+{v}x {source}"] = dict(images=torch.cat([real.images, syn.images[:v * n]]),
                                               masks=torch.cat([real.masks, syn.masks[:v * n]]), n_real=n,
                                               n_synthetic=v * n)
    return arms


@torch.no_grad()
def _per_image(net, images, masks, batch_size=32, device="cpu"):
    from medkit.metrics.segmentation import dice, iou

    pred = torch.cat([(lambda o: o[0] if isinstance(o, (list, tuple)) else o)(net(images[i:i + batch_size].to(device)))
                      .cpu() > 0 for i in range(0, len(images), batch_size)])
    return dice(pred, masks, per_image=True), iou(pred, masks, per_image=True)


def run_protocol(arms: dict[str, dict], test_sets: dict[str, Pairs], *, seeds: int = 3, steps: int = 400,
                 batch_size: int = 16, lr: float = 2e-3, segmenter: str = "unet", segmenter_kwargs=None,
                 progress: bool = True, device="cpu") -> list[dict]:
    """Train every arm for every seed and score it on every test set; one row per (arm, seed, test set), plus
    the ``Overall`` row (all test images together)."""
    from tqdm.auto import tqdm

    if seeds < 2:
        raise ValueError(f"seeds={seeds}: use >= 2 (>= 3 recommended) for a paired interval over seeds")
    factory = make_segmenter(segmenter, **(segmenter_kwargs or {}))
    rows = []
    bar = tqdm(total=len(arms) * seeds * steps, desc="segmentation protocol", disable=not progress, mininterval=1.0)
    for seed in range(seeds):
        for arm, a in arms.items():
            bar.set_postfix_str(f"{arm} seed {seed}")
            t0 = time.perf_counter()
            net = train_segmenter(a["images"], a["masks"], steps=steps, batch_size=batch_size, lr=lr, seed=seed,
                                  segmenter=factory, device=device, on_step=lambda s, l: bar.update(1)).eval()
            all_d, all_j = [], []
            for name, test in test_sets.items():
                d, j = _per_image(net, test.images, test.masks, device=device)
                all_d.append(d)
                all_j.append(j)
                rows.append(dict(arm=arm, seed=seed, test_set=name, n_images=len(d), mdice=float(np.nanmean(d)),
                                 miou=float(np.nanmean(j)), n_real=a["n_real"], n_synthetic=a["n_synthetic"]))
            d, j = torch.cat(all_d), torch.cat(all_j)
            rows.append(dict(arm=arm, seed=seed, test_set=OVERALL, n_images=len(d), mdice=float(np.nanmean(d)),
                             miou=float(np.nanmean(j)), n_real=a["n_real"], n_synthetic=a["n_synthetic"],
                             train_s=round(time.perf_counter() - t0, 2)))
    bar.close()
    return rows


def summarise(rows: list[dict]) -> list[dict]:
    """Per (arm, test set): mean/std/95% t-interval over seeds of mDice and mIoU; for every arm but "real", the
    seed-paired difference to "real" on the same test set."""
    out = []
    keys = list(dict.fromkeys((r["arm"], r["test_set"]) for r in rows))
    by = {k: sorted((r for r in rows if (r["arm"], r["test_set"]) == k), key=lambda r: r["seed"]) for k in keys}
    for arm, test in keys:
        rs = by[(arm, test)]
        s = dict(arm=arm, test_set=test, n_images=rs[0]["n_images"], n_real=rs[0]["n_real"],
                 n_synthetic=rs[0]["n_synthetic"], seeds=len(rs))
        for met in ("mdice", "miou"):
            ti = t_interval([r[met] for r in rs])
            s.update({f"{met}_mean": ti["mean"], f"{met}_std": ti["std"], f"{met}_ci95": ti["ci95"]})
            if arm != "real":
                ref = by[("real", test)]
                if [r["seed"] for r in ref] != [r["seed"] for r in rs]:
                    raise ValueError(f"arm {arm} on {test}: seeds {[r['seed'] for r in rs]} are not real's")
                pdiff = paired_difference([r[met] for r in rs], [r[met] for r in ref])
                s.update({f"{met}_diff": pdiff["mean"], f"{met}_diff_ci95": pdiff["ci95"]})
        out.append(s)
    return out


def _pct(v) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def table_markdown(summary: list[dict], *, segmenter: str, protocol: str = "polyps") -> str:
    """The result laid out like Table 2: one row per arm, mDice / mIoU (%) per test set and Overall, then the
    Overall difference to "real" with its 95% CI; the paper's Overall numbers below, labelled."""
    tests = list(dict.fromkeys(s["test_set"] for s in summary))
    arms = list(dict.fromkeys(s["arm"] for s in summary))
    cell = {(s["arm"], s["test_set"]): s for s in summary}
    lines = ["| arm | " + " | ".join(f"{t} mDice / mIoU" for t in tests) + " | Overall mDice - real (95% CI) |",
             "|---|" + "---|" * (len(tests) + 1)]
    for arm in arms:
        vals = [f"{_pct(cell[(arm, t)]['mdice_mean'])} / {_pct(cell[(arm, t)]['miou_mean'])}" for t in tests]
        o = cell[(arm, OVERALL)]
        diff = ("" if arm == "real" else f"{100 * o['mdice_diff']:+.1f} [{100 * o['mdice_diff_ci95'][0]:+.1f}, "
                f"{100 * o['mdice_diff_ci95'][1]:+.1f}]")
        lines.append(f"| {arm} | " + " | ".join(vals) + f" | {diff} |")
    n = {t: cell[(arms[0], t)]["n_images"] for t in tests}
    seeds = cell[(arms[0], OVERALL)]["seeds"]
    lines += ["", f"mDice / mIoU in %, the mean over {seeds} seeds; test images: "
              + ", ".join(f"{t} {n[t]}" for t in tests) + f". Overall = all test images together (weighted by "
              f"images, as Table 2). Segmenter: {segmenter} (trained from scratch, the same steps for every arm)."]
    paper = PAPER.get(protocol)
    if paper:
        lines += ["", f"The paper's Overall mDice / mIoU (%), real -> real + Siamese-Diffusion, with its own segmenters "
                  f"({', '.join(paper)}; not {segmenter}), for the direction of the effect only:", "",
                  "| segmenter | real | + Siamese-Diffusion |", "|---|---|---|"]
        lines += [f"| {k} | {a[0]} / {a[1]} | {b[0]} / {b[1]} |" for k, (a, b) in paper.items()]
    return "\n".join(lines) + "\n"


def write_report(out_dir, rows: list[dict], summary: list[dict], *, segmenter: str, protocol: str, config: dict,
                 dataset: str) -> dict:
    """``protocol.md``, ``protocol.csv`` (summary), ``protocol_seeds.csv`` and the ``segmentation`` section of
    ``metrics.json`` in ``out_dir``; returns that section."""
    import pandas as pd

    from medkit.eval.results import entry, update_metrics

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows).to_csv(out / "protocol_seeds.csv", index=False)
    pd.DataFrame(summary).to_csv(out / "protocol.csv", index=False)
    md = table_markdown(summary, segmenter=segmenter, protocol=protocol)
    (out / "protocol.md").write_text(f"# Segmentation protocol ({protocol})\n\nTraining pairs: {dataset}.\n\n" + md)
    sec = {"segmenter": segmenter, "protocol": protocol, "config": config}
    for s in summary:
        key = f"{s['arm']}.{s['test_set']}"
        for met in ("mdice", "miou"):
            sec[f"{key}.{met}"] = entry(s[f"{met}_mean"], std=s[f"{met}_std"], ci95=s[f"{met}_ci95"], n=s["seeds"],
                                        dataset=f"{s['test_set']} ({s['n_images']} images)")
            if f"{met}_diff" in s:
                sec[f"{key}.{met}_minus_real"] = entry(s[f"{met}_diff"], ci95=s[f"{met}_diff_ci95"], n=s["seeds"],
                                                       dataset=f"{s['test_set']} ({s['n_images']} images)")
    update_metrics(out, "segmentation", sec)
    return sec
