"""Axial slices of MRI volumes, normalised to [-1, 1] and cached on disk, for 2D diffusion models.

Why a cache. Reading and resampling NIfTI volumes costs seconds per volume; training reads each slice
thousands of times. So :func:`build_slice_cache` does the work once and writes one small ``.npz`` per
slice plus ``train.csv`` / ``val.csv`` / ``meta.json`` into ``<cache_root>/slices/<key>/``. The key
hashes the data's fingerprint, every setting and :data:`FORMAT_VERSION`, so changing anything gives a
new folder and an unchanged call reuses the old one. A build is written to a temporary folder and
moved into place with ``os.replace``: a killed build leaves no half cache behind.

Choices, and why:

* Intensities: the ``percentiles`` (default 0.5, 99.5) of the foreground (voxels above the volume's
  minimum, i.e. nonzero for skull-stripped data) map linearly to [-1, 1], then clip. Background lands
  on exactly -1, the value a diffusion model sees as "nothing here".
* Content filter: a slice is kept when at least ``min_content`` of its (native, unpadded) pixels are
  > -0.9; the near-empty slices at the top and bottom of the head teach a model little.
* Geometry: slices are stored anterior-up, patient-right on the right (``np.rot90`` of the RAS x-y
  plane), padded to a square (image -1, mask 0, centred) and resized with anti-aliasing (bilinear
  with ``antialias=True``) for the image, area-average then >= 0.5 for the mask (so it stays binary).
* Split without leakage: neighbouring slices are nearly identical, so interleaving them between train
  and val would measure memorisation. With >= 4 volumes whole volumes go to val; with fewer, blocks
  of ``block`` consecutive kept slices go to val (every k-th, k = round(1/val_fraction), offset drawn
  from ``seed``), and train slices within ``guard`` z-steps of any val slice are dropped.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medkit import env
from medkit.data.sources import DataError, Volume, fingerprint, mni152_volumes, nifti_folder_volumes

FORMAT_VERSION = 1
CONTENT_LEVEL = -0.9  # a pixel counts as content when its normalised value is above this
SPLITS = ("train", "val")
CSV_COLUMNS = ["filepath", "volume", "z_index", "has_mask", "mask_fraction", "content_fraction"]


# ---------------------------------------------------------------------------------------------------
# Pieces

def normalise(image: np.ndarray, percentiles: tuple[float, float], name: str) -> np.ndarray:
    """Map the foreground's percentiles to [-1, 1] linearly and clip; background ends at -1."""
    floor = float(image.min())
    fg = image[image > floor]
    if fg.size == 0:
        raise DataError(f"volume {name} is constant ({floor:g} everywhere); remove it from the data.")
    lo, hi = np.percentile(fg, percentiles)
    if hi <= lo:
        raise DataError(f"volume {name}: the {percentiles[0]}th and {percentiles[1]}th foreground percentiles "
                        f"are both {lo:g}, so there is no intensity range to normalise; check the file or "
                        f"widen `percentiles`.")
    out = (image.astype(np.float32) - np.float32(lo)) * np.float32(2.0 / (hi - lo)) - np.float32(1.0)
    out[image <= floor] = -1.0
    return np.clip(out, -1.0, 1.0, out=out)


def _pad_square(x: torch.Tensor, value: float) -> torch.Tensor:
    """Centre (N, 1, H, W) in a square of side max(H, W), filling with ``value``."""
    h, w = x.shape[-2:]
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    return F.pad(x, (left, s - w - left, top, s - h - top), value=value)


