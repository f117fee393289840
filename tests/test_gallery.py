"""The sample gallery without a browser: slider and toggle change the shown PNG, export, static grid, errors."""
import numpy as np
import pytest
import torch

from medkit.viz.gallery import SampleGallery, decode_png, encode_png, render_frame, save_static_gallery

H = W = 8
BRIGHTNESS = {100: -0.6, 200: 0.0, 300: 0.6}  # one flat grey level per frame, in [-1, 1]


def _disk(n=4, h=H, w=W):
    yy, xx = np.mgrid[:h, :w]
    return np.repeat((((yy - h / 2 + 0.5) ** 2 + (xx - w / 2 + 0.5) ** 2) < (h / 3) ** 2)[None, None], n, 0)


def _frames(masks=True, n=4):
    return {k: (dict(images=torch.full((n, 1, H, W), b), masks=_disk(n)) if masks else torch.full((n, 1, H, W), b))
            for k, b in BRIGHTNESS.items()}


@pytest.fixture
def gallery():
    real = torch.linspace(-1, 1, 4 * H * W).reshape(4, 1, H, W)
    return SampleGallery(_frames(), real=real, real_masks=_disk(), slider_name="checkpoint", nrow=2, scale=2)


def _synthetic_grey(png: bytes) -> int:
    """Grey level of a pixel of the first synthetic tile, outside its mask (top-left corner)."""
    rgb = decode_png(png)
    # real panel: 2 tiles of 16 px + 3 pads = 38 px wide, then the gutter; synthetic tiles start 2 px in
    x = 38 + 12 + 2
    y = 16 + 2  # below the header strip
    assert (rgb[y, x] == rgb[y, x, 0]).all(), "expected a grey pixel outside the mask"
    return int(rgb[y, x, 0])


def test_slider_changes_the_image(gallery):
    assert gallery.labels == [100, 200, 300] and gallery.index == 0 and gallery.label == 100
    first = gallery.image.value
    assert first[:8] == b"\x89PNG\r\n\x1a\n"
    gallery.slider.index = 1  # as the browser (or the user) would
    assert gallery.stack.selected_index == 1 and gallery.label == 200
    assert gallery.image.value != first
    gallery.slider.value = 2  # the option values are the frame indices
    assert gallery.label == 300
    greys = []
    for i in range(3):
        gallery.slider.index = i
        greys.append(_synthetic_grey(gallery.image.value))
    # flat frames at -0.6, 0, 0.6 -> (x + 1) / 2 * 255, rounded
    assert greys == [51, 128, 204]


def test_overlay_toggle_changes_the_image_and_draws_the_mask(gallery):
    plain = gallery.image.value
    gallery.overlay.index = 1
    assert all(s.selected_index == 1 for s in gallery.inner)
    with_masks = gallery.image.value
    assert with_masks != plain
    a, b = decode_png(plain), decode_png(with_masks)
    changed = (a != b).any(-1)
    assert changed.any()
    # only pixels inside the masks change, and they turn reddish (the overlay colour is (255, 64, 32))
    assert (b[changed][:, 0] >= b[changed][:, 2]).all()
    # the overlay stays on while the slider moves
    gallery.slider.index = 2
    assert gallery.image is gallery.images[2][1]
    gallery.select(100, overlay=False)
    assert gallery.image.value == plain


def test_export_writes_the_current_view(gallery, tmp_path):
    gallery.select(200, overlay=True)
    path = gallery.export_png(tmp_path / "sub" / "view.png")
    assert path.read_bytes() == gallery.image.value
    expected = render_frame(gallery.frames[1], overlay=True, nrow=2, scale=2)
    np.testing.assert_array_equal(decode_png(path.read_bytes()), expected)
    # the button writes the file named in the text box
    gallery.filename.value = str(tmp_path / "button.png")
    gallery.export_button.click()
    assert (tmp_path / "button.png").read_bytes() == gallery.image.value
    assert gallery.status.value.startswith("saved")
    with pytest.raises(ValueError, match="must end in .png"):
        gallery.export_png(tmp_path / "view.jpg")


def test_widget_tree_links_slider_and_toggle_in_the_browser(gallery):
    import ipywidgets as w

    assert isinstance(gallery.widget, w.VBox) and gallery.stack in gallery.widget.children
    assert isinstance(gallery.image, w.Image) and gallery.image.format == "png"
    pairs = {(l.source[0].model_id, l.source[1], l.target[0].model_id, l.target[1]) for l in gallery.links}
    assert (gallery.slider.model_id, "index", gallery.stack.model_id, "selected_index") in pairs
    for s in gallery.inner:
        assert (gallery.overlay.model_id, "index", s.model_id, "selected_index") in pairs
    assert len(gallery.images) == 3 and all(len(x) == 2 for x in gallery.images)
    assert [o[0] for o in gallery.slider.options] == ["100", "200", "300"]


