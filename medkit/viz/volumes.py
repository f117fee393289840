"""Figures of 3D volumes for through-plane super-resolution: coronal and sagittal sections (where missing
slices show), difference maps, through-plane spectra, and a gallery sliding over z and over methods.

Volumes are (X, Y, Z) arrays in [-1, 1] (Z = slice axis, RAS: X left-right, Y posterior-anterior, Z up), as
``medkit.data.volumes`` reads them; sections are shown with z upwards.
"""
from __future__ import annotations

import numpy as np

from . import _plt, _save


def _sections(v: np.ndarray, x: int, y: int):
    return {"coronal": np.asarray(v)[:, y, :].T, "sagittal": np.asarray(v)[x, :, :].T}


def volume_views(volumes: dict, test_z=None, path=None, x: int | None = None, y: int | None = None, aspect=1.0):
    """Coronal (middle y) and sagittal (middle x) sections of each volume, one column each; ``test_z`` marks
    the held-out slab with two lines. Returns the figure (also written to ``path``)."""
    plt = _plt()
    first = np.asarray(next(iter(volumes.values())))
    x = first.shape[0] // 2 if x is None else x
    y = first.shape[1] // 2 if y is None else y
    fig, axes = plt.subplots(2, len(volumes), figsize=(2.6 * len(volumes), 5.2), squeeze=False)
    for j, (name, v) in enumerate(volumes.items()):
        for i, (view, img) in enumerate(_sections(v, x, y).items()):
            ax = axes[i, j]
            ax.imshow(img, cmap="gray", vmin=-1, vmax=1, origin="lower", aspect=aspect, interpolation="nearest")
            if test_z is not None:
                for z in test_z:
                    ax.axhline(z - 0.5, color="tab:orange", lw=0.8)
            ax.set_xticks([]), ax.set_yticks([])
            ax.set_title(name if i == 0 else "", fontsize=8)
            if j == 0:
                ax.set_ylabel(f"{view} (z up)", fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return fig


def difference_views(volumes: dict, reference: np.ndarray, path=None, limit: float = 0.2):
    """|method - reference| coronal and sagittal sections (in [-1, 1] units, clipped at ``limit``)."""
    plt = _plt()
    ref = np.asarray(reference)
    x, y = ref.shape[0] // 2, ref.shape[1] // 2
    fig, axes = plt.subplots(2, len(volumes), figsize=(2.6 * len(volumes), 5.2), squeeze=False)
    for j, (name, v) in enumerate(volumes.items()):
        d = np.abs(np.asarray(v) - ref)
        for i, (view, img) in enumerate(_sections(d, x, y).items()):
            im = axes[i, j].imshow(img, cmap="magma", vmin=0, vmax=limit, origin="lower", interpolation="nearest")
            axes[i, j].set_xticks([]), axes[i, j].set_yticks([])
            axes[i, j].set_title(f"|{name} - thin|" if i == 0 else "", fontsize=8)
    fig.colorbar(im, ax=axes, shrink=0.6, label="absolute error ([-1, 1] units)")
    _save(fig, path)
    return fig


def spectrum_plot(spectra: dict, path=None):
    """Through-plane power spectra {name: (freqs, power)} on a log scale: a blurry SR falls below the thin one."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    for name, (f, p) in spectra.items():
        ax.semilogy(f[1:], p[1:], label=name, lw=2.2 if name.startswith("thin") else 1.2)
    ax.set_xlabel("frequency along z (cycles / thin slice)")
    ax.set_ylabel("power")
    ax.legend(fontsize=7)
    ax.set_title("through-plane spectrum (inside the body/brain box)")
    fig.tight_layout()
    _save(fig, path)
    return fig


def z_gallery(volumes: dict, reference: np.ndarray, zs, title: str = ""):
    """An ipywidgets gallery: the slider moves over axial slices z, each panel shows every method's slice at
    that z (in the order of ``volumes``, named in the title) beside the thin reference."""
    import torch

    from .gallery import SampleGallery

    axial = lambda v, z: np.asarray(v)[:, :, z].T[::-1]  # noqa: E731  (anterior up)
    frames = {f"z={z}": dict(images=torch.as_tensor(np.stack([axial(v, z) for v in volumes.values()])[:, None].copy()),
                             real=axial(reference, z)[None, None].copy()) for z in zs}
    names = ", ".join(volumes)
    return SampleGallery(frames, slider_name="slice", nrow=len(volumes),
                         title=title or f"axial slices; left: thin reference; right: {names}")
