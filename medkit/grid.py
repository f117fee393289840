"""Experiment grids: papermill parameter sets for a method's notebooks, run cell by cell, then tabulated.

    python -m medkit grid run E2.1 --profile cpu-demo --out runs/grids/E2.1
    python -m medkit grid run configs/grids/E2.1.yaml --profile t4 --out /kaggle/working/E2.1
    python -m medkit grid show E2.1

A grid file (YAML, ``configs/grids/<name>.yaml``)::

    name: E2.1
    description: noise-schedule ablation
    method: sbldm
    shared_stages: [01_vae]        # run once into DIR/_shared; every cell starts from its outputs
    params: {n_samples: 64}        # for every cell
    vary: [beta_schedule, schedule_gamma]   # the parameters the table and plots are about
    metrics: [ldm.final_loss, eval.mmd_vae_latent]   # the columns of results.md and the plots
    cells:
      linear: {beta_schedule: linear}
      gamma-0.5: {beta_schedule: gamma, schedule_gamma: 0.5}
      sanity: {ldm_steps: {smoke: 6, default: 500}, stages: [02_latent_diffusion, 03_sampling]}

A value given as a mapping of profile names (and ``default``) is picked by the profile.

Each cell runs ``notebooks.run_pipeline`` into ``DIR/<cell>``: a finished cell is skipped, an interrupted
one resumes through the resumable trainer, a failing one is recorded (``DIR/<cell>/error.txt`` and
``DIR/grid_state.json``) and the grid goes on. Finally every cell's metrics.json is aggregated into
``DIR/results.csv``, ``DIR/results.md`` and ``DIR/figures/<metric>.png``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import threading
import time
import traceback
from pathlib import Path

from . import env, session
from .run import write_json_atomic
from .eval.results import flatten

GRID_DIR = env.REPO_ROOT / "configs" / "grids"
PROFILES = session.PROFILES
SHARED = "_shared"
DEFAULT_METRICS = {
    "sbldm": ["vae.ssim", "vae.psnr", "ldm.final_loss", "eval.mmd_vae_latent", "eval.intensity_w1",
              "eval.nn_ssim_generated_mean", "sampling.seconds_per_image", "sampling.mean_steps_taken"],
}


class GridError(ValueError):
    """A malformed grid file or a grid directory that does not match its grid."""


# ------------------------------------------------------------------------------------ grid files
def grid_path(grid: str | os.PathLike) -> Path:
    p = Path(grid)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise GridError(f"grid file {p} not found")
        return p
    q = GRID_DIR / f"{grid}.yaml"
    if not q.is_file():
        known = sorted(f.stem for f in GRID_DIR.glob("*.yaml"))
        raise GridError(f"no grid named {grid!r} in {GRID_DIR}; known grids: {known} (or give a .yaml path)")
    return q


def _notebook_parameters(method: str, stages=None) -> set[str]:
    """The parameter names of the method's notebooks' parameters cells (papermill's own parser)."""
    import papermill as pm

    from .notebooks import PIPELINES, notebook_path

    names: set[str] = set()
    for stage in stages or PIPELINES[method]:
        names |= set(pm.inspect_notebook(str(notebook_path(method, stage))))
    return names


def _pick(value, profile: str, where: str):
    """A value, or a {profile: value, default: value} mapping resolved for ``profile``."""
    if isinstance(value, dict):
        unknown = sorted(set(value) - set(PROFILES) - {"default"})
        if unknown:
            raise GridError(f"{where}: per-profile keys {unknown} are not profiles; use {list(PROFILES)} or 'default'")
        if profile in value:
            return value[profile]
        if "default" in value:
            return value["default"]
        raise GridError(f"{where}: no value for profile {profile!r} and no 'default'")
    return value


def load_grid(grid: str | os.PathLike, profile: str = "cpu-demo") -> dict:
    """Read and check a grid file; returns it with every cell's parameters resolved for ``profile``."""
    import yaml

    from .notebooks import PIPELINES

    path = grid_path(grid)
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise GridError(f"grid file {path} is not valid YAML: {e}") from None
    if not isinstance(spec, dict):
        raise GridError(f"grid file {path}: expected a mapping with 'method' and 'cells' at the top")
    known_keys = {"name", "description", "method", "shared_stages", "params", "vary", "metrics", "cells", "notes",
                  "kaggle_data"}
    extra = sorted(set(spec) - known_keys)
    if extra:
        raise GridError(f"grid file {path}: unknown top-level key(s) {extra}; known: {sorted(known_keys)}")
    method = spec.get("method")
    if method not in PIPELINES:
        raise GridError(f"grid file {path}: method={method!r}; available: {sorted(PIPELINES)}")
    if profile not in PROFILES:
        raise GridError(f"profile={profile!r}: use one of {list(PROFILES)}")
    stages = PIPELINES[method]
    shared = list(spec.get("shared_stages") or [])
    bad = [s for s in shared if s not in stages]
    if bad:
        raise GridError(f"grid file {path}: shared_stages {bad} are not stages of {method}: {stages}")
    if shared != stages[:len(shared)]:
        raise GridError(f"grid file {path}: shared_stages must be the first stages in order, e.g. {stages[:len(shared)]}")
    cells = spec.get("cells")
    if not isinstance(cells, dict) or not cells:
        raise GridError(f"grid file {path}: 'cells' must be a non-empty mapping of cell name -> parameters")
    allowed = _notebook_parameters(method) - {"profile", "run_dir"}
    common = spec.get("params") or {}
    if not isinstance(common, dict):
        raise GridError(f"grid file {path}: 'params' must be a mapping of parameter -> value")

    def check_params(p: dict, where: str) -> dict:
        unknown = sorted(set(p) - allowed)
        if unknown:
            raise GridError(f"{where}: unknown notebook parameter(s) {unknown}; the {method} notebooks take "
                            f"{sorted(allowed)}")
        return {k: _pick(v, profile, f"{where}, parameter {k!r}") for k, v in p.items()}

    common = check_params(common, f"grid file {path}, params")
    resolved = {}
    for name, cell in cells.items():
        where = f"grid file {path}, cell {name!r}"
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.=+-]*", str(name)) or name == SHARED:
            raise GridError(f"{where}: cell names are letters, digits and _ . = + - (they name folders)")
        cell = dict(cell or {})
        if not isinstance(cell, dict):
            raise GridError(f"{where}: expected a mapping of parameter -> value")
        cstages = cell.pop("stages", None)
        cstages = list(cstages) if cstages else [s for s in stages if s not in shared]
        bad = [s for s in cstages if s not in stages or s in shared]
        if bad:
            raise GridError(f"{where}: stages {bad} are unknown or shared; {method} stages: {stages}, shared: {shared}")
        resolved[str(name)] = {"params": {**common, **check_params(cell, where)}, "stages": cstages}
    vary = list(spec.get("vary") or sorted({k for c in resolved.values() for k in c["params"]
                                             if len({json.dumps(x["params"].get(k)) for x in resolved.values()}) > 1}))
    metrics = list(spec.get("metrics") or DEFAULT_METRICS.get(method, []))
    return {"name": str(spec.get("name") or path.stem), "description": spec.get("description", ""),
            "kaggle_data": " ".join(str(spec.get("kaggle_data") or "").split()),
            "method": method, "path": str(path), "profile": profile, "shared_stages": shared,
            "shared_params": common, "cells": resolved, "vary": vary, "metrics": metrics}


