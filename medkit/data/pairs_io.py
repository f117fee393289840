"""(image, mask) pairs in memory and in pairs folders: the kit's one reader and writer of pairs.

A *pairs folder* is what the kit writes and reads back for evaluation (generated pairs, real train/test
pairs for the downstream segmentation test)::

    DIR/images/<name>.png|.npy    image: grey or RGB - PNG 8-bit (L, RGB) or 16-bit grey (I;16);
                                  NPY float32 in [-1, 1], (H, W), (1, H, W) or (3, H, W)
    DIR/masks/<name>.png|.npy     its mask, same <name>: one channel, {0, 1} (PNG also {0, 255}; NPY also
                                  {-1, +1}, SLIM-Diff's convention; an RGB PNG mask with three equal channels
                                  is read as one)
    DIR/prompt.json               PNG folders: Siamese-Diffusion's JSON lines {"source", "target", "prompt"},
                                  so the folder is also a training folder (``find_pairs`` layout prompt-json)

In memory, :class:`Pairs` holds images (N, C, H, W) float32 in [-1, 1] with C = 1 (grey) or 3 (RGB), masks
(N, 1, H, W) float32 in {0, 1}, and the names. The number of channels is inferred from the files and must be
the same for every image of a folder: a folder mixing grey and RGB images is an error naming examples of
each (convert them first). Raw datasets in their published layouts (Kvasir-SEG, CVC-ClinicDB, ISIC, PraNet)
are read by :mod:`medkit.data.pairs` (``find_pairs``, ``build_pair_cache``).
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from medkit.data.sources import DataError

EXTS = (".npy", ".png")
CHANNELS = {1: "grey", 3: "RGB"}
N_EXAMPLES = 5


class PairsError(DataError):
    """A pairs folder, pairs arrays or a pairs setting that cannot be used as it is; the message says how to fix
    it. A :class:`medkit.data.DataError` (and so a ``ValueError``)."""


class Pairs(NamedTuple):
    images: torch.Tensor   # (N, C, H, W) float32 in [-1, 1], C = 1 or 3
    masks: torch.Tensor    # (N, 1, H, W) float32 in {0, 1}
    names: list

    @property
    def channels(self) -> int:
        return int(self.images.shape[1])

    def subset(self, idx) -> "Pairs":
        idx = [int(i) for i in idx]
        return Pairs(self.images[idx], self.masks[idx], [self.names[i] for i in idx])


def check_pairs(images, masks, name: str = "pairs", allow_empty: bool = True, names=None) -> Pairs:
    """Arrays/tensors -> :class:`Pairs`, checked: images (N, H, W) or (N, C, H, W) with C = 1 or 3 in [-1, 1],
    masks (N, H, W) or (N, 1, H, W) binary ({0, 1}, bool or {-1, +1}) of the images' size."""
    im = torch.as_tensor(np.asarray(images) if not torch.is_tensor(images) else images.detach().cpu()).float()
    mk = torch.as_tensor(np.asarray(masks) if not torch.is_tensor(masks) else masks.detach().cpu())
    im = im[:, None] if im.ndim == 3 else im
    mk = mk[:, None] if mk.ndim == 3 else mk
    if im.ndim != 4 or im.shape[1] not in CHANNELS:
        raise PairsError(f"{name}: images must be (N, H, W) or (N, C, H, W) with C = 1 (grey) or 3 (RGB), channels "
                         f"first; got {tuple(im.shape)}")
    if mk.ndim != 4 or mk.shape[1] != 1 or mk.shape[0] != im.shape[0] or mk.shape[2:] != im.shape[2:]:
        raise PairsError(f"{name}: masks have shape {tuple(mk.shape)} but images {tuple(im.shape)}; each image needs "
                         f"a one-channel mask of its own size, (N, 1, H, W)")
    if len(im) == 0:
        raise PairsError(f"{name}: no pairs (0 images)")
    if not torch.isfinite(im).all():
        raise PairsError(f"{name}: images contain NaN or inf")
    lo, hi = im.min().item(), im.max().item()
    if lo < -1 - 1e-3 or hi > 1 + 1e-3:
        raise PairsError(f"{name}: images span [{lo:g}, {hi:g}], outside [-1, 1]; rescale first, e.g. x / 127.5 - 1 "
                         f"for 0..255 data, or clamp a sampler's output (x.clamp(-1, 1))")
    mk = _binary_mask(mk, name)
    if not allow_empty:
        empty = (mk.flatten(1).sum(1) == 0).nonzero().flatten().tolist()
        if empty:
            raise PairsError(f"{name}: {len(empty)} of {len(mk)} masks are empty (all background), e.g. index "
                             f"{empty[:N_EXAMPLES]}; remove them, or pass allow_empty=True (--allow-empty) if "
                             f"lesion-free pairs are intended")
    names = [f"{i:05d}" for i in range(len(im))] if names is None else [str(s) for s in names]
    if len(names) != len(im) or len(set(names)) != len(names):
        raise PairsError(f"{name}: need {len(im)} distinct names, got {len(names)} ({len(set(names))} distinct)")
    return Pairs(im.clamp(-1, 1), mk, names)


