"""Distribution metrics between two image sets, as metric entries: ``python -m medkit evaluate``.

    python -m medkit evaluate --real DIR --fake DIR --out metrics.json [--features inception|vae:RUN_DIR|clip]

Each side is a folder of PNG/NPY/NPZ images or one NPZ/NPY file (a run's ``samples/generated.npz``).
Images stream through the extractor ``--batch-size`` at a time. What is reported, per extractor:

- ``fid`` (InceptionV3 features) or ``fd`` (any other embedding): Frechet distance with a bootstrap
  95% CI (``--n-boot`` resamples of both sets) and ``fid_inf``/``fd_inf``, the 1/N-extrapolated value
  (Chong & Forsyth 2020) when the generated set has >= 50 images;
- ``kid`` / ``kd``: unbiased cubic-kernel MMD^2, mean +- std over ``--kid-subsets`` subsets;
- ``cmmd`` on CLIP ViT-L/14@336 features (``--features clip``): CMMD, its own estimator (full kernel
  matrices, RBF sigma 10, x1000); on any other features ``rbf_mmd`` instead: the unbiased RBF-kernel
  MMD^2 x1000 (sigma ``--mmd-sigma``), labelled with the extractor that was used;
- with ``--lpips alex|vgg``: ``lpips_<net>``, the mean LPIPS over ``--lpips-pairs`` random unpaired
  real/generated pairs (SLIM-Diff's protocol: 1,000 pairs, VGG), with a normal-approximation 95% CI.
  LPIPS needs the torchvision backbone weights file (see :mod:`medkit.metrics.lpips`).

Every entry carries ``extractor``, ``n`` and ``dataset`` (see :mod:`medkit.eval.results`).
"""
from __future__ import annotations

import argparse
import sys
import warnings
from pathlib import Path


from medkit.eval.results import entry, update_metrics
from medkit.metrics import distribution as dist

FID_NETWORK = "inception-v3-fid"
CMMD_NETWORK = "clip-vit-l-14-336"  # medkit.metrics.clip.CMMD_EXTRACTOR


def metric_names(extractor: str) -> dict:
    """FID/KID only on the FID network's features; Frechet/kernel distances otherwise."""
    if extractor == FID_NETWORK:
        return {"fd": "fid", "fd_inf": "fid_inf", "kd": "kid"}
    return {"fd": "fd", "fd_inf": "fd_inf", "kd": "kd"}


def distribution_metrics(real_feats, fake_feats, extractor: str, dataset: str = "", *, n_boot: int = 200,
                         kid_subsets: int = 100, kid_subset_size: int = 1000, mmd_sigma: float | str = 10.0,
                         seed: int = 0, min_n_inf: int = 50, progress: bool = False) -> dict:
    """Frechet distance (bootstrap CI, 1/N extrapolation), KID and RBF MMD on two feature sets, as entries.

    A metric's small-sample warnings (rank-deficient covariance, KID subsets reduced to the set size) are
    kept in its entry's ``warnings`` list, so metrics.json says what the number rests on; ``_warnings``
    collects all of them for the caller to print (pop it before writing the dict out).
    """
    names = metric_names(extractor)
    n_r, n_f = len(real_feats), len(fake_feats)
    data = dataset or f"real n={n_r} vs generated n={n_f}"
    common = dict(extractor=extractor, dataset=data)
    out, notes = {}, []

    def caught(fn):
        with warnings.catch_warnings(record=True) as got:
            warnings.simplefilter("always", dist.SmallSampleWarning)
            result = fn()
        msgs = sorted({str(w.message) for w in got if issubclass(w.category, dist.SmallSampleWarning)})
        notes.extend(m for m in msgs if m not in notes)
        for w in got:  # anything else is re-issued, not swallowed
            if not issubclass(w.category, dist.SmallSampleWarning):
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        return result, (msgs or None)

    fb, w = caught(lambda: dist.fid_bootstrap(real_feats, fake_feats, n_boot=n_boot, seed=seed, progress=progress))
    out[names["fd"]] = entry(fb["value"], ci95=fb["ci95"], std=fb["std"], n=min(n_r, n_f), **common, n_real=n_r,
                             n_generated=n_f, n_boot=n_boot, boot_mean=fb["boot_mean"],
                             ci_method="bootstrap, centred percentile", warnings=w)
    if n_f >= min_n_inf:
        fi, w = caught(lambda: dist.fid_infinity(real_feats, fake_feats, seed=seed))
        out[names["fd_inf"]] = entry(fi["value"], n=n_f, **common, slope=fi["slope"], n_points=len(fi["points"]),
                                     min_subset=fi["points"][0][0], warnings=w)
    k, w = caught(lambda: dist.kid(real_feats, fake_feats, subsets=kid_subsets, subset_size=kid_subset_size,
                                   seed=seed))
    out[names["kd"]] = entry(k["value"], std=k["std"], n=min(n_r, n_f), **common, subsets=k["subsets"],
                             subset_size=k["subset_size"], warnings=w)
    if extractor == CMMD_NETWORK:  # CMMD: its own estimator on its own features, nothing else by that name
        out["cmmd"] = entry(dist.cmmd(real_feats, fake_feats), n=min(n_r, n_f), **common, sigma=10.0, scale=1000.0,
                            estimator=dist.CMMD_ESTIMATOR)
    else:
        mmd, w = caught(lambda: dist.rbf_mmd(real_feats, fake_feats, sigma=mmd_sigma))
        out["rbf_mmd"] = entry(mmd, n=min(n_r, n_f), **common, sigma=mmd_sigma, scale=1000.0,
                               estimator=dist.RBF_MMD_ESTIMATOR, warnings=w)
    if notes:
        out["_warnings"] = notes
    return out