def _hash(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------ run
def _link_shared(shared: Path, cell: Path) -> None:
    """Give a cell the shared stages' outputs: checkpoints and caches linked, configs/logs/metrics copied."""
    from .run import RunDir

    for sub in ("checkpoints", "cache"):
        src_root = shared / sub
        if not src_root.is_dir():
            continue
        (cell / sub).mkdir(parents=True, exist_ok=True)
        for src in src_root.iterdir():
            dst = cell / sub / src.name
            if dst.is_symlink() or dst.exists():
                continue
            try:
                dst.symlink_to(os.path.relpath(src, dst.parent), target_is_directory=src.is_dir())
            except OSError:  # file systems without symlinks
                (shutil.copytree if src.is_dir() else shutil.copy2)(src, dst)
    for sub in ("config", "logs", "figures", "samples"):
        for src in (shared / sub).glob("*") if (shared / sub).is_dir() else ():
            dst = cell / sub / src.name
            if src.is_file() and not dst.exists():
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
    shared_metrics = RunDir(shared).metrics()
    mine = RunDir(cell)
    m = mine.metrics()
    for section, values in shared_metrics.items():
        if isinstance(values, dict) and section not in m:
            mine.update_metrics(section, values)


def _notebook_seconds(nb_path: Path) -> float:
    """Seconds spent inside the cells of an executed notebook (papermill's per-cell durations)."""
    import nbformat

    try:
        nb = nbformat.read(str(nb_path), as_version=4)
    except (OSError, ValueError):
        return 0.0
    return sum((c.get("metadata", {}).get("papermill", {}).get("duration") or 0.0) for c in nb.cells)


def _run_one(method, profile, run_dir: Path, params, stages, backend, log, remote_opts) -> dict:
    accepted = _notebook_parameters(method, stages)
    params = {k: v for k, v in params.items() if k in accepted}  # e.g. n_samples is not the VAE's business
    t = time.perf_counter()
    if backend == "local":
        from .notebooks import run_pipeline

        stopped = run_pipeline(method, profile, run_dir, params, stages, log=log).get("stopped")
        remote = {}
    else:
        from . import kaggle

        remote = kaggle.run_grid_cell(method, profile, run_dir, params, stages, log=log, **remote_opts)
        stopped = remote.get("stopped")
    wall = time.perf_counter() - t
    inside = sum(_notebook_seconds(run_dir / "notebooks" / f"{s}.ipynb") for s in stages) if backend == "local" else None
    out = {"seconds": wall, "notebook_cell_seconds": inside}
    out.update({k: remote[k] for k in ("ref", "version", "url") if k in remote})
    if stopped:
        out["stopped"] = stopped
    return out


def _check_kaggle_data(spec: dict, datasets) -> None:
    """A grid whose parameters read a bare ``/kaggle/input`` path needs a dataset the grid cannot name (no public
    copy of it is known: PraNet's split, say); refuse to push kernels that would find nothing there. Parameters
    of the form ``kaggle:OWNER/SLUG`` name their dataset and are attached by the push itself."""
    params = [spec["shared_params"], *(c["params"] for c in spec["cells"].values())]
    bare = sorted({f"{k}={v!r}" for p in params for k, v in p.items()
                   if isinstance(v, str) and (v == "/kaggle/input" or v.startswith("/kaggle/input/"))})
    if bare and not list(datasets):
        what = spec.get("kaggle_data") or "the dataset its description names"
        raise GridError(f"grid {spec['name']} (profile {spec['profile']}) reads {', '.join(bare)} on Kaggle, and no "
                        f"dataset is attached: {what}. Attach it with --dataset OWNER/SLUG.")


def run_grid(grid: str | os.PathLike, profile: str, out: str | os.PathLike, *, cells=None, backend: str = "local",
             parallel: int = 1, processes: int = 1, log=print, **remote_opts) -> dict:
    """Run every cell of ``grid`` (or only ``cells``) into ``out/<cell>``; then aggregate. Returns the state.

    ``processes``: training processes (one GPU each) for every stage that has the parameter - a parameter of
    every cell like the others, so cells trained with another count are refused as changed, not mixed in.

    ``parallel`` (Kaggle backend only): how many cell kernels run at once (Kaggle limits a user's
    concurrent GPU sessions); local cells run one after another, as they share this machine's cores.
    """
    if not isinstance(parallel, int) or parallel < 1:
        raise GridError(f"parallel={parallel!r}: must be an integer >= 1")
    profile = session.resolve_profile(profile, log=log)
    spec = load_grid(grid, profile)
    if not isinstance(processes, int) or processes < 1:
        raise GridError(f"processes={processes!r}: an integer >= 1")
    if processes != 1:
        spec["shared_params"] = {**spec["shared_params"], "processes": processes}
        for cell in spec["cells"].values():
            cell["params"] = {**cell["params"], "processes": processes}
    if backend not in ("local", "kaggle"):
        raise GridError(f"backend={backend!r}: use 'local' or 'kaggle'")
    if backend == "kaggle":
        _check_kaggle_data(spec, remote_opts.get("datasets", ()))
    out = Path(out).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    names = list(spec["cells"])
    if cells:
        unknown = [c for c in cells if c not in spec["cells"]]
        if unknown:
            raise GridError(f"unknown cell(s) {unknown}; grid {spec['name']} has {names}")
        names = [c for c in names if c in cells]
    state_path = out / "grid_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {}
    if state.get("profile", profile) != profile:
        raise GridError(f"{out} holds grid results of profile {state['profile']!r}, not {profile!r}: "
                        "use another --out")
    state.update({"grid": spec["name"], "grid_file": spec["path"], "profile": profile, "method": spec["method"],
                  "backend": backend})
    state.setdefault("cells", {})

    def save():
        write_json_atomic(state_path, state)

    t_grid = time.perf_counter()
    shared = "done"  # the shared stages' status: "done" | "stopped" (wall-clock budget) | "failed"
    if spec["shared_stages"]:
        key = _hash({"params": spec["shared_params"], "stages": spec["shared_stages"]})
        entry = state["cells"].get(SHARED, {})
        if entry.get("status") == "done" and entry.get("key") == key:
            log(f"[grid] {SHARED}: done earlier, skipped")
        else:
            if entry.get("key") not in (None, key):
                raise GridError(f"{out / SHARED} was run with other shared parameters or stages; use another --out "
                                f"or delete {out / SHARED}")
            log(f"[grid] {SHARED}: stages {spec['shared_stages']}")
            try:
                r = _run_one(spec["method"], profile, out / SHARED, spec["shared_params"], spec["shared_stages"],
                             backend, log, remote_opts)
                shared = "stopped" if r.get("stopped") else "done"
                state["cells"][SHARED] = {"status": shared, "key": key, **r}
            except Exception as e:  # noqa: BLE001 - recorded, then every cell is marked as blocked by it
                shared = "failed"
                state["cells"][SHARED] = {"status": "failed", "key": key, "error": _error_text(e)}
                _write_error(out / SHARED, e)
                log(f"[grid] {SHARED} failed: {_error_text(e)}")
            save()
    lock = threading.Lock()

    def run_cell(name):
        cell = spec["cells"][name]
        key = _hash(cell)
        run_dir = out / name
        entry = state["cells"].get(name, {})
        if entry.get("status") == "done" and entry.get("key") == key:
            log(f"[grid] {name}: done earlier, skipped")
            return
        if entry.get("key") not in (None, key) and run_dir.exists():
            msg = (f"cell {name!r} was run with other parameters ({entry.get('params')} -> {cell['params']}); "
                   f"delete {run_dir} to run it again")
            with lock:
                state["cells"][name] = {**entry, "status": "failed", "error": msg}
                save()
            log(f"[grid] {name}: {msg}")
            return
        if shared != "done":
            why = ("not run: the shared stages stopped at the wall-clock budget; run the grid again to continue"
                   if shared == "stopped" else f"not run: the shared stages failed (see {out / SHARED / 'error.txt'})")
            with lock:
                state["cells"][name] = {"status": shared, "key": key, "params": cell["params"], "error": why}
                save()
            return
        log(f"[grid] {name}: {cell['params']} stages {cell['stages']}")
        run_dir.mkdir(parents=True, exist_ok=True)
        opts = dict(remote_opts)
        if spec["shared_stages"] and backend == "local":
            _link_shared(out / SHARED, run_dir)
        elif spec["shared_stages"]:  # Kaggle: the shared kernel's output is attached; persist.restore copies it in
            ref = state["cells"].get(SHARED, {}).get("ref")
            opts["kernel_sources"] = tuple(opts.get("kernel_sources", ())) + ((ref,) if ref else ())
        try:
            r = _run_one(spec["method"], profile, run_dir, cell["params"], cell["stages"], backend, log, opts)
            # a budget stop is not a failure: the next `grid run` continues the cell from its checkpoint
            result = {"status": "stopped" if r.get("stopped") else "done", "key": key, "params": cell["params"], **r}
            (run_dir / "error.txt").unlink(missing_ok=True)
            if r.get("stopped"):
                log(f"[grid] {name}: {r['stopped']['message']}")
        except Exception as e:  # noqa: BLE001 - a failed cell is recorded and the grid goes on
            result = {"status": "failed", "key": key, "params": cell["params"], "error": _error_text(e)}
            _write_error(run_dir, e)
            log(f"[grid] {name} failed: {_error_text(e)}")
        with lock:
            state["cells"][name] = result
            save()

    if backend == "kaggle" and parallel > 1:
        # Each Kaggle cell is a kernel on its own runner; this machine only pushes and polls.
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=parallel) as pool:
            list(pool.map(run_cell, names))
    else:
        for name in names:
            run_cell(name)
    state["seconds_last_call"] = time.perf_counter() - t_grid
    save()
    t = time.perf_counter()
    aggregate(spec, out, log=log)
    state["aggregate_seconds"] = time.perf_counter() - t
    save()
    return state


