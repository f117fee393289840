"""Paired 2D image / mask folders for mask-to-image synthesis (Siamese-Diffusion), cached for training.

Siamese-Diffusion (Qiu et al., CVPR 2025, arXiv 2505.06068) learns to draw an image from a
segmentation mask (and a text prompt). Its data are 2D (image, binary mask) pairs - polyps
(Kvasir-SEG, CVC-ClinicDB, the PraNet training set), skin lesions (ISIC 2018) - that users attach on
Kaggle in whatever layout the uploader chose. This module turns such a folder into a cache that
trains the same way whatever the source.

:func:`find_pairs` detects the layout under ``root`` (searching :data:`SEARCH_DEPTH` folder levels)
or takes it from ``layout=``:

==============  ======================================================================================
layout          files
==============  ======================================================================================
kvasir-seg      ``Kvasir-SEG/images/*.jpg`` + ``Kvasir-SEG/masks/*.jpg`` (same stem; Kaggle nests it
                as ``Kvasir-SEG/Kvasir-SEG/...``)
cvc-clinicdb    ``PNG/Original/*.png`` + ``PNG/Ground Truth/*.png`` (or ``TIF/...``; PNG is preferred
                when both are there)
isic2018        ``ISIC2018_Task1-2_Training_Input/ISIC_0000000.jpg`` +
                ``ISIC2018_Task1_Training_GroundTruth/ISIC_0000000_segmentation.png`` (also the
                Validation / Test splits: ``split=``, default Training)
isic2016        ``ISBI2016_ISIC_Part1_Training_Data/ISIC_0000000.jpg`` +
                ``ISBI2016_ISIC_Part1_Training_GroundTruth/ISIC_0000000_Segmentation.png`` (also the Test
                split: ``split="Test"``)
pranet          ``TrainDataset/image/*.png`` + ``TrainDataset/mask/*.png`` (or ``images`` / ``masks``)
prompt-json     Siamese-Diffusion's own ``data/{images,masks,prompt.json}``: JSON lines
                ``{"source": mask, "target": image, "prompt": text}``, paths relative to the json's
                folder (or absolute). :func:`medkit.data.pairs_io.save_pairs` writes this layout.
folders         any ``images/`` + ``masks/`` with matching stems (a mask may be named ``<stem>_mask``
                or ``<stem>_segmentation``)
==============  ======================================================================================

Files that are not images (``LICENSE.txt``, ``ATTRIBUTION.txt``) are ignored and listed. Problems
are counted per kind by :func:`validate_pairs` and :func:`build_pair_cache`: images without a mask,
masks without an image, files listed in prompt.json that do not exist, unreadable files (PIL cannot
open them), a mask whose size differs from its image's, empty masks (no pixel > 127); non-binary
masks (more than 1 % of pixels strictly between 10 and 245, as JPEG masks such as Kvasir's are) are
only a warning, because every mask is thresholded at 127, as the official code does. With
``on_problem="error"`` (default) one :class:`PairsError` lists every kind with its count and up to
5 examples; ``on_problem="skip"`` drops the bad pairs and prints and returns the counts.

:func:`build_pair_cache` resizes every image to ``image_size`` x ``image_size`` (anti-aliased
bilinear, aspect ratio not kept - the official code resizes to 384 x 384 without cropping) and every
mask by thresholding at > 127 first, then nearest-neighbour resizing, so it stays {0, 1}. It writes
``<cache_root>/pairs/<key>/{train,val}.npz`` (``images`` uint8 (N, C, H, W), ``masks`` uint8
(N, 1, H, W), ``names``, ``prompts``) and ``meta.json`` (the manifest: source, layout, counts,
problems, the prompt of every pair). The key hashes the files' names, sizes and mtimes and every
setting; the build is atomic (:func:`medkit.data.slices.cached_build`). The train / val split is a
seeded random permutation of the pairs - of whole video sequences where the sequence of each frame is known
(CVC-ClinicDB's 29, :mod:`medkit.data.pair_splits`), since neighbouring frames are near copies; the manifest's
``split`` says which, and a CVC-ClinicDB folder whose frame numbers are unknown gets a warning that the split may
leak.
:class:`PairDataset` reads one split back.

:func:`mni152_pairs` is the embedded stand-in for CPU profiles (no download, no licence): pairs in
the same cache format made from the SYNTHETIC lesion slices of
:func:`medkit.data.lesion_slices.build_lesion_cache` (MNI152 template with synthetic white-matter
lesions), or with ``kind="tissue"`` from the MNI152 template slices with their white-matter masks
(:func:`medkit.data.slices.build_slice_cache`).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from medkit import env
from medkit.data.slices import cached_build
from medkit.data import pair_splits
from medkit.data.pairs_io import PairsError

FORMAT_VERSION = 2  # 2: train/val split by video sequence where known (CVC-ClinicDB)
SPLITS = ("train", "val")
LAYOUTS = ("kvasir-seg", "cvc-clinicdb", "isic2018", "isic2016", "pranet", "prompt-json", "folders")
ISIC = ("isic2018", "isic2016")
LOOKED_FOR = {
    "kvasir-seg": "Kvasir-SEG/{images,masks}",
    "cvc-clinicdb": "PNG/{Original,Ground Truth} or TIF/{Original,Ground Truth} (CVC-ClinicDB)",
    "isic2018": "ISIC2018_Task1-2_Training_Input + ISIC2018_Task1_Training_GroundTruth",
    "isic2016": "ISBI2016_ISIC_Part1_Training_Data + ISBI2016_ISIC_Part1_Training_GroundTruth",
    "pranet": "TrainDataset/{image,mask} (PraNet)",
    "prompt-json": "prompt.json (Siamese-Diffusion)",
    "folders": "images/ + masks/",
}
MASK_SUFFIXES = {"isic2018": ("_segmentation",), "isic2016": ("_Segmentation", "_segmentation"),
                 "folders": ("_mask", "_segmentation")}
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")
SEARCH_DEPTH = 4  # folder levels below root searched for a layout
THRESHOLD = 127  # mask pixel > THRESHOLD is foreground (the official code's threshold)
GREY_BAND, NON_BINARY_FRACTION = (10, 245), 0.01  # a mask with > 1 % of pixels strictly inside is "non-binary"
N_EXAMPLES = 5
GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "I;16N")
PROBLEMS = {  # kind -> (what, how to fix)
    "image without mask": ("image(s) without a mask", "add the masks (same file name stem) or remove the images"),
    "mask without image": ("mask(s) without an image", "add the images or remove the masks"),
    "missing file": ("file(s) listed in prompt.json that do not exist", ("fix the paths in prompt.json "
                     "(relative to its folder, or absolute) or remove those lines")),
    "unreadable": ("unreadable file(s) (PIL cannot open them)", "re-download or re-export them"),
    "size mismatch": ("pair(s) whose mask size differs from the image size", ("resize the masks to their image's "
                      "size (nearest neighbour) or remove the pairs")),
    "empty mask": ("empty mask(s) (no pixel > 127)", ("remove those pairs; masks stored as 0/1 instead of 0/255 "
                   "also look empty: save them as 0/255")),
}
WARNINGS = {
    "non-binary mask": ("mask(s) not binary (more than 1% of pixels strictly between 10 and 245)",
                        ("they are thresholded at > 127 as the official code does; JPEG masks (Kvasir-SEG) are "
                        "like this, otherwise check them")),
}
MNI_PROMPTS = {"lesion": "axial brain MRI slice with white matter lesions",
               "tissue": "axial brain MRI slice, white matter"}
MNI_DESCRIPTIONS = {
    "lesion": "MNI152 template with synthetic lesions (SYNTHETIC white-matter lesions on the MNI152 T1 template, "
              "not patient data); only slices with a non-empty lesion mask",
    "tissue": "MNI152 template (a population-average T1 image, not a patient) with its white-matter (> 50 %) "
              "mask; only slices with a non-empty mask",
}


class PairFile(NamedTuple):
    """One (image, mask) pair on disk; ``prompt`` is None for layouts without text."""
    image: Path
    mask: Path
    prompt: str | None
    name: str


class PairList(list):
    """The complete pairs :func:`find_pairs` found (a list of :class:`PairFile`), plus what it could not pair.

    ``root``: the folder searched; ``base``: the dataset folder found under it; ``layout``;
    ``problems``: kind -> file names of images without a mask, masks without an image, files listed
    in prompt.json that do not exist; ``ignored``: files that are not images, left out on purpose.
    """

    def __init__(self, pairs=(), *, root: Path, base: Path, layout: str, problems: dict | None = None,
                 ignored: list | None = None):
        super().__init__(pairs)
        self.root, self.base, self.layout = Path(root), Path(base), layout
        self.problems = {k: list(v) for k, v in (problems or {}).items() if v}
        self.ignored = list(ignored or [])


@dataclass
class PairsReport:
    """What :func:`validate_pairs` / :func:`build_pair_cache` found. ``problems`` and ``warnings`` map a kind
    to the affected file names (all of them); ``found``: complete pairs found; ``kept``: pairs without a problem."""
    root: str
    layout: str
    found: int = 0
    kept: int = 0
    problems: dict = field(default_factory=dict)
    warnings: dict = field(default_factory=dict)
    ignored: list = field(default_factory=list)

    @property
    def counts(self) -> dict:
        """``{"found", "kept", "ignored_files", <problem kind>: n, ..., <warning kind>: n}`` (kinds with n > 0)."""
        return {"found": self.found, "kept": self.kept, "ignored_files": len(self.ignored),
                **{k: len(v) for k, v in self.problems.items() if v}, **{k: len(v) for k, v in self.warnings.items() if v}}

    def as_dict(self) -> dict:
        return {"root": self.root, "layout": self.layout, "counts": self.counts,
                "problems": {k: v for k, v in self.problems.items() if v},
                "warnings": {k: v for k, v in self.warnings.items() if v}, "ignored": self.ignored}

    def lines(self, which: str = "problems") -> list[str]:
        """One line per kind: count, what, up to 5 examples, how to fix."""
        table, found = (PROBLEMS, self.problems) if which == "problems" else (WARNINGS, self.warnings)
        out = []
        for kind, (what, fix) in table.items():
            names = found.get(kind) or []
            if names:
                more = f" and {len(names) - N_EXAMPLES} more" if len(names) > N_EXAMPLES else ""
                out.append(f"{len(names)} {what}, e.g. {', '.join(names[:N_EXAMPLES])}{more}: {fix}")
        return out

    @property
    def n_problems(self) -> int:
        return sum(len(v) for v in self.problems.values())


# ---------------------------------------------------------------------------------------------------
# Finding the pairs

@dataclass
class _Candidate:
    layout: str
    base: Path
    image_dir: Path | None = None
    mask_dir: Path | None = None
    json: Path | None = None
    detail: str = ""
    named: bool = True  # False: a kvasir-seg / pranet match by subfolders only (used when layout= is forced)

    def describe(self, root: Path) -> str:
        where = self.json if self.json is not None else self.base
        rel = os.path.relpath(where, root)
        return f"{self.layout}{f' ({self.detail})' if self.detail else ''} at {where if rel == '.' else rel}"


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTS)


def _subdirs(d: Path) -> dict[str, Path]:
    try:
        return {e.name.lower(): Path(e.path) for e in os.scandir(d) if e.is_dir() and not e.name.startswith(".")}
    except OSError:
        return {}


def _descend(d: Path) -> Path:
    """Kaggle often nests a folder in one of the same name (``X/X/files``): go down to the one with files."""
    while True:
        subs = _subdirs(d)
        if len(subs) == 1 and d.name.lower() in subs and not any(_is_image(p.name) for p in d.iterdir()):
            d = subs[d.name.lower()]
        else:
            return d


def _candidates_at(d: Path) -> list[_Candidate]:
    subs = _subdirs(d)
    name = d.name.lower()
    out = []
    images, masks = subs.get("images"), subs.get("masks")
    if images and masks:
        out.append(_Candidate("kvasir-seg", d, images, masks, named=name == "kvasir-seg"))
    if "original" in subs and "ground truth" in subs:
        out.append(_Candidate("cvc-clinicdb", d, subs["original"], subs["ground truth"], detail=d.name))
    for sub, path in sorted(subs.items()):
        m = re.fullmatch(r"isic2018_task1-2_([a-z]+)_input", sub)
        if m and f"isic2018_task1_{m[1]}_groundtruth" in subs:
            out.append(_Candidate("isic2018", d, _descend(path), _descend(subs[f"isic2018_task1_{m[1]}_groundtruth"]),
                                  detail=m[1].capitalize()))
        m = re.fullmatch(r"isbi2016_isic_part1_([a-z]+)_data", sub)
        if m and f"isbi2016_isic_part1_{m[1]}_groundtruth" in subs:
            out.append(_Candidate("isic2016", d, _descend(path), _descend(subs[f"isbi2016_isic_part1_{m[1]}_groundtruth"]),
                                  detail=m[1].capitalize()))
    image, mask = subs.get("image") or images, subs.get("mask") or masks
    if image and mask:
        out.append(_Candidate("pranet", d, image, mask, named=name == "traindataset"))
    if (d / "prompt.json").is_file():
        out.append(_Candidate("prompt-json", d, json=d / "prompt.json"))
    if images and masks:
        out.append(_Candidate("folders", d, images, masks))
    return out


def _detect(root: Path, layout: str, log: Callable[[str], None], split: str = "Training") -> _Candidate:
    if root.is_file() and root.suffix.lower() == ".json" and layout in ("auto", "prompt-json"):
        return _Candidate("prompt-json", root.parent, json=root)
    found: list[_Candidate] = []
    stack = [(root, 0)]
    while stack:  # depth-first, SEARCH_DEPTH levels, hidden folders skipped
        d, depth = stack.pop()
        found += _candidates_at(d)
        if depth < SEARCH_DEPTH:
            stack += [(p, depth + 1) for _, p in sorted(_subdirs(d).items(), reverse=True)]
    if layout == "auto":
        found = [c for c in found if c.named]
        claimed = {c.base for c in found if c.layout != "folders"}
        found = [c for c in found if c.layout != "folders" or c.base not in claimed]
    else:  # forced: folders named as the layout expects win; else any folder with the right subfolders
        found = [c for c in found if c.layout == layout]
        found = [c for c in found if c.named] or found
    # CVC-ClinicDB ships PNG/ and TIF/ copies of the same frames: use PNG
    png_parents = {c.base.parent for c in found if c.layout == "cvc-clinicdb" and c.base.name.lower() == "png"}
    for c in [c for c in found if c.layout == "cvc-clinicdb" and c.base.name.lower() == "tif"
              and c.base.parent in png_parents]:
        log(f"pairs: using the PNG copy of CVC-ClinicDB; ignoring the TIF copy at {c.base}")
        found.remove(c)
    # ISIC: one split (``split``, default Training) when several splits sit side by side
    by_base: dict[tuple, list[_Candidate]] = {}
    for c in found:
        if c.layout in ISIC:
            by_base.setdefault((c.layout, c.base), []).append(c)
    for group in by_base.values():
        if len(group) > 1 or group[0].detail != split:
            keep = [c for c in group if c.detail == split]
            if not keep:
                raise PairsError(f"no {split} split of {group[0].layout} at {group[0].base} (found "
                                 f"{sorted(c.detail for c in group)}); pass split= one of them")
            for c in group:
                if c.detail != split:
                    log(f"pairs: using the {c.layout} {split} split; ignoring the {c.detail} split at {c.image_dir}")
                    found.remove(c)
    if not found:
        looked = "; ".join(f"{k}: {v}" for k, v in LOOKED_FOR.items() if layout in ("auto", k))
        raise PairsError(f"no image/mask pairs found under {root} (searched {SEARCH_DEPTH} folder levels for "
                         f"{looked}); point root at the dataset's folder, or pass layout= one of {list(LAYOUTS)} "
                         f"if the folder names differ.")
    if len(found) > 1:
        shown = "; ".join(c.describe(root) for c in found)
        layouts = sorted({c.layout for c in found})
        if len(layouts) > 1:
            raise PairsError(f"several pair layouts match under {root}: {shown}. Pass layout= one of {layouts}, "
                             f"or point root at the one folder to use.")
        raise PairsError(f"{len(found)} folders match layout '{layouts[0]}' under {root}: {shown}. Point root at the "
                         f"one to use.")
    return found[0]


def _index(folder: Path, base: Path, suffixes: tuple[str, ...] = ()) -> tuple[dict[str, Path], list[str]]:
    """{stem with a mask suffix removed: image file} of a folder, and the non-image entries (ignored)."""
    out: dict[str, Path] = {}
    ignored = []
    for p in sorted(folder.iterdir()):
        if not (p.is_file() and _is_image(p.name)):
            ignored.append(os.path.relpath(p, base) + ("/" if p.is_dir() else ""))
            continue
        key = p.stem
        for s in suffixes:
            if key.endswith(s) and len(key) > len(s):
                key = key[: -len(s)]
                break
        if key in out:
            raise PairsError(f"{out[key]} and {p} in {folder} belong to the same name {key!r}; keep one of them.")
        out[key] = p
    return out, ignored


def _pair_folders(c: _Candidate) -> PairList:
    images, ignored = _index(c.image_dir, c.base)
    masks, ignored_m = _index(c.mask_dir, c.base, MASK_SUFFIXES.get(c.layout, ()))
    if not images:
        raise PairsError(f"{c.image_dir} holds no images ({', '.join(IMAGE_EXTS)}); found the {c.layout} layout at "
                         f"{c.base} but its image folder is empty - check the download.")
    problems = {"image without mask": [images[k].name for k in sorted(set(images) - set(masks))],
                "mask without image": [masks[k].name for k in sorted(set(masks) - set(images))]}
    pairs = [PairFile(images[k], masks[k], None, k) for k in sorted(set(images) & set(masks))]
    return PairList(pairs, root=c.base, base=c.base, layout=c.layout, problems=problems, ignored=ignored + ignored_m)


def _json_lines(path: Path) -> list[tuple[str, object]]:
    """[("line N", parsed object)] of a JSON-lines file (or [("item N", object)] of a JSON array)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise PairsError(f"cannot read {path}: {err}; re-write it as UTF-8 JSON lines.") from None
    if text.lstrip().startswith("["):  # a JSON array of the same objects is accepted too
        try:
            return [(f"item {n}", x) for n, x in enumerate(json.loads(text), start=1)]
        except json.JSONDecodeError as err:
            raise PairsError(f"{path} line {err.lineno}: invalid JSON ({err.msg}); fix the file.") from None
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((f"line {n}", json.loads(line)))
        except json.JSONDecodeError as err:
            raise PairsError(f"{path} line {n}: invalid JSON ({err.msg}): {line[:80]!r}; each line must be one "
                             f'object like {{"source": "masks/1.png", "target": "images/1.png", "prompt": "a polyp"}}.'
                             ) from None
    return out


