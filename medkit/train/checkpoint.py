"""Atomic, verifiable training checkpoints.

A free Kaggle/Colab session can be killed at any instant, including in the middle of writing a
checkpoint. So a checkpoint is a directory that only ever appears complete:

    <ckpt_dir>/step_00000500/
        model.safetensors   weights (safetensors: no pickle, fast, safe to load from anywhere)
        ema.safetensors     EMA weights, when the trainer keeps an EMA
        state.pt            optimizer / LR scheduler / GradScaler state and torch RNG states
        trainer.json        step, epoch, data position, python/numpy RNG, config + hash, versions
        manifest.json       sha256 and size of every file above; written last
    <ckpt_dir>/latest       the name of the newest complete checkpoint directory

Everything is written into ``.tmp-step_XXXXXXXX-<pid>``, fsynced, and renamed into place with
``os.replace``; the ``latest`` pointer is replaced the same way. A directory without a matching
manifest is therefore either a leftover temp directory (deleted on the next resume) or damage
(a flipped bit, a truncated copy), which ``load_checkpoint`` detects and ``find_resumable`` skips.

A kill can land anywhere in that sequence; ``latest`` only ever names a complete directory (or is
absent for a moment while a damaged directory of the same step is being replaced), never a missing or
partial one. ``tests/test_faults.py`` kills training processes at each point of the sequence to check it.

``state.pt`` holds only tensors and plain containers and is read with ``torch.load(...,
weights_only=True)``, so a checkpoint downloaded from somewhere cannot run code when loaded.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import pickle
import re
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
from safetensors.torch import load_file, save_file

STEP_DIR_RE = re.compile(r"^step_(\d{8,})$")
MANIFEST = "manifest.json"
LATEST = "latest"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint is missing, incomplete, damaged or unsafe to load."""


def step_dir_name(step: int) -> str:
    return f"step_{int(step):08d}"


def _step_of(path: Path) -> int | None:
    m = STEP_DIR_RE.match(path.name)
    return int(m.group(1)) if m else None


def _fsync_file(path: Path) -> None:
    # "rb+" rather than "rb": Windows only flushes handles opened for writing.
    with open(path, "rb+") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename/creation inside ``path`` durable. Not possible (nor needed) on Windows."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _write_bytes_durable(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def _write_text_atomic(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` so that readers see the old or the new content, never half."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    _write_bytes_durable(tmp, text.encode())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def _fault_point(step: int, what: str) -> None:
    """Test-only hook for the fault-injection tests (``medkit.train.faults``, ``tests/test_faults.py``).

    Does nothing unless the environment asks for it: ``MEDKIT_FAULT_TRACE=<file>`` appends
    ``save <step> <what> <unix time>`` after each stage of a save, and ``MEDKIT_FAULT_DELAY_SAVE=<s>``
    then sleeps that long, so that a SIGKILL sent by the test lands *inside* a save, at a known stage,
    with high probability. Costs two dictionary lookups per stage when unset.
    """
    trace = os.environ.get("MEDKIT_FAULT_TRACE")
    if trace:
        with open(trace, "a") as f:
            f.write(f"save {int(step)} {what} {time.time():.6f}\n")
    delay = os.environ.get("MEDKIT_FAULT_DELAY_SAVE")
    if delay:
        time.sleep(float(delay))


