"""3D CT / MR volumes with their geometry: read a DICOM series or a NIfTI file, write NIfTI, map intensities.

Why this module. 3D diffusion on CT or MR needs the voxels *and* where they are: the spacing (to
resample to a common grid) and the orientation (so that a generated volume can be written back and
overlaid on the patient). Every reader here returns one :class:`Volume`:

* ``array``: float32, shape (X, Y, Z), Z the slice (through-plane) axis;
* ``affine``: 4x4 float64 voxel -> world in RAS+ millimetres (nibabel's convention), so that
  ``affine @ [i, j, k, 1]`` is the world position of voxel (i, j, k);
* ``modality`` ("CT", "MR", ... or "unknown") and ``intensity`` ("HU": CT in Hounsfield units,
  else "raw"), so that the right intensity mapping (:func:`hu_to_unit` or :func:`raw_to_unit`) is
  chosen downstream;
* ``source``: the file or folder it came from.

DICOM series (:func:`read_dicom_series`). A folder holds one series of single-frame slices. The
geometry comes from the DICOM tags, never from file names or InstanceNumber (both are often wrong
after anonymisation or copying): slices are sorted by their position along the slice normal
``n = row_cosine x col_cosine``, the slice spacing is the distance between sorted positions (the
SliceThickness tag is the thickness of the reconstructed slab, not the distance between slices, and
is not used), and the in-plane spacing is PixelSpacing = (distance between rows, distance between
columns). Patient coordinates in DICOM are LPS; the affine is converted to RAS by negating x and y.
Array axis 0 is the column index (it moves along the row cosine), axis 1 the row index (along the
column cosine), axis 2 the sorted slice index (along +n). CT pixels become HU with each slice's
``RescaleSlope`` and ``RescaleIntercept``. Anything that would make the grid wrong - several series,
duplicated or missing slices, uneven spacing, gantry tilt, mixed image sizes, multi-frame files -
stops with a :class:`VolumeError` naming the folder (and files) and saying what to do; nothing is
dropped or resampled silently.

NIfTI (:func:`read_nifti`, :func:`write_nifti`). Read with nibabel and reoriented to the closest
canonical RAS orientation (a lossless axis flip / permutation), so that Z is the axial axis for
ordinary acquisitions. Written as float32 with the affine in both the sform and the qform, units mm.

Intensities. Networks take values in [-1, 1]. CT has a physical scale, so :func:`hu_to_unit` maps
the fixed window :data:`HU_WINDOW` = (-1024, 3071) HU (the 12-bit CT range) linearly to [-1, 1];
:func:`unit_to_hu` goes back. MR (and any "raw" volume) has no absolute scale: :func:`robust_range`
gives a (lo, hi) from percentiles of the foreground and :func:`raw_to_unit` / :func:`unit_to_raw`
map [lo, hi] <-> [-1, 1]. All four take numpy arrays or torch tensors.

:func:`mni152_volume` is the MNI152 2009 T1 template shipped in nilearn's wheel (real MR, no
download), as a :class:`Volume`.
"""
from __future__ import annotations

import math
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

HU_WINDOW = (-1024.0, 3071.0)
"""CT intensity window mapped to [-1, 1]: air (-1024 HU) to the top of the 12-bit range (3071 HU)."""

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IGNORED_NAMES = ("dicomdir", "thumbs.db", "desktop.ini")  # compared lower-case; hidden files too
ANGLE_TOL_DEG = 0.5        # gantry tilt / non-orthogonal cosines beyond this are refused
DUPLICATE_TOL_MM = 0.01    # two slices closer than this along the normal are the same position
SPACING_REL_TOL = 0.01     # slice gaps may differ from the median by 1 % ...
SPACING_ABS_TOL_MM = 0.01  # ... or 0.01 mm, whichever is larger
HU_PLAUSIBLE = (-2048.0, 32767.0)
AUTO_HU_P1 = -500.0        # intensity="auto": HU when the 1st percentile is below this
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
_SHOW = 10                 # file names shown in a message before "and N more"


class VolumeError(ValueError):
    """Bad volume input; the message names the file or folder, what is wrong and what to do."""


