"""Sample gallery: real vs synthetic side by side, masks overlaid on demand, one slider over frames.

A *frame* is one slider position: the samples of one checkpoint, one number of sampling steps or one
seed, keyed by a label (``{5000: x_5000, 10000: x_10000}``). Each frame holds synthetic images
(N, 1, H, W) in [-1, 1] (torch tensor or numpy array), optionally their binary masks; the real images
(and their masks) are shared by all frames or given per frame.

Two views of the same frames:

* ``SampleGallery`` - an ipywidgets gallery for a notebook: a slider over the frames, a toggle for the
  mask overlay, PNG export. It works in a live kernel *and* in a static HTML render of the notebook's
  saved widget state (nbviewer, a Kaggle/Colab "saved version", ``jupyter nbconvert --to html``),
  where no Python callback runs. So every frame, with and without the overlay, is rendered up front
  to a PNG held by an ``ipywidgets.Image``; the images sit in ``ipywidgets.Stack`` containers whose
  ``selected_index`` follows the slider and the toggle through ``ipywidgets.jslink`` (in the browser)
  and through a Python ``observe`` (in the kernel, with or without a browser attached).
* ``save_static_gallery`` - the same pictures as one matplotlib figure (rows = frames, real on the
  left) for papermill runs and CI, where nobody moves a slider.

Layout of one frame's picture (``render_frame``)::

    +---------------------+   +---------------------+
    | real                |   | checkpoint 5000     |   <- header strip (PIL's default font)
    | [] [] [] []         |   | [] [] [] []         |
    | [] [] [] []         |   | [] [] [] []         |   <- nrow images per row, upscaled x scale
    +---------------------+   +---------------------+

Masks are drawn as a translucent fill with a solid contour in ``MASK_COLOUR``. At most ``max_images``
images per panel are shown (the header says "first k of n") so that a notebook stays light: each PNG is
encoded losslessly at native resolution times a small integer ``scale`` (nearest neighbour).
"""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np

from . import _plt, to_numpy_images

MASK_COLOUR = (255, 64, 32)  # contour and fill colour of the mask overlay (RGB)
MASK_ALPHA = 0.3             # opacity of the fill inside a mask; the contour is opaque
PAD = 2                      # white pixels between tiles (after upscaling)
GUTTER = 12                  # white pixels between the real and the synthetic panel
HEADER = 16                  # height of the header strip above each panel, pixels


# ----------------------------------------------------------------------------------------------------
# inputs
# ----------------------------------------------------------------------------------------------------
def _as_images(x, what: str) -> np.ndarray:
    """(N, 1, H, W) tensor/array in [-1, 1] -> (N, H, W) float32 in [0, 1], validated."""
    if x is None:
        raise ValueError(f"{what} is None: pass images of shape (N, 1, H, W) in [-1, 1]")
    a = np.asarray(x.detach().cpu() if hasattr(x, "detach") else x)
    if a.dtype == bool or not np.issubdtype(a.dtype, np.number):
        raise ValueError(f"{what} has dtype {a.dtype}: pass float images of shape (N, 1, H, W) in [-1, 1]")
    if a.ndim != 4 or a.shape[1] != 1:
        hint = ("; for 3D volumes (N, 1, D, H, W) pass one slice, e.g. x[:, :, D // 2]" if a.ndim == 5
                else "; add the channel axis with x[:, None]" if a.ndim == 3 else "")
        raise ValueError(f"{what} has shape {tuple(a.shape)}: expected (N, 1, H, W) single-channel images{hint}")
    if a.shape[0] == 0:
        raise ValueError(f"{what} holds no images (shape {tuple(a.shape)}): pass at least one")
    a = a.astype(np.float32)
    if not np.isfinite(a).all():
        raise ValueError(f"{what} contains {int((~np.isfinite(a)).sum())} NaN/inf values: "
                         "check the sampler (diverged?) before plotting")
    if np.abs(a).max() > 2.0:
        raise ValueError(f"{what} has values in [{a.min():.3g}, {a.max():.3g}]: expected [-1, 1] "
                         "(scale [0, 1] images with x * 2 - 1, [0, 255] ones with x / 127.5 - 1)")
    return to_numpy_images(a)  # clamps the slight overshoot of a sampler to [-1, 1], maps to [0, 1]


