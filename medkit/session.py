"""The session a notebook runs in: which profile it trains, its clock, and how it ends when the clock runs out.

* **Profile.** Every notebook's default is ``profile="auto"``: ``t4`` when a CUDA GPU is present (Run All on a
  Kaggle or Colab GPU trains the seed settings), ``cpu-demo`` otherwise. ``resolve_profile`` says which and why.
* **Clock.** Kaggle stops a session 12 h after it started, whatever the notebook spent its time on (installing,
  caching data, an earlier stage). With ``budget_s="auto"`` the Trainer's budget therefore counts from the
  start of this Python process - the notebook's kernel, which starts with the session - not from the start
  of each training call: 11 h 15 min after it, training saves a checkpoint and stops.
* **A budget stop ends the notebook successfully.** ``end_if_stopped(result, run)`` (the last line of every
  training cell) records the stop in ``<run>/stopped.json`` and turns each later cell of the notebook into a
  line saying it was skipped, so papermill and Kaggle mark the version as complete (not failed), its output
  (the checkpoint) is kept, and running the notebook again continues. ``python -m medkit run`` and the grids
  read ``stopped.json``: they stop after that stage and report the run as stopped, not failed.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from . import env

PROFILES = ("smoke", "cpu-demo", "t4")
STOP_FILE = "stopped.json"


def resolve_profile(profile: str, log=print) -> str:
    """``"auto"`` -> ``"t4"`` with a CUDA GPU, else ``"cpu-demo"`` (said in one line); other names unchanged."""
    if profile != "auto":
        return profile
    if torch.cuda.is_available():
        chosen, why = "t4", f"a CUDA GPU is present ({env.gpu_name(0)})"
    else:
        chosen, why = "cpu-demo", "no CUDA GPU is present"
    log(f"profile 'auto' -> '{chosen}': {why}. Set profile ({' | '.join(PROFILES)}) to choose another.")
    return chosen


def _process_start() -> float:
    """Wall-clock time (``time.time()``) at which this process started."""
    try:
        import psutil

        return float(psutil.Process(os.getpid()).create_time())
    except Exception:  # noqa: BLE001 - no psutil, or a platform it does not know: count from this import
        return time.time()


PROCESS_START = _process_start()


def elapsed_s() -> float:
    """Seconds since this process (the notebook's kernel) started."""
    return max(0.0, time.time() - PROCESS_START)


def budget_left_s(budget_s="auto") -> float | None:
    """Training seconds allowed from now.

    ``"auto"``: on Kaggle, what is left of 11 h 15 min counted from the kernel's start (the session clock Kaggle
    enforces, less 45 min for saving); elsewhere no limit (None). A number: that many seconds from now (this
    training call). None: no limit.
    """
    if budget_s == "auto":
        budget = env.default_budget_s()
        return None if budget is None else budget - elapsed_s()
    if budget_s is None:
        return None
    if isinstance(budget_s, str):
        try:
            budget_s = float(budget_s)
        except ValueError:
            raise ValueError(f"budget_s={budget_s!r}: seconds, 'auto' or None") from None
    return float(budget_s)


# ------------------------------------------------------------------------------ ending a notebook early

def _ipython():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def skip_remaining_cells(message: str) -> bool:
    """Make every later cell of this notebook print ``message`` instead of running; False outside IPython."""
    ip = _ipython()
    if ip is None:
        return False
    line = f"print({('[medkit] skipped: ' + message)!r})\n"

    def _skip(lines):  # an IPython input transformer: the cell's source in, the source to run out
        return [line]

    _skip.medkit_skip = True
    ip.input_transformers_post[:] = [t for t in ip.input_transformers_post if not getattr(t, "medkit_skip", False)]
    ip.input_transformers_post.append(_skip)
    return True


def end_if_stopped(result, run=None, stage: str | None = None) -> bool:
    """After a training call: if it did not finish (wall-clock budget), end this notebook successfully.

    Records the stop in ``<run>/stopped.json`` (read by ``python -m medkit run`` and the grids), says what
    happened and how to continue, and skips the rest of the notebook (each later cell says so). Outside a
    notebook (the paired ``.py`` run as a script) it exits with status 0 instead. Returns False when the
    training finished.
    """
    if result.finished:
        return False
    stage = stage or "training"
    message = (f"{stage} stopped by the wall-clock budget at step {result.step}; the checkpoint is saved. Run this "
               f"notebook again (a new session or kernel version, the same run_dir) to continue.")
    if run is not None:
        from .run import write_json_atomic

        write_json_atomic(Path(getattr(run, "path", run)) / STOP_FILE,
                          {"stage": stage, "step": result.step, "reason": result.reason, "message": message,
                           "time": time.time()})
    print(f"[medkit] {message}")
    if not skip_remaining_cells(message):
        raise SystemExit(0)
    return True


def read_stop(run_dir) -> dict | None:
    """The stop recorded in ``run_dir`` by ``end_if_stopped``, or None."""
    p = Path(run_dir) / STOP_FILE
    if not p.exists():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return {"message": f"{p} is unreadable", "stage": "unknown"}


def clear_stop(run_dir) -> None:
    (Path(run_dir) / STOP_FILE).unlink(missing_ok=True)
