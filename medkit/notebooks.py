"""Run a method's notebooks, in order, with papermill, into one run directory."""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from . import env, session
from .run import RunDir, write_json_atomic

NOTEBOOK_DIR = env.REPO_ROOT / "notebooks"
PIPELINES = {
    "sbldm": ["01_vae", "02_latent_diffusion", "03_sampling", "04_evaluation"],
    "slimdiff": ["01_cache", "02_train", "03_generate", "04_evaluate"],
    "siamese": ["01_train", "02_sample", "03_evaluate", "04_segmentation"],
    "ctsr": ["01_data_vae", "02_resshift", "03_super_resolve", "04_evaluate"],
}


class NotebookFailed(RuntimeError):
    pass


def notebook_path(method: str, stage: str) -> Path:
    p = NOTEBOOK_DIR / method / f"{stage}.ipynb"
    if not p.exists():
        raise FileNotFoundError(f"{p} not found: `python -m medkit run` needs the repository checkout "
                                "(the notebooks are not part of the installed package).")
    return p


def run_pipeline(method: str, profile: str, out, params: dict | None = None, stages=None,
                 kernel_name: str = "python3", log=print, processes: int = 1) -> dict:
    """Execute the method's notebooks into ``out/notebooks/`` with ``profile`` and ``run_dir=out``.

    Every stage resumes from its own checkpoints, so running the same command again after an
    interruption continues where it stopped. A stage stopped by the wall-clock budget ends successfully
    (``medkit.session``): the later stages are not run and metrics.json says ``stopped``. Returns the run's
    metrics.json (with ``wall_seconds``). ``profile="auto"``: t4 with a CUDA GPU, else cpu-demo.
    ``processes``: training processes for the notebooks that have a ``processes`` parameter
    (``medkit.train.launch``: one GPU each); the others train in one process, and the log says so.
    """
    import papermill as pm

    if method not in PIPELINES:
        raise ValueError(f"unknown method {method!r}; available: {sorted(PIPELINES)}")
    profile = session.resolve_profile(profile, log=log)
    stages = stages or PIPELINES[method]
    unknown = [s for s in stages if s not in PIPELINES[method]]
    if unknown:
        raise ValueError(f"unknown stage(s) {unknown} for {method}; stages: {PIPELINES[method]}")
    # The "python3" kernelspec a pip-installed ipykernel writes runs `python` from PATH: make that
    # this interpreter (the virtual environment's), not whichever python comes first on the PATH.
    os.environ["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    run = RunDir(out)
    nb_dir = run.path / "notebooks"
    nb_dir.mkdir(exist_ok=True)
    t0 = time.perf_counter()
    for stage in stages:
        src = notebook_path(method, stage)
        dst = nb_dir / src.name
        t = time.perf_counter()
        log(f"[medkit] {method} {stage} (profile {profile}) -> {dst}")
        session.clear_stop(run.path)
        values = {"profile": profile, "run_dir": str(run.path), **(params or {})}
        if processes != 1:
            if "processes" in pm.inspect_notebook(str(src)):
                values["processes"] = processes
            else:
                log(f"[medkit] {stage} has no `processes` parameter: it runs in one process")
        try:
            pm.execute_notebook(str(src), str(dst), parameters=values,
                                kernel_name=kernel_name, cwd=str(src.parent), progress_bar=sys.stderr.isatty(),
                                log_output=False)
        except pm.PapermillExecutionError as e:
            raise NotebookFailed(f"{method}/{stage} failed in cell {e.exec_count}: {e.ename}: {e.evalue}\n"
                                 f"The executed notebook with the traceback: {dst}. Run the same command "
                                 "again to resume after fixing the cause.") from None
        stop = session.read_stop(run.path)
        if stop is not None:
            later = stages[stages.index(stage) + 1:]
            log(f"[medkit] {method} {stage}: {stop['message']}" + (f" Not run yet: {later}." if later else ""))
            return run.update_metrics(None, None, profile=profile, method=method, stopped=stop)
        log(f"[medkit] {stage} done in {time.perf_counter() - t:.1f} s")
    wall = time.perf_counter() - t0
    m = run.metrics()
    m.pop("stopped", None)  # a stop of an earlier call, now continued to the end
    m.update(wall_seconds=wall, profile=profile, method=method)
    write_json_atomic(run.path / "metrics.json", m)
    log(f"[medkit] {method} finished in {wall:.1f} s; results in {run.path / 'metrics.json'}")
    log(json.dumps({k: m[k] for k in m if k in ("vae", "ldm", "sampling")}, indent=1))
    return m
