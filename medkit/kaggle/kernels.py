"""A kernel: its kernel-metadata.json, the folder Kaggle takes (notebook with parameters injected), the push."""
from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

from ..data import locate
from .account import (CODE_DATASET, KAGGLE_WORKING, MACHINE_T4, NOTEBOOK_DIR, MEDKIT_CELL_TAG, KaggleError, _attr,
                      _check_sources, _owner_and_api, check_owner, check_title, resolve_owner)
from .notebook import (_driver_notebook, _medkit_cell, available_notebooks, inject, load_notebook, medkit_pip_spec,
                       notebook_parameters, resolve_notebook)


def kernel_metadata(*, owner: str, title: str, code_file: str, gpu: bool = True, internet: bool = False,
                    datasets=(), kernel_sources=(), model_sources=(), private: bool = True,
                    allow_placeholder: bool = False) -> dict:
    """kernel-metadata.json contents, every field explicit (``enable_internet``: code default and docs disagree)."""
    slug = check_title(title)
    owner = check_owner(owner, allow_placeholder=allow_placeholder)
    meta = {
        "id": f"{owner}/{slug}",
        "title": title,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook",
        "is_private": bool(private),
        "enable_gpu": bool(gpu),
        "enable_tpu": False,
        "enable_internet": bool(internet),
    }
    if gpu:
        meta["machine_shape"] = MACHINE_T4
    meta.update({
        "dataset_sources": _check_sources(datasets, "dataset_sources (--dataset)", "dataset", allow_placeholder),
        "competition_sources": [],
        "kernel_sources": _check_sources(kernel_sources, "kernel_sources (--kernel-source)", "kernel"),
        "model_sources": _check_sources(model_sources, "model_sources (--model-source)", "model"),
    })
    return meta


def default_title(method: str, stage: str | None = None) -> str:
    return f"medkit {method} {stage}" if stage else f"medkit {method} pipeline"


def _target(notebook):
    """('notebook', method, stage, path) or ('pipeline', method, stages or None, None)."""
    from ..notebooks import PIPELINES

    if isinstance(notebook, (list, tuple)):
        pairs = [str(n).split("/") for n in notebook]
        methods = {p[0] for p in pairs}
        if not notebook or len(methods) != 1 or any(len(p) != 2 for p in pairs):
            raise KaggleError(f"stages {list(notebook)!r}: give notebooks of one method, e.g. "
                              f"['sbldm/02_latent_diffusion', 'sbldm/03_sampling']")
        method = methods.pop()
        bad = [n for n in notebook if n not in available_notebooks()]
        if bad:
            raise KaggleError(f"unknown notebook(s) {bad}: use some of {available_notebooks()}")
        stages = [p[1] for p in pairs]
        return "pipeline", method, (None if stages == PIPELINES[method] else stages), None
    if str(notebook) in PIPELINES:
        return "pipeline", str(notebook), None, None
    method, stage, path = resolve_notebook(notebook)
    return "notebook", method, stage, path


def build_kernel(notebook, out_dir, *, params=None, gpu: bool = True, internet: bool = False, datasets=(),
                 kernel_sources=(), model_sources=(), owner: str | None = None, title: str | None = None,
                 private: bool = True, repo_url: str | None = None, code_dataset: str | None = CODE_DATASET,
                 log=None) -> Path:
    """Write a kernel folder (the notebook with its parameters injected + kernel-metadata.json) into ``out_dir``.

    ``notebook``: 'sbldm/01_vae', a path to a .py/.ipynb notebook, a method name ('sbldm': one kernel running
    all its notebooks) or a list of one method's notebooks. Without internet the dataset
    ``<owner>/<code_dataset>`` (medkit's source) is added to ``datasets``; with internet MEDKIT_PIP is set from
    ``repo_url`` (default: this checkout's ``origin``). Returns ``out_dir``.
    """
    params = dict(params or {})
    owner = resolve_owner(owner)
    kind, method, stage, path = _target(notebook)
    datasets = _check_sources(datasets, "dataset_sources (--dataset)", "dataset")
    try:  # a "kaggle:OWNER/SLUG" data parameter: attach that dataset (medkit.data.locate finds its mount)
        named = locate.kaggle_refs(params)
    except locate.DataLocationError as e:
        raise KaggleError(str(e)) from None
    for ref in _check_sources(named, "a kaggle:OWNER/SLUG parameter", "dataset"):
        if ref not in datasets:
            datasets.append(ref)
    code_ref = pip_spec = None
    if internet:
        pip_spec = medkit_pip_spec(repo_url)
    else:
        if code_dataset:
            code_ref = f"{owner}/{code_dataset}"
            if code_ref not in datasets:
                datasets.append(code_ref)
    if kind == "notebook":
        nb, _ = load_notebook(path, log=log)
        known = notebook_parameters(nb)
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise KaggleError(f"unknown parameter(s) {unknown} for {method}/{stage}; its parameters: {sorted(known)}")
        code_file = f"{stage}.ipynb"
        title = title or default_title(method, stage)
    else:
        from ..notebooks import PIPELINES

        if "profile" not in params:
            raise KaggleError(f"a {method} pipeline kernel needs params['profile'] (-p profile t4): "
                              "'smoke', 'cpu-demo' or 't4'")
        known, stages = set(), stage or PIPELINES[method]
        for s in stages:
            known |= set(notebook_parameters(load_notebook(NOTEBOOK_DIR / method / f"{s}.ipynb")[0]))
        unknown = sorted(set(params) - known)
        if unknown:
            raise KaggleError(f"unknown parameter(s) {unknown}: none of the {method} notebooks {stages} has them; "
                              f"their parameters: {sorted(known)}")
        rest = {k: v for k, v in params.items() if k not in ("profile", "run_dir")}
        params = {"method": method, "stages": stage, "profile": params["profile"], "params": rest,
                  "run_dir": params.get("run_dir", KAGGLE_WORKING)}
        nb = _driver_notebook(method, pip_spec[len("git+"):] if pip_spec else None)
        code_file = f"{method}_pipeline.ipynb"
        title = title or default_title(method)
    meta = kernel_metadata(owner=owner, title=title, code_file=code_file, gpu=gpu, internet=internet,
                           datasets=datasets, kernel_sources=kernel_sources, model_sources=model_sources,
                           private=private)
    nb = inject(nb, params, _medkit_cell(internet, pip_spec, code_ref))
    import nbformat

    nbformat.validate(nb)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(out / code_file))
    (out / "kernel-metadata.json").write_text(json.dumps(meta, indent=2) + "\n")
    return out


