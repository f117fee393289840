"""Feature extractors for the distribution metrics, and batched extraction over image sets or folders.

An extractor is any callable ``f(images) -> (N, D)`` on float images in [-1, 1], shape (N, 1|3, H, W),
with a ``name`` (it labels every metric computed on its features) and a ``feature_dim``. Built in:

- ``"inception"``: the InceptionV3 FID network (2048-d pool features, TF 2015-12-05 weights) - the one
  papers' FID and KID use. Its weights file must be present (or downloadable); otherwise one error
  says which file to attach. It is never replaced by another network behind the caller's back.
- ``"vae:RUN_DIR"``: the posterior means of a trained SBLDM VAE (EMA weights), flattened - a
  domain-specific embedding that needs no download. Metrics on it are labelled ``sbldm-vae-latent``
  and reported as Frechet/kernel *distances*, not FID/KID.
- ``"clip"`` / ``"clip:FOLDER_OR_HUB_ID"``: unit-norm CLIP image embeddings (:mod:`medkit.metrics.clip`),
  CMMD's features when the model is OpenAI's ViT-L/14@336.

:func:`extract_features` runs an extractor over a tensor, an array, or an iterable of batches (for
example :func:`iter_image_folder`), so peak memory is set by ``batch_size``, not by the dataset size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

IMAGE_SUFFIXES = (".png", ".npy", ".npz")


# --------------------------------------------------------------------------------- image folders
def _png_to_unit(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.asarray(im.convert("L") if mode not in ("L", "I;16", "I") else im)
    except Exception as e:  # PIL raises several types for broken files
        raise ValueError(f"{path}: not a readable PNG ({e}).") from None
    if arr.dtype == np.uint8:
        # + 1e-6 (8 float32 ulps): the FID network's input truncates 255 (x + 1) / 2 to uint8 as torchmetrics
        # does, and plain k / 127.5 - 1 comes back as k - 1 for 63 of the 256 levels
        return np.minimum(arr.astype(np.float64) / 127.5 - 1.0 + 1e-6, 1.0).astype(np.float32)
    if arr.dtype in (np.uint16, np.int32) and mode.startswith("I"):
        return arr.astype(np.float32) / 32767.5 - 1.0
    raise ValueError(f"{path}: unsupported PNG mode {mode!r}; save 8-bit grayscale or RGB PNGs.")


def _check_range(arr: np.ndarray, path: Path) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ValueError(f"{path}: contains NaN or inf.")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1.001 or hi > 1.001:
        raise ValueError(f"{path}: values span [{lo:.3g}, {hi:.3g}], but NPY/NPZ images must be in [-1, 1] "
                         f"(medkit's convention). Rescale them, e.g. x / 127.5 - 1 for 0..255 data or "
                         f"2 * (x - lo) / (hi - lo) - 1 with your window.")
    return arr.astype(np.float32)


def _as_nchw(arr: np.ndarray, path: Path) -> np.ndarray:
    """(H,W) | (1,H,W) | (H,W,3) | (N,H,W) | (N,1,H,W) | (N,3,H,W) -> (N, 1|3, H, W)."""
    if arr.ndim == 2:
        return arr[None, None]
    if arr.ndim == 3 and arr.shape[-1] == 3 and arr.shape[0] not in (1, 3):
        return arr.transpose(2, 0, 1)[None]
    if arr.ndim == 3 and arr.shape[0] in (1, 3) and path.suffix == ".png":
        return arr[None]
    if arr.ndim == 3:
        return arr[:, None] if arr.shape[0] != 1 else arr[None]
    if arr.ndim == 4 and arr.shape[1] in (1, 3):
        return arr
    raise ValueError(f"{path}: array of shape {arr.shape} is not an image or a stack of images "
                     f"((H, W), (N, H, W) or (N, 1|3, H, W)).")


def list_images(folder) -> list[Path]:
    """Image files (PNG, NPY, NPZ) directly in ``folder``, sorted; a clear error if there are none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder of images (PNG, NPY or NPZ files).")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if not files:
        seen = sorted({p.suffix or p.name for p in folder.iterdir()})[:8]
        raise ValueError(f"{folder} holds no PNG/NPY/NPZ images (found: {', '.join(seen) or 'nothing'}).")
    return files


def read_image_file(path) -> np.ndarray:
    """One file -> float32 (N, 1|3, H, W) in [-1, 1]. NPZ: the ``images`` array (medkit's samples file)."""
    path = Path(path)
    suf = path.suffix.lower()
    if suf == ".png":
        arr = _png_to_unit(path)
    elif suf in (".npy", ".npz"):
        try:
            if suf == ".npy":
                arr = np.load(path, allow_pickle=False)
            else:
                with np.load(path, allow_pickle=False) as f:
                    if "images" not in f:
                        raise ValueError(f"{path}: an NPZ needs an 'images' array (found {', '.join(f.files)}).")
                    arr = f["images"]
        except ValueError:
            raise
        except Exception as e:
            raise ValueError(f"{path}: not a readable NumPy file ({e}).") from None
        arr = _check_range(np.asarray(arr, dtype=np.float32), path)
    else:
        raise ValueError(f"{path}: unsupported image file type {suf!r}; use PNG, NPY or NPZ.")
    return _as_nchw(arr, path)


