"""Where the MRI volumes come from: the MNI152 template shipped with nilearn, or a folder of NIfTI files.

Why two sources. The kit must run end to end with no download and no dataset licence, so the default
is real MRI that is already on disk: nilearn's wheel embeds the ICBM152 2009 nonlinear symmetric T1
template (``nilearn.datasets.MNI152_FILE_PATH``, file name ``mni_icbm152_t1_tal_nlin_sym_09a``,
197x233x189 uint8, 1 mm, RAS, brain-extracted). One template volume is little data, but enough to
check that a pipeline learns brain-shaped images. For real work the user points us at a folder.

The template comes with tissue probability maps; we use the white-matter map thresholded at > 50 %
(``WM_MNI152_FILE_PATH``, uint8 0..255, so voxel value >= 128) as the mask, so that mask-conditioned
methods (inpainting, mask-guided generation) have a real anatomical mask to use.

Every volume is returned in RAS orientation with the axial axis last, as float32, so the slicer never
has to think about orientation. Bad inputs stop with a :class:`DataError` that names the file and
says what to do: nothing is silently dropped, thresholded or reoriented behind the user's back
(the one documented exception is the reorientation to RAS, which is lossless).
"""
from __future__ import annotations

import hashlib
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

NIFTI_PATTERNS = ("*.nii", "*.nii.gz")
MASK_SUFFIXES = ("_mask", "_seg")
WM_THRESHOLD = 127.5  # > 50 % white-matter probability on the map's 0..255 scale


class DataError(ValueError):
    """Bad input data or data settings; the message names the file or setting and says what to do."""


@dataclass
class Volume:
    """One 3D MRI volume: float32 image in RAS (axial = last axis), optional uint8 {0,1} mask."""
    name: str
    image: np.ndarray
    mask: np.ndarray | None
    path: str


# ---------------------------------------------------------------------------------------------------
# MNI152 template (embedded in nilearn)

def _mni_paths() -> tuple[Path, Path]:
    from nilearn import datasets
    return Path(datasets.MNI152_FILE_PATH), Path(datasets.WM_MNI152_FILE_PATH)


def mni152_volumes() -> list[Volume]:
    """The MNI152 T1 template with its white-matter (> 50 %) mask, read from nilearn's wheel."""
    t1_path, wm_path = _mni_paths()
    image = _load_3d(t1_path)
    wm = _load_3d(wm_path)
    if wm.shape != image.shape:  # would mean a broken nilearn install
        raise DataError(f"nilearn's white-matter map {wm_path} has shape {wm.shape}, the T1 template "
                        f"{t1_path} has {image.shape}; reinstall nilearn.")
    mask = (wm > WM_THRESHOLD).astype(np.uint8)
    return [Volume(name="mni152", image=image, mask=mask, path=str(t1_path))]


# ---------------------------------------------------------------------------------------------------
# A folder of NIfTI volumes

def _strip_ext(name: str) -> str:
    for ext in (".nii.gz", ".nii"):
        if name.endswith(ext):
            return name[: -len(ext)]
    return name


def _list_nifti(folder: Path) -> list[Path]:
    files: set[Path] = set()
    for pattern in NIFTI_PATTERNS:
        files.update(p for p in folder.glob(pattern) if p.is_file())
    return sorted(files)


def _load_3d(path: Path) -> np.ndarray:
    """Read a NIfTI file as a float32 3D array in RAS (closest canonical) orientation."""
    try:
        img = nib.load(str(path))
        if len(img.shape) == 4 and img.shape[3] == 1:
            img = img.slicer[:, :, :, 0]
        if len(img.shape) != 3:
            raise DataError(f"{path} has shape {tuple(img.shape)}; medkit needs a 3D volume (or 4D with a "
                            f"single frame). Split multi-frame files into one file per volume.")
        img = nib.as_closest_canonical(img)
        data = np.asarray(img.get_fdata(dtype=np.float32))
    except DataError:
        raise
    except (nib.filebasedimages.ImageFileError, OSError, EOFError, ValueError, zlib.error) as err:
        raise DataError(f"cannot read {path} as NIfTI: {err}. Check that the file is a complete, "
                        f"uncorrupted .nii or .nii.gz (re-export or re-download it).") from err
    bad = int(np.count_nonzero(~np.isfinite(data)))
    if bad:
        raise DataError(f"{path} has {bad} NaN/inf voxels; replace them (e.g. with 0) before using the file.")
    return data


def _load_mask(mask_path: Path, image: np.ndarray, image_path: Path) -> np.ndarray:
    mask = _load_3d(mask_path)
    if mask.shape != image.shape:
        raise DataError(f"mask {mask_path.name} has shape {mask.shape} but its image {image_path.name} has "
                        f"{image.shape} (both after reorientation to RAS); masks must be on the image's grid.")
    values = np.unique(mask)
    allowed = {0.0, 1.0} if values.max(initial=0) <= 1 else {0.0, 255.0}
    if not set(values.tolist()) <= allowed:
        shown = ", ".join(f"{v:g}" for v in values[:5])
        more = f" (and {len(values) - 5} more)" if len(values) > 5 else ""
        raise DataError(f"mask {mask_path} is not binary: found values {shown}{more}; expected {{0,1}} or "
                        f"{{0,255}}. Threshold it first (e.g. mask > 0.5) and save it as integers.")
    return (mask > 0).astype(np.uint8)