@dataclass
class Volume:
    """One 3D volume: float32 ``array`` (X, Y, Z; Z = slice axis) and its voxel -> RAS+ mm ``affine``.

    ``modality``: DICOM Modality ("CT", "MR", ...) or "unknown"; ``intensity``: "HU" (CT in
    Hounsfield units) or "raw"; ``source``: the file or folder read.
    """
    array: np.ndarray
    affine: np.ndarray
    modality: str = "unknown"
    intensity: str = "raw"
    source: str = ""

    def __post_init__(self) -> None:
        self.array = np.asarray(self.array, dtype=np.float32)
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.array.ndim != 3:
            raise VolumeError(f"Volume from {self.source or '<memory>'}: array has shape {self.array.shape}; "
                              f"a Volume is 3D (X, Y, Z).")
        if self.affine.shape != (4, 4):
            raise VolumeError(f"Volume from {self.source or '<memory>'}: affine has shape {self.affine.shape}; "
                              f"it must be the 4x4 voxel -> world matrix.")
        if self.intensity not in ("HU", "raw"):
            raise VolumeError(f"Volume from {self.source or '<memory>'}: intensity={self.intensity!r}; use "
                              f"'HU' or 'raw'.")

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along array axes 0, 1, 2 (column norms of ``affine[:3, :3]``)."""
        norms = np.linalg.norm(self.affine[:3, :3], axis=0)
        return (float(norms[0]), float(norms[1]), float(norms[2]))


def _names(paths, show: int = _SHOW) -> str:
    names = [p.name if isinstance(p, Path) else str(p) for p in paths]
    more = f" and {len(names) - show} more" if len(names) > show else ""
    return ", ".join(names[:show]) + more


# ---------------------------------------------------------------------------------------------------
# DICOM series

def _is_ignored(p: Path) -> bool:
    return p.name.startswith(".") or p.name.lower() in IGNORED_NAMES


def _try_dicom(p: Path):
    """The dataset in ``p``, or None if it is not DICOM (also accepts preamble-less files with image tags)."""
    import pydicom
    from pydicom.errors import InvalidDicomError
    try:
        return pydicom.dcmread(str(p))
    except InvalidDicomError:
        pass
    except Exception:  # noqa: BLE001 - a truncated or damaged file: report it as unreadable
        return None
    try:  # old ACR-NEMA style files without the 128-byte preamble + "DICM"
        ds = pydicom.dcmread(str(p), force=True)
        if "SOPClassUID" in ds and "PixelData" in ds:
            return ds
    except Exception:  # noqa: BLE001
        pass
    return None


def _is_multiframe(ds) -> bool:
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    return frames > 1 or "PerFrameFunctionalGroupsSequence" in ds


def _floats(value, n: int) -> np.ndarray | None:
    try:
        out = np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return out if out.shape == (n,) and np.all(np.isfinite(out)) else None


def _angle_deg(a: np.ndarray, b: np.ndarray) -> float:
    """Angle between two lines (direction ignored), in degrees."""
    c = abs(float(np.dot(a, b))) / (np.linalg.norm(a) * np.linalg.norm(b))
    return math.degrees(math.acos(min(1.0, c)))


def read_dicom_series(folder: str | Path, expect_hu: bool = True) -> Volume:
    """Read one DICOM series of single-frame slices from ``folder`` (not recursive) as a RAS :class:`Volume`.

    Every file directly in ``folder`` is read; subfolders are not. Ignored (housekeeping, never
    slices): hidden files (name starting with ``.``, e.g. ``.DS_Store``), ``DICOMDIR``, ``Thumbs.db``,
    ``desktop.ini``. Any other file that is not DICOM is an error listing it.

    Slices are ordered by ``dot(ImagePositionPatient, n)`` with ``n = row_cosine x col_cosine``; the
    slice spacing is the (uniform) distance between those positions; in-plane spacing comes from
    PixelSpacing. With ``expect_hu=True`` the series must be CT with RescaleSlope/Intercept and the
    array holds HU (``intensity="HU"``). With ``expect_hu=False`` any modality is read: values are
    ``pixel * RescaleSlope + RescaleIntercept`` when those tags exist (else the stored values), and
    ``intensity`` is "HU" only for CT with the rescale tags, "raw" otherwise.

    Raises :class:`VolumeError` (naming the folder and files) for: a missing folder, non-DICOM files,
    no DICOM files, multi-frame (enhanced) files, several series, a non-CT modality when
    ``expect_hu``, missing geometry tags, fewer than 2 slices, mixed image sizes, mixed orientations
    or pixel spacings, non-orthogonal orientation cosines, duplicated slice positions, gantry tilt,
    missing slices and uneven slice spacing.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise VolumeError(f"DICOM folder {folder} does not exist (or is not a folder); pass the folder that "
                          f"holds the slices of one series.")
    files = sorted(p for p in folder.iterdir() if p.is_file())
    ignored = [p for p in files if _is_ignored(p)]
    ignored_set = set(ignored)
    datasets: dict[Path, Any] = {}
    not_dicom = []
    for p in files:
        if p in ignored_set:
            continue
        ds = _try_dicom(p)
        if ds is None:
            not_dicom.append(p)
        else:
            datasets[p] = ds
    if not_dicom:
        raise VolumeError(f"{folder}: {len(not_dicom)} file(s) are not DICOM (or are damaged): "
                          f"{_names(not_dicom)}. Move them out of the folder (it must hold only the slices of "
                          f"one series; hidden files and DICOMDIR are ignored) or re-export the damaged ones.")
    if not datasets:
        seen = f" (ignored: {_names(ignored)})" if ignored else ""
        raise VolumeError(f"no DICOM files in {folder}{seen}; point at the folder that holds the slices of one "
                          f"series (subfolders are not searched).")

    multi = [p for p, ds in datasets.items() if _is_multiframe(ds)]
    if multi:
        ds = datasets[multi[0]]
        raise VolumeError(f"{folder}: {_names(multi)} is a multi-frame (enhanced) DICOM file "
                          f"(NumberOfFrames={ds.get('NumberOfFrames', '?')}); medkit reads only series of "
                          f"single-frame slices. Convert it to NIfTI (e.g. with dcm2niix) and use read_nifti.")

    by_series: dict[str, list[Path]] = {}
    for p, ds in datasets.items():
        by_series.setdefault(str(ds.get("SeriesInstanceUID", "<no SeriesInstanceUID>")), []).append(p)
    if len(by_series) > 1:
        parts = []
        for uid, paths in sorted(by_series.items(), key=lambda kv: -len(kv[1])):
            desc = str(datasets[paths[0]].get("SeriesDescription", "") or "no SeriesDescription")
            parts.append(f"{uid} ({len(paths)} files, {desc!r}, e.g. {paths[0].name})")
        raise VolumeError(f"{folder} holds {len(by_series)} series: {'; '.join(parts)}. Put each series in its "
                          f"own folder and read the one you want.")

    paths = list(datasets)
    first = datasets[paths[0]]
    modality = str(first.get("Modality", "") or "unknown")
    if expect_hu and modality != "CT":
        raise VolumeError(f"{folder}: Modality is {modality}; HU are expected: pass expect_hu=False or use a CT "
                          f"series.")

    required = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns", "PixelData")
    if expect_hu:
        required += ("RescaleSlope", "RescaleIntercept")
    for tag in required:
        lacking = [p for p in paths if tag not in datasets[p] or datasets[p].get(tag) in (None, "")]
        if lacking:
            if tag.startswith("Rescale"):
                what = "so HU cannot be computed: pass expect_hu=False to read the stored values"
            elif tag == "PixelData":
                what = "so they hold no image (a report or presentation state?): move them out of the folder"
            else:
                what = ("so the geometry is unknown: re-export the series with its full header (some anonymisers "
                        "strip it)")
            raise VolumeError(f"{folder}: {len(lacking)} file(s) have no {tag} ({_names(lacking)}), {what}.")
    colour = [p for p in paths if int(datasets[p].get("SamplesPerPixel", 1) or 1) != 1]
    if colour:
        raise VolumeError(f"{folder}: {_names(colour)} are colour images (SamplesPerPixel > 1); medkit reads "
                          f"greyscale CT/MR slices only. Remove them from the folder.")

    if len(paths) < 2:
        raise VolumeError(f"{folder} has only 1 slice ({paths[0].name}); a volume needs at least 2 slices of "
                          f"the series. Copy the whole series into the folder.")

    sizes: dict[tuple[int, int], Path] = {}
    for p in paths:
        sizes.setdefault((int(datasets[p].Rows), int(datasets[p].Columns)), p)
    if len(sizes) > 1:
        shown = ", ".join(f"{r}x{c} (e.g. {p.name})" for (r, c), p in sizes.items())
        raise VolumeError(f"{folder}: slices have different sizes (Rows x Columns): {shown}; one series must "
                          f"have one image size. Remove the slices that do not belong (often a localizer).")

    geom = {}
    for p in paths:
        ds = datasets[p]
        ipp, iop, ps = (_floats(ds.ImagePositionPatient, 3), _floats(ds.ImageOrientationPatient, 6),
                        _floats(ds.PixelSpacing, 2))
        if ipp is None or iop is None or ps is None or np.any(ps <= 0):
            raise VolumeError(f"{folder}: {p.name} has an invalid ImagePositionPatient / ImageOrientationPatient "
                              f"/ PixelSpacing ({list(ds.ImagePositionPatient)} / {list(ds.ImageOrientationPatient)}"
                              f" / {list(ds.PixelSpacing)}); re-export the series.")
        geom[p] = (ipp, iop, ps)
    iop0, ps0 = geom[paths[0]][1], geom[paths[0]][2]
    for p in paths[1:]:
        if np.max(np.abs(geom[p][1] - iop0)) > 1e-3:
            raise VolumeError(f"{folder}: the slices have different orientations: {paths[0].name} has "
                              f"ImageOrientationPatient {iop0.tolist()}, {p.name} has {geom[p][1].tolist()}. "
                              f"Keep only the slices of one stack (a localizer or a second plane is mixed in).")
        if np.max(np.abs(geom[p][2] - ps0) / ps0) > 1e-3:
            raise VolumeError(f"{folder}: the slices have different PixelSpacing: {paths[0].name} has "
                              f"{ps0.tolist()}, {p.name} has {geom[p][2].tolist()}. Keep only the slices of "
                              f"one reconstruction.")

    row_cos, col_cos = iop0[:3], iop0[3:]
    if np.linalg.norm(row_cos) < 1e-6 or np.linalg.norm(col_cos) < 1e-6:
        raise VolumeError(f"{folder}: ImageOrientationPatient {iop0.tolist()} has a zero direction cosine; "
                          f"re-export the series.")
    row_cos = row_cos / np.linalg.norm(row_cos)
    col_cos = col_cos / np.linalg.norm(col_cos)
    off = abs(90.0 - _angle_deg(row_cos, col_cos))
    if off > ANGLE_TOL_DEG:
        raise VolumeError(f"{folder}: the row and column direction cosines of ImageOrientationPatient "
                          f"{iop0.tolist()} are not orthogonal ({off:.2f} degrees off 90, tolerance "
                          f"{ANGLE_TOL_DEG}); the orientation is non-orthogonal and medkit cannot build a "
                          f"grid from it. Re-export or resample the series (e.g. dcm2niix, then read_nifti).")
    normal = np.cross(row_cos, col_cos)
    normal /= np.linalg.norm(normal)

    pos = {p: float(np.dot(geom[p][0], normal)) for p in paths}
    order = sorted(paths, key=lambda p: pos[p])
    s = np.array([pos[p] for p in order])
    gaps = np.diff(s)
    dup = np.flatnonzero(gaps <= DUPLICATE_TOL_MM)
    if dup.size:
        a, b = order[dup[0]], order[dup[0] + 1]
        in_all = f"; {dup.size} duplicated position(s) in all" if dup.size > 1 else ""
        raise VolumeError(f"{folder}: {a.name} and {b.name} are at the same slice position ({s[dup[0]]:.3f} mm "
                          f"along the slice normal){in_all}. "
                          f"The folder holds two copies or two acquisitions of the same slices: keep one file "
                          f"per position.")

    d = geom[order[-1]][0] - geom[order[0]][0]
    tilt = math.degrees(math.atan2(np.linalg.norm(d - np.dot(d, normal) * normal), abs(np.dot(d, normal))))
    if tilt > ANGLE_TOL_DEG:
        raise VolumeError(f"{folder}: the slices are stacked {tilt:.2f} degrees off the slice normal (gantry tilt "
                          f"or a sheared stack; tolerance {ANGLE_TOL_DEG} degrees), so the voxels are not on a "
                          f"rectilinear grid. Correct the tilt first (e.g. dcm2niix does) and use read_nifti.")

    median = float(np.median(gaps))
    tol = max(SPACING_REL_TOL * median, SPACING_ABS_TOL_MM)
    irregular = np.flatnonzero(np.abs(gaps - median) > tol)
    if irregular.size:
        missing = []
        for i in irregular:
            k = int(round(gaps[i] / median))
            if k >= 2 and abs(gaps[i] - k * median) <= k * tol:
                missing.append((i, k - 1))
        if missing:
            total = sum(m for _, m in missing)
            where = "; ".join(f"{m} between positions {s[i]:.2f} and {s[i + 1]:.2f} mm ({order[i].name} and "
                              f"{order[i + 1].name})" for i, m in missing)
            raise VolumeError(f"{folder}: {total} slice(s) missing (slice spacing {median:.3f} mm): {where}. Copy "
                              f"the complete series into the folder.")
        values, counts = np.unique(np.round(gaps, 2), return_counts=True)
        seen = ", ".join(f"{v:.2f} mm (x{c})" for v, c in list(zip(values, counts))[:_SHOW])
        raise VolumeError(f"{folder}: the slice positions are not evenly spaced: spacings seen {seen} (tolerance "
                          f"{tol:.3f} mm around the median {median:.3f} mm). medkit needs a regular grid: resample "
                          f"the series (e.g. dcm2niix, then resample the NIfTI) or split it into regular parts.")
    dz = float((s[-1] - s[0]) / (len(s) - 1))

    rows, cols = int(first.Rows), int(first.Columns)
    array = np.empty((cols, rows, len(order)), dtype=np.float32)
    has_rescale = True
    for k, p in enumerate(order):
        ds = datasets[p]
        try:
            pixels = np.asarray(ds.pixel_array)
        except Exception as err:  # noqa: BLE001 - missing decoder, truncated pixel data, ...
            raise VolumeError(f"{folder}: cannot decode the pixels of {p.name} ({type(err).__name__}: {err}). If "
                              f"the transfer syntax is compressed, install a decoder (pylibjpeg, gdcm) or "
                              f"decompress the files (e.g. gdcmconv --raw); otherwise re-export the file.") from err
        if pixels.shape != (rows, cols):
            raise VolumeError(f"{folder}: {p.name} decodes to pixels of shape {pixels.shape}, expected "
                              f"({rows}, {cols}) from Rows/Columns; re-export the file.")
        slope, intercept = ds.get("RescaleSlope"), ds.get("RescaleIntercept")
        if slope in (None, "") or intercept in (None, ""):
            has_rescale = False
            slope, intercept = 1.0, 0.0
        array[:, :, k] = (pixels.astype(np.float64) * float(slope) + float(intercept)).T

    row_spacing, col_spacing = float(ps0[0]), float(ps0[1])
    lps = np.eye(4)
    lps[:3, 0] = row_cos * col_spacing  # axis 0 = column index: moves along the row cosine
    lps[:3, 1] = col_cos * row_spacing  # axis 1 = row index: moves along the column cosine
    lps[:3, 2] = normal * dz
    lps[:3, 3] = geom[order[0]][0]
    intensity = "HU" if modality == "CT" and has_rescale else "raw"
    return Volume(array=array, affine=_LPS_TO_RAS @ lps, modality=modality, intensity=intensity,
                  source=str(folder))


