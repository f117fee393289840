"""Carry a run directory across Kaggle and Colab sessions.

A free session ends after ~12 h (Kaggle) or on idle/quota (Colab) and takes its disk with it, so the
checkpoints must live somewhere the *next* session can read:

* **Kaggle** saves ``/kaggle/working`` as the notebook version's output (``env.default_run_root`` puts
  runs there). Attach that output to the next version ("Add input" -> your notebook) and it appears
  read-only under ``/kaggle/input``: ``/kaggle/input/notebooks/<owner>/<slug>/`` on current Kaggle,
  ``/kaggle/input/<slug>/`` on older kernels, ``/kaggle/input/datasets/<owner>/<slug>/`` when saved as
  a dataset. ``restore_previous_output`` finds the run there (same path relative to /kaggle/working)
  and copies it back into the writable run directory, so ``Trainer.fit`` resumes from it.
* **Colab** writes checkpoints to the VM's local disk (fast, atomic renames) and, when Google Drive is
  mounted, ``sync_to_drive`` mirrors the newest checkpoint of each stage to
  ``MyDrive/medkit/runs/<name>/`` after every checkpoint. Renames on the Drive mount are not
  guaranteed atomic, so each copy goes to a temp name, is fsynced, renamed, and verified against its
  manifest before ``latest`` there is switched to it. ``restore_from_drive`` copies it back.

Rules for every restore: only checkpoints that verify against their manifest are copied; a stage is
restored only when the copy is newer than the newest valid local checkpoint (local work is never
overwritten); the copy is verified again at its destination; every action is logged in one line.
``Trainer.fit`` calls ``restore`` for its stage and ``after_checkpoint`` after each save (both do
nothing off Kaggle/Colab). Roots are module constants so tests can point them at a temp folder.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable

from medkit import env
from medkit.train.checkpoint import (LATEST, MANIFEST, CheckpointError, _fsync_dir, _read_latest, _remove_dir,
                                     _step_of, _write_text_atomic, resume_candidates, verify_checkpoint)

KAGGLE_INPUT = Path("/kaggle/input")
COLAB_DRIVE = Path("/content/drive/MyDrive")
DRIVE_RUNS = Path("medkit") / "runs"   # run directories on Drive: MyDrive/medkit/runs/<name>/
DRIVE_KEEP = 2                          # checkpoints kept per stage on Drive (the newest and the one before)

Log = Callable[[str], None]


# ----------------------------------------------------------------------------------------- helpers

def _under(path: Path, root: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False


def newest_valid(ckpt_dir, log: Log | None = None) -> tuple[int, Path] | None:
    """(step, path) of the checkpoint ``Trainer.fit`` would resume from in ``ckpt_dir``, or None.

    Read-only (unlike ``find_resumable`` it deletes nothing), so it works on /kaggle/input.
    """
    for p in resume_candidates(ckpt_dir):
        try:
            verify_checkpoint(p)
        except CheckpointError as e:
            if log:
                log(f"restore: skipping {p}: {e}")
            continue
        return _step_of(p), p
    return None


def _copy_file(src: Path, dst: Path) -> None:
    """Copy to a temp name beside ``dst``, fsync, rename: ``dst`` is the old or the new file, never half."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f".{dst.name}.tmp-{os.getpid()}")
    shutil.copyfile(src, tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, dst)