def _binary_mask(mk: torch.Tensor, name: str) -> torch.Tensor:
    if mk.dtype == torch.bool:
        return mk.float()
    if mk.is_floating_point() and torch.isnan(mk).any():
        raise PairsError(f"{name}: masks contain NaN")
    if ((mk == 0) | (mk == 1)).all():
        return mk.float()
    if ((mk == -1) | (mk == 1)).all():  # SLIM-Diff's {-1, +1} convention
        return (mk > 0).float()
    bad = mk[~((mk == 0) | (mk == 1))].flatten()[0].item()
    raise PairsError(f"{name}: masks are not binary (values such as {bad!r}); threshold them first, e.g. "
                     f"(mask > 0.5) for probabilities or (mask > 0) for [-1, 1] outputs")


# ---------------------------------------------------------------------------------------------------
# Reading

def _read_npy(path: Path, kind: str) -> np.ndarray:
    try:
        x = np.load(path, allow_pickle=False)
    except Exception as e:  # truncated, pickled object, not an NPY file
        raise PairsError(f"cannot read {path}: {type(e).__name__}: {e}; re-write it with np.save") from None
    x = x[None] if x.ndim == 2 else x
    ok = (1, 3) if kind == "image" else (1,)
    if x.ndim != 3 or x.shape[0] not in ok or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        want = "(H, W), (1, H, W) or (3, H, W)" if kind == "image" else "(H, W) or (1, H, W)"
        raise PairsError(f"{path}: expected a numeric {kind} array {want} (channels first), got {x.dtype} {x.shape}")
    x = x.astype(np.float32)
    if kind == "image":
        if not np.isfinite(x).all():
            raise PairsError(f"{path}: image contains NaN or inf")
        if x.min() < -1 - 1e-6 or x.max() > 1 + 1e-6:
            raise PairsError(f"{path}: NPY image values span [{x.min():g}, {x.max():g}], outside [-1, 1]; rescale "
                             f"before saving, e.g. x / 127.5 - 1 for 0..255 data or 2 * (x - min) / (max - min) - 1")
    return x


def _read_png(path: Path, kind: str) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode, x = im.mode, np.asarray(im)
    except Exception as e:
        raise PairsError(f"cannot read {path}: {type(e).__name__}: {e}; re-export it as PNG") from None
    if kind == "mask":
        if x.ndim == 3 and x.shape[2] == 3 and (x == x[..., :1]).all():
            x = x[..., 0]  # an RGB mask with three equal channels
        if x.ndim != 2:
            raise PairsError(f"{path}: a mask must have one channel, got PNG mode {mode} {x.shape}; save it grey "
                             f"(Image.open(p).convert('L'))")
        x = x.astype(np.float32)
        return (x / 255.0 if x.max() == 255 else x)[None]  # {0, 255} -> {0, 1}
    if mode == "RGB" and x.dtype == np.uint8:
        return x.transpose(2, 0, 1).astype(np.float32) / 127.5 - 1.0
    if mode == "L":
        return x[None].astype(np.float32) / 127.5 - 1.0
    if mode.startswith("I") and x.ndim == 2 and x.min() >= 0 and x.max() <= 65535:  # 16-bit grey
        return x[None].astype(np.float32) / 32767.5 - 1.0
    raise PairsError(f"{path}: PNG mode {mode} is neither an 8-bit grey/RGB nor a 16-bit grey image; convert it, "
                     f"e.g. Image.open(p).convert('RGB') (or 'L' for grey)")


