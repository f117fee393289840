"""The committed kaggle/<method>-<stage>/kernel-metadata.json files, for a plain ``kaggle kernels push``."""
from __future__ import annotations

import json
from pathlib import Path

from ..data.locate import KAGGLE_DATASETS
from . import account
from .account import CODE_DATASET, PLACEHOLDER_OWNER
from .kernels import default_title, kernel_metadata


# The public datasets a notebook's data settings can name (``data = "kaggle:OWNER/SLUG"``), attached to its
# template so that in the Kaggle editor only the setting changes. The committed defaults read the embedded
# MNI152 demo data; these mounts stay unused until a data setting names them.
TEMPLATE_DATASETS = {stage: tuple(KAGGLE_DATASETS.values()) for stage in ("siamese/01_train", "siamese/04_segmentation")}


def template_folder(method: str, stage: str) -> str:
    return f"{method}-{stage.replace('_', '-')}"


def templates(root=None) -> dict[Path, str]:
    """{path: text} of the committed kaggle/<method>-<stage>/kernel-metadata.json files.

    For a plain `kaggle kernels push -p kaggle/<folder>`: the committed notebook with its default parameters,
    internet on (the setup cell pip-installs the requirements), medkit from the dataset
    YOUR_KAGGLE_USERNAME/medkit-src, which the setup cell finds under /kaggle/input; Siamese-Diffusion's
    training and segmentation notebooks also attach the public polyp and skin-lesion datasets
    (:data:`TEMPLATE_DATASETS`).
    """
    from ..notebooks import PIPELINES

    root, out = Path(root or account.TEMPLATE_DIR), {}
    for method, stages in PIPELINES.items():
        for stage in stages:
            meta = kernel_metadata(owner=PLACEHOLDER_OWNER, title=default_title(method, stage),
                                   code_file=f"../../notebooks/{method}/{stage}.ipynb", gpu=True, internet=True,
                                   datasets=[f"{PLACEHOLDER_OWNER}/{CODE_DATASET}",
                                             *TEMPLATE_DATASETS.get(f"{method}/{stage}", ())],
                                   allow_placeholder=True)
            out[root / template_folder(method, stage) / "kernel-metadata.json"] = json.dumps(meta, indent=2) + "\n"
    return out


def stale_templates(root=None) -> list[Path]:
    """kernel-metadata.json files under ``root`` that ``templates`` no longer generates."""
    want = set(templates(root))
    return sorted(p for p in Path(root or account.TEMPLATE_DIR).glob("*/kernel-metadata.json") if p not in want)


def write_templates(root=None, log=print) -> list[Path]:
    written = []
    for path, text in templates(root).items():
        if not path.is_file() or path.read_text() != text:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
            written.append(path)
            log(f"[kaggle] wrote {path}")
    for p in stale_templates(root):
        log(f"[kaggle] stale: {p} (no notebook of that name any more; delete its folder)")
    return written