def _error_text(e: BaseException) -> str:
    return f"{type(e).__name__}: {e}".strip().splitlines()[0][:500]


def _write_error(run_dir: Path, e: BaseException) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "error.txt").write_text("".join(traceback.format_exception(type(e), e, e.__traceback__)))


# ------------------------------------------------------------------------------------ aggregate
def _home_as_tilde(value):
    """Text with the home folder written as ~, so a results table can be shared as it is."""
    home = str(Path.home())
    return value.replace(home, "~") if isinstance(value, str) and len(home) > 1 else value


def aggregate(spec: dict | str, out: str | os.PathLike, profile: str = "cpu-demo", log=print):
    """Every cell's metrics.json -> ``results.csv`` (all scalars), ``results.md`` and one plot per metric."""
    import pandas as pd

    if not isinstance(spec, dict):
        spec = load_grid(spec, profile)
    out = Path(out)
    state_path = out / "grid_state.json"
    state = json.loads(state_path.read_text()) if state_path.exists() else {"cells": {}}
    rows = []
    for name, cell in spec["cells"].items():
        entry = state["cells"].get(name, {})
        mpath = out / name / "metrics.json"
        m = json.loads(mpath.read_text()) if mpath.exists() else {}
        row = {"cell": name, "status": entry.get("status", "not run")}
        row.update({p: cell["params"].get(p) for p in spec["vary"]})
        if entry.get("status") == "done":
            row.update({k: v for k, v in flatten(m).items() if k not in row})
        row["cell_seconds"] = entry.get("seconds")
        row["error"] = entry.get("error", "")
        rows.append({k: _home_as_tilde(v) for k, v in row.items()})
    df = pd.DataFrame(rows)
    df.to_csv(out / "results.csv", index=False)
    cols = ["cell", "status", *spec["vary"], *[m for m in spec["metrics"] if m in df.columns]]
    md = [f"# Grid {spec['name']} ({spec['method']}, profile {spec['profile']})", ""]
    if spec.get("description"):
        md += [str(spec["description"]).strip(), ""]
    md += ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for _, r in df.iterrows():
        md.append("| " + " | ".join(_fmt(r.get(c)) for c in cols) + " |")
    failed = df[df["status"] == "failed"]
    if len(failed):
        md += ["", "Failed cells:", ""] + [f"- {r['cell']}: {r['error']}" for _, r in failed.iterrows()]
    stopped = df[df["status"] == "stopped"]
    if len(stopped):
        md += ["", "Stopped at the wall-clock budget (run the grid again to continue them): "
               + ", ".join(stopped["cell"]) + "."]
    md += ["", f"Written by `python -m medkit grid run {spec['name']} --profile {spec['profile']} --out {out.name}`; "
           "all scalars of every cell's metrics.json are in results.csv."]
    (out / "results.md").write_text("\n".join(md) + "\n")
    _plots(df, spec, out / "figures")
    _galleries(df, out, out / "figures" / "galleries.png", title=f"{spec['name']} ({spec['profile']})")
    log(f"[grid] {spec['name']}: {int((df['status'] == 'done').sum())}/{len(df)} cells done; "
        f"{out / 'results.csv'}, {out / 'results.md'}, {out / 'figures'}")
    return df


