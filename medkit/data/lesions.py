"""SYNTHETIC lesions on the MNI152 template: a shippable stand-in for FLAIR + lesion-mask data.

Why synthetic. SLIM-Diff (Pascual-Gonzalez et al., arXiv 2602.03372) learns [FLAIR slice, lesion mask]
pairs, and no real lesion data may ship with the kit. So the default source for cpu profiles is the
MNI152 T1 template from nilearn's wheel (see :mod:`medkit.data.sources`), copied once per *subject*,
with that subject's own random set of hyperintense white-matter blobs and their masks. Everything
made here is labelled synthetic: the source name is :data:`SOURCE_NAME`
(``"mni152-synthetic-lesions"``), each volume carries ``synthetic=True`` and a ``note``. It checks
that a pipeline learns joint image + mask synthesis; it says nothing about real pathology. For real
work pass a folder of FLAIR volumes with lesion masks (MSLesSeg, ISLES, BraTS FLAIR + a binarised
tumour label) to :func:`medkit.data.lesion_slices.build_lesion_cache`.

What a subject is (all draws from ``np.random.default_rng([seed, subject_index])``, so subject ``i``
is the same whatever ``n_subjects`` is):

* lesion count: 0 for every ``lesion_free_every``-th subject (index 4, 9, 14, ... by default),
  otherwise uniform in ``[1, max_lesions]``;
* one lesion = the union of 1-3 ellipsoids ("lobes") with random orientation and axis ratios
  0.45-1, base radius log-uniform in ``radius_mm`` (so small dots and large confluent blobs both
  occur), whose boundary is made irregular by adding smoothed noise to the level set
  ``f = max_k (1 - |R_k^T (x - o_k)| / a_k) + 0.25 * noise``, lesion where ``f > 0``;
* placement: centres drawn in white matter (the template's > 50 % WM map) with probability
  proportional to the depth inside WM (distance to its border, on a 2 mm grid), so deep and
  periventricular WM is favoured, as for MS lesions;
* mask = ``(f > 0) & WM``: lesion voxels never leave white matter;
* base contrast: ``base="pseudo-flair"`` (default) remaps the T1 template's intensities to a
  FLAIR-like contrast (CSF dark, GM brighter than WM; :func:`pseudo_flair`), because on the
  T1 contrast WM is already the brightest tissue, so after SLIM-Diff's 99.5th-percentile scaling a
  "hyperintense" lesion clips to the same value as bright WM and is hard to see. ``base="t1"``
  keeps the template as it is;
* intensity: blended towards ``contrast * WM level`` (contrast uniform in ``contrast``, per lesion,
  with 4 % internal texture) with a soft edge about 1.5 voxels wide, so lesions are brighter than
  any normal tissue, like FLAIR hyperintensities;
* subject variation: a gamma in ``gamma`` and a smooth multiplicative bias field (+-``bias``),
  applied after the lesions, so no two subjects have identical intensities.

Volumes are full template size (197 x 233 x 189, 1 mm, RAS), float32 image, uint8 {0,1} mask.
:func:`iter_synthetic_lesion_volumes` yields them one at a time (36 MB each) for memory-light caching.
"""
from __future__ import annotations

import functools
import hashlib
import inspect
import json
from dataclasses import dataclass, field
from typing import Iterator

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from medkit.data.sources import DataError, Volume, _load_3d, fingerprint, mni152_volumes

SOURCE_NAME = "mni152-synthetic-lesions"
GENERATOR_VERSION = 1
NOTE = ("SYNTHETIC data: the MNI152 T1 template (nilearn; remapped to a FLAIR-like contrast unless "
        "base='t1') with simulated hyperintense white-matter lesions and their masks; not patient data.")
BASES = ("pseudo-flair", "t1")
FLAIR_WEIGHTS = (1.0, 0.65, 0.6)  # pseudo-FLAIR: multipliers of the T1 in GM, WM, CSF
EDGE_VOX = 1.5  # width (voxels) of the soft intensity ramp at a lesion's border


@dataclass
class SyntheticLesionVolume(Volume):
    """A :class:`Volume` whose image is the template with simulated lesions and whose mask marks them."""
    zooms: tuple[float, float, float] = (1.0, 1.0, 1.0)  # voxel size in mm (RAS order)
    lesions: list[dict] = field(default_factory=list)    # per lesion: centre (voxel), radius_mm, n_voxels
    synthetic: bool = True
    source: str = SOURCE_NAME
    note: str = NOTE