# ---------------------------------------------------------------------------------------------------
# NIfTI

def _is_nifti(p: Path) -> bool:
    return p.name.lower().endswith(NIFTI_SUFFIXES)


def read_nifti(path: str | Path, intensity: str = "auto") -> Volume:
    """Read a 3D NIfTI file (or 4D with one frame) as a float32 :class:`Volume` in closest-canonical RAS.

    ``intensity``: "HU" (the file holds CT in HU; refused if values fall outside [-2048, 32767]),
    "raw" (anything else), or "auto": "HU" when the 1st percentile of the voxels is below -500
    (only CT in HU has that much air below -500), else "raw". ``modality`` is "CT" for HU,
    "unknown" otherwise (NIfTI does not record it).
    """
    path = Path(path).expanduser()
    if intensity not in ("auto", "HU", "raw"):
        raise VolumeError(f"read_nifti({path}): intensity={intensity!r}; use 'auto', 'HU' or 'raw'.")
    if not path.is_file():
        raise VolumeError(f"NIfTI file {path} does not exist (or is not a file); pass a .nii or .nii.gz file.")
    try:
        img = nib.load(str(path))
        if len(img.shape) == 4 and img.shape[3] == 1:
            img = img.slicer[:, :, :, 0]
        if len(img.shape) != 3:
            raise VolumeError(f"{path} has shape {tuple(img.shape)}; medkit needs a 3D volume (or 4D with a single "
                              f"frame). Split multi-frame files into one file per volume.")
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.get_fdata(dtype=np.float32))
        affine = np.asarray(img.affine, dtype=np.float64)
    except VolumeError:
        raise
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as err:
        raise VolumeError(f"cannot read {path} as NIfTI: {err}. Check that the file is a complete, uncorrupted "
                          f".nii or .nii.gz (re-export or re-download it).") from err
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise VolumeError(f"{path} has {bad} NaN/inf voxels; replace them (e.g. with the background value) "
                          f"before using the file.")
    if intensity == "auto":
        intensity = "HU" if data.size and float(np.percentile(data, 1)) < AUTO_HU_P1 else "raw"
    elif intensity == "HU":
        lo, hi = float(data.min()), float(data.max())
        if lo < HU_PLAUSIBLE[0] or hi > HU_PLAUSIBLE[1]:
            raise VolumeError(f"{path}: values span [{lo:g}, {hi:g}], outside the plausible HU range "
                              f"[{HU_PLAUSIBLE[0]:g}, {HU_PLAUSIBLE[1]:g}]; the file does not hold HU. Pass "
                              f"intensity='raw' (or 'auto').")
    return Volume(array=data, affine=affine, modality="CT" if intensity == "HU" else "unknown",
                  intensity=intensity, source=str(path))