def describe_kernel(folder) -> dict:
    """What a push of ``folder`` would send: the metadata and a summary of the notebook."""
    import nbformat

    folder = Path(folder)
    meta = json.loads((folder / "kernel-metadata.json").read_text())
    nb = nbformat.read(str(folder / meta["code_file"]), as_version=4)
    tagged = {t: c.source for c in nb.cells for t in c.metadata.get("tags", [])}
    return {"metadata": meta,
            "notebook": {"file": str(folder / meta["code_file"]), "cells": len(nb.cells),
                         "injected_parameters": nb.metadata.get("papermill", {}).get("parameters", {}),
                         "injected_cell": tagged.get("injected-parameters", ""),
                         "medkit_cell": tagged.get(MEDKIT_CELL_TAG, "")}}


def push(notebook, *, params=None, gpu: bool = True, datasets=(), internet: bool = False, kernel_sources=(),
         model_sources=(), owner: str | None = None, title: str | None = None, private: bool = True,
         repo_url: str | None = None, code_dataset: str | None = CODE_DATASET, out_dir=None, dry_run: bool = False,
         api=None, log=print) -> dict:
    """Build the kernel folder (``out_dir`` or a temp folder) and push it as a new kernel version.

    ``dry_run``: validate and return/print the request (metadata + notebook summary) without credentials or
    network; the folder is kept. Otherwise returns {"ref", "url", "version", "metadata", ...}.
    """
    if not dry_run:
        owner, api = _owner_and_api(owner, api)
    tmp, keep = None, False
    if out_dir is None:
        tmp = tempfile.mkdtemp(prefix="medkit-kaggle-")
        out_dir = tmp
    try:
        folder = build_kernel(notebook, out_dir, params=params, gpu=gpu, internet=internet, datasets=datasets,
                              kernel_sources=kernel_sources, model_sources=model_sources, owner=owner, title=title,
                              private=private, repo_url=repo_url, code_dataset=code_dataset, log=log)
        req = describe_kernel(folder)
        ref = req["metadata"]["id"]
        url = f"https://www.kaggle.com/code/{ref}"
        if dry_run:
            log(json.dumps(req, indent=1))
            log(f"[kaggle] dry run: nothing pushed; the kernel folder is {folder} "
                f"(`kaggle kernels push -p {folder}` pushes it as is)")
            keep = True
            return {"dry_run": True, "ref": ref, "url": url, "folder": str(folder), **req}
        resp = api.kernels_push(str(folder))
        err = _attr(resp, "error")
        if err:
            raise KaggleError(f"Kaggle refused the push of {ref}: {err}")
        invalid = {k: list(v) for k in ("invalid_dataset_sources", "invalid_kernel_sources", "invalid_model_sources",
                                        "invalid_competition_sources") if (v := _attr(resp, k))}
        for k, v in invalid.items():
            log(f"[kaggle] warning: {ref}: Kaggle did not attach {k.replace('invalid_', '').replace('_', ' ')} {v} "
                "(not found, or not shared with you); the version runs without them")
        version = _attr(resp, "version_number", "versionNumber")
        url = _attr(resp, "url", default=url)
        log(f"[kaggle] pushed {ref} version {version}: {url}")
        return {"dry_run": False, "ref": ref, "url": url, "version": version, "invalid_sources": invalid,
                "folder": None if tmp else str(folder), **req}
    finally:
        if tmp and not keep:
            shutil.rmtree(tmp, ignore_errors=True)