def _as_masks(m, images: np.ndarray, what: str) -> np.ndarray | None:
    """Masks matching ``images`` ((N, 1, H, W) or (N, H, W), values {0, 1}) -> (N, H, W) bool."""
    if m is None:
        return None
    a = np.asarray(m.detach().cpu() if hasattr(m, "detach") else m)
    if a.ndim == 4 and a.shape[1] == 1:
        a = a[:, 0]
    if a.shape != images.shape:
        raise ValueError(f"{what} has shape {tuple(np.shape(m))}: expected "
                         f"({images.shape[0]}, 1, {images.shape[1]}, {images.shape[2]}), one mask per image")
    if a.dtype != bool:
        if not np.issubdtype(a.dtype, np.number) or not np.isin(a, (0, 1)).all():
            bad = np.unique(a[~np.isin(a, (0, 1))])[:5] if np.issubdtype(a.dtype, np.number) else a.dtype
            raise ValueError(f"{what} is not binary (found {bad}): pass masks with values in {{0, 1}}, "
                             "e.g. (mask > 0.5)")
    return a.astype(bool)


def _normalise_frames(frames, real, real_masks) -> list[dict]:
    """The frames as a list of {label, images, masks, real, real_masks}, arrays validated."""
    if not isinstance(frames, dict):
        raise TypeError(f"frames must be a dict {{label: images or dict(images=..., masks=...)}}, "
                        f"got {type(frames).__name__}")
    if not frames:
        raise ValueError("frames is empty: pass at least one {label: images}, e.g. {checkpoint_step: samples}")
    if real_masks is not None and real is None:
        raise ValueError("real_masks given without real: pass the real images too (real=...)")
    shared_real = _as_images(real, "real") if real is not None else None
    shared_real_masks = _as_masks(real_masks, shared_real, "real_masks") if real is not None else None
    out, seen = [], {}
    for label, spec in frames.items():
        name = f"frames[{label!r}]"
        if str(label) in seen:
            raise ValueError(f"frame labels {seen[str(label)]!r} and {label!r} print the same ({str(label)!r}): "
                             "use distinct labels")
        seen[str(label)] = label
        if isinstance(spec, dict):
            unknown = set(spec) - {"images", "masks", "real", "real_masks"}
            if unknown or "images" not in spec:
                raise ValueError(f"{name} must hold 'images' and optionally 'masks', 'real', 'real_masks' "
                                 f"(got keys {sorted(spec)})")
        else:
            spec = {"images": spec}
        ims = _as_images(spec["images"], f"{name} images")
        f = {"label": label, "images": ims, "masks": _as_masks(spec.get("masks"), ims, f"{name} masks")}
        if spec.get("real") is not None:
            f["real"] = _as_images(spec["real"], f"{name} real")
            f["real_masks"] = _as_masks(spec.get("real_masks"), f["real"], f"{name} real_masks")
        elif spec.get("real_masks") is not None:
            raise ValueError(f"{name} has real_masks but no real images: add 'real' to the frame")
        else:
            f["real"], f["real_masks"] = shared_real, shared_real_masks
        out.append(f)
    hw = {(k, f["label"]): f[k].shape[1:] for f in out for k in ("images", "real") if f[k] is not None}
    if len(set(hw.values())) > 1:
        listing = ", ".join(f"{lab!r} {k}: {h}x{w}" for (k, lab), (h, w) in hw.items())
        raise ValueError(f"images differ in size ({listing}): every frame and the real images must share H x W "
                         "(resize or crop them to one size)")
    return out