def write_nifti(array, affine, path: str | Path) -> Path:
    """Save a (X, Y, Z) array as float32 NIfTI with ``affine`` (voxel -> RAS+ mm) in sform and qform.

    Parent folders are created. ``path`` must end in .nii or .nii.gz. Returns the path written.
    """
    path = Path(path).expanduser()
    if not _is_nifti(path):
        raise VolumeError(f"write_nifti: {path} does not end in .nii or .nii.gz; choose such a file name.")
    if "torch" in sys.modules and isinstance(array, sys.modules["torch"].Tensor):
        array = array.detach().cpu().numpy()
    data = np.asarray(array, dtype=np.float32)
    affine = np.asarray(affine, dtype=np.float64)
    if data.ndim != 3:
        raise VolumeError(f"write_nifti({path}): array has shape {data.shape}; pass one 3D (X, Y, Z) volume.")
    if affine.shape != (4, 4) or not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise VolumeError(f"write_nifti({path}): the affine must be a finite, invertible 4x4 voxel -> world "
                          f"matrix; got shape {affine.shape}.")
    img = nib.Nifti1Image(data, affine)
    img.set_sform(affine, code=1)
    img.set_qform(affine, code=1)
    img.header.set_xyzt_units(xyz="mm")
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(img, str(path))
    return path