def copy_checkpoint(src: Path, dst_ckpt_dir: Path, verify_after_rename: bool = False) -> Path:
    """Copy checkpoint directory ``src`` into ``dst_ckpt_dir`` and point ``latest`` there at it.

    Files go to ``.tmp-copy-<name>-<pid>/`` (a leftover is removed by the next resume), are fsynced and
    verified against the manifest, then the directory is renamed into place. ``verify_after_rename``
    checks it once more under its final name, for file systems whose rename may copy (Drive).
    """
    name = src.name
    dst_ckpt_dir.mkdir(parents=True, exist_ok=True)
    final = dst_ckpt_dir / name
    tmp = dst_ckpt_dir / f".tmp-copy-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    for f in sorted(src.iterdir()):
        if f.is_file():
            shutil.copyfile(f, tmp / f.name)
            with open(tmp / f.name, "rb+") as fh:
                os.fsync(fh.fileno())
    _fsync_dir(tmp)

    def check(where: Path):
        try:
            verify_checkpoint(where)
        except CheckpointError as e:
            shutil.rmtree(where, ignore_errors=True)
            raise CheckpointError(
                f"the copy of {src} to {dst_ckpt_dir} does not match its manifest ({e}); the copy was removed. "
                f"The destination is probably full or failing: free space (or remount Drive) and run again."
            ) from None

    check(tmp)
    if final.exists():  # an invalid or older copy of the same step
        if _read_latest(dst_ckpt_dir) == name:
            (dst_ckpt_dir / LATEST).unlink(missing_ok=True)  # never leave `latest` naming a missing directory
        _remove_dir(final)
    os.replace(tmp, final)
    _fsync_dir(dst_ckpt_dir)
    if verify_after_rename:
        check(final)
    _write_text_atomic(dst_ckpt_dir / LATEST, name + "\n")
    return final


def _stages(*run_dirs: Path) -> list[str]:
    names = {p.name for r in run_dirs if (r / "checkpoints").is_dir() for p in (r / "checkpoints").iterdir()
             if p.is_dir()}
    return sorted(names)


def _restore_from(sources: list[Path], run_dir: Path, stages, log: Log, where: str) -> list[str]:
    """Copy into ``run_dir`` each stage whose newest valid checkpoint in ``sources`` beats the local one."""
    run_dir = Path(run_dir)
    restored: list[str] = []
    used: list[Path] = []
    for stage in (stages if stages is not None else _stages(*sources)):
        local = newest_valid(run_dir / "checkpoints" / stage)
        best, seen = None, []
        for src in sources:
            ckpt_dir = src / "checkpoints" / stage
            if not ckpt_dir.is_dir():
                continue
            seen.append(ckpt_dir)
            found = newest_valid(ckpt_dir, log=log)
            if found is not None and (best is None or found[0] > best[0]):
                best = (*found, src)
        if best is None:
            if seen:
                log(f"restore: {', '.join(map(str, seen))} holds no valid '{stage}' checkpoint (see above); "
                    f"'{stage}' is not restored")
            continue
        step, path, src = best
        if local is not None and local[0] >= step:
            log(f"restore: '{stage}' is at step {local[0]} locally, {where} has step {step}; keeping the local one")
            continue
        copy_checkpoint(path, run_dir / "checkpoints" / stage)
        log_src = src / "logs" / f"{stage}.jsonl"
        if log_src.is_file():  # the log belongs to the checkpoint (the trainer trims it to that step)
            _copy_file(log_src, run_dir / "logs" / log_src.name)
        was = "" if local is None else f"; the local copy was at step {local[0]}"
        log(f"restore: '{stage}' step {step} copied from {path} (verified){was}")
        restored.append(stage)
        if src not in used:
            used.append(src)
    for src in used:  # settings and results of the run: only what is missing locally
        for f in [*sorted((src / "config").glob("*.json")), src / "metrics.json"]:
            dst = run_dir / f.relative_to(src)
            if f.is_file() and not dst.exists():
                _copy_file(f, dst)
    return restored


# ------------------------------------------------------------------------------------------ Kaggle

def kaggle_sources(run_dir) -> list[Path]:
    """Copies of ``run_dir`` in attached inputs: earlier versions' outputs (or datasets made from them).

    ``run_dir`` is matched by its path relative to /kaggle/working (e.g. ``runs/sbldm-t4``), else as
    ``runs/<name>``; only folders with a ``checkpoints/`` subfolder count.
    """
    run_dir = Path(run_dir)
    try:
        rel = run_dir.resolve().relative_to(env.KAGGLE_WORKING.resolve())
    except ValueError:
        rel = Path("runs") / run_dir.name
    if not KAGGLE_INPUT.is_dir():
        return []
    bases = [*sorted(KAGGLE_INPUT.glob("notebooks/*/*")), *sorted(KAGGLE_INPUT.glob("datasets/*/*")),
             *sorted(KAGGLE_INPUT.glob("*"))]
    out = []
    for b in bases:
        for cand in (b / rel, b / "runs" / run_dir.name):
            if (cand / "checkpoints").is_dir() and cand not in out and not _under(cand, run_dir):
                out.append(cand)
    return out