def test_display_hook_shows_the_widget(gallery, monkeypatch):
    shown = []
    monkeypatch.setattr("IPython.display.display", lambda obj: shown.append(obj))
    gallery._ipython_display_()
    assert shown == [gallery.widget]
    assert "3 frames" in repr(gallery)


def test_without_masks_or_real():
    g = SampleGallery(_frames(masks=False), slider_name="seed")
    assert not g.has_masks and g.overlay.disabled and len(g.images[0]) == 1 and len(g.links) == 1
    before = g.image.value
    g.slider.index = 2
    assert g.image.value != before
    with pytest.raises(ValueError, match="no masks were given"):
        g.select(overlay=True)
    with pytest.raises(KeyError, match="no frame labelled 400"):
        g.select(400)


def test_numpy_input_per_frame_real_and_max_images():
    frames = {s: dict(images=np.zeros((20, 1, H, W), np.float32), real=np.ones((3, 1, H, W), np.float32))
              for s in (10, 50)}
    g = SampleGallery(frames, slider_name="steps", nrow=5, scale=1, max_images=10)
    rgb = decode_png(g.image.value)
    # synthetic panel: 2 rows of 5 tiles (first 10 of 20); real panel: 3 tiles in one row
    assert rgb.shape[0] == 16 + 2 * (H + 2) + 2


def test_png_round_trip_is_lossless():
    rgb = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    np.testing.assert_array_equal(decode_png(encode_png(rgb)), rgb)
    grey = np.repeat(rgb[..., :1], 3, -1)
    np.testing.assert_array_equal(decode_png(encode_png(grey)), grey)


def test_static_gallery_writes_a_png(tmp_path):
    real = torch.zeros(4, 1, H, W)
    fig = save_static_gallery(_frames(), real, tmp_path / "static.png", real_masks=_disk(), title="smoke")
    data = (tmp_path / "static.png").read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    # one axis per frame plus the shared real column
    assert len(fig.axes) == 4
    assert [ax.get_title() for ax in fig.axes[:1]] == ["checkpoint 100 (n=4)"]
    fig2 = save_static_gallery(_frames(masks=False), path=None)
    assert len(fig2.axes) == 3
    import matplotlib.pyplot as plt

    plt.close(fig)
    plt.close(fig2)


@pytest.mark.parametrize("frames, kwargs, message", [
    ({}, {}, "frames is empty"),
    ([torch.zeros(2, 1, H, W)], {}, "frames must be a dict"),
    ({1: torch.zeros(2, H, W)}, {}, r"shape \(2, 8, 8\): expected \(N, 1, H, W\).*x\[:, None\]"),
    ({1: torch.zeros(2, 1, 4, H, W)}, {}, "for 3D volumes"),
    ({1: torch.zeros(0, 1, H, W)}, {}, "holds no images"),
    ({1: torch.full((2, 1, H, W), float("nan"))}, {}, "NaN/inf"),
    ({1: torch.full((2, 1, H, W), 200.0)}, {}, r"expected \[-1, 1\]"),
    ({1: torch.zeros(2, 1, H, W), 2: torch.zeros(2, 1, 4, 4)}, {}, "must share H x W"),
    ({1: torch.zeros(2, 1, H, W)}, dict(real=torch.zeros(2, 1, 4, 4)), "must share H x W"),
    ({1: dict(images=torch.zeros(2, 1, H, W), masks=torch.full((2, 1, H, W), 0.5))}, {}, "not binary"),
    ({1: dict(images=torch.zeros(2, 1, H, W), masks=torch.ones(3, 1, H, W))}, {}, "one mask per image"),
    ({1: dict(imgs=torch.zeros(2, 1, H, W))}, {}, "must hold 'images'"),
    ({1: torch.zeros(2, 1, H, W), "1": torch.zeros(2, 1, H, W)}, {}, "use distinct labels"),
    ({1: torch.zeros(2, 1, H, W)}, dict(real_masks=_disk(2)), "real_masks given without real"),
    ({1: torch.zeros(2, 1, H, W)}, dict(nrow=0), "nrow=0"),
    ({1: torch.zeros(2, 1, H, W)}, dict(scale=2.5), "scale=2.5"),
])
def test_bad_inputs_raise_clear_errors(frames, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        SampleGallery(frames, **kwargs)
    if "nrow" not in kwargs and "scale" not in kwargs:
        with pytest.raises((ValueError, TypeError), match=message):
            save_static_gallery(frames, **kwargs)


def test_auto_scale_is_modest_and_nbytes_counts_the_pngs(gallery):
    from medkit.viz.gallery import _auto_scale

    assert [_auto_scale(s, s) for s in (8, 24, 32, 48, 64, 256)] == [4, 4, 3, 2, 1, 1]
    assert gallery.nbytes == sum(len(im.value) for pair in gallery.images for im in pair)
    assert "kB of PNG" in repr(gallery)
