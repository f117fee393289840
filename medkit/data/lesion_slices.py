"""SLIM-Diff's slice cache: [FLAIR, lesion mask] axial slices with a z-bin x pathology token.

SLIM-Diff (Pascual-Gonzalez et al., arXiv 2602.03372; code github.com/MarioPasc/slim-diff) trains one
U-Net on 2-channel slices (image, mask) conditioned on ``token = z_bin + n_bins * pathology_class``.
:func:`build_lesion_cache` follows the paper's "camera-ready" data recipe (REFERENCE section 2), one
volume at a time:

1. RAS (done by :mod:`medkit.data.sources`), then resampling to ``spacing`` mm isotropic with
   torch's trilinear interpolation at the exact scale ``voxel size / spacing`` (the voxel size comes
   from the NIfTI header, reordered to RAS); the mask is resampled the same way and kept where
   >= 0.5. A volume already at ``spacing`` is not touched.
2. Percentile scaling of the brain foreground (voxels above the volume's minimum, i.e. nonzero for
   skull-stripped data): ``percentiles`` -> [-1, 1], clipped, background exactly -1
   (:func:`medkit.data.slices.normalise`). Mask {0,1} -> {-1,+1}.
3. Crop/pad to ``crop``^3 voxels centred on the foreground's bounding box (pad value -1 / mask -1).
4. Axial slices (stored anterior-up, as :mod:`medkit.data.slices` does) are kept when the fraction
   of pixels > ``brain_threshold`` exceeds ``min_brain_fraction``; kept slices are resized to
   ``image_size`` (image: anti-aliased bilinear; mask: area average >= 0.5).
5. Labels, per kept slice:

   * ``z_index`` = index in the crop, 0 = most inferior; ``z_bin = floor(z_index * n_bins / crop)``.
     The bins are local to the crop's fixed z range [0, crop), not stretched over each subject's
     kept slices, so one anatomical level gets the same bin in every subject (the crop is centred
     on each brain). With the defaults (160 slices of 1.25 mm, 30 bins) a bin is 5.33 slices
     (6.7 mm); the adult brain fills about 24 of the 30 bins, the rest stay unused.
   * ``pathology_class`` = 1 when the resized lesion area ``lesion_area_px >= min_lesion_px``;
     0 when the slice has no lesion voxel at all (checked on the ``spacing`` grid, before resizing,
     so a lesion that vanishes in a 32 px thumbnail does not make a "lesion-free" slice); slices in
     between are ambiguous and dropped (counted in meta.json), as in the official code.
     ``min_lesion_px`` defaults to 30 px at 160 px and scales with area:
     ``max(1, round(30 * (image_size / 160) ** 2))`` (5 px at 64, 1 px at 32).
   * ``token = z_bin + n_bins * pathology_class``, in [0, 2 * n_bins).

6. Split by subject: whole subjects go to val (``max(1, round(val_fraction * n))``, at random from
   ``seed``). A single volume is split in blocks of :data:`BLOCK` slices with a :data:`GUARD`-slice
   gap, as :mod:`medkit.data.slices` does.

Output: ``<cache_root>/lesion_slices/<key>/`` with ``slices/*.npz`` (``image`` float32 (H, W) in
[-1, 1], ``mask`` int8 (H, W) in {-1, +1}, and the row's metadata), ``train.csv`` / ``val.csv``
(:data:`CSV_COLUMNS`) and ``meta.json`` (settings, source, ``synthetic``, counts per class and z-bin,
drops). The key hashes the data's identity, every setting and :data:`FORMAT_VERSION`; the build goes
to a temporary folder moved into place with ``os.replace`` (same conventions as
:func:`medkit.data.slices.build_slice_cache`).

Sources: ``"mni152-lesions"`` = SYNTHETIC lesions on the MNI152 template
(:mod:`medkit.data.lesions`, labelled ``"mni152-synthetic-lesions"``), or a folder of the user's
NIfTI volumes where every volume has a binary lesion mask (layouts of
:func:`medkit.data.sources.nifti_folder_volumes`). Multi-label masks (BraTS 0/1/2/4) are refused by
the reader: binarise them first (e.g. whole tumour = label > 0) and save as integers.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import nibabel as nib
import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from medkit import env
from medkit.data import lesions
from medkit.data.slices import _split_blocks, _split_volumes, cached_build, normalise, resize_slices
from medkit.data.sources import DataError, Volume, fingerprint, nifti_folder_volumes

FORMAT_VERSION = 1
SYNTHETIC_SOURCES = ("mni152-lesions", lesions.SOURCE_NAME)  # names accepted for the synthetic source
SPLITS = ("train", "val")
CSV_COLUMNS = ["filepath", "subject_id", "z_index", "z_bin", "pathology_class", "token", "has_lesion",
               "lesion_area_px"]
REFERENCE_SIZE, REFERENCE_MIN_LESION_PX = 160, 30  # the paper's threshold at its resolution
BLOCK, GUARD = 8, 1  # single-volume split: val blocks of 8 kept slices, 1-slice gap to train


# ---------------------------------------------------------------------------------------------------
# Pieces

def default_min_lesion_px(image_size: int) -> int:
    """The paper's 30 px at 160 px, scaled by area: ``max(1, round(30 * (image_size / 160) ** 2))``."""
    return max(1, round(REFERENCE_MIN_LESION_PX * (image_size / REFERENCE_SIZE) ** 2))