# ----------------------------------------------------------------------------------------------------
# rendering (numpy + PIL: deterministic, no matplotlib figure per frame)
# ----------------------------------------------------------------------------------------------------
def _auto_scale(h: int, w: int) -> int:
    """Integer upscaling to about 96 px a tile: x4 up to 24 px, x3 for 32 px, x1 from 49 px on.

    Modest on purpose: the pictures are stored in the notebook (every frame twice with masks), and a PNG's
    size grows with the square of the scale.
    """
    return int(max(1, min(4, 96 // max(h, w))))


def _contour(mask: np.ndarray) -> np.ndarray:
    """Pixels of ``mask`` with at least one 4-neighbour outside it (the mask's inner boundary)."""
    m = np.pad(mask, 1, constant_values=False)
    interior = m[1:-1, 1:-1] & m[:-2, 1:-1] & m[2:, 1:-1] & m[1:-1, :-2] & m[1:-1, 2:]
    return mask & ~interior


def _panel(images: np.ndarray, masks: np.ndarray | None, overlay: bool, nrow: int, scale: int,
           max_images: int) -> np.ndarray:
    """Tile (N, H, W) [0, 1] images into an (rows, cols, 3) uint8 RGB panel, masks drawn when ``overlay``."""
    ims = images[:max_images]
    n, h, w = ims.shape
    H, W = h * scale, w * scale
    ncol = min(nrow, n)
    rows = -(-n // ncol)
    out = np.full((rows * (H + PAD) + PAD, ncol * (W + PAD) + PAD, 3), 255, dtype=np.uint8)
    colour = np.array(MASK_COLOUR, dtype=np.float32)
    for i, im in enumerate(ims):
        tile = np.repeat(np.repeat(im, scale, 0), scale, 1)
        rgb = np.repeat(tile[..., None] * 255.0, 3, axis=-1)
        if overlay and masks is not None:
            m = np.repeat(np.repeat(masks[i], scale, 0), scale, 1)
            rgb[m] = (1 - MASK_ALPHA) * rgb[m] + MASK_ALPHA * colour
            rgb[_contour(m)] = colour
        r, c = divmod(i, ncol)
        y, x = PAD + r * (H + PAD), PAD + c * (W + PAD)
        out[y:y + H, x:x + W] = np.clip(np.rint(rgb), 0, 255).astype(np.uint8)
    return out


def _header(text: str, width: int) -> np.ndarray:
    """A white (HEADER, width, 3) strip with ``text`` in PIL's built-in font (no font file needed)."""
    from PIL import Image, ImageDraw, ImageFont

    strip = Image.new("RGB", (width, HEADER), (255, 255, 255))
    try:
        font = ImageFont.load_default(size=11)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        font = ImageFont.load_default()
    ImageDraw.Draw(strip).text((PAD + 1, 2), text, fill=(0, 0, 0), font=font)
    return np.asarray(strip)


def render_frame(frame: dict, overlay: bool, nrow: int = 4, scale: int | None = None, max_images: int = 16,
                 slider_name: str = "checkpoint") -> np.ndarray:
    """One frame's picture as an (H, W, 3) uint8 array: real panel (if any) left, synthetic right.

    ``frame`` is one entry of ``_normalise_frames`` (validated arrays). ``overlay`` draws the masks that
    the frame has; panels without masks are drawn plain either way.
    """
    h, w = frame["images"].shape[1:]
    scale = scale or _auto_scale(h, w)

    def titled(ims, masks, name):
        k = min(len(ims), max_images)
        text = f"{name} (n={len(ims)})" if k == len(ims) else f"{name} (first {k} of {len(ims)})"
        body = _panel(ims, masks, overlay, nrow, scale, max_images)
        return np.concatenate([_header(text, body.shape[1]), body], axis=0)

    synth = titled(frame["images"], frame["masks"], f"{slider_name} {frame['label']}")
    if frame["real"] is None:
        return synth
    real = titled(frame["real"], frame["real_masks"], "real")
    height = max(real.shape[0], synth.shape[0])
    canvas = np.full((height, real.shape[1] + GUTTER + synth.shape[1], 3), 255, dtype=np.uint8)
    canvas[:real.shape[0], :real.shape[1]] = real
    canvas[:synth.shape[0], real.shape[1] + GUTTER:] = synth
    return canvas


def encode_png(rgb: np.ndarray) -> bytes:
    """Lossless, deterministic PNG bytes of an (H, W, 3) uint8 array (grey pictures stored as 'L')."""
    from PIL import Image

    grey = bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())
    im = Image.fromarray(rgb[..., 0] if grey else rgb, mode="L" if grey else "RGB")
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def decode_png(data: bytes) -> np.ndarray:
    """PNG bytes -> (H, W, 3) uint8 array (the inverse of ``encode_png``; for tests and checks)."""
    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


# ----------------------------------------------------------------------------------------------------
# the interactive gallery
# ----------------------------------------------------------------------------------------------------
class SampleGallery:
    """Interactive real-vs-synthetic gallery with a slider over frames and a mask-overlay toggle.

    Args:
        frames: ``{label: images}`` or ``{label: dict(images=..., masks=..., real=..., real_masks=...)}``,
            one entry per slider position, in slider order. ``images`` are (N, 1, H, W) in [-1, 1]
            (torch or numpy; a sampler's slight overshoot is clipped), ``masks`` the same shape with
            values {0, 1}. ``real``/``real_masks`` inside a frame override the shared ones.
        real: real images shared by all frames, (M, 1, H, W) in [-1, 1], shown on the left; optional.
        real_masks: their masks, {0, 1}; optional.
        slider_name: what the frames are ("checkpoint", "steps", "seed"): the slider's label and the
            synthetic panel's header.
        nrow: images per row of each panel.
        title: a heading above the gallery; optional.
        scale: integer nearest-neighbour upscaling of each image; default: x1-x4 so a tile is ~96 px
            (``_auto_scale``; images of 49 px and more are shown at native resolution).
        max_images: at most this many images per panel (the header says "first k of n").

    Every frame is stored in the notebook as one PNG, two with masks (``nbytes`` tells the total): for a
    light notebook keep ``max_images`` and the number of frames modest (e.g. 16 images x 5-10 frames).

    Attributes:
        widget: the ``ipywidgets.VBox`` to display (displaying the gallery itself does the same).
        slider: ``ipywidgets.SelectionSlider`` over the frame labels; its ``index`` is the frame shown.
        overlay: ``ipywidgets.ToggleButtons`` ("image", "image + masks"); disabled when no masks are given.
        image: the ``ipywidgets.Image`` currently shown (PNG bytes in ``image.value``).
        stack: the outer ``ipywidgets.Stack`` (one child per frame, each a Stack of the two overlay states).

    Example::

        g = SampleGallery({5000: x5k, 10000: x10k}, real=x_real, real_masks=m_real, slider_name="checkpoint")
        g                      # in a notebook cell: displays it
        g.select(10000)        # or move the slider
        g.export_png("runs/figures/gallery_10000.png")
    """

    OVERLAY_OPTIONS = ("image", "image + masks")

    def __init__(self, frames: dict, real=None, real_masks=None, slider_name: str = "checkpoint",
                 nrow: int = 4, title: str = "", scale: int | None = None, max_images: int = 16):
        import ipywidgets as w

        if not isinstance(nrow, int) or nrow < 1:
            raise ValueError(f"nrow={nrow!r}: pass a positive integer (images per row)")
        if scale is not None and (not isinstance(scale, int) or not 1 <= scale <= 16):
            raise ValueError(f"scale={scale!r}: pass an integer upscaling factor in 1..16, or None for automatic")
        if not isinstance(max_images, int) or max_images < 1:
            raise ValueError(f"max_images={max_images!r}: pass a positive integer")
        self.frames = _normalise_frames(frames, real, real_masks)
        self.labels = [f["label"] for f in self.frames]
        self.slider_name = slider_name
        self.has_masks = any(f[k] is not None for f in self.frames for k in ("masks", "real_masks"))
        n_states = 2 if self.has_masks else 1

        # every (frame, overlay) picture, rendered once: a static render has no kernel to draw them later
        self.images = [[w.Image(value=encode_png(render_frame(f, bool(o), nrow, scale, max_images, slider_name)),
                                format="png", layout=w.Layout(max_width="100%", height="auto"))
                        for o in range(n_states)] for f in self.frames]
        self.inner = [w.Stack(children=ims, selected_index=0) for ims in self.images]
        self.stack = w.Stack(children=self.inner, selected_index=0)

        self.slider = w.SelectionSlider(options=[(str(lab), i) for i, lab in enumerate(self.labels)], index=0,
                                        description=slider_name, continuous_update=True,
                                        style={"description_width": "initial"},
                                        layout=w.Layout(width="min(520px, 100%)"))
        self.overlay = w.ToggleButtons(options=list(self.OVERLAY_OPTIONS[:n_states]), index=0,
                                       disabled=not self.has_masks,
                                       tooltips=[] if self.has_masks else ["no masks were given"],
                                       style={"button_width": "auto"})
        # browser side (works in a static render too) ...
        self.links = [w.jslink((self.slider, "index"), (self.stack, "selected_index"))]
        if self.has_masks:
            self.links += [w.jslink((self.overlay, "index"), (s, "selected_index")) for s in self.inner]
        # ... and kernel side (a change made in Python, with or without a browser attached)
        self.slider.observe(self._on_slider, names="index")
        self.overlay.observe(self._on_overlay, names="index")

        self.filename = w.Text(value="gallery.png", description="file",
                               layout=w.Layout(width="min(360px, 100%)"), style={"description_width": "initial"})
        self.export_button = w.Button(description="export PNG", icon="download",
                                      tooltip="write the picture shown to 'file' (needs a running kernel)")
        self.status = w.Label("")
        self.export_button.on_click(lambda _: self._export_clicked())

        children = [w.HTML(f"<b>{_escape(title)}</b>")] if title else []
        has_real = any(f["real"] is not None for f in self.frames)
        caption = (f"left: real, right: synthetic; slider: {_escape(slider_name)}" if has_real
                   else f"synthetic samples; slider: {_escape(slider_name)}")
        children += [w.HBox([self.slider, self.overlay]), w.HTML(f"<small>{caption}</small>"), self.stack,
                     w.HBox([self.filename, self.export_button, self.status])]
        self.widget = w.VBox(children)

    @property
    def nbytes(self) -> int:
        """Total size of the pre-rendered PNGs: roughly what the gallery adds to a saved notebook (x4/3 as base64)."""
        return sum(len(im.value) for pair in self.images for im in pair)

    # -- state -------------------------------------------------------------------------------------
    @property
    def index(self) -> int:
        """Index of the frame shown (the slider's position)."""
        return int(self.stack.selected_index)

    @property
    def label(self):
        """Label of the frame shown."""
        return self.labels[self.index]

    @property
    def image(self):
        """The ``ipywidgets.Image`` shown now (frame from the slider, overlay from the toggle)."""
        inner = self.inner[self.index]
        return self.images[self.index][int(inner.selected_index)]

    def select(self, label=None, overlay: bool | None = None) -> "SampleGallery":
        """Show frame ``label`` (one of ``labels``) and/or switch the mask overlay; returns self."""
        if label is not None:
            if label not in self.labels:
                raise KeyError(f"no frame labelled {label!r}: the labels are {self.labels}")
            self.slider.index = self.labels.index(label)
        if overlay is not None:
            if overlay and not self.has_masks:
                raise ValueError("overlay=True but no masks were given: pass masks= in the frames or real_masks=")
            self.overlay.index = int(bool(overlay))
        return self

    def _on_slider(self, change):
        self.stack.selected_index = change["new"]

    def _on_overlay(self, change):
        for s in self.inner:
            s.selected_index = change["new"]

    # -- export ------------------------------------------------------------------------------------
    def export_png(self, path) -> Path:
        """Write the picture shown now (the same PNG bytes the widget displays) to ``path``; returns it."""
        path = Path(path)
        if path.suffix.lower() != ".png":
            raise ValueError(f"export path {str(path)!r} must end in .png")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(self.image.value)
        return path

    def _export_clicked(self):
        try:
            self.status.value = f"saved {self.export_png(self.filename.value.strip() or 'gallery.png')}"
        except (OSError, ValueError) as e:
            self.status.value = f"export failed: {e}"

    # -- display -----------------------------------------------------------------------------------
    def _ipython_display_(self):
        from IPython.display import display

        display(self.widget)

    def __repr__(self) -> str:
        return (f"SampleGallery({len(self.frames)} frames over {self.slider_name!r}: {self.labels}, "
                f"masks={'yes' if self.has_masks else 'no'}, {self.nbytes / 1e3:.0f} kB of PNG)")


def _escape(text) -> str:
    import html

    return html.escape(str(text))


# ----------------------------------------------------------------------------------------------------
# the static grid (papermill, CI)
# ----------------------------------------------------------------------------------------------------
def save_static_gallery(frames: dict, real=None, path=None, real_masks=None, slider_name: str = "checkpoint",
                        nrow: int = 4, overlay: bool = True, title: str = "", max_images: int = 16):
    """All frames in one matplotlib figure: one row per frame, the real images on the left.

    Same inputs as ``SampleGallery``; ``overlay`` draws the masks. Shared real images are drawn once,
    in a left column spanning all rows; per-frame real images get one panel per row. Writes ``path``
    (PNG) when given and returns the figure.
    """
    fs = _normalise_frames(frames, real, real_masks)
    plt = _plt()
    shared = all(f["real"] is fs[0]["real"] for f in fs)
    has_real = any(f["real"] is not None for f in fs)
    panel = lambda ims, masks: _panel(ims, masks, overlay, nrow, 1, max_images)  # noqa: E731
    synth = [panel(f["images"], f["masks"]) for f in fs]
    reals = [panel(f["real"], f["real_masks"]) if f["real"] is not None else None for f in fs]
    ratio = synth[0].shape[1] / synth[0].shape[0]
    row_h = 2.2
    fig = plt.figure(figsize=(row_h * ratio * (2 if has_real else 1) + 1.2, row_h * len(fs) + (0.5 if title else 0)))
    gs = fig.add_gridspec(len(fs), 2 if has_real else 1, wspace=0.05, hspace=0.25)
    for r, f in enumerate(fs):
        ax = fig.add_subplot(gs[r, -1])
        ax.imshow(synth[r], interpolation="nearest")
        ax.set_title(f"{slider_name} {f['label']} (n={len(f['images'])})", fontsize=9)
        ax.axis("off")
        if has_real and (not shared or r == 0) and reals[r] is not None:
            ax = fig.add_subplot(gs[:, 0] if shared else gs[r, 0])
            ax.imshow(reals[r], interpolation="nearest")
            ax.set_title(f"real (n={len(f['real'])})", fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title)
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110, bbox_inches="tight")
    return fig