def read_volume(path: str | Path, **kw) -> Volume:
    """A folder -> :func:`read_dicom_series` (``expect_hu=``), a .nii/.nii.gz file -> :func:`read_nifti`
    (``intensity=``); ``kw`` goes to that reader."""
    path = Path(path).expanduser()
    if not path.exists():
        raise VolumeError(f"{path} does not exist; pass a folder holding one DICOM series or a .nii/.nii.gz file.")
    if path.is_dir():
        return read_dicom_series(path, **kw)
    if _is_nifti(path):
        return read_nifti(path, **kw)
    hint = " (pass the folder that holds the series' slices)" if path.suffix.lower() in (".dcm", ".ima", "") else ""
    raise VolumeError(f"{path} is not a supported volume{hint}; medkit reads a folder holding one DICOM series "
                      f"or a .nii / .nii.gz file.")


# ---------------------------------------------------------------------------------------------------
# MNI152 template

def mni152_volume() -> Volume:
    """nilearn's MNI152 2009 T1 template (197x233x189, 1 mm, RAS) as a raw-intensity MR :class:`Volume`."""
    from medkit.data.sources import _mni_paths
    vol = read_nifti(_mni_paths()[0], intensity="raw")
    vol.modality = "MR"
    return vol


# ---------------------------------------------------------------------------------------------------
# Intensity mappings