def _fmt(v) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _ci_err(d, metric: str):
    """Asymmetric error bars from a metric entry's 95% CI columns, or None."""
    lo, hi = f"{metric}.ci95_lo", f"{metric}.ci95_hi"
    if lo not in d or hi not in d or d[lo].isna().all():
        return None
    v = d[metric].astype(float)
    return [(v - d[lo].astype(float)).clip(lower=0).fillna(0), (d[hi].astype(float) - v).clip(lower=0).fillna(0)]


def _plots(df, spec: dict, fig_dir: Path) -> None:
    """One figure per metric against the varied parameter (a line when it is one numeric parameter)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    fig_dir.mkdir(parents=True, exist_ok=True)
    done = df[df["status"] == "done"]
    if done.empty:
        return
    numeric_x = (len(spec["vary"]) == 1 and spec["vary"][0] in done
                 and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in done[spec["vary"][0]]))
    for metric in spec["metrics"]:
        if metric not in done or done[metric].isna().all():
            continue
        fig, ax = plt.subplots(figsize=(5.2, 3.4))
        if numeric_x:
            d = done.sort_values(spec["vary"][0])
            ax.errorbar(d[spec["vary"][0]], d[metric].astype(float), yerr=_ci_err(d, metric), fmt="o-", capsize=3)
            ax.set_xlabel(spec["vary"][0])
        else:
            ax.bar(range(len(done)), done[metric].astype(float), yerr=_ci_err(done, metric), capsize=3)
            ax.set_xticks(range(len(done)), done["cell"], rotation=30, ha="right")
            ax.set_xlabel("cell")
        ax.set_ylabel(metric)
        ax.set_title(f"{spec['name']}: {metric} ({spec['profile']})", fontsize=9)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(fig_dir / f"{metric.replace('.', '_')}.png", dpi=110)
        plt.close(fig)


def _galleries(df, out: Path, path: Path, per_cell: int = 8, title: str = "") -> None:
    """One row of generated samples per finished cell (the first ``per_cell`` of samples/generated.npz)."""
    import matplotlib.pyplot as plt
    import numpy as np

    rows = []
    for _, r in df[df["status"] == "done"].iterrows():
        f = out / r["cell"] / "samples" / "generated.npz"
        if f.exists():
            with np.load(f) as z:
                rows.append((r["cell"], z["images"][:per_cell]))
    if not rows:
        return
    k = max(len(x) for _, x in rows)
    fig, axes = plt.subplots(len(rows), k, figsize=(1.3 * k, 1.4 * len(rows)), squeeze=False)
    for i, (name, imgs) in enumerate(rows):
        for j in range(k):
            ax = axes[i, j]
            ax.axis("off")
            if j < len(imgs):
                ax.imshow(imgs[j, 0], cmap="gray", vmin=-1, vmax=1)
        axes[i, 0].set_title(name, fontsize=8, loc="left")
    fig.suptitle(f"{title}: generated samples per cell (seed 0)", fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
