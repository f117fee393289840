"""The data of a through-plane super-resolution run: thin volumes, their thick slices, splits and patches.

``load_sr_data(cfg)`` reads ``cfg["data"]`` and returns cases on the network's scale ([-1, 1]):

- ``"mni152"``: the MNI152 T1 template in nilearn's wheel (real MRI, 1 mm), block-averaged to
  ``voxel_mm``; one volume, so it is split along z (``thickslice.slab_split``): a held-out test slab,
  gaps of 2 r thin slices on each side, training patches from the rest. Labelled "through-plane SR of an
  MRI" wherever it is reported: it is not CT.
- a NIfTI file or a DICOM series folder (``medkit.data.volumes``): a thin-slice volume, split the same way.
- a paired folder, RPLHR-CT style: ``thin/`` (or ``1mm/``) and ``thick/`` (or ``5mm/``) holding files of the
  same names; thick slice k lies on thin slice ``factor * k + pair_offset``. Cases are split by volume (the
  last fifth, at least one, held out; sorted by name).

Simulated thick slices (single volumes) come from ``thickslice.simulate_thick`` with the configured slice
profile and offset r // 2. Intensities: CT in HU through the window [-1024, 3071] -> [-1, 1]; MR/raw
through [lo, hi] = ``volumes.robust_range`` of the (first) training volume, stored with the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import locate
from . import thickslice as ts
from . import volumes as V


@dataclass
class SRCase:
    """One volume: thin ``hr``, thick ``lr`` and ``y`` = lr interpolated to the thin grid (cubic), all in [-1, 1]."""
    name: str
    hr: np.ndarray
    lr: np.ndarray
    y: np.ndarray
    affine: np.ndarray            # of the thin grid (RAS mm)
    lr_affine: np.ndarray
    foreground: np.ndarray        # body / brain mask on the thin grid
    train_z: list = field(default_factory=list)   # thin z ranges [start, stop) patches may come from
    test_z: tuple | None = None                   # thin z range [start, stop) scored, None: not a test case


@dataclass
class SRData:
    cases: list[SRCase]
    factor: int
    offset: int
    intensity: str                # "HU" or "raw"
    window: tuple[float, float]   # physical range mapped to [-1, 1]
    label: str
    split: str
    profile: str = "gaussian"     # the slice profile of the simulated (or assumed) thick slices

    def to_physical(self, u):
        return V.unit_to_hu(u, self.window) if self.intensity == "HU" else V.unit_to_raw(u, *self.window)

    def degrade(self, vol: np.ndarray) -> np.ndarray:
        """The forward model: slice profile along z, then decimation. Linear, so any intensity scale works
        (the network's [-1, 1] or physical units)."""
        return ts.simulate_thick(vol, self.factor, self.profile, self.offset)

    @property
    def train(self) -> list[SRCase]:
        return [c for c in self.cases if c.train_z]

    @property
    def test(self) -> list[SRCase]:
        return [c for c in self.cases if c.test_z is not None]


def _to_unit(array: np.ndarray, intensity: str, window) -> np.ndarray:
    f = V.hu_to_unit if intensity == "HU" else (lambda x, w: V.raw_to_unit(x, *w))
    return np.asarray(f(array, window), dtype=np.float32)


def _foreground(hr_phys: np.ndarray, intensity: str, window) -> np.ndarray:
    from ..metrics.volume import body_mask

    thr = -500.0 if intensity == "HU" else window[0] + 0.1 * (window[1] - window[0])
    return body_mask(hr_phys, thr)


def _pair_dirs(folder: Path):
    for thin, thick in (("thin", "thick"), ("1mm", "5mm")):
        if (folder / thin).is_dir() and (folder / thick).is_dir():
            return folder / thin, folder / thick
    return None


def load_sr_data(cfg: dict) -> SRData:
    data = locate.resolve(cfg["data"])  # a "kaggle:OWNER/SLUG" value: the attached dataset's folder
    if data == "mni152":
        vol = V.mni152_volume()
        label = f"MNI152 T1 template (real MRI, nilearn), {cfg['voxel_mm']:g} mm: through-plane SR of an MRI, not CT"
        return _single(vol, cfg, label, block=int(round(cfg["voxel_mm"])))
    path = Path(str(data)).expanduser()
    if path.is_dir() and _pair_dirs(path):
        return _pairs(path, cfg)
    vol = V.read_volume(path)
    return _single(vol, cfg, f"{path.name} ({vol.modality}, {vol.intensity})", block=1)


def _single(vol: V.Volume, cfg: dict, label: str, block: int) -> SRData:
    r = int(cfg["factor"])
    offset = r // 2
    hr_phys, affine = ts.block_average(vol.array, vol.affine, block) if block > 1 else (vol.array, vol.affine)
    window = V.HU_WINDOW if vol.intensity == "HU" else V.robust_range(hr_phys)
    hr = _to_unit(hr_phys, vol.intensity, window)
    lr = ts.simulate_thick(hr, r, cfg["slice_profile"], offset)
    y = ts.upsample_z(lr, r, offset, n_hr=hr.shape[2], kind="cubic")
    split = ts.slab_split(hr.shape[2], cfg["test_slab"], gap=2 * r, min_train=cfg["patch"][2])
    case = SRCase(name=Path(vol.source).name or "volume", hr=hr, lr=lr, y=y, affine=affine,
                  lr_affine=ts.thick_affine(affine, r, offset), foreground=_foreground(hr_phys, vol.intensity, window),
                  train_z=split.train, test_z=split.test)
    return SRData(cases=[case], factor=r, offset=offset, intensity=vol.intensity, window=tuple(map(float, window)),
                  label=label, split=split.describe(), profile=cfg["slice_profile"])


def _pairs(folder: Path, cfg: dict) -> SRData:
    r = int(cfg["factor"])
    offset = int(cfg["pair_offset"]) if cfg.get("pair_offset") is not None else r // 2
    thin_dir, thick_dir = _pair_dirs(folder)
    names = sorted(p.name for p in thin_dir.iterdir() if p.name.endswith((".nii", ".nii.gz")))
    missing = [n for n in names if not (thick_dir / n).exists()]
    if not names or missing:
        raise V.VolumeError(f"{folder}: paired folders need the same NIfTI names in {thin_dir.name}/ and "
                            f"{thick_dir.name}/; " + (f"missing in {thick_dir.name}/: {missing[:5]}" if names
                                                      else f"{thin_dir} holds no .nii/.nii.gz"))
    n_test = max(1, len(names) // 5) if len(names) > 1 else 0
    cases, window, intensity = [], None, None
    for i, n in enumerate(names):
        thin, thick = V.read_nifti(thin_dir / n), V.read_nifti(thick_dir / n)
        if thin.array.shape[:2] != thick.array.shape[:2]:
            raise V.VolumeError(f"{thick_dir / n} is {thick.array.shape[:2]} in-plane but {thin_dir / n} is "
                                f"{thin.array.shape[:2]}: a pair must share its in-plane grid")
        want = ts.n_thick(thin.array.shape[2], r, offset)
        if thick.array.shape[2] != want:
            raise V.VolumeError(f"{thick_dir / n} has {thick.array.shape[2]} slices; with factor {r} and "
                                f"pair_offset {offset}, {thin_dir / n}'s {thin.array.shape[2]} thin slices make {want}. "
                                "Check factor and pair_offset (RPLHR-CT: factor 5, pair_offset 3).")
        ratio = thick.spacing[2] / thin.spacing[2]
        if abs(ratio - r) > 0.01 * r:
            raise V.VolumeError(f"{n}: slice spacing {thick.spacing[2]:.3g} mm / {thin.spacing[2]:.3g} mm = {ratio:.3g}, "
                                f"not factor={r}")
        if window is None:
            intensity = thin.intensity
            window = V.HU_WINDOW if intensity == "HU" else V.robust_range(thin.array)
        hr, lr = _to_unit(thin.array, intensity, window), _to_unit(thick.array, intensity, window)
        test = i >= len(names) - n_test
        z = hr.shape[2]
        cases.append(SRCase(name=n, hr=hr, lr=lr, y=ts.upsample_z(lr, r, offset, n_hr=z, kind="cubic"),
                            affine=thin.affine, lr_affine=thick.affine,
                            foreground=_foreground(thin.array, intensity, window),
                            train_z=[] if test else [(0, z)], test_z=(0, z) if test else None))
    if n_test == 0:  # one pair: split it along z like a single volume
        c = cases[0]
        split = ts.slab_split(c.hr.shape[2], cfg["test_slab"], gap=2 * r, min_train=cfg["patch"][2])
        c.train_z, c.test_z = split.train, split.test
        how = split.describe()
    else:
        how = f"by volume: {len(names) - n_test} training, {n_test} test ({', '.join(names[-n_test:])})"
    return SRData(cases=cases, factor=r, offset=offset, intensity=intensity, window=tuple(map(float, window)),
                  label=f"paired thin/thick volumes in {folder}", split=how, profile=cfg["slice_profile"])


def patch_dataset(data: SRData, cfg: dict) -> torch.utils.data.Dataset:
    """Fixed training patches (HR + its y) from every training case, >= min_foreground body/brain voxels."""
    sets = []
    per = max(1, cfg["n_patches"] // max(1, len(data.train)))
    for i, c in enumerate(data.train):
        pos = ts.patch_positions(c.foreground, c.train_z, tuple(cfg["patch"]), per, cfg["seed"] + i,
                                 cfg["min_foreground"])
        sets.append(ts.PatchDataset(c.hr, c.y, pos, tuple(cfg["patch"])))
    return sets[0] if len(sets) == 1 else torch.utils.data.ConcatDataset(sets)