def unpaired_lpips(real, fake, net: str = "vgg", pairs: int = 1000, seed: int = 0, device=None,
                   dataset: str = "") -> dict:
    """Mean LPIPS over ``pairs`` random (real_i, generated_j) pairs, indices drawn with replacement."""
    import torch

    from medkit.metrics import lpips_distance, mean_ci

    g = torch.Generator().manual_seed(int(seed))
    ia = torch.randint(len(real), (pairs,), generator=g)
    ib = torch.randint(len(fake), (pairs,), generator=g)
    d = lpips_distance(real[ia], fake[ib], net=net, device=device)
    s = mean_ci(d)
    return entry(s["value"], ci95=s["ci95"], std=s["std"], n=pairs, extractor=f"lpips-v0.1-{net}",
                 dataset=dataset, protocol="random unpaired real/generated pairs")


def evaluate_folders(real, fake, features: str = "inception", *, batch_size: int = 64, device=None,
                     progress: bool = True, lpips: str | None = None, lpips_pairs: int = 1000, **kwargs) -> dict:
    """Extract features of two image folders/files and compute :func:`distribution_metrics` (+ LPIPS)."""
    from medkit.metrics.features import extract_features, get_extractor, load_image_folder

    ext = get_extractor(features, device)
    fr = extract_features(real, ext, batch_size=batch_size, device=device, progress=progress)
    ff = extract_features(fake, ext, batch_size=batch_size, device=device, progress=progress)
    dataset = f"real: {Path(real).name} (n={len(fr)}) vs generated: {Path(fake).name} (n={len(ff)})"
    out = distribution_metrics(fr, ff, ext.name, dataset, progress=progress, **kwargs)
    if lpips:
        out[f"lpips_{lpips}"] = unpaired_lpips(load_image_folder(real), load_image_folder(fake), lpips, lpips_pairs,
                                               seed=kwargs.get("seed", 0), device=device, dataset=dataset)
    return out


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--real", required=True, help="folder of real images (PNG/NPY/NPZ) or one NPZ/NPY file")
    p.add_argument("--fake", required=True, help="folder of generated images, or a run's samples/generated.npz")
    p.add_argument("--out", required=True, help="metrics.json to write (merged into if it exists)")
    p.add_argument("--features", default="inception",
                   help="inception (the FID network; needs its weights file) | vae:RUN_DIR (an SBLDM run's VAE) | "
                        "clip | clip:FOLDER_OR_HUB_ID (CMMD's CLIP ViT-L/14@336)")
    p.add_argument("--section", default="eval", help="section of metrics.json to write into (default: eval)")
    p.add_argument("--n-boot", type=int, default=200, help="bootstrap resamples for the FID CI (default 200)")
    p.add_argument("--kid-subsets", type=int, default=100)
    p.add_argument("--kid-subset-size", type=int, default=1000)
    p.add_argument("--mmd-sigma", default="10", help="RBF width for rbf_mmd: a number (CMMD uses 10) or 'median'")
    p.add_argument("--lpips", choices=["alex", "vgg"], help="also mean LPIPS over random unpaired pairs "
                   "(needs the torchvision backbone weights file)")
    p.add_argument("--lpips-pairs", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--seed", type=int, default=0)


def run_cli(args) -> int:
    from medkit import env

    sigma = args.mmd_sigma if args.mmd_sigma == "median" else float(args.mmd_sigma)
    device = env.pick_device(args.device)
    res = evaluate_folders(args.real, args.fake, args.features, batch_size=args.batch_size, device=device,
                           n_boot=args.n_boot, kid_subsets=args.kid_subsets, kid_subset_size=args.kid_subset_size,
                           mmd_sigma=sigma, seed=args.seed, lpips=args.lpips, lpips_pairs=args.lpips_pairs)
    for w in res.pop("_warnings", []):
        print(f"warning: {w}", file=sys.stderr)
    update_metrics(args.out, args.section, res)
    for name, e in res.items():
        ci = f"  95% CI {e['ci95'][0]:.4g}-{e['ci95'][1]:.4g}" if "ci95" in e else ""
        sd = f"  std {e['std']:.3g}" if "std" in e and "ci95" not in e else ""
        print(f"{name:8s} {e['value'] if e['value'] is not None else float('nan'):.4g}{ci}{sd}  [{e['extractor']}]")
    print(f"wrote {args.out} (section '{args.section}')")
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m medkit evaluate", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["distribution_metrics", "evaluate_folders", "metric_names"]