def _pair_json(c: _Candidate) -> PairList:
    path, folder = c.json, c.json.parent
    pairs, missing, seen, listed = [], [], {}, set()
    example = '{"source": "masks/1.png", "target": "images/1.png", "prompt": "a polyp"}'
    for n, item in _json_lines(path):
        if not isinstance(item, dict):
            raise PairsError(f"{path} {n}: expected a JSON object like {example}, got {type(item).__name__}.")
        bad = [k for k in ("source", "target") if not isinstance(item.get(k), str) or not item.get(k)]
        if bad:
            raise PairsError(f"{path} {n}: {' and '.join(repr(k) for k in bad)} missing or not a file path "
                             f"(source = mask, target = image), e.g. {example}.")
        prompt = item.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise PairsError(f"{path} {n}: 'prompt' must be a string, got {type(prompt).__name__}.")
        mask, image = (folder / item["source"]).resolve(), (folder / item["target"]).resolve()
        listed.update((image, mask))
        gone = [f"{n}: {item[k]}" for k, p in (("target", image), ("source", mask)) if not p.is_file()]
        if gone:
            missing += gone
            continue
        name = image.stem
        if name in seen:
            raise PairsError(f"{path} {seen[name]} and {n} both give an image named {name!r}; every target "
                             f"needs its own file name (stem).")
        seen[name] = n
        pairs.append(PairFile(image, mask, prompt, name))
    if not pairs and not missing:
        raise PairsError(f"{path} lists no pairs; write one JSON line per pair, e.g. {example}.")
    unlisted = [os.path.relpath(p, folder) for sub in ("images", "masks") if (folder / sub).is_dir()
                for p in sorted((folder / sub).iterdir()) if p.resolve() not in listed]
    return PairList(pairs, root=folder, base=folder, layout="prompt-json", problems={"missing file": missing},
                    ignored=unlisted)