def iter_image_folder(folder, batch_size: int = 64) -> Iterator[torch.Tensor]:
    """Yield (B, C, H, W) float tensors in [-1, 1] from a folder (or one NPZ/NPY file), reading lazily.

    All images must share one size and channel count; a mismatch names both files.
    """
    src = Path(folder)
    files = [src] if src.is_file() else list_images(src)
    buf: list[np.ndarray] = []
    first: tuple | None = None
    first_file = None
    for p in files:
        arr = read_image_file(p)
        if first is None:
            first, first_file = arr.shape[1:], p
        elif arr.shape[1:] != first:
            raise ValueError(f"{p} has images of shape {arr.shape[1:]} but {first_file} has {first}; resize the "
                             f"images to one size first.")
        for im in arr:
            buf.append(im)
            if len(buf) == batch_size:
                yield torch.from_numpy(np.stack(buf))
                buf = []
    if buf:
        yield torch.from_numpy(np.stack(buf))


def load_image_folder(folder) -> torch.Tensor:
    """Every image of a folder (or an NPZ/NPY file) as one (N, C, H, W) tensor in [-1, 1]."""
    return torch.cat(list(iter_image_folder(folder, batch_size=256)))


# ------------------------------------------------------------------------------------ extractors
class VAEFeatures(torch.nn.Module):
    """Flattened posterior means of a trained SBLDM VAE (its EMA weights), read from a run directory."""

    name = "sbldm-vae-latent"

    def __init__(self, run_dir):
        super().__init__()
        from medkit.methods import sbldm
        from medkit.run import RunDir
        from medkit.train import load_weights

        run_dir = Path(run_dir)
        if not (run_dir / "config" / "vae.json").is_file():
            raise FileNotFoundError(f"features 'vae:{run_dir}': {run_dir / 'config' / 'vae.json'} is missing; "
                                    f"give the run directory of an SBLDM run whose VAE stage has finished.")
        run = RunDir(run_dir)
        self.cfg = run.load_config("vae", needed_by="VAE features")
        self.vae = sbldm.build_vae(self.cfg)
        load_weights(run.path, "vae", self.vae, ema=True)
        self.vae.eval()
        self.image_size = int(self.cfg["image_size"])
        lat = self.image_size // (2 ** (len(self.cfg["vae_channels"]) - 1))
        self.feature_dim = int(self.cfg["latent_channels"]) * lat * lat

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] == 3:
            x = x.mean(1, keepdim=True)
        if tuple(x.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"VAE features: images are {tuple(x.shape[-2:])} but this VAE was trained at "
                             f"{self.image_size}x{self.image_size}; resize them or use another extractor.")
        dev = next(self.vae.parameters()).device
        mu, _ = self.vae.encode(x.to(dev, torch.float32))
        return mu.flatten(1)


def get_extractor(name, device=None):
    """``"inception"``, ``"vae:RUN_DIR"``, ``"clip"`` / ``"clip:SOURCE"``, or an extractor module (returned as is)."""
    if not isinstance(name, str):
        if not hasattr(name, "name"):
            raise TypeError("a custom feature extractor needs a .name attribute (it labels the metrics).")
        return name
    if name in ("inception", "inception-v3-fid"):
        from medkit.metrics.inception import InceptionV3FID

        ext = InceptionV3FID()
    elif name.startswith("vae:"):
        ext = VAEFeatures(name[4:])
    elif name == "clip" or name.startswith("clip:"):
        from medkit.metrics.clip import CLIPFeatures

        ext = CLIPFeatures(name[5:] or None)
    else:
        raise ValueError(f"features={name!r}: use 'inception' (the FID network; needs its weights file), "
                         f"'vae:RUN_DIR' (a trained SBLDM run's VAE encoder) or 'clip' / 'clip:FOLDER_OR_HUB_ID' "
                         f"(CMMD's CLIP ViT-L/14@336).")
    if device is not None:
        ext = ext.to(device)
    return ext.eval()


def _batches(images, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(images, (str, Path)):
        yield from iter_image_folder(images, batch_size)
        return
    if isinstance(images, (np.ndarray, torch.Tensor)):
        t = torch.as_tensor(images)
        if t.ndim == 3:
            t = t[:, None]
        for i in range(0, len(t), batch_size):
            yield t[i:i + batch_size]
        return
    for b in images:  # an iterable of batches, consumed lazily
        b = torch.as_tensor(b)
        yield b[:, None] if b.ndim == 3 else b


@torch.no_grad()
def extract_features(images, extractor, batch_size: int = 64, device=None, progress: bool = False) -> np.ndarray:
    """(N, D) float64 features of ``images`` (tensor/array (N[,C],H,W) in [-1, 1], an iterable of such
    batches, or a folder path), computed ``batch_size`` images at a time."""
    ext = get_extractor(extractor, device)
    dev = device or (next(ext.parameters()).device if any(True for _ in ext.parameters()) else "cpu")
    out = []
    it = _batches(images, batch_size)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, desc=f"features ({ext.name})", unit="batch", leave=False)
    for b in it:
        if b.ndim != 4:
            raise ValueError(f"extract_features: a batch has shape {tuple(b.shape)}; expected (N, C, H, W).")
        b = b.float()
        if not torch.isfinite(b).all():
            raise ValueError("extract_features: images contain NaN or inf.")
        if b.min() < -1.001 or b.max() > 1.001:
            raise ValueError(f"extract_features: images span [{b.min():.3g}, {b.max():.3g}]; medkit's extractors "
                             f"take images in [-1, 1].")
        out.append(ext(b.to(dev)).double().cpu().numpy())
    if not out:
        raise ValueError("extract_features: no images.")
    return np.concatenate(out)