def _check(n_subjects, max_lesions, radius_mm, contrast, gamma, bias, lesion_free_every, base) -> None:
    if base not in BASES:
        raise DataError(f"base={base!r}: use one of {BASES}.")
    if not (isinstance(n_subjects, (int, np.integer)) and not isinstance(n_subjects, bool) and n_subjects >= 1):
        raise DataError(f"n_subjects={n_subjects!r}: use an int >= 1 (e.g. 8).")
    if not (isinstance(max_lesions, (int, np.integer)) and max_lesions >= 1):
        raise DataError(f"max_lesions={max_lesions!r}: use an int >= 1 (e.g. 12).")
    if len(radius_mm) != 2 or not 0.5 <= radius_mm[0] <= radius_mm[1] <= 30:
        raise DataError(f"radius_mm={radius_mm!r}: use (smallest, largest) in mm with 0.5 <= smallest <= "
                        f"largest <= 30, e.g. (1.5, 10.0).")
    if len(contrast) != 2 or not 1.0 < contrast[0] <= contrast[1] <= 3.0:
        raise DataError(f"contrast={contrast!r}: use (low, high) multiples of the WM level with "
                        f"1 < low <= high <= 3, e.g. (1.25, 1.6); lesions must be hyperintense.")
    if len(gamma) != 2 or not 0.3 <= gamma[0] <= gamma[1] <= 3.0:
        raise DataError(f"gamma={gamma!r}: use (low, high) with 0.3 <= low <= high <= 3, e.g. (0.85, 1.2).")
    if not 0.0 <= bias < 0.5:
        raise DataError(f"bias={bias!r}: use a relative amplitude in [0, 0.5), e.g. 0.08.")
    if not (isinstance(lesion_free_every, (int, np.integer)) and lesion_free_every >= 0):
        raise DataError(f"lesion_free_every={lesion_free_every!r}: use an int >= 0 (0 = every subject has "
                        f"lesions; 5 = subjects 4, 9, ... have none).")


def pseudo_flair(t1: np.ndarray, wm: np.ndarray, gm: np.ndarray) -> np.ndarray:
    """FLAIR-like contrast from the T1 template: ``t1 * (p_GM + 0.65 p_WM + 0.6 p_CSF)``.

    ``wm``, ``gm`` are the template's tissue probabilities in [0, 1], ``p_CSF = clip(1 - p_GM - p_WM)``.
    WM (T1 ~215) lands below GM (T1 ~169): 140 vs 169, GM/WM ~1.2 as in FLAIR, CSF stays dark, the
    T1's texture and partial-volume boundaries are kept (the weights vary smoothly), background stays 0.
    A lesion at 1.3-1.8 x the WM level is then the brightest thing in the brain, as in FLAIR.
    """
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    return (t1 * (gm + FLAIR_WEIGHTS[1] * wm + FLAIR_WEIGHTS[2] * csf)).astype(np.float32)


class _Template:
    """The base image, its WM mask, WM level and the centre-sampling distribution, computed once."""

    def __init__(self, base: str):
        from nilearn import datasets  # slow to import (~3 s): only when a template is needed
        (vol,) = mni152_volumes()
        self.path = vol.path
        self.zooms = tuple(float(z) for z in nib.load(vol.path).header.get_zooms()[:3])
        self.wm = vol.mask.astype(bool)
        if base == "pseudo-flair":
            gm = _load_3d(datasets.GM_MNI152_FILE_PATH) / 255.0
            self.image = pseudo_flair(vol.image, _load_3d(datasets.WM_MNI152_FILE_PATH) / 255.0, gm)
        else:
            self.image = vol.image
        self.wm_level = float(np.median(self.image[self.wm]))
        # depth inside WM on a 2 mm grid (a full-resolution distance transform costs ~3 s)
        coarse = self.wm[::2, ::2, ::2]
        depth = ndimage.distance_transform_edt(coarse) * 2.0 * self.zooms[0]
        self.coarse_idx = np.argwhere(coarse)
        self.coarse_depth = depth[coarse]


@functools.lru_cache(maxsize=1)
def _template(base: str) -> _Template:
    """The last used base template, kept (~60 MB) so repeated builds skip nilearn's file reads."""
    return _Template(base)


