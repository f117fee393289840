"""The dataset ``OWNER/medkit-src``: medkit's source (and wheels) for kernels without internet."""
from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

from .account import (_SLUG, CODE_DATASET, CODE_DATASET_CONTENT, CODE_DATASET_IGNORE, REPO_ROOT, KaggleError, _attr,
                      _owner_and_api, resolve_owner)


def build_code_dataset(out_dir, owner: str | None = None, slug: str = CODE_DATASET, *, title: str | None = None,
                       wheels=None, root=REPO_ROOT) -> Path:
    """A Kaggle dataset folder with medkit's source: dataset-metadata.json and copies of ``medkit/``,
    ``notebooks/``, ``requirements.txt``, ``pyproject.toml`` (never runs/, checkpoints/, .venv, .git, caches).

    ``wheels``: a folder of .whl files (e.g. ``pip download -r requirements.txt -d wheels``) copied to
    ``wheels/``, for kernels without internet. Folders upload as zips (``dir_mode="zip"``).
    """
    owner = resolve_owner(owner)
    root, out = Path(root), Path(out_dir)
    if not _SLUG.match(slug) or not 6 <= len(slug) <= 50:
        raise KaggleError(f"dataset slug {slug!r}: 6-50 lowercase letters, digits and hyphens (--slug)")
    title = title or ("medkit source code" if slug == CODE_DATASET else f"medkit source {slug}")
    if not 6 <= len(title) <= 50:
        raise KaggleError(f"dataset title {title!r}: Kaggle needs 6-50 characters")
    if out.exists() and any(out.iterdir()):
        raise KaggleError(f"{out} exists and is not empty: give a new or empty folder for the dataset")
    missing = [n for n in CODE_DATASET_CONTENT if not (root / n).exists()]
    if missing:
        raise KaggleError(f"{root} lacks {missing}: build the dataset from the repository checkout")
    out.mkdir(parents=True, exist_ok=True)
    ignore = shutil.ignore_patterns(*CODE_DATASET_IGNORE)
    for name in CODE_DATASET_CONTENT:
        src = root / name
        (shutil.copytree(src, out / name, ignore=ignore) if src.is_dir() else shutil.copy2(src, out / name))
    if wheels:
        found = sorted(Path(wheels).glob("*.whl"))
        if not found:
            raise KaggleError(f"wheels={wheels}: no .whl files there (pip download -r requirements.txt -d {wheels})")
        (out / "wheels").mkdir()
        for w in found:
            shutil.copy2(w, out / "wheels" / w.name)
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    commit = head.stdout.strip() if head.returncode == 0 else "unknown"
    meta = {"title": title, "id": f"{owner}/{slug}", "licenses": [{"name": "apache-2.0"}],
            "description": f"medkit's source (medkit/, notebooks/, requirements) from commit {commit} and the "
                           "working tree, for Kaggle kernels without internet. Built by `python -m medkit kaggle "
                           "dataset`."}
    (out / "dataset-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def push_code_dataset(owner: str | None = None, *, slug: str = CODE_DATASET, version_notes: str | None = None,
                      wheels=None, dry_run: bool = False, out_dir=None, api=None, log=print) -> dict:
    """Create ``<owner>/<slug>`` from this checkout, or add a version when it exists. Returns {"ref", ...}."""
    if not dry_run:
        owner, api = _owner_and_api(owner, api)
    tmp, keep = None, False
    if out_dir is None:
        tmp = tempfile.mkdtemp(prefix="medkit-src-")
        out_dir = Path(tmp) / slug
    try:
        folder = build_code_dataset(out_dir, owner, slug, wheels=wheels)
        meta = json.loads((folder / "dataset-metadata.json").read_text())
        ref = meta["id"]
        files = sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file())
        if dry_run:
            log(json.dumps({"metadata": meta, "files": len(files), "top": sorted(p.name for p in folder.iterdir())},
                           indent=1))
            log(f"[kaggle] dry run: nothing uploaded; the dataset folder is {folder}")
            keep = True
            return {"dry_run": True, "ref": ref, "folder": str(folder), "metadata": meta, "files": files}
        import requests

        try:
            api.dataset_status(ref)
            exists = True
        except requests.HTTPError:  # 404/403: no such dataset of yours yet
            exists = False
        if exists:
            notes = version_notes or meta["description"].split(",")[0]
            resp = api.dataset_create_version(str(folder), notes, quiet=True, dir_mode="zip")
        else:
            resp = api.dataset_create_new(str(folder), public=False, quiet=True, dir_mode="zip")
        err = _attr(resp, "error")
        if err:
            raise KaggleError(f"Kaggle refused {'the new version of' if exists else 'creating'} {ref}: {err}")
        url = _attr(resp, "url", default=f"https://www.kaggle.com/datasets/{ref}")
        log(f"[kaggle] {'new version of' if exists else 'created'} {ref}: {url} (Kaggle needs a few minutes to "
            "process it before kernels can attach it)")
        return {"dry_run": False, "ref": ref, "created": not exists, "url": url, "metadata": meta,
                "files": files}
    finally:
        if tmp and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