def _plain_tensors(group: str, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Own, contiguous CPU copies: safetensors refuses shared storage (tied weights) and views."""
    out = {}
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise CheckpointError(
                f"tensors[{group!r}][{k!r}] is a {type(v).__name__}, not a tensor; safetensors files hold "
                f"tensors only. Put non-tensor values in `state` (state.pt) or `meta` (trainer.json).")
        out[k] = v.detach().to("cpu", copy=True).contiguous()
    return out


def save_checkpoint(ckpt_dir, step: int, *, tensors: dict[str, dict[str, torch.Tensor]], state: dict,
                    meta: dict, keep: int = 3) -> Path:
    """Write checkpoint ``<ckpt_dir>/step_<step>`` atomically, point ``latest`` at it, prune old ones.

    ``tensors``: {"model": state_dict, "ema": state_dict, ...} -> ``<name>.safetensors`` each.
    ``state``: tensors and plain containers only (it is reloaded with ``weights_only=True``).
    ``meta``: JSON-able dict -> ``trainer.json``.
    ``keep``: how many ``step_*`` directories to keep (newest by step; the one written now always).
    Directories for steps *after* ``step`` are deleted: they belong to a timeline that was abandoned
    when training resumed from an earlier (valid) checkpoint, so they are damaged or stale.
    Returns the final directory.
    """
    if keep < 1:
        raise ValueError(f"keep={keep}: at least the checkpoint being written must be kept (keep >= 1)")
    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = step_dir_name(step)
    final = ckpt_dir / name
    tmp = ckpt_dir / f".tmp-{name}-{os.getpid()}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    _fault_point(step, "begin")

    files: list[str] = []
    for group, sd in tensors.items():
        if not re.fullmatch(r"[A-Za-z0-9_-]+", group):
            raise CheckpointError(f"tensor group name {group!r} must be a plain file stem like 'model' or 'ema'")
        fn = f"{group}.safetensors"
        save_file(_plain_tensors(group, sd), str(tmp / fn))
        _fsync_file(tmp / fn)
        files.append(fn)
        _fault_point(step, fn)

    buf = io.BytesIO()
    torch.save(state, buf)
    _write_bytes_durable(tmp / "state.pt", buf.getvalue())
    files.append("state.pt")
    _fault_point(step, "state.pt")

    try:
        text = json.dumps(meta, indent=1, sort_keys=True, allow_nan=True)
    except TypeError as e:
        raise CheckpointError(f"checkpoint meta is not JSON-serialisable ({e}); convert it to plain "
                              f"lists/dicts/numbers/strings") from e
    _write_bytes_durable(tmp / "trainer.json", text.encode())
    files.append("trainer.json")
    _fault_point(step, "trainer.json")

    manifest = {"format": FORMAT_VERSION, "step": int(step),
                "files": {fn: {"sha256": _sha256(tmp / fn), "size": (tmp / fn).stat().st_size} for fn in files}}
    _write_bytes_durable(tmp / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True).encode())
    _fsync_dir(tmp)
    _fault_point(step, "manifest.json")

    if final.exists():  # re-saving a step (e.g. over a damaged copy): move the old one aside first
        if _read_latest(ckpt_dir) == name:
            # `latest` must never name a missing directory, and the swap below leaves none for an
            # instant: drop the pointer first (resuming then takes the newest valid step_* directory)
            (ckpt_dir / LATEST).unlink(missing_ok=True)
            _fsync_dir(ckpt_dir)
        old = ckpt_dir / f".tmp-old-{name}-{os.getpid()}"
        if old.exists():
            shutil.rmtree(old)
        os.replace(final, old)
        _fault_point(step, "moved-aside")
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(ckpt_dir)
    _fault_point(step, "renamed")
    _write_text_atomic(ckpt_dir / LATEST, name + "\n")
    _fault_point(step, "latest")

    _prune(ckpt_dir, int(step), keep)
    _fault_point(step, "pruned")
    return final


def _step_dirs(ckpt_dir: Path) -> list[tuple[int, Path]]:
    """(step, path) of every ``step_*`` directory, newest first."""
    if not ckpt_dir.is_dir():
        return []
    out = [(s, p) for p in ckpt_dir.iterdir() if p.is_dir() and (s := _step_of(p)) is not None]
    return sorted(out, reverse=True)


def _prune(ckpt_dir: Path, current: int, keep: int) -> None:
    latest = _read_latest(ckpt_dir)
    kept = 0
    for s, p in _step_dirs(ckpt_dir):
        if p.name == latest:
            kept += 1
            continue
        if s > current or kept >= keep:
            _remove_dir(p)
        else:
            kept += 1


def _remove_dir(path: Path) -> None:
    """Rename to ``.tmp-*`` first, then delete: a kill half-way leaves a temp directory (removed on the
    next resume), never a half-deleted ``step_*`` one."""
    doomed = path.with_name(f".tmp-del-{path.name}-{os.getpid()}")
    try:
        os.replace(path, doomed)
    except OSError:
        doomed = path
    shutil.rmtree(doomed, ignore_errors=True)


def _read_latest(ckpt_dir: Path) -> str | None:
    try:
        return (Path(ckpt_dir) / LATEST).read_text().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def verify_checkpoint(path) -> dict:
    """Check ``path`` against its manifest; return the manifest or raise ``CheckpointError`` naming the file."""
    path = Path(path)
    if not path.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    try:
        manifest = json.loads((path / MANIFEST).read_text())
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{path}: {MANIFEST} missing (the save was interrupted); checkpoint incomplete") from None
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path / MANIFEST}: unreadable manifest ({e})") from None
    for fn, info in files.items():
        f = path / fn
        if not f.is_file():
            raise CheckpointError(f"{f}: listed in the manifest but missing")
        size = f.stat().st_size
        if size != info["size"]:
            raise CheckpointError(f"{f}: size {size} bytes, manifest says {info['size']} (truncated or damaged)")
        if _sha256(f) != info["sha256"]:
            raise CheckpointError(f"{f}: sha256 does not match the manifest (file damaged or modified)")
    return manifest


def read_meta(path) -> dict:
    try:
        return json.loads((Path(path) / "trainer.json").read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{Path(path) / 'trainer.json'}: unreadable ({e})") from None


def load_tensors(path, group: str, verify: bool = True) -> dict[str, torch.Tensor]:
    """One ``<group>.safetensors`` of a checkpoint, as CPU tensors (after verifying the manifest)."""
    path = Path(path)
    if verify:
        verify_checkpoint(path)
    f = path / f"{group}.safetensors"
    if not f.is_file():
        raise CheckpointError(f"{f}: this checkpoint has no '{group}' weights")
    try:
        return load_file(str(f), device="cpu")
    except Exception as e:  # safetensors raises its own error types
        raise CheckpointError(f"{f}: not a readable safetensors file ({e})") from e


def load_state(path) -> dict:
    """``state.pt`` with ``weights_only=True``: tensors and plain containers only, never code."""
    f = Path(path) / "state.pt"
    try:
        return torch.load(f, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{f}: refused to load: it contains Python objects other than tensors and plain containers, "
            f"and medkit only unpickles with weights_only=True so that a checkpoint cannot run code. "
            f"Save only state_dict()s (tensors, numbers, strings, lists, dicts) in `state`. ({e})") from e
    except (OSError, RuntimeError, EOFError) as e:
        raise CheckpointError(f"{f}: unreadable ({e})") from e


def load_checkpoint(path) -> tuple[dict[str, dict[str, torch.Tensor]], dict, dict]:
    """Verify and load a checkpoint directory -> ``(tensors, state, meta)``; tensors on the CPU."""
    path = Path(path)
    manifest = verify_checkpoint(path)
    tensors = {fn[: -len(".safetensors")]: load_tensors(path, fn[: -len(".safetensors")], verify=False)
               for fn in sorted(manifest["files"]) if fn.endswith(".safetensors")}
    return tensors, load_state(path), read_meta(path)


def clean_temp_dirs(ckpt_dir, log: Callable[[str], None] = print) -> None:
    """Delete ``.tmp-*`` leftovers of saves that were killed half-way."""
    ckpt_dir = Path(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    for p in sorted(ckpt_dir.glob(".tmp-*")):
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        log(f"checkpoint: removed leftover {p.name} (a save that was interrupted)")
    for p in ckpt_dir.glob(f".{LATEST}.tmp-*"):
        p.unlink(missing_ok=True)


def resume_candidates(ckpt_dir) -> list[Path]:
    """Checkpoint directories to try, best first: the one ``latest`` names, then the others newest first."""
    ckpt_dir = Path(ckpt_dir)
    dirs = [p for _, p in _step_dirs(ckpt_dir)]
    latest = _read_latest(ckpt_dir)
    first = [p for p in dirs if p.name == latest]
    return first + [p for p in dirs if p.name != latest]


def find_resumable(ckpt_dir, log: Callable[[str], None] = print) -> Path | None:
    """The newest valid checkpoint in ``ckpt_dir``, or None.

    Removes leftover temp directories (saying so), tries ``latest`` first and then the other
    ``step_*`` directories newest first; each damaged or incomplete one is reported in one line.
    """
    clean_temp_dirs(ckpt_dir, log)
    for p in resume_candidates(ckpt_dir):
        try:
            verify_checkpoint(p)
            read_meta(p)
            return p
        except CheckpointError as e:
            log(f"checkpoint: skipping {p.name}: {e}")
    return None
