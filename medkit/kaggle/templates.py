"""The committed kaggle/<method>-<stage>/kernel-metadata.json files, for a plain ``kaggle kernels push``."""
from __future__ import annotations

import json
from pathlib import Path

from . import account
from .account import CODE_DATASET, PLACEHOLDER_OWNER
from .kernels import default_title, kernel_metadata


def template_folder(method: str, stage: str) -> str:
    return f"{method}-{stage.replace('_', '-')}"


def templates(root=None) -> dict[Path, str]:
    """{path: text} of the committed kaggle/<method>-<stage>/kernel-metadata.json files.

    For a plain `kaggle kernels push -p kaggle/<folder>`: the committed notebook with its default parameters,
    internet on (the setup cell pip-installs the requirements), medkit from the dataset
    YOUR_KAGGLE_USERNAME/medkit-src, which the setup cell finds under /kaggle/input.
    """
    from ..notebooks import PIPELINES

    root, out = Path(root or account.TEMPLATE_DIR), {}
    for method, stages in PIPELINES.items():
        for stage in stages:
            meta = kernel_metadata(owner=PLACEHOLDER_OWNER, title=default_title(method, stage),
                                   code_file=f"../../notebooks/{method}/{stage}.ipynb", gpu=True, internet=True,
                                   datasets=[f"{PLACEHOLDER_OWNER}/{CODE_DATASET}"], allow_placeholder=True)
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