def voxel_size(vol: Volume) -> tuple[float, float, float]:
    """Voxel size in mm along the RAS axes: ``vol.zooms`` if it has one, else from its NIfTI header."""
    zooms = getattr(vol, "zooms", None)
    if zooms is None:
        try:
            img = nib.load(vol.path)
        except Exception as err:  # noqa: BLE001 - any failure means the same thing here
            raise DataError(f"cannot read the voxel size of volume {vol.name} from {vol.path}: {err}. "
                            f"Pass volumes read by nifti_folder_volumes (their path is the NIfTI file).") from err
        axes = nib.orientations.io_orientation(img.affine)[:, 0].astype(int)  # file axis j -> RAS axis
        raw = img.header.get_zooms()[:3]
        zooms = [0.0, 0.0, 0.0]
        for j, ras in enumerate(axes):
            zooms[ras] = float(raw[j])
    zooms = tuple(float(z) for z in zooms)
    if not all(np.isfinite(z) and z > 0 for z in zooms):
        raise DataError(f"volume {vol.name} ({vol.path}) has voxel size {zooms} mm; fix the NIfTI header's "
                        f"pixdim (all three must be positive).")
    return zooms


def resample(image: np.ndarray, mask: np.ndarray, zooms: tuple[float, ...],
             spacing: float) -> tuple[np.ndarray, np.ndarray]:
    """Image (trilinear) and {0,1} mask (trilinear >= 0.5) on a ``spacing`` mm isotropic grid.

    The scale is exactly ``zooms / spacing`` (torch maps output voxel i to input (i + 0.5) / s - 0.5),
    the output has ``floor(n * s)`` voxels per axis.
    """
    scale = [z / spacing for z in zooms]
    if all(abs(s - 1.0) < 1e-6 for s in scale):
        return image, mask
    both = torch.from_numpy(np.stack([image.astype(np.float32), mask.astype(np.float32)]))[None]
    out = F.interpolate(both, scale_factor=scale, mode="trilinear", align_corners=False,
                        recompute_scale_factor=False)[0]
    return out[0].numpy(), (out[1] >= 0.5).numpy().astype(np.uint8)


def crop_pad(x: np.ndarray, centre: Iterable[int], size: int, fill: float) -> np.ndarray:
    """The ``size``^3 block of ``x`` centred on ``centre`` (voxel), filled with ``fill`` outside ``x``."""
    out = np.full((size, size, size), fill, dtype=x.dtype)
    src, dst = [], []
    for c, n in zip(centre, x.shape):
        start = int(c) - size // 2
        a, b = max(start, 0), min(start + size, n)
        src.append(slice(a, b))
        dst.append(slice(a - start, b - start))
    out[tuple(dst)] = x[tuple(src)]
    return out