def _read(path: Path, kind: str) -> np.ndarray:
    """One image or mask file -> float32 (C, H, W); images in [-1, 1], masks as stored ({0, 1} for PNG)."""
    return _read_npy(path, kind) if path.suffix.lower() == ".npy" else _read_png(path, kind)


def _index(folder: Path) -> dict[str, Path]:
    out = {}
    for p in sorted(folder.iterdir()):
        if p.suffix.lower() in EXTS and p.is_file():
            if p.stem in out:
                raise PairsError(f"{folder}: both {out[p.stem].name} and {p.name} exist; keep one file per name")
            out[p.stem] = p
    return out


def _examples(names) -> list:
    return list(names)[:N_EXAMPLES]


def load_pairs(directory, allow_empty: bool = False) -> Pairs:
    """Read a pairs folder (``DIR/images/<name>.png|npy`` + ``DIR/masks/<name>.png|npy``), checked.

    Errors (with counts and up to 5 examples) for: a missing folder, images without a mask (or masks without
    an image), a mask whose size differs from its image's, pairs of different sizes, grey and RGB images mixed,
    non-binary masks, empty masks (unless ``allow_empty``), NPY images outside [-1, 1], unreadable files.
    """
    d = Path(directory).expanduser()
    idir, mdir = d / "images", d / "masks"
    for sub in (idir, mdir):
        if not sub.is_dir():
            raise PairsError(f"{sub} is not a folder; a pairs folder holds images/<name>.png|npy and "
                             f"masks/<name>.png|npy (write one with medkit.data.save_pairs)")
    imgs, msks = _index(idir), _index(mdir)
    if not imgs:
        raise PairsError(f"{idir} holds no .png or .npy images")
    lonely = sorted(set(imgs) - set(msks))
    if lonely:
        raise PairsError(f"{len(lonely)} of {len(imgs)} images in {idir} have no mask in {mdir} (same name, .png or "
                         f".npy), e.g. {_examples(imgs[s].name for s in lonely)}")
    orphans = sorted(set(msks) - set(imgs))
    if orphans:
        raise PairsError(f"{len(orphans)} masks in {mdir} have no image in {idir}, e.g. "
                         f"{_examples(msks[s].name for s in orphans)}; remove them or add their images")
    images, masks, names = [], [], sorted(imgs)
    bad_size, bad_bin, empty = [], [], []
    for s in names:
        x, m = _read(imgs[s], "image"), _read(msks[s], "mask")
        if x.shape[1:] != m.shape[1:]:
            bad_size.append(f"{s} (image {x.shape[1]}x{x.shape[2]}, mask {m.shape[1]}x{m.shape[2]})")
            continue
        if not np.isin(m, (0.0, 1.0)).all():
            if msks[s].suffix.lower() == ".npy" and np.isin(m, (-1.0, 1.0)).all():
                m = (m > 0).astype(np.float32)
            else:
                bad_bin.append(f"{msks[s].name} (values {np.unique(m)[:4].tolist()}...)")
                continue
        if not allow_empty and m.max() == 0:
            empty.append(msks[s].name)
        images.append(x)
        masks.append(m)
    if bad_size:
        raise PairsError(f"{len(bad_size)} of {len(names)} pairs in {d} have a mask whose size differs from its "
                         f"image's: {_examples(bad_size)}")
    if bad_bin:
        raise PairsError(f"{len(bad_bin)} of {len(names)} masks in {mdir} are not binary: {_examples(bad_bin)}; masks "
                         f"must be {{0,1}} (PNG also {{0,255}}, NPY also {{-1,+1}}): threshold them before saving")
    if empty:
        raise PairsError(f"{len(empty)} of {len(names)} masks in {mdir} are empty (all background), e.g. "
                         f"{_examples(empty)}; remove them, or pass allow_empty=True (--allow-empty) if lesion-free "
                         f"pairs are intended")
    by_channels, by_size = {}, {}
    for s, x in zip(names, images):
        by_channels.setdefault(x.shape[0], []).append(imgs[s].name)
        by_size.setdefault(x.shape[1:], []).append(s)
    if len(by_channels) > 1:
        desc = "; ".join(f"{len(v)} {CHANNELS[c]} (e.g. {_examples(v)})" for c, v in sorted(by_channels.items()))
        raise PairsError(f"{idir} mixes grey and RGB images: {desc}; convert them to one kind first "
                         f"(Image.open(p).convert('RGB') or .convert('L'))")
    if len(by_size) > 1:
        desc = ", ".join(f"{h}x{w}: {len(v)} (e.g. {v[0]})" for (h, w), v in by_size.items())
        raise PairsError(f"pairs in {d} have different sizes ({desc}); resize them to one size first")
    return Pairs(torch.from_numpy(np.stack(images)).clamp(-1, 1), torch.from_numpy(np.stack(masks)), names)