def find_pairs(root: str | Path, layout: str = "auto", *, split: str = "Training",
               log: Callable[[str], None] = print) -> PairList:
    """The (image, mask) pairs of a dataset folder: a :class:`PairList` of :class:`PairFile`, sorted by name.

    ``layout``: ``"auto"`` (detect, see the module docstring) or one of :data:`LAYOUTS`. ``root`` may also be a
    prompt.json file. ``split``: which split of an ISIC download ("Training", "Validation", "Test"). Images without a mask, masks without an image and missing files are not in the list but
    in its ``problems`` (:func:`validate_pairs` and :func:`build_pair_cache` count them); non-image files are
    in ``ignored``. One line goes to ``log``.
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise PairsError(f"layout={layout!r}: use 'auto' or one of {list(LAYOUTS)}.")
    root = Path(root).expanduser()
    if not root.exists():
        raise PairsError(f"pairs folder {root} does not exist; pass the folder of a dataset (e.g. the attached "
                         f"Kaggle input) or a folder written by medkit.data.save_pairs.")
    c = _detect(root, layout, log, split)
    found = _pair_json(c) if c.layout == "prompt-json" else _pair_folders(c)
    found.root = root
    notes = [f"{len(v)} {PROBLEMS[k][0]}" for k, v in found.problems.items()]
    if found.ignored:
        notes.append(f"{len(found.ignored)} non-image or unlisted file(s) ignored ({', '.join(found.ignored[:3])}"
                     f"{', ...' if len(found.ignored) > 3 else ''})")
    log(f"pairs: found {len(found)} pair(s), layout {c.describe(root)}" + (f"; {'; '.join(notes)}" if notes else ""))
    return found


# ---------------------------------------------------------------------------------------------------
# Reading and checking one pair

class _Unreadable(Exception):
    pass


def _to_uint8(im: Image.Image, path: Path) -> Image.Image:
    """16-bit grey -> 8-bit (value / 257); other modes unchanged; float images refused."""
    if im.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):
        x = np.asarray(im).astype(np.int64)
        if x.min(initial=0) < 0 or x.max(initial=0) > 65535:
            raise _Unreadable(f"{path.parent.name}/{path.name}: 32-bit integer values outside 0..65535 are not supported; save 8-bit")
        return Image.fromarray(np.round(x / 257.0).astype(np.uint8), mode="L")
    if im.mode == "F":
        raise _Unreadable(f"{path.parent.name}/{path.name}: float (mode F) images are not supported; save 8-bit")
    return im


def _open(path: Path) -> Image.Image:
    try:
        with Image.open(path) as im:
            im.load()
            return _to_uint8(im, path)
    except _Unreadable:
        raise
    except Exception as err:  # noqa: BLE001 - truncated, not an image, decompression bomb...: all unreadable
        raise _Unreadable(f"{path.parent.name}/{path.name} ({type(err).__name__}: {str(err)[:80]})") from None


def _read_pair(pf: PairFile, channels: int | None) -> tuple[str | None, str, np.ndarray | None, np.ndarray | None,
                                                             bool]:
    """(problem kind or None, problem detail, image (H, W, C) uint8, mask (H, W) {0,1} uint8, non-binary?)."""
    try:
        image = _open(pf.image)
    except _Unreadable as err:
        return "unreadable", str(err), None, None, False
    try:
        mask = _open(pf.mask)
    except _Unreadable as err:
        return "unreadable", str(err), None, None, False
    if image.size != mask.size:
        return ("size mismatch", (f"{pf.name} (image {image.size[0]}x{image.size[1]}, mask {mask.size[0]}x"
                f"{mask.size[1]})"), None, None, False)
    m = np.asarray(mask.convert("L"))
    fg = m > THRESHOLD
    if not fg.any():
        hint = f" (max {int(m.max())}: stored as 0/1?)" if m.max() == 1 else ""
        return "empty mask", pf.mask.name + hint, None, None, False
    lo, hi = GREY_BAND
    non_binary = float(((m > lo) & (m < hi)).mean()) > NON_BINARY_FRACTION
    x = None
    if channels is not None:
        x = np.array(image.convert("RGB" if channels == 3 else "L"))
        x = x[:, :, None] if x.ndim == 2 else x
    return None, "", x, fg.astype(np.uint8), non_binary


def _is_colour(path: Path) -> bool:
    try:
        with Image.open(path) as im:
            return im.mode not in GREY_MODES + ("F",)
    except Exception:  # noqa: BLE001 - counted as unreadable when the pair is read
        return False


def _finish(report: PairsReport, on_problem: str, log: Callable[[str], None]) -> None:
    """Raise (on_problem='error') or print the counts (on_problem='skip'); warnings are always printed."""
    where = f"{report.root} (layout {report.layout})"
    for line in report.lines("warnings"):
        log(f"pairs: warning: {line}")
    if not report.n_problems:
        return
    lines = report.lines("problems")
    if on_problem == "error":
        raise PairsError(f"pairs in {where}: {report.n_problems} problem(s) in {len(lines)} kind(s):\n  - "
                         + "\n  - ".join(lines) + "\nFix the files, or pass on_problem='skip' to drop these pairs "
                         "(the counts are printed and kept in the cache manifest).")
    log(f"pairs: on_problem='skip': kept {report.kept} of {report.found} pair(s) in {where}; left out "
        f"{report.n_problems} problem(s):")
    for line in lines:
        log(f"  - {line}")


def _check_on_problem(on_problem) -> None:
    if on_problem not in ("error", "skip"):
        raise PairsError(f"on_problem={on_problem!r}: use 'error' (stop and list the problems) or 'skip' (drop the "
                         f"bad pairs and print the counts).")


def validate_pairs(pairs: str | Path | PairList, *, layout: str = "auto", on_problem: str = "error",
                   log: Callable[[str], None] = print) -> tuple[PairList, PairsReport]:
    """Read every pair (of a :class:`PairList` or of ``find_pairs(pairs, layout)``) and count the problems.

    Returns ``(good pairs, report)``. ``on_problem="error"``: one :class:`PairsError` listing each problem
    kind with its count and up to 5 examples; ``"skip"``: the bad pairs are dropped, the counts printed.
    """
    _check_on_problem(on_problem)
    found = pairs if isinstance(pairs, PairList) else find_pairs(pairs, layout, log=log)
    report = PairsReport(str(found.root), found.layout, found=len(found),
                         problems={k: list(found.problems.get(k, [])) for k in PROBLEMS},
                         warnings={k: [] for k in WARNINGS}, ignored=list(found.ignored))
    good = []
    for pf in found:
        kind, detail, _, _, non_binary = _read_pair(pf, None)
        if kind:
            report.problems[kind].append(detail)
            continue
        if non_binary:
            report.warnings["non-binary mask"].append(pf.mask.name)
        good.append(pf)
    report.kept = len(good)
    _finish(report, on_problem, log)
    return PairList(good, root=found.root, base=found.base, layout=found.layout, ignored=found.ignored), report


# ---------------------------------------------------------------------------------------------------
# The cache

def _resize_image(x: np.ndarray, size: int) -> np.ndarray:
    """(H, W, C) uint8 -> (C, size, size) uint8, anti-aliased bilinear, aspect ratio not kept."""
    t = torch.from_numpy(np.ascontiguousarray(x)).permute(2, 0, 1)
    if t.shape[1:] == (size, size):
        return t.numpy()
    t = F.interpolate(t[None].float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return t.round_().clamp_(0, 255).to(torch.uint8).numpy()


def _resize_mask(m: np.ndarray, size: int) -> np.ndarray:
    """(H, W) {0,1} uint8 (already thresholded) -> (1, size, size) {0,1} uint8, nearest neighbour."""
    t = torch.from_numpy(np.ascontiguousarray(m))[None, None]
    if t.shape[2:] == (size, size):
        return t[0].numpy()
    return F.interpolate(t.float(), size=(size, size), mode="nearest-exact")[0].to(torch.uint8).numpy()


def _check_settings(image_size, channels, val_fraction, seed) -> None:
    if not (isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool) and image_size >= 8):
        raise PairsError(f"image_size={image_size!r}: use an int >= 8 (64 for CPU, 384 as Siamese-Diffusion).")
    if channels not in ("auto", 1, 3):
        raise PairsError(f"channels={channels!r}: use 'auto' (3 when any image is colour, else 1), 1 or 3.")
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise PairsError(f"val_fraction={val_fraction!r}: use a fraction in [0, 1) (0 = no val split).")
    if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool):
        raise PairsError(f"seed={seed!r}: use an int.")


def _write_split(out: Path, part: str, images: np.ndarray, masks: np.ndarray, names: list[str],
                 prompts: list[str]) -> None:
    np.savez(out / f"{part}.npz", images=images, masks=masks, names=np.array(names, dtype=str),
             prompts=np.array(prompts, dtype=str))


def _files_fingerprint(found: PairList) -> str:
    h = hashlib.sha256(found.layout.encode())
    for pf in found:
        for p in (pf.image, pf.mask):
            st = p.stat()
            h.update(f"{os.path.relpath(p, found.base)}\t{st.st_size}\t{st.st_mtime_ns}\n".encode())
        h.update(f"{pf.name}\t{pf.prompt}\n".encode())
    for kind, names in sorted(found.problems.items()):
        h.update(f"{kind}\t{names}\n".encode())
    return h.hexdigest()[:16]


def build_pair_cache(root: str | Path, image_size: int, *, layout: str = "auto", channels="auto",
                     val_fraction: float = 0.1, seed: int = 0, on_problem: str = "error", split: str = "Training",
                     cache_root: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """Build (or reuse) the pair cache of the dataset under ``root``; return its folder.

    Images -> ``image_size`` x ``image_size`` uint8 (anti-aliased bilinear, aspect not kept), ``channels``
    1 or 3 (``"auto"``: 3 when any image is colour); masks thresholded at > 127, then nearest-resized
    ({0,1} uint8). ``val_fraction`` of the pairs (seeded by ``seed``) go to val. ``on_problem``: see
    :func:`validate_pairs`. ``split``: the ISIC split to read (see :func:`find_pairs`). ``cache_root`` defaults
    to :func:`medkit.env.cache_root`.
    """
    _check_settings(image_size, channels, val_fraction, seed)
    _check_on_problem(on_problem)
    found = find_pairs(root, layout, split=split, log=log)
    settings = {"image_size": int(image_size), "layout": found.layout, "channels": channels,
                "val_fraction": float(val_fraction), "seed": int(seed), "on_problem": on_problem}
    if found.layout in ISIC:
        settings["split"] = split
    fp = _files_fingerprint(found)

    def build(tmp: Path) -> dict:
        return _build_into(tmp, found, settings, on_problem, log)

    cache_root = Path(cache_root) if cache_root is not None else env.cache_root()
    final, meta = cached_build(cache_root, "pairs", {"fingerprint": fp, "settings": settings}, build,
                               version=FORMAT_VERSION)
    if meta is None:
        meta = json.loads((final / "meta.json").read_text())
        c = meta["counts"]
        log(f"pairs: reusing cache {final} ({meta['source']}, {meta['layout']}, {image_size} px): train {c['train']}, "
            f"val {c['val']}" + (f"; skipped when built: {meta['problem_counts']}" if meta["problem_counts"] else ""))
        return final
    c = meta["counts"]
    log(f"pairs: built {final} from {meta['source']} ({meta['layout']}) in {meta['build_seconds']:.1f} s: "
        f"{c['kept']} pair(s) (train {c['train']}, val {c['val']}, split {meta['split']}), {meta['channels']} "
        f"channel(s), {image_size} px"
        + (f"; skipped {meta['problem_counts']}" if meta["problem_counts"] else ""))
    return final


def _build_into(out: Path, found: PairList, settings: dict, on_problem: str, log: Callable[[str], None]) -> dict:
    size = settings["image_size"]
    channels = settings["channels"]
    if channels == "auto":
        channels = 3 if any(_is_colour(pf.image) for pf in found) else 1
    report = PairsReport(str(found.root), found.layout, found=len(found),
                         problems={k: list(found.problems.get(k, [])) for k in PROBLEMS},
                         warnings={k: [] for k in WARNINGS}, ignored=list(found.ignored))
    images = np.zeros((len(found), channels, size, size), np.uint8)
    masks = np.zeros((len(found), 1, size, size), np.uint8)
    kept: list[PairFile] = []
    for pf in found:
        kind, detail, x, m, non_binary = _read_pair(pf, channels)
        if kind:
            report.problems[kind].append(detail)
            continue
        if non_binary:
            report.warnings["non-binary mask"].append(pf.mask.name)
        images[len(kept)] = _resize_image(x, size)
        masks[len(kept)] = _resize_mask(m, size)
        kept.append(pf)
    report.kept = len(kept)
    _finish(report, on_problem, log)
    if not kept:
        raise PairsError(f"no usable pair in {found.root} (all {len(found)} had a problem, see above); fix the files.")
    names = [pf.name for pf in kept]
    groups, split_by = pair_splits.groups_for(found.layout, names)
    is_val = pair_splits.split(groups, settings["val_fraction"], settings["seed"], str(found.root), error=PairsError)
    if "MAY LEAK" in split_by:
        log(f"pairs: warning: train/val split {split_by}")
    listing = {}
    for part, sel in (("train", ~is_val), ("val", is_val)):
        idx = np.flatnonzero(sel)
        _write_split(out, part, images[idx], masks[idx], [names[i] for i in idx],
                     [kept[i].prompt or "" for i in idx])
        listing[part] = [{"name": kept[i].name, "prompt": kept[i].prompt,
                          "image": os.path.relpath(kept[i].image, found.base),
                          "mask": os.path.relpath(kept[i].mask, found.base)} for i in idx]
    counts = {**report.counts, "train": len(listing["train"]), "val": len(listing["val"])}
    return {"source": str(found.root), "base": str(found.base), "layout": found.layout, "synthetic": False,
            "description": f"{found.layout} pairs from {found.base}", "settings": settings, "channels": channels,
            "image_size": size, "counts": counts, "split": split_by, "problem_counts": {k: len(v) for k, v in report.problems.items() if v},
            "problems": {k: v for k, v in report.problems.items() if v},
            "warnings": {k: v for k, v in report.warnings.items() if v}, "ignored": report.ignored, "pairs": listing}


# ---------------------------------------------------------------------------------------------------
# Reading it back

class PairDataset(torch.utils.data.Dataset):
    """One split of a pair cache, held in memory as uint8.

    Items: ``{"image": float32 (C, H, W) in [-1, 1], "mask": float32 (1, H, W) in {0, 1}, "prompt": str
    ("" when the source has none), "name": str}``. Attributes: ``images`` (N, C, H, W) and ``masks``
    (N, 1, H, W) uint8 tensors, ``names``, ``prompts``, ``meta`` (the manifest, meta.json).
    """

    def __init__(self, cache_dir: str | Path, split: str = "train"):
        if split not in SPLITS:
            raise ValueError(f"split={split!r}: use 'train' or 'val'.")
        self.cache_dir, self.split = Path(cache_dir), split
        redo = f"delete the cache folder {self.cache_dir} and build it again (build_pair_cache / mni152_pairs)."
        data, meta = self.cache_dir / f"{split}.npz", self.cache_dir / "meta.json"
        for path in (meta, data):
            if not path.is_file():
                raise PairsError(f"pair cache file {path} is missing; {redo}")
        self.meta = json.loads(meta.read_text())
        try:
            with np.load(data, allow_pickle=False) as f:
                self.images, self.masks = torch.from_numpy(f["images"]), torch.from_numpy(f["masks"])
                self.names, self.prompts = [str(s) for s in f["names"]], [str(s) for s in f["prompts"]]
        except (OSError, KeyError, ValueError) as err:
            raise PairsError(f"pair cache file {data} is damaged ({err}); {redo}") from None
        if len(self.images) == 0:
            raise PairsError(f"the {split} split of {self.cache_dir} is empty (val_fraction="
                             f"{self.meta.get('settings', {}).get('val_fraction')}); build with val_fraction > 0 "
                             f"for a val split.")

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> dict:
        return {"image": self.images[i].float() / 127.5 - 1.0, "mask": self.masks[i].float(),
                "prompt": self.prompts[i], "name": self.names[i]}


# ---------------------------------------------------------------------------------------------------
# The embedded default: MNI152 slices

def mni152_pairs(image_size: int = 64, kind: str = "lesion", n_subjects: int | None = None, seed: int = 0,
                 cache_root: str | Path | None = None, log: Callable[[str], None] = print) -> Path:
    """A pair cache (format of :func:`build_pair_cache`, 1 channel) of MNI152 slices; returns its folder.

    ``kind="lesion"``: the slices with a non-empty mask of :func:`medkit.data.lesion_slices.build_lesion_cache`
    ("mni152-lesions": ``n_subjects`` SYNTHETIC subjects, default 10, made from ``seed``), with its
    subject-level train / val split; the manifest says ``"synthetic": true``. ``kind="tissue"``: the MNI152
    template slices of :func:`medkit.data.slices.build_slice_cache` with their white-matter (> 50 %) masks
    (one template, so ``n_subjects`` does not apply), non-empty masks only, with that cache's split.
    """
    from medkit.data.lesion_slices import build_lesion_cache
    from medkit.data.slices import build_slice_cache

    if kind not in MNI_PROMPTS:
        raise PairsError(f"kind={kind!r}: use 'lesion' (synthetic white-matter lesion masks) or 'tissue' (the "
                         f"template's white-matter mask).")
    if kind == "lesion":
        n = 10 if n_subjects is None else n_subjects
        source = build_lesion_cache("mni152-lesions", image_size, n_subjects=n, seed=seed, cache_root=cache_root,
                                    log=log)
    else:
        if n_subjects is not None:
            raise PairsError(f"n_subjects={n_subjects!r} only applies to kind='lesion' (synthetic subjects); "
                             f"kind='tissue' uses the one MNI152 template. Leave n_subjects unset.")
        source = build_slice_cache("mni152", image_size, seed=seed, cache_root=cache_root, log=log)
    settings = {"image_size": int(image_size), "kind": kind, "source_cache": f"{source.parent.name}/{source.name}"}

    def build(tmp: Path) -> dict:
        return _mni_build_into(tmp, source, kind, settings)

    root = Path(cache_root) if cache_root is not None else env.cache_root()
    final, meta = cached_build(root, "pairs", {"source": "mni152", "settings": settings}, build,
                               version=FORMAT_VERSION)
    if meta is None:
        log(f"pairs: reusing cache {final} (MNI152 {kind} pairs, {image_size} px)")
        return final
    c = meta["counts"]
    log(f"pairs: built {final} from {source} in {meta['build_seconds']:.1f} s: {meta['description']}; train "
        f"{c['train']}, val {c['val']} pairs ({c['dropped_empty']} slices with an empty mask left out)")
    return final


def _mni_build_into(out: Path, source: Path, kind: str, settings: dict) -> dict:
    source_meta = json.loads((source / "meta.json").read_text())
    listing, dropped = {}, 0
    group_col = "subject_id" if kind == "lesion" else "volume"
    for part in SPLITS:
        index = pd.read_csv(source / f"{part}.csv")
        images, masks, names, groups = [], [], [], set()
        for rel, group in zip(index["filepath"], index[group_col]):
            with np.load(source / rel) as f:
                x, m = f["image"], f["mask"] > 0  # lesion masks are {-1,+1}, slice-cache masks {0,1}
            if not m.any():
                dropped += 1
                continue
            images.append(np.round((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)[None])
            masks.append(m.astype(np.uint8)[None])
            names.append(Path(rel).stem)
            groups.add(str(group))
        if not names:
            raise PairsError(f"the {part} split of {source} has no slice with a non-empty {kind} mask; use more "
                             f"subjects (n_subjects) or a larger image_size.")
        _write_split(out, part, np.stack(images), np.stack(masks), names, [MNI_PROMPTS[kind]] * len(names))
        listing[part] = {"names": names, "subjects": sorted(groups)}
    return {"source": "mni152", "source_cache": str(source), "layout": f"mni152-{kind}",
            "synthetic": kind == "lesion", "description": MNI_DESCRIPTIONS[kind],
            "note": source_meta.get("note", ""), "settings": settings, "channels": 1,
            "image_size": settings["image_size"], "prompt": MNI_PROMPTS[kind],
            "counts": {"train": len(listing["train"]["names"]), "val": len(listing["val"]["names"]),
                       "dropped_empty": dropped},
            "problem_counts": {}, "problems": {}, "warnings": {},
            "pairs": {part: [{"name": n, "prompt": MNI_PROMPTS[kind]} for n in listing[part]["names"]]
                      for part in SPLITS},
            "subjects": {part: listing[part]["subjects"] for part in SPLITS}}