def z_bin_of(z_index, n_bins: int, crop: int):
    """``floor(z_index * n_bins / crop)``: the local z-bin of crop slice ``z_index`` (int or array)."""
    return z_index * n_bins // crop


def _check_settings(image_size, spacing, crop, percentiles, brain_threshold, min_brain_fraction,
                    min_lesion_px, n_bins, val_fraction) -> None:
    def is_int(v):
        return isinstance(v, (int, np.integer)) and not isinstance(v, bool)
    if not (is_int(image_size) and image_size >= 8):
        raise DataError(f"image_size={image_size!r}: use an int >= 8 (32 smoke, 64 cpu-demo, 160 as the paper).")
    if not (is_int(crop) and crop >= image_size):
        raise DataError(f"crop={crop!r}: use an int >= image_size={image_size} (the paper crops 160^3 voxels; "
                        f"slices are then resized down to image_size).")
    if not (isinstance(spacing, (int, float)) and 0.1 <= spacing <= 10.0):
        raise DataError(f"spacing={spacing!r}: use a voxel size in mm between 0.1 and 10 (the paper uses 1.25).")
    if len(percentiles) != 2 or not 0.0 <= percentiles[0] < percentiles[1] <= 100.0:
        raise DataError(f"percentiles={percentiles!r}: use (low, high) with 0 <= low < high <= 100, e.g. (0.5, 99.5).")
    if not -1.0 <= brain_threshold < 1.0:
        raise DataError(f"brain_threshold={brain_threshold!r}: use a normalised level in [-1, 1), e.g. -0.9.")
    if not 0.0 <= min_brain_fraction < 1.0:
        raise DataError(f"min_brain_fraction={min_brain_fraction!r}: use a fraction in [0, 1), e.g. 0.05.")
    if not (is_int(min_lesion_px) and min_lesion_px >= 1):
        raise DataError(f"min_lesion_px={min_lesion_px!r}: use an int >= 1 (lesion pixels after resizing), or "
                        f"None for {REFERENCE_MIN_LESION_PX} px scaled to image_size.")
    if not (is_int(n_bins) and 1 <= n_bins <= crop):
        raise DataError(f"n_bins={n_bins!r}: use an int in [1, crop={crop}] (the paper uses 30).")
    if not 0.0 < val_fraction < 1.0:
        raise DataError(f"val_fraction={val_fraction!r}: use a fraction strictly between 0 and 1 (e.g. 0.25).")


def _open_source(source: str | Path, n_subjects: int | None, seed: int,
                 lesion_options: dict | None = None) -> tuple[str, bool, str, dict, Callable]:
    """(source name, synthetic?, fingerprint, source settings, volume iterator factory)."""
    opts = dict(lesion_options or {})
    if str(source) in SYNTHETIC_SOURCES:
        n = 8 if n_subjects is None else n_subjects
        if not (isinstance(n, (int, np.integer)) and not isinstance(n, bool) and n >= 1):
            raise DataError(f"n_subjects={n!r}: use an int >= 1 (3 smoke, 8 cpu-demo).")
        known = {"max_lesions", "radius_mm", "contrast", "gamma", "bias", "lesion_free_every", "base"}
        if set(opts) - known:
            raise DataError(f"lesion_options {sorted(set(opts) - known)} unknown; use some of {sorted(known)}.")
        settings = {"n_subjects": int(n)}
        if opts:
            settings["lesion_options"] = {k: list(v) if isinstance(v, tuple) else v for k, v in sorted(opts.items())}
        return (lesions.SOURCE_NAME, True, lesions.source_fingerprint(n, seed, **opts), settings,
                lambda: lesions.iter_synthetic_lesion_volumes(n, seed, **opts))
    if opts:
        raise DataError("lesion_options only apply to the synthetic source 'mni152-lesions'.")
    if str(source) == "mni152":
        raise DataError("source='mni152' is the plain template, which has no lesion masks; use "
                        "'mni152-lesions' (SYNTHETIC lesions on the template) or a folder of FLAIR volumes "
                        "with lesion masks.")
    if n_subjects is not None:
        raise DataError(f"n_subjects={n_subjects!r} only applies to the synthetic source 'mni152-lesions'; "
                        f"a folder uses all its volumes. Leave n_subjects unset.")
    folder = Path(source).expanduser()
    fp = fingerprint(folder)  # raises a DataError for a missing folder

    def volumes():
        vols = nifti_folder_volumes(folder)
        missing = [v.path for v in vols if v.mask is None]
        if missing:
            shown = ", ".join(missing[:3]) + (f" (and {len(missing) - 3} more)" if len(missing) > 3 else "")
            raise DataError(f"{len(missing)} of {len(vols)} volume(s) in {folder} have no lesion mask: {shown}. "
                            f"SLIM-Diff learns image + lesion mask pairs, so every volume needs one: put it in "
                            f"masks/<same file name> or name it <image>_mask.nii.gz (binary, lesion = 1).")
        return iter(vols)
    return str(folder), False, fp, {}, volumes