def resize_slices(images: np.ndarray, masks: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, H, W) image and mask slices -> padded-square, ``size`` x ``size`` float32 / uint8 slices.

    The image is resized as (x + 1) so the -1 background is an exact zero that interpolation keeps
    exact; the result is clipped to [-1, 1] against float rounding at the top.
    """
    img = _pad_square(torch.from_numpy(images).float().unsqueeze(1) + 1.0, 0.0)
    msk = _pad_square(torch.from_numpy(masks).float().unsqueeze(1), 0.0)
    img = F.interpolate(img, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    msk = F.interpolate(msk, size=(size, size), mode="area")
    img = (img - 1.0).clamp_(-1.0, 1.0)
    return img[:, 0].numpy(), (msk[:, 0] >= 0.5).to(torch.uint8).numpy()


def _split_volumes(kept: dict[str, list[int]], val_fraction: float, seed: int) -> set[str]:
    """Names of whole volumes that go to val (round(val_fraction * n), at least 1)."""
    names = sorted(kept)
    n_val = max(1, round(val_fraction * len(names)))
    order = np.random.default_rng(seed).permutation(len(names))
    return {names[i] for i in order[:n_val]}


def _split_blocks(zs: list[int], val_fraction: float, block: int, guard: int,
                  rng: np.random.Generator) -> tuple[list[int], list[int], list[int]]:
    """Within one volume: (train z, val z, guard-dropped z) from blocks of ``block`` kept slices."""
    k = max(1, round(1.0 / val_fraction))
    offset = int(rng.integers(k))
    val = [z for i, z in enumerate(zs) if (i // block) % k == offset]
    val_set = set(val)
    near = {z + d for z in val for d in range(-guard, guard + 1)}
    train = [z for z in zs if z not in val_set and z not in near]
    dropped = [z for z in zs if z not in val_set and z in near]
    return train, val, dropped


def _check_settings(image_size, min_content, percentiles, val_fraction, block, guard) -> None:
    if not (isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool) and image_size >= 4):
        raise DataError(f"image_size={image_size!r}: use an int >= 4 (e.g. 64).")
    if not 0.0 <= min_content <= 1.0:
        raise DataError(f"min_content={min_content!r}: use a fraction in [0, 1] (e.g. 0.05).")
    if len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
        raise DataError(f"percentiles={percentiles!r}: use (low, high) with 0 <= low < high <= 100, e.g. (0.5, 99.5).")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction!r}: use a fraction strictly between 0 and 1 (e.g. 0.2).")
    if not (isinstance(block, (int, np.integer)) and block >= 1):
        raise DataError(f"block={block!r}: use an int >= 1 (e.g. 8).")
    if not (isinstance(guard, (int, np.integer)) and guard >= 0):
        raise DataError(f"guard={guard!r}: use an int >= 0 (e.g. 1).")


def _load_source(source: str | Path) -> tuple[str, list[Volume]]:
    if str(source) == "mni152":
        return "mni152", mni152_volumes()
    return str(Path(source).expanduser()), nifti_folder_volumes(source)


# ---------------------------------------------------------------------------------------------------
# The cache

def cache_key(identity: dict, version: int = FORMAT_VERSION) -> str:
    """16 hex digits of the SHA-256 of ``identity`` (data fingerprint and settings) and the format version."""
    text = json.dumps({**identity, "format": version}, sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cached_build(root: Path, kind: str, identity: dict, build: Callable[[Path], dict],
                 version: int = FORMAT_VERSION) -> tuple[Path, dict | None]:
    """``root/kind/<key of identity>``: reused if its meta.json exists (returns ``(folder, None)``), else
    ``build(tmp)`` fills a temporary folder and returns its meta, which is written as meta.json (with
    key, format_version and build_seconds) before ``os.replace`` moves the folder into place - a killed
    build leaves nothing half-written, and of two concurrent builds the first rename wins.
    """
    key = cache_key(identity, version)
    parent = Path(root) / kind
    final = parent / key
    if (final / "meta.json").is_file():
        return final, None
    t0 = time.perf_counter()
    parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{key}-", dir=parent))
    try:
        meta = build(tmp)
        meta.update(key=key, format_version=version, build_seconds=round(time.perf_counter() - t0, 2))
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2))
        try:
            os.replace(tmp, final)
        except OSError:
            if not (final / "meta.json").is_file():  # not a concurrent build that won the race
                raise
            shutil.rmtree(tmp, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final, meta


def build_slice_cache(source: str | Path = "mni152", image_size: int = 64, *, cache_root: str | Path | None = None,
                      min_content: float = 0.05, percentiles: tuple[float, float] = (0.5, 99.5),
                      val_fraction: float = 0.2, block: int = 8, guard: int = 1, seed: int = 0,
                      log: Callable[[str], None] = print) -> Path:
    """Build (or reuse) the slice cache of ``source`` and return its folder.

    ``source``: 'mni152' (embedded template) or a folder of NIfTI volumes (see
    :func:`medkit.data.nifti_folder_volumes`). ``cache_root`` defaults to :func:`medkit.env.cache_root`.
    """
    _check_settings(image_size, min_content, percentiles, val_fraction, block, guard)
    percentiles = (float(percentiles[0]), float(percentiles[1]))
    settings = {"image_size": int(image_size), "min_content": float(min_content), "percentiles": list(percentiles),
                "val_fraction": float(val_fraction), "block": int(block), "guard": int(guard), "seed": int(seed)}
    fp = fingerprint(source)

    def build(tmp: Path) -> dict:
        source_name, volumes = _load_source(source)
        return {**_build_into(tmp, source_name, volumes, settings, log), "fingerprint": fp, "source": source_name}

    root = Path(cache_root) if cache_root is not None else env.cache_root()
    final, meta = cached_build(root, "slices", {"fingerprint": fp, "settings": settings}, build)
    if meta is None:
        log(f"slices: reusing cache {final} ({source}, {image_size} px)")
        return final
    t = meta["totals"]
    log(f"slices: built {final} from {meta['source']} in {meta['build_seconds']:.1f} s: {t['volumes']} volume(s), "
        f"{t['kept']} kept slices (train {t['train']}, val {t['val']}); skipped {t['dropped_filter']} below "
        f"min_content={min_content}, {t['dropped_guard']} as guard next to val, "
        f"{t['empty_volumes']} volume(s) with no kept slice")
    return final


def _build_into(out: Path, source_name: str, volumes: list[Volume], settings: dict,
                log: Callable[[str], None]) -> dict:
    """Write slices/*.npz, train.csv, val.csv into ``out``; return meta (without identity fields)."""
    size, min_content = settings["image_size"], settings["min_content"]
    (out / "slices").mkdir()
    rows: dict[str, list[dict]] = {}
    counts: dict[str, dict] = {}
    best_content = 0.0
    for vol in volumes:
        image = normalise(vol.image, tuple(settings["percentiles"]), vol.path)
        # (X, Y, Z) -> (Z, Y, X) with y flipped: anterior up, patient right on the right
        image = np.ascontiguousarray(np.rot90(image.transpose(2, 0, 1), k=1, axes=(1, 2)))
        mask = None
        if vol.mask is not None:
            mask = np.ascontiguousarray(np.rot90(vol.mask.transpose(2, 0, 1), k=1, axes=(1, 2)))
        content = (image > CONTENT_LEVEL).mean(axis=(1, 2))
        best_content = max(best_content, float(content.max(initial=0.0)))
        zs = [int(z) for z in np.flatnonzero(content >= min_content)]
        counts[vol.name] = {"slices_total": int(image.shape[0]), "kept": len(zs),
                            "dropped_filter": int(image.shape[0]) - len(zs), "dropped_guard": 0,
                            "train": 0, "val": 0, "has_mask": mask is not None}
        if not zs:
            log(f"slices: warning: volume {vol.name} ({vol.path}) has no slice with content >= "
                f"min_content={min_content} (largest {content.max(initial=0.0):.3f}); it contributes nothing.")
            continue
        m = mask[zs] if mask is not None else np.zeros((len(zs),) + image.shape[1:], np.uint8)
        imgs, msks = resize_slices(image[zs], m, size)
        digits = max(3, len(str(image.shape[0] - 1)))
        rows[vol.name] = []
        for j, z in enumerate(zs):
            rel = f"slices/{vol.name}_z{z:0{digits}d}.npz"
            np.savez(out / rel, image=imgs[j].astype(np.float32), mask=msks[j].astype(np.uint8),
                     has_mask=np.bool_(mask is not None))
            rows[vol.name].append({"filepath": rel, "volume": vol.name, "z_index": z,
                                   "has_mask": mask is not None, "mask_fraction": float(msks[j].mean()),
                                   "content_fraction": float(content[z])})
    if not rows:
        raise DataError(f"no slice of {source_name} has content >= min_content={min_content} (the largest "
                        f"content fraction seen is {best_content:.3f}); lower min_content or check the "
                        f"volumes' intensities.")

    split = {"train": [], "val": []}
    kept = {name: [r["z_index"] for r in rs] for name, rs in rows.items()}
    if len(rows) >= 4:
        mode = "volumes"
        val_names = _split_volumes(kept, settings["val_fraction"], settings["seed"])
        for name, rs in rows.items():
            part = "val" if name in val_names else "train"
            split[part] += rs
            counts[name][part] = len(rs)
    else:
        mode = "blocks"
        rng = np.random.default_rng(settings["seed"])
        for name in sorted(rows):
            train_z, val_z, drop_z = _split_blocks(kept[name], settings["val_fraction"], settings["block"],
                                                   settings["guard"], rng)
            by_z = {r["z_index"]: r for r in rows[name]}
            split["train"] += [by_z[z] for z in train_z]
            split["val"] += [by_z[z] for z in val_z]
            for z in drop_z:
                (out / by_z[z]["filepath"]).unlink()
            counts[name].update(train=len(train_z), val=len(val_z), dropped_guard=len(drop_z))
    for part in SPLITS:
        if not split[part]:
            raise DataError(f"the {part} split of {source_name} is empty ({sum(map(len, kept.values()))} kept "
                            f"slices in {len(rows)} volume(s), split by {mode}); adjust val_fraction="
                            f"{settings['val_fraction']} or block={settings['block']} (smaller blocks give "
                            f"every volume a val block), or add volumes.")
        pd.DataFrame(split[part], columns=CSV_COLUMNS).to_csv(out / f"{part}.csv", index=False)

    totals = {"volumes": len(volumes), "empty_volumes": len(volumes) - len(rows),
              "kept": sum(c["kept"] for c in counts.values()),
              "dropped_filter": sum(c["dropped_filter"] for c in counts.values()),
              "dropped_guard": sum(c["dropped_guard"] for c in counts.values()),
              "train": len(split["train"]), "val": len(split["val"])}
    return {"settings": settings, "split_mode": mode, "volumes": counts, "totals": totals}


# ---------------------------------------------------------------------------------------------------
# Reading it back

class SliceDataset(torch.utils.data.Dataset):
    """One split of a slice cache, held in memory: items are {'image': (1,H,W) in [-1,1], 'mask': (1,H,W) in {0,1}}."""

    def __init__(self, cache_dir: str | Path, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: use 'train' or 'val'.")
        self.cache_dir = Path(cache_dir)
        self.split = split
        redo = (f"delete the cache folder {self.cache_dir} and call build_slice_cache again to rebuild it.")
        csv = self.cache_dir / f"{split}.csv"
        if not csv.is_file():
            raise DataError(f"slice cache index {csv} is missing; {redo}")
        self.index = pd.read_csv(csv)
        images, masks = [], []
        for rel in self.index["filepath"]:
            path = self.cache_dir / rel
            if not path.is_file():
                raise DataError(f"slice file {path} listed in {csv.name} is missing; {redo}")
            with np.load(path) as f:
                images.append(f["image"])
                masks.append(f["mask"])
        self.images = torch.from_numpy(np.stack(images)).float().unsqueeze(1)
        self.masks = torch.from_numpy(np.stack(masks)).float().unsqueeze(1)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i]}