def _pair_files(folder: Path) -> list[tuple[Path, Path | None]]:
    """(image, mask or None) pairs for the two supported layouts; errors on orphan or ambiguous masks."""
    images_dir = folder / "images"
    if images_dir.is_dir():
        images = _list_nifti(images_dir)
        searched = [str(images_dir / p) for p in NIFTI_PATTERNS]
        masks_dir = folder / "masks"
        masks = {p.name: p for p in _list_nifti(masks_dir)} if masks_dir.is_dir() else {}
        if not images:
            raise DataError(f"no NIfTI files in {images_dir} (searched {', '.join(searched)}); put the "
                            f"volumes there or use a flat folder.")
        image_names = {p.name for p in images}
        for name, mpath in masks.items():
            if name not in image_names:
                raise DataError(f"mask {mpath} has no image {images_dir / name}; add the image or remove "
                                f"the mask (masks/ files must share their image's file name).")
        return [(p, masks.get(p.name)) for p in images]

    files = _list_nifti(folder)
    if not files:
        searched = [str(folder / p) for p in NIFTI_PATTERNS] + [str(images_dir / p) for p in NIFTI_PATTERNS]
        raise DataError(f"no NIfTI files in {folder} (searched {', '.join(searched)}); point at a folder "
                        f"of .nii/.nii.gz volumes, flat or with an images/ subfolder.")
    images: dict[str, Path] = {}
    masks: dict[str, list[Path]] = {}
    for p in files:
        stem = _strip_ext(p.name)
        suffix = next((s for s in MASK_SUFFIXES if stem.endswith(s)), None)
        if suffix is None:
            if stem in images:
                raise DataError(f"{images[stem]} and {p} are the same volume name {stem!r}; keep one of them.")
            images[stem] = p
        else:
            masks.setdefault(stem[: -len(suffix)], []).append(p)
    for stem, mpaths in masks.items():
        if stem not in images:
            raise DataError(f"mask {mpaths[0]} has no image {folder / (stem + '.nii.gz')}; add the image "
                            f"or remove the mask (a mask is named <image>_mask or <image>_seg).")
        if len(mpaths) > 1:
            raise DataError(f"image {images[stem]} has several masks ({', '.join(p.name for p in mpaths)}); "
                            f"keep one.")
    if not images:
        raise DataError(f"{folder} holds only mask files ({', '.join(p.name for p in files[:5])}); add the images.")
    return [(images[s], masks.get(s, [None])[0]) for s in sorted(images)]


def nifti_folder_volumes(folder: str | Path) -> list[Volume]:
    """The user's volumes from ``folder``, reoriented to RAS, with masks where present.

    Layout A: ``folder/images/*.nii[.gz]`` and optional ``folder/masks/<same file name>``.
    Layout B: flat ``folder/*.nii[.gz]``, where ``sub01_mask.nii.gz`` or ``sub01_seg.nii.gz`` is the
    mask of ``sub01.nii.gz``. Masks are optional per volume; {0,255} masks are read as {0,1}.
    """
    folder = Path(folder).expanduser()
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist (or is not a folder); pass a folder of NIfTI "
                        f"volumes, or 'mni152' for the embedded template.")
    volumes = []
    for image_path, mask_path in _pair_files(folder):
        image = _load_3d(image_path)
        mask = _load_mask(mask_path, image, image_path) if mask_path is not None else None
        volumes.append(Volume(name=_strip_ext(image_path.name), image=image, mask=mask, path=str(image_path)))
    return volumes


# ---------------------------------------------------------------------------------------------------
# Identity of a source, for cache keys

def fingerprint(source: str | Path) -> str:
    """A 16-hex-digit hash of what the data is (not of where the folder lives).

    'mni152': nilearn's file paths and sizes (changes when nilearn ships a different template).
    A folder: sorted relative paths, sizes and mtimes of its NIfTI files (top level, images/, masks/).
    """
    h = hashlib.sha256()
    if str(source) == "mni152":
        for p in _mni_paths():
            h.update(f"{p}\t{p.stat().st_size}\n".encode())
        return h.hexdigest()[:16]
    folder = Path(source).expanduser()
    if not folder.is_dir():
        raise DataError(f"data folder {folder} does not exist (or is not a folder); pass a folder of NIfTI "
                        f"volumes, or 'mni152' for the embedded template.")
    files = _list_nifti(folder) + _list_nifti(folder / "images") + _list_nifti(folder / "masks")
    for p in sorted(files):
        st = p.stat()
        h.update(f"{p.relative_to(folder).as_posix()}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]
