"""The sample gallery in a real browser, with no kernel: a static render of a notebook's saved widget state.

1. A small notebook builds a ``SampleGallery`` over 3 frames of flat images of different brightness and
   is executed with nbclient, which stores the widget state in ``metadata.widgets``.
2. An HTML page is built from that state (the state in a ``widget-state+json`` script tag, the view in a
   ``widget-view+json`` one) and loads ``@jupyter-widgets/html-manager``'s embed bundle from
   tests/browser/node_modules - the way nbconvert/nbviewer render widgets, minus the CDN.
3. The page is served on 127.0.0.1 and opened in Debian's headless Chromium, driven by playwright-core
   (tests/browser/check_gallery.mjs): the slider handle gets ArrowRight, the mask toggle a click.
4. The picture shown must change, and equal the PNG of the next frame byte for byte (and pixel for pixel
   once the browser decoded it); no request may leave localhost.

Needs Debian's chromium and `npm ci` in tests/browser: `bash scripts/setup_browser_test.sh` (root; `make
test` runs it). Skips without them, unless MEDKIT_REQUIRE_REFERENCES=1 (as `make test` sets): then it fails.
"""
import base64
import functools
import http.server
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pytest

from medkit.viz.gallery import decode_png

ROOT = Path(__file__).resolve().parent.parent
BROWSER_DIR = ROOT / "tests" / "browser"
EMBED = BROWSER_DIR / "node_modules" / "@jupyter-widgets" / "html-manager" / "dist" / "embed.js"
PLAYWRIGHT = BROWSER_DIR / "node_modules" / "playwright-core" / "package.json"
SCRIPT = BROWSER_DIR / "check_gallery.mjs"

# The notebook's cell, also run here to get the expected PNGs (rendering is deterministic).
BUILD = """\
import numpy as np
from medkit.viz.gallery import SampleGallery

yy, xx = np.mgrid[:8, :8]
disk = np.repeat(((yy - 3.5) ** 2 + (xx - 3.5) ** 2 < 7)[None, None], 4, 0)
frames = {step: dict(images=np.full((4, 1, 8, 8), level, np.float32), masks=disk)
          for step, level in [(1000, -0.6), (2000, 0.0), (3000, 0.6)]}
real = np.linspace(-1, 1, 4 * 64, dtype=np.float32).reshape(4, 1, 8, 8)
gallery = SampleGallery(frames, real=real, real_masks=disk, slider_name="checkpoint", title="browser test")
"""