def _as_float(x):
    """``x`` as a float torch tensor or float numpy array (float32 / float64 kept)."""
    if "torch" in sys.modules and isinstance(x, sys.modules["torch"].Tensor):
        return x if x.is_floating_point() else x.float()
    x = np.asarray(x)
    return x if np.issubdtype(x.dtype, np.floating) else x.astype(np.float64)


def _check_range(lo, hi, what: str) -> tuple[float, float]:
    lo, hi = float(lo), float(hi)
    if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
        raise VolumeError(f"{what}=({lo:g}, {hi:g}): need finite lo < hi.")
    return lo, hi


def _to_unit(x, lo: float, hi: float):
    x = _as_float(x)
    return (x.clip(lo, hi) - lo) / (hi - lo) * 2.0 - 1.0


def _from_unit(u, lo: float, hi: float):
    u = _as_float(u)
    return (u.clip(-1.0, 1.0) + 1.0) / 2.0 * (hi - lo) + lo


def hu_to_unit(x, window: tuple[float, float] = HU_WINDOW):
    """HU -> [-1, 1]: clip to ``window`` (default :data:`HU_WINDOW`), map linearly. numpy or torch."""
    return _to_unit(x, *_check_range(*window, what="window"))


def unit_to_hu(u, window: tuple[float, float] = HU_WINDOW):
    """[-1, 1] -> HU, the inverse of :func:`hu_to_unit`; values outside [-1, 1] are clipped first."""
    return _from_unit(u, *_check_range(*window, what="window"))


