"""The notebook a kernel runs: which notebook a name means, its parameters, and the cells medkit adds to it."""
from __future__ import annotations

import copy
import re
import subprocess
import tempfile
from pathlib import Path

from .account import MEDKIT_CELL_TAG, NOTEBOOK_DIR, REPO_ROOT, KaggleError
from .cells import cell_source


def available_notebooks() -> list[str]:
    from ..notebooks import PIPELINES

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
    """{name: default source text} of the ``parameters`` cell, as ``papermill.inspect_notebook`` reports them."""
    import nbformat
    import papermill as pm

    with tempfile.TemporaryDirectory(prefix="medkit-inspect-") as tmp:
        path = Path(tmp) / "notebook.ipynb"
        nbformat.write(nb, str(path))
        return {name: p["default"] for name, p in pm.inspect_notebook(str(path)).items()}


def _requirements(root: Path = REPO_ROOT, name: str = "requirements.txt") -> list[str]:
    lines = (root / name).read_text().splitlines()
    return [ln.split("#")[0].strip() for ln in lines if ln.split("#")[0].strip()]


def _medkit_cell(internet: bool, pip_spec: str | None, code_ref: str | None) -> str | None:
    """Source of the cell put before the setup cell: how this kernel gets medkit and its requirements."""
    if internet:
        return cell_source("internet", MEDKIT_PIP=pip_spec, MEDKIT_REQUIREMENTS=_requirements(),
                           MEDKIT_NODEPS=_requirements(name="requirements-nodeps.txt"))
    if code_ref:
        return cell_source("offline", CODE_REF=code_ref)
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

    setup = cell_source("driver_setup", MEDKIT_GIT=_https_url(repo_url) if repo_url else "")
    params = cell_source("driver_params", method=method)
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
        nbformat.v4.new_code_cell(cell_source("driver_run"), metadata={"tags": []}),
    ]
    return nb


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
