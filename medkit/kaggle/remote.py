"""Runs on Kaggle's machines: push a version, poll it to the end, download its output (the grid's Kaggle backend)."""
from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path

from .. import session
from . import account
from .account import CODE_DATASET, DONE, KAGGLE_WORKING, KaggleRunFailed, _attr, slugify
from .kernels import _target, push
from .notebook import load_notebook, notebook_parameters


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
    api = api or account.kaggle_api()
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
    from ..notebooks import PIPELINES

    target = method if not stages or list(stages) == PIPELINES[method] else [f"{method}/{s}" for s in stages]
    return run_remote(target, {"profile": profile, **(params or {})}, run_dir, log=log, **opts)