def _bias_field(shape: tuple[int, ...], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """exp of a smooth random field (4^3 control points, trilinear): multiplicative, ~+-amplitude."""
    coarse = torch.from_numpy(rng.normal(0.0, amplitude, size=(1, 1, 4, 4, 4)).astype(np.float32))
    return torch.exp(F.interpolate(coarse, size=shape, mode="trilinear", align_corners=True))[0, 0].numpy()


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    if np.linalg.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q


def _add_lesion(image: np.ndarray, mask: np.ndarray, tpl: _Template, rng: np.random.Generator,
                radius_mm: tuple[float, float], contrast: tuple[float, float]) -> dict | None:
    """Draw one lesion, blend it into ``image`` and ``mask`` in place; None if it missed WM entirely."""
    r_mm = float(np.exp(rng.uniform(np.log(radius_mm[0]), np.log(radius_mm[1]))))
    zoom = np.asarray(tpl.zooms)
    # centre: a WM voxel, deeper ones likelier; needs a depth of half the radius (capped at 4 mm)
    ok = tpl.coarse_depth >= min(0.5 * r_mm, 4.0)
    w = tpl.coarse_depth[ok]
    pick = tpl.coarse_idx[ok][rng.choice(w.size, p=w / w.sum())]
    centre = pick * 2 + rng.integers(0, 2, size=3)

    half = np.ceil(2.2 * r_mm / zoom).astype(int) + 2
    lo = np.maximum(centre - half, 0)
    hi = np.minimum(centre + half + 1, image.shape)
    box = tuple(slice(a, b) for a, b in zip(lo, hi))
    grid = np.stack(np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij"), axis=-1)
    x = (grid - centre) * zoom  # mm, centre at 0

    f = np.full(x.shape[:3], -np.inf, np.float32)
    for k in range(int(rng.integers(1, 4))):
        a = r_mm * (1.0 if k == 0 else rng.uniform(0.5, 0.9)) * np.array([1.0, *rng.uniform(0.45, 1.0, 2)])
        o = np.zeros(3) if k == 0 else rng.normal(0.0, 0.45 * r_mm, 3)
        u = (x - o) @ _random_rotation(rng)  # coordinates in the lobe's own axes
        f = np.maximum(f, 1.0 - np.sqrt(((u / a) ** 2).sum(-1)).astype(np.float32))
    noise = ndimage.gaussian_filter(rng.standard_normal(f.shape).astype(np.float32), max(1.0, r_mm / 3))
    f += 0.25 * noise / max(float(noise.std()), 1e-6)

    wm = tpl.wm[box]
    lesion = (f > 0) & wm
    if not lesion.any():
        return None
    # soft edge: ramp over EDGE_VOX voxels of the level set (f changes by ~1/r per mm), faded outside WM
    ramp = np.clip(0.5 + f * r_mm / (EDGE_VOX * float(zoom.mean())), 0.0, 1.0)
    weight = ramp * np.clip(ndimage.gaussian_filter(wm.astype(np.float32), 0.7) * 2.0, 0.0, 1.0)
    level = tpl.wm_level * rng.uniform(*contrast)
    texture = ndimage.gaussian_filter(rng.standard_normal(f.shape).astype(np.float32), 1.0)
    texture = 1.0 + 0.04 * texture / max(float(texture.std()), 1e-6)
    region = image[box]
    image[box] = region * (1.0 - weight) + np.float32(level) * texture * weight
    mask[box] |= lesion.astype(np.uint8)
    return {"centre": [int(c) for c in centre], "radius_mm": round(r_mm, 2), "n_voxels": int(lesion.sum())}


def source_fingerprint(n_subjects: int, seed: int, **options) -> str:
    """Cache identity of a synthetic set: template fingerprint, generator version, every option's value."""
    params = inspect.signature(iter_synthetic_lesion_volumes).parameters.values()
    settings = {p.name: p.default for p in params if p.kind is inspect.Parameter.KEYWORD_ONLY}
    settings.update(options, n_subjects=int(n_subjects), seed=int(seed))
    text = json.dumps({"template": fingerprint("mni152"), "version": GENERATOR_VERSION, **settings},
                      sort_keys=True, default=list)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def iter_synthetic_lesion_volumes(n_subjects: int = 8, seed: int = 0, *, max_lesions: int = 12,
                                  radius_mm: tuple[float, float] = (1.5, 10.0),
                                  contrast: tuple[float, float] = (1.3, 1.8),
                                  gamma: tuple[float, float] = (0.85, 1.2), bias: float = 0.08,
                                  lesion_free_every: int = 5,
                                  base: str = "pseudo-flair") -> Iterator[SyntheticLesionVolume]:
    """Yield the subjects of :func:`synthetic_lesion_volumes` one at a time (one volume in memory)."""
    _check(n_subjects, max_lesions, radius_mm, contrast, gamma, bias, lesion_free_every, base)
    tpl = _template(base)
    for i in range(int(n_subjects)):
        rng = np.random.default_rng([int(seed), i])
        image = tpl.image.copy()
        mask = np.zeros(image.shape, np.uint8)
        lesion_free = lesion_free_every > 0 and i % lesion_free_every == lesion_free_every - 1
        n_target = 0 if lesion_free else int(rng.integers(1, max_lesions + 1))
        lesions = []
        for _ in range(n_target):
            info = _add_lesion(image, mask, tpl, rng, radius_mm, contrast)
            if info is not None:
                lesions.append(info)
        # per-subject intensity variation, applied to the whole head (lesions included)
        top = float(image.max())
        image = (np.power(image / top, rng.uniform(*gamma)) * top).astype(np.float32)
        image *= _bias_field(image.shape, bias, rng)
        yield SyntheticLesionVolume(name=f"synth{i:03d}", image=image, mask=mask,
                                    path=f"{tpl.path} + synthetic lesions (seed {seed}, subject {i})",
                                    zooms=tpl.zooms, lesions=lesions)


def synthetic_lesion_volumes(n_subjects: int = 8, seed: int = 0, **kwargs) -> list[SyntheticLesionVolume]:
    """``n_subjects`` SYNTHETIC subjects: the MNI152 template, each with its own random WM lesions + mask.

    Keyword options (``max_lesions``, ``radius_mm``, ``contrast``, ``gamma``, ``bias``,
    ``lesion_free_every``, ``base``) are described in the module docstring. Each volume is 36 MB (image) + 9 MB
    (mask); use :func:`iter_synthetic_lesion_volumes` to hold one at a time.
    """
    return list(iter_synthetic_lesion_volumes(n_subjects, seed, **kwargs))