# ---------------------------------------------------------------------------------------------------
# The cache

def build_lesion_cache(source: str | Path = "mni152-lesions", image_size: int = 160, *,
                       n_subjects: int | None = None, spacing: float = 1.25, crop: int = 160,
                       percentiles: tuple[float, float] = (0.5, 99.5), brain_threshold: float = -0.9,
                       min_brain_fraction: float = 0.05, min_lesion_px: int | None = None, n_bins: int = 30,
                       val_fraction: float = 0.25, seed: int = 0, cache_root: str | Path | None = None,
                       lesion_options: dict | None = None, log: Callable[[str], None] = print) -> Path:
    """Build (or reuse) SLIM-Diff's [image, lesion mask] slice cache of ``source``; return its folder.

    ``source``: ``"mni152-lesions"`` (``n_subjects`` SYNTHETIC subjects, default 8, from
    :func:`medkit.data.lesions.synthetic_lesion_volumes` with ``seed``) or a folder of NIfTI volumes
    with lesion masks. ``lesion_options`` (synthetic source only) go to the lesion generator, e.g.
    ``{"radius_mm": (3, 12)}`` for larger lesions at small image sizes. ``min_lesion_px=None`` -> :func:`default_min_lesion_px`. ``cache_root``
    defaults to :func:`medkit.env.cache_root`. The recipe is in this module's docstring.
    """
    if min_lesion_px is None and isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        min_lesion_px = default_min_lesion_px(int(image_size))
    _check_settings(image_size, spacing, crop, percentiles, brain_threshold, min_brain_fraction, min_lesion_px,
                    n_bins, val_fraction)
    source_name, synthetic, fp, source_settings, volumes = _open_source(source, n_subjects, seed, lesion_options)
    settings = {"image_size": int(image_size), "spacing": float(spacing), "crop": int(crop),
                "percentiles": [float(p) for p in percentiles], "brain_threshold": float(brain_threshold),
                "min_brain_fraction": float(min_brain_fraction), "min_lesion_px": int(min_lesion_px),
                "n_bins": int(n_bins), "val_fraction": float(val_fraction), "seed": int(seed), **source_settings}
    def build(tmp: Path) -> dict:
        meta = _build_into(tmp, source_name, volumes(), settings, log)
        meta.update(source=source_name, synthetic=synthetic, fingerprint=fp)
        if synthetic:
            meta["note"] = lesions.NOTE
        return meta

    root = Path(cache_root) if cache_root is not None else env.cache_root()
    final, meta = cached_build(root, "lesion_slices", {"fingerprint": fp, "settings": settings}, build,
                               version=FORMAT_VERSION)
    if meta is None:
        log(f"lesion slices: reusing cache {final} ({source_name}, {image_size} px)")
        return final
    t, c = meta["totals"], meta["classes"]
    log(f"lesion slices: built {final} from {source_name}{' (SYNTHETIC)' if synthetic else ''} in "
        f"{meta['build_seconds']:.1f} s: {t['subjects']} subject(s), train {t['train']} slices "
        f"({c['train']['lesion']} lesion / {c['train']['lesion_free']} lesion-free), val {t['val']} "
        f"({c['val']['lesion']} / {c['val']['lesion_free']}); dropped {t['dropped_brain']} with brain fraction "
        f"<= {min_brain_fraction}, {t['dropped_ambiguous']} ambiguous (0 < lesion area < {min_lesion_px} px), "
        f"{t['dropped_guard']} as guard next to val")
    return final