# ---------------------------------------------------------------------------------------------------
# Writing

def save_pairs(directory, images, masks, *, fmt: str = "png", prompt: str | list | None = None, names=None,
               overwrite: bool = False) -> Path:
    """Write a pairs folder; returns it.

    ``images``: (N, C, H, W) (or (N, H, W)) in [-1, 1], C = 1 or 3; ``masks``: (N, 1, H, W) binary (bool,
    {0, 1} or {-1, +1}). ``fmt="png"``: 8-bit grey or RGB PNGs round((x + 1) * 127.5) (quantised, +-0.004),
    {0, 255} masks, and ``prompt.json`` (one ``prompt`` for all, a list of N, or None -> ""), so the folder is
    also a training folder (layout prompt-json); ``fmt="npy"``: float32 images and uint8 {0, 1} masks, exact
    (evaluation only). ``names``: default 00000, 00001, ... Existing pair files there are an error unless
    ``overwrite=True`` (which deletes them first).
    """
    if fmt not in ("npy", "png"):
        raise PairsError(f"save_pairs: fmt={fmt!r}; use 'png' (8-bit, with prompt.json) or 'npy' (exact)")
    p = check_pairs(images, masks, "save_pairs", names=names)
    n = len(p.images)
    bad = [s for s in p.names if not s or s.startswith(".") or "/" in s or "\\" in s]
    if bad:
        raise PairsError(f"save_pairs: names {_examples(bad)} are not plain file names; use letters, digits, '-' "
                         f"or '_'.")
    prompts = [prompt] * n if prompt is None or isinstance(prompt, str) else list(prompt)
    if len(prompts) != n or not all(q is None or isinstance(q, str) for q in prompts):
        raise PairsError(f"save_pairs: prompt must be one string, None or a list of {n} strings.")
    d = Path(directory).expanduser()
    idir, mdir, jpath = d / "images", d / "masks", d / "prompt.json"
    old = [f for sub in (idir, mdir) if sub.is_dir() for f in sub.iterdir() if f.is_file() and f.suffix.lower() in
           (".png", ".npy", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")] + ([jpath] if jpath.is_file() else [])
    if old and not overwrite:
        raise FileExistsError(f"{d} already holds {len(old)} pair file(s) (images/, masks/, prompt.json); choose a new "
                              f"folder or pass overwrite=True (which deletes them first)")
    for f in old:
        f.unlink()
    idir.mkdir(parents=True, exist_ok=True)
    mdir.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        for name, x, m in zip(p.names, p.images.numpy(), p.masks.numpy()):
            np.save(idir / f"{name}.npy", x[0] if x.shape[0] == 1 else x)
            np.save(mdir / f"{name}.npy", m[0].astype(np.uint8))
        return d
    from PIL import Image

    pixels = np.round((p.images.numpy() + 1.0) * 127.5).clip(0, 255).astype(np.uint8)
    lines = []
    for name, x, m, q in zip(p.names, pixels, p.masks.numpy(), prompts):
        Image.fromarray(x[0] if x.shape[0] == 1 else x.transpose(1, 2, 0)).save(idir / f"{name}.png")
        Image.fromarray((m[0] > 0).astype(np.uint8) * 255).save(mdir / f"{name}.png")
        lines.append(json.dumps({"source": f"masks/{name}.png", "target": f"images/{name}.png", "prompt": q or ""}))
    tmp = jpath.with_suffix(".json.tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, jpath)
    return d