def restore_previous_output(run_dir, stages=None, log: Log = print) -> list[str]:
    """Copy the run's checkpoints (and logs, config, metrics) from attached Kaggle inputs; return the stages.

    A stage is copied only when the input holds a valid checkpoint newer than any valid local one.
    """
    sources = kaggle_sources(run_dir)
    if not sources:
        return []
    return _restore_from(sources, Path(run_dir), stages, log, "the Kaggle input")


# ------------------------------------------------------------------------------------------- Colab

def drive_mounted() -> bool:
    return COLAB_DRIVE.is_dir()


def drive_run_dir(run_dir) -> Path:
    """Where ``run_dir`` is mirrored on Drive: ``MyDrive/medkit/runs/<name>``."""
    return COLAB_DRIVE / DRIVE_RUNS / Path(run_dir).name


def sync_to_drive(run_dir, stages=None, log: Log = print) -> list[str]:
    """Mirror the newest valid checkpoint of each stage, and config/logs/metrics, to Drive.

    Returns the stages copied (a stage whose newest checkpoint is already there is skipped). Keeps the
    ``DRIVE_KEEP`` newest checkpoints per stage on Drive. No-op when Drive is not mounted or
    ``run_dir`` is itself on Drive.
    """
    run_dir = Path(run_dir)
    if not drive_mounted() or _under(run_dir, COLAB_DRIVE):
        return []
    dst_run = drive_run_dir(run_dir)
    copied = []
    for stage in (stages if stages is not None else _stages(run_dir)):
        found = newest_valid(run_dir / "checkpoints" / stage)
        if found is None:
            continue
        step, path = found
        dst = dst_run / "checkpoints" / stage
        there = dst / path.name
        if (_read_latest(dst) == path.name and (there / MANIFEST).is_file()
                and (there / MANIFEST).read_bytes() == (path / MANIFEST).read_bytes()):
            continue  # already mirrored (the manifest holds every file's sha256)
        copy_checkpoint(path, dst, verify_after_rename=True)
        latest = _read_latest(dst)
        old = sorted((p for p in dst.iterdir() if p.is_dir() and _step_of(p) is not None), key=_step_of,
                     reverse=True)
        for p in [p for p in old if p.name != latest][DRIVE_KEEP - 1:]:
            _remove_dir(p)
        copied.append(stage)
        log(f"drive: mirrored '{stage}' {path.name} to {dst}")
    for f in [*sorted((run_dir / "config").glob("*.json")), *sorted((run_dir / "logs").glob("*.jsonl")),
              run_dir / "metrics.json"]:
        if f.is_file():
            _copy_file(f, dst_run / f.relative_to(run_dir))
    return copied


def restore_from_drive(run_dir, stages=None, log: Log = print) -> list[str]:
    """The reverse of ``sync_to_drive``: copy newer valid checkpoints from Drive into ``run_dir``."""
    run_dir = Path(run_dir)
    if not drive_mounted() or _under(run_dir, COLAB_DRIVE):
        return []
    src = drive_run_dir(run_dir)
    if not (src / "checkpoints").is_dir():
        return []
    return _restore_from([src], run_dir, stages, log, "Google Drive")


# --------------------------------------------------------------------------------- trainer hooks

def restore(run_dir, stages=None, log: Log = print) -> list[str]:
    """Restore from wherever this platform keeps the previous session's run; [] on a local machine."""
    if env.on_kaggle():
        return restore_previous_output(run_dir, stages, log)
    if env.on_colab():
        return restore_from_drive(run_dir, stages, log)
    return []


def after_checkpoint(run_dir, stage: str, log: Log = print) -> None:
    """Called by ``Trainer`` after each checkpoint: mirror it to Drive on Colab.

    A failure is reported and training goes on: the local checkpoint is intact, and the next
    checkpoint tries again.
    """
    if not env.on_colab() or not drive_mounted():
        return
    try:
        sync_to_drive(run_dir, [stage], log)
    except (OSError, CheckpointError) as e:
        log(f"drive: could not mirror '{stage}' to {drive_run_dir(run_dir)} ({e}); training goes on with the "
            f"local checkpoint, the next checkpoint will try again")