def _slices_of(vol: Volume, settings: dict, log: Callable[[str], None]) -> tuple[dict, list[tuple]]:
    """One volume -> (counts, [(z, image (H,W), mask {0,1} (H,W), lesion area px, class)]) of kept slices."""
    if vol.mask is None:
        raise DataError(f"volume {vol.name} ({vol.path}) has no lesion mask; SLIM-Diff needs one per volume.")
    crop, size = settings["crop"], settings["image_size"]
    image, mask = resample(vol.image, vol.mask, voxel_size(vol), settings["spacing"])
    image = normalise(image, tuple(settings["percentiles"]), vol.path)
    fg = np.argwhere(image > -1.0)
    lo, hi = fg.min(0), fg.max(0)
    extent = hi - lo + 1
    if (extent > crop).any():
        log(f"lesion slices: warning: the brain of {vol.name} spans {tuple(int(e) for e in extent)} voxels of "
            f"{settings['spacing']} mm, more than crop={crop}; its edges are cut. Raise crop or spacing.")
    centre = (lo + hi + 1) // 2
    image = crop_pad(image, centre, crop, -1.0)
    mask = crop_pad(mask, centre, crop, 0)
    lesion_total = int(vol.mask.sum())
    if lesion_total and not mask.any():
        log(f"lesion slices: warning: all {lesion_total} lesion voxels of {vol.name} fall outside the crop.")
    # (X, Y, Z) -> (Z, Y, X) with y flipped: anterior up, patient right on the right (as slices.py)
    image = np.ascontiguousarray(np.rot90(image.transpose(2, 0, 1), k=1, axes=(1, 2)))
    mask = np.ascontiguousarray(np.rot90(mask.transpose(2, 0, 1), k=1, axes=(1, 2)))

    brain = (image > settings["brain_threshold"]).mean(axis=(1, 2))
    zs = np.flatnonzero(brain > settings["min_brain_fraction"])
    counts = {"slices": crop, "lesion_voxels": lesion_total, "dropped_brain": int(crop - zs.size),
              "dropped_ambiguous": 0, "dropped_guard": 0, "kept": 0, "lesion": 0, "lesion_free": 0}
    if zs.size == 0:
        log(f"lesion slices: warning: {vol.name} ({vol.path}) has no slice with brain fraction > "
            f"{settings['min_brain_fraction']} (largest {brain.max():.3f}); it contributes nothing.")
        return counts, []
    native_area = mask[zs].sum(axis=(1, 2))
    imgs, msks = resize_slices(image[zs], mask[zs], size)
    area = msks.sum(axis=(1, 2))
    kept = []
    for j, z in enumerate(zs):
        if area[j] >= settings["min_lesion_px"]:
            cls = 1
        elif native_area[j] == 0:
            cls = 0
        else:
            counts["dropped_ambiguous"] += 1
            continue
        kept.append((int(z), imgs[j], msks[j], int(area[j]), cls))
    counts.update(kept=len(kept), lesion=sum(k[4] for k in kept), lesion_free=sum(1 - k[4] for k in kept))
    return counts, kept