def _tools():
    """(node, chromium) or a skip/fail naming what is missing and how to install it."""
    chromium = os.environ.get("MEDKIT_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    node = shutil.which("node")
    missing = [what for what, ok in [
        (f"Debian's chromium ({chromium})", os.access(chromium, os.X_OK)),
        ("node", node is not None),
        ("tests/browser/node_modules (html-manager, playwright-core)", EMBED.exists() and PLAYWRIGHT.exists()),
    ] if not ok]
    if missing:
        msg = f"browser test needs {', '.join(missing)}: run `bash scripts/setup_browser_test.sh` (as root)"
        if os.environ.get("MEDKIT_REQUIRE_REFERENCES") == "1":
            pytest.fail(msg)
        pytest.skip(msg)
    return node, chromium


def _execute_notebook(tmp_path):
    """Run the BUILD cell plus a display cell with nbclient; return the executed notebook."""
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(BUILD), nbformat.v4.new_code_cell("gallery")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    NotebookClient(nb, timeout=120, kernel_name="python3", store_widget_state=True,
                   resources={"metadata": {"path": str(ROOT)}}).execute()
    nbformat.write(nb, tmp_path / "gallery.ipynb")
    return nb


def _page(nb) -> str:
    """The static HTML render of an executed notebook's gallery: saved state + view, local embed bundle."""
    state = nb.metadata["widgets"]["application/vnd.jupyter.widget-state+json"]
    views = [o["data"]["application/vnd.jupyter.widget-view+json"] for o in nb.cells[-1].outputs
             if "application/vnd.jupyter.widget-view+json" in o.get("data", {})]
    assert len(views) == 1, f"expected the gallery's widget view in the last cell's output, got {nb.cells[-1].outputs}"
    safe = lambda obj: json.dumps(obj).replace("</", "<\\/")  # noqa: E731  (no early </script>)
    dist = "/node_modules/@jupyter-widgets/html-manager/dist/"
    return f"""<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>medkit gallery (static widget render)</title>
<script>window.__jupyter_widgets_assets_path__ = "{dist}";</script>
<script src="{dist}embed.js"></script>
<script type="application/vnd.jupyter.widget-state+json">{safe(state)}</script>
</head><body>
<script type="application/vnd.jupyter.widget-view+json">{safe(views[0])}</script>
</body></html>
"""


class _Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture
def served(tmp_path):
    """Serve tmp_path (with node_modules linked in) on 127.0.0.1; yields (root dir, base URL)."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "node_modules").symlink_to(BROWSER_DIR / "node_modules", target_is_directory=True)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield site, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_slider_changes_the_picture_in_headless_chromium(served, tmp_path):
    node, chromium = _tools()
    site, base = served

    nb = _execute_notebook(tmp_path)
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json")
    assert state and state["state"], "nbclient stored no widget state (store_widget_state=True)"
    images = {k: v for k, v in state["state"].items() if v["model_name"] == "ImageModel"}
    assert len(images) == 6, "expected 3 frames x (overlay off, on) Image widgets in the saved state"
    assert all(v.get("buffers") for v in images.values()), "the images' PNG bytes were not saved"

    (site / "index.html").write_text(_page(nb))
    shots = tmp_path / "screenshots"
    shots.mkdir()
    proc = subprocess.run([node, str(SCRIPT), f"{base}/index.html", str(shots), chromium], cwd=BROWSER_DIR,
                          capture_output=True, text=True, timeout=90)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    assert lines, f"check_gallery.mjs printed no result (rc={proc.returncode}):\n{proc.stderr[-3000:]}"
    out = json.loads(lines[-1])
    assert proc.returncode == 0 and "failure" not in out, (out.get("failure"), out.get("errors"), proc.stderr[-3000:])

    # no CDN: every request went to the local server (or a blob: URL of an image widget)
    assert out["blocked"] == [], f"requests left localhost: {out['blocked']}"
    assert all(u.startswith((base + "/", "blob:", "data:")) for u in out["requests"]), out["requests"]
    assert any(u.endswith("/html-manager/dist/embed.js") for u in out["requests"])
    assert not [e for e in out["errors"] if "favicon" not in e], out["errors"]

    # the expected pictures, rendered again here
    ns = {}
    exec(BUILD, ns)
    g = ns["gallery"]
    expected = [[im.value for im in pair] for pair in g.images]

    def png(view):
        return base64.b64decode(view["png_base64"])

    def pixels(view):
        w, h = view["natural"]
        rgba = np.frombuffer(base64.b64decode(view["pixels_base64"]), np.uint8).reshape(h, w, 4)
        return rgba[..., :3]

    before, after, overlay = out["before"], out["after"], out["overlay"]
    assert png(before) == expected[0][0], "the first render is not frame 1000 without masks"
    assert before["readout"].strip() == "1000"
    assert before["rendered"][0] > 0 and before["rendered"][1] > 0

    # ArrowRight on the slider handle: the next frame, byte for byte and as decoded by Chromium
    assert png(after) != png(before) and after["src"] != before["src"]
    assert png(after) == expected[1][0], "after ArrowRight the picture is not frame 2000"
    assert after["readout"].strip() == "2000"
    np.testing.assert_array_equal(pixels(after), decode_png(expected[1][0]))
    assert after["mean_rgb"] > before["mean_rgb"] + 5  # frame 2000 is brighter than frame 1000

    # the mask toggle: frame 2000 with masks
    assert png(overlay) == expected[1][1]
    np.testing.assert_array_equal(pixels(overlay), decode_png(expected[1][1]))

    for name in ("before", "after", "overlay"):
        assert (shots / f"{name}.png").stat().st_size > 1000
    if os.environ.get("MEDKIT_KEEP_SCREENSHOTS"):  # to look at them: the folder is printed
        kept = Path(os.environ["MEDKIT_KEEP_SCREENSHOTS"])
        kept.mkdir(parents=True, exist_ok=True)
        for p in shots.iterdir():
            shutil.copy(p, kept / p.name)
        (kept / "index.html").write_text((site / "index.html").read_text())
