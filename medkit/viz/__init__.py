"""Static figures (matplotlib, Agg-safe): image grids, galleries, reconstructions, loss curves."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..train.plot import read_log, smooth  # noqa: F401  (re-exported: viz.read_log)


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except Exception:
        return False


def to_numpy_images(x) -> np.ndarray:
    """(N, 1, H, W) tensor in [-1, 1] -> (N, H, W) float array in [0, 1]."""
    x = torch.as_tensor(x).detach().float().cpu()
    if x.ndim == 4:
        x = x[:, 0]
    return ((x.clamp(-1, 1) + 1) / 2).numpy()


def grid(images, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile (N, 1, H, W) images in [-1, 1] into one [0, 1] array, ``nrow`` images per row."""
    ims = to_numpy_images(images)
    n, h, w = ims.shape
    nrow = nrow or int(np.ceil(np.sqrt(n)))
    rows = int(np.ceil(n / nrow))
    out = np.ones((rows * (h + pad) + pad, nrow * (w + pad) + pad), dtype=np.float32)
    for i, im in enumerate(ims):
        r, c = divmod(i, nrow)
        out[pad + r * (h + pad): pad + r * (h + pad) + h, pad + c * (w + pad): pad + c * (w + pad) + w] = im
    return out


def save_gallery(generated, real, path, title: str = "", nrow: int = 4):
    """Generated slices beside real ones (two grids), as one PNG; returns the figure."""
    plt = _plt()
    fig, axes = plt.subplots(1, 2, figsize=(10, 5.4))
    for ax, ims, name in ((axes[0], generated, f"generated (n={len(generated)})"), (axes[1], real, f"real (n={len(real)})")):
        ax.imshow(grid(ims, nrow), cmap="gray", vmin=0, vmax=1)
        ax.set_title(name)
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return fig


def save_reconstructions(original, recon, path, n: int = 8, title: str = ""):
    """Rows: original, reconstruction, |error| (x4 for visibility)."""
    plt = _plt()
    o, r = to_numpy_images(original[:n]), to_numpy_images(recon[:n])
    fig, axes = plt.subplots(3, len(o), figsize=(1.6 * len(o), 5.2), squeeze=False)
    for i in range(len(o)):
        for row, (im, kw) in enumerate(((o[i], dict(cmap="gray", vmin=0, vmax=1)),
                                        (r[i], dict(cmap="gray", vmin=0, vmax=1)),
                                        (np.abs(o[i] - r[i]) * 4, dict(cmap="magma", vmin=0, vmax=1)))):
            axes[row, i].imshow(im, **kw)
            axes[row, i].axis("off")
    for row, name in enumerate(("original", "reconstruction", "|error| x4")):
        axes[row, 0].set_title(name, fontsize=9, loc="left")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    _save(fig, path)
    return fig


def plot_losses(logs: dict, path=None, smooth_window: int | None = None):
    """One panel per stage: raw and moving-average loss against step (log y when positive).

    ``logs`` maps a title to a jsonl log's records (``read_log``). The trainer itself writes one PNG
    per stage; this draws several stages side by side, inline in a notebook and optionally to ``path``.
    """
    plt = _plt()
    logs = {k: [r for r in v if np.isfinite(r.get("loss", np.nan))] for k, v in logs.items()}
    logs = {k: v for k, v in logs.items() if v}
    fig, axes = plt.subplots(1, max(len(logs), 1), figsize=(5 * max(len(logs), 1), 3.6), squeeze=False)
    for ax, (name, rows) in zip(axes[0], logs.items()):
        steps = [r["step"] for r in rows]
        loss = [float(r["loss"]) for r in rows]
        ax.plot(steps, loss, alpha=0.35, lw=1, label="loss")
        w = smooth_window or max(2, len(loss) // 20)
        ax.plot(steps, smooth(loss, w), lw=2, label=f"moving average ({w} logs)")
        if min(loss) > 0:
            ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_title(name)
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
    return fig


def _save(fig, path):
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
from .gallery import SampleGallery, save_static_gallery  # noqa: E402,F401  (re-exported; after the helpers it uses)
from .volumes import difference_views, spectrum_plot, volume_views, z_gallery  # noqa: E402,F401