def _build_into(out: Path, source_name: str, volumes: Iterable[Volume], settings: dict,
                log: Callable[[str], None]) -> dict:
    """Write slices/*.npz, train.csv, val.csv into ``out``; return meta (without identity fields)."""
    n_bins, crop = settings["n_bins"], settings["crop"]
    (out / "slices").mkdir()
    rows: dict[str, list[dict]] = {}
    counts: dict[str, dict] = {}
    names = set()
    for vol in volumes:  # one volume in memory at a time for the synthetic source
        if vol.name in names:
            raise DataError(f"two volumes are named {vol.name!r}; subject ids must be unique.")
        names.add(vol.name)
        counts[vol.name], kept = _slices_of(vol, settings, log)
        if hasattr(vol, "lesions"):
            counts[vol.name]["n_lesions"] = len(vol.lesions)
        rows[vol.name] = []
        for z, img, msk, area, cls in kept:
            z_bin = z_bin_of(z, n_bins, crop)
            row = {"filepath": f"slices/{vol.name}_z{z:03d}.npz", "subject_id": vol.name, "z_index": z,
                   "z_bin": z_bin, "pathology_class": cls, "token": z_bin + n_bins * cls,
                   "has_lesion": area > 0, "lesion_area_px": area}
            np.savez(out / row["filepath"], image=img.astype(np.float32),
                     mask=(msk.astype(np.int8) * 2 - 1), **{k: np.asarray(v) for k, v in row.items()
                                                            if k != "filepath"}, source=np.asarray(source_name))
            rows[vol.name].append(row)
    if not any(rows.values()):
        raise DataError(f"no slice of {source_name} passed the filters (brain fraction > "
                        f"{settings['min_brain_fraction']} at brain_threshold={settings['brain_threshold']}, and not "
                        f"ambiguous); check the volumes' intensities or lower min_brain_fraction.")

    split = {"train": [], "val": []}
    subjects = sorted(n for n, r in rows.items() if r)
    if len(subjects) >= 2:
        mode = "subjects"
        val_names = _split_volumes({n: rows[n] for n in subjects}, settings["val_fraction"], settings["seed"])
        for name in subjects:
            part = "val" if name in val_names else "train"
            split[part] += rows[name]
            counts[name]["split"] = part
    else:
        mode = "blocks"
        (name,) = subjects
        train_z, val_z, drop_z = _split_blocks([r["z_index"] for r in rows[name]], settings["val_fraction"],
                                               BLOCK, GUARD, np.random.default_rng(settings["seed"]))
        by_z = {r["z_index"]: r for r in rows[name]}
        split["train"] = [by_z[z] for z in train_z]
        split["val"] = [by_z[z] for z in val_z]
        for z in drop_z:
            (out / by_z[z]["filepath"]).unlink()
        counts[name].update(split="train+val (blocks)", dropped_guard=len(drop_z))
    for part in SPLITS:
        if not split[part]:
            raise DataError(f"the {part} split of {source_name} is empty ({len(subjects)} subject(s) with kept "
                            f"slices, split by {mode}); lower val_fraction={settings['val_fraction']} or add "
                            f"volumes.")
        pd.DataFrame(split[part], columns=CSV_COLUMNS).to_csv(out / f"{part}.csv", index=False)

    classes = {part: {"lesion": sum(r["pathology_class"] for r in split[part]),
                      "lesion_free": sum(1 - r["pathology_class"] for r in split[part])} for part in SPLITS}
    z_bins = {part: {cls: [0] * n_bins for cls in ("lesion", "lesion_free")} for part in SPLITS}
    for part in SPLITS:
        for r in split[part]:
            z_bins[part]["lesion" if r["pathology_class"] else "lesion_free"][r["z_bin"]] += 1
    totals = {"subjects": len(counts), "empty_subjects": len(counts) - len(subjects),
              "train": len(split["train"]), "val": len(split["val"]),
              **{k: sum(c[k] for c in counts.values()) for k in ("dropped_brain", "dropped_ambiguous",
                                                                  "dropped_guard")}}
    return {"settings": settings, "split_mode": mode, "totals": totals, "classes": classes,
            "z_bins": z_bins, "subjects": counts}


# ---------------------------------------------------------------------------------------------------
# Reading it back