def raw_to_unit(x, lo: float, hi: float):
    """Raw (non-HU) intensities -> [-1, 1]: clip to [lo, hi] (e.g. from :func:`robust_range`), map linearly."""
    return _to_unit(x, *_check_range(lo, hi, what="(lo, hi)"))


def unit_to_raw(u, lo: float, hi: float):
    """[-1, 1] -> raw intensities in [lo, hi], the inverse of :func:`raw_to_unit` (clips to [-1, 1] first)."""
    return _from_unit(u, *_check_range(lo, hi, what="(lo, hi)"))


def robust_range(array, percentiles: tuple[float, float] = (0.5, 99.5)) -> tuple[float, float]:
    """(lo, hi) intensity range for :func:`raw_to_unit`: the given percentiles of the voxels > 0.

    The background (voxels <= 0: air outside the head in skull-stripped or masked MR) is excluded so
    that it does not pull ``lo`` to 0 and compress the tissue contrast; the percentiles cut the few
    outlier voxels (vessels, artefacts) that would otherwise set ``hi``. For CT in HU use
    :func:`hu_to_unit` instead (its tissues are below 0).
    """
    p_lo, p_hi = (float(p) for p in percentiles)
    if not 0.0 <= p_lo < p_hi <= 100.0:
        raise VolumeError(f"robust_range: percentiles={tuple(percentiles)}; use 0 <= low < high <= 100.")
    if "torch" in sys.modules and isinstance(array, sys.modules["torch"].Tensor):
        array = array.detach().cpu().numpy()
    values = np.asarray(array, dtype=np.float64)
    values = values[np.isfinite(values) & (values > 0)]
    if values.size == 0:
        raise VolumeError("robust_range: the volume has no voxel > 0 (all background); check the volume, or "
                          "pass an explicit (lo, hi) to raw_to_unit.")
    lo, hi = (float(v) for v in np.percentile(values, [p_lo, p_hi]))
    if not hi > lo:
        raise VolumeError(f"robust_range: the foreground is constant ({lo:g}), so there is no intensity range to "
                          f"normalise; check the volume, or pass an explicit (lo, hi) to raw_to_unit.")
    return lo, hi