class LesionSliceDataset(torch.utils.data.Dataset):
    """One split of a lesion cache, in memory.

    Items: ``{"image": (1,H,W) float in [-1,1], "mask": (1,H,W) float in {-1,+1}, "token": long,
    "z_bin": long, "cls": long}``. Attributes: ``images``, ``masks`` (N,1,H,W) float tensors; ``tokens``,
    ``z_bins``, ``classes`` (N,) long tensors; ``index`` (the split's DataFrame); ``meta`` (meta.json);
    ``n_bins``.
    """

    def __init__(self, cache_dir: str | Path, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: use 'train' or 'val'.")
        self.cache_dir = Path(cache_dir)
        self.split = split
        redo = f"delete the cache folder {self.cache_dir} and call build_lesion_cache again to rebuild it."
        csv, meta = self.cache_dir / f"{split}.csv", self.cache_dir / "meta.json"
        for path in (csv, meta):
            if not path.is_file():
                raise DataError(f"lesion cache file {path} is missing; {redo}")
        self.meta = json.loads(meta.read_text())
        self.n_bins = int(self.meta["settings"]["n_bins"])
        self.index = pd.read_csv(csv)
        if list(self.index.columns) != CSV_COLUMNS:
            raise DataError(f"{csv} has columns {list(self.index.columns)}, expected {CSV_COLUMNS}; {redo}")
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
        self.tokens = torch.tensor(self.index["token"].to_numpy(), dtype=torch.long)
        self.z_bins = torch.tensor(self.index["z_bin"].to_numpy(), dtype=torch.long)
        self.classes = torch.tensor(self.index["pathology_class"].to_numpy(), dtype=torch.long)

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i], "token": self.tokens[i], "z_bin": self.z_bins[i],
                "cls": self.classes[i]}


def _class_members(dataset: LesionSliceDataset) -> tuple[torch.Tensor, torch.Tensor]:
    cls = dataset.classes
    lesion, free = torch.nonzero(cls == 1).flatten(), torch.nonzero(cls == 0).flatten()
    for name, members in (("lesion", lesion), ("lesion-free", free)):
        if members.numel() == 0:
            raise DataError(f"the {dataset.split} split of {dataset.cache_dir} has no {name} slice, so 50/50 "
                            f"lesion/lesion-free sampling is impossible; use more subjects (n_subjects) or "
                            f"volumes with lesions, or a lower min_lesion_px.")
    return lesion, free


def balanced_indices(dataset: LesionSliceDataset, n: int, seed: int = 0) -> torch.Tensor:
    """``n`` dataset indices, ``n // 2`` lesion and ``n - n // 2`` lesion-free, drawn uniformly with
    replacement within each class, in shuffled order (SLIM-Diff's 50/50 sampling). Raises a
    :class:`DataError` when either class is empty."""
    if not (isinstance(n, (int, np.integer)) and n >= 1):
        raise ValueError(f"n={n!r}: use an int >= 1.")
    lesion, free = _class_members(dataset)
    g = torch.Generator().manual_seed(int(seed))
    n_les = int(n) // 2
    picks = torch.cat([lesion[torch.randint(lesion.numel(), (n_les,), generator=g)],
                       free[torch.randint(free.numel(), (int(n) - n_les,), generator=g)]])
    return picks[torch.randperm(picks.numel(), generator=g)]


def balanced_sampler(dataset: LesionSliceDataset, num_samples: int | None = None,
                     seed: int | None = None) -> torch.utils.data.WeightedRandomSampler:
    """A ``WeightedRandomSampler`` (with replacement) that draws each class with probability 1/2:
    weight ``0.5 / n_class`` per slice. ``num_samples`` defaults to ``len(dataset)`` (one "epoch").
    Raises a :class:`DataError` when either class is empty."""
    lesion, free = _class_members(dataset)
    weights = torch.empty(len(dataset), dtype=torch.double)
    weights[lesion] = 0.5 / lesion.numel()
    weights[free] = 0.5 / free.numel()
    g = torch.Generator().manual_seed(int(seed)) if seed is not None else None
    return torch.utils.data.WeightedRandomSampler(weights, num_samples or len(dataset), replacement=True,
                                                  generator=g)
