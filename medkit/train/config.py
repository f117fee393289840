"""The run configuration the Trainer resumes against: its hash, its differences, and what is left out of both.

A checkpoint stores the resolved config and its hash; resuming under a config whose settings differ (ignoring
``DEFAULT_IGNORE``: where and how often things are written, and ``DEFAULT_FACTS``: where things were found on
this machine) raises ``ConfigMismatchError`` naming each difference.
"""
from __future__ import annotations

import hashlib
import json
from typing import Any

DEFAULT_IGNORE = ("run_dir", "budget_s", "log_every", "ckpt_every", "keep", "device")
# Config keys that record where something was found on this machine, not what was chosen: a cache folder, where
# the pretrained weights were found, which optimizer the installed packages allowed. Recorded in every checkpoint
# beside the config ("facts"), left out of the hash: a run moved to another machine resumes.
DEFAULT_FACTS = ("cache", "model_source", "optimizer")


class ConfigMismatchError(RuntimeError):
    """The checkpoint found in run_dir was trained with a different configuration."""

    def __init__(self, message: str, differences: dict[str, tuple[Any, Any]]):
        super().__init__(message)
        self.differences = differences


def _jsonable(obj):
    """Config as JSON would round-trip it (Paths, dtypes, tuples -> strings/lists)."""
    return json.loads(json.dumps(obj, sort_keys=True, default=str))


def _flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _ignored(key: str, ignore) -> bool:
    return any(key == ig or key.startswith(ig + ".") for ig in ignore)


def config_hash(config: dict, ignore=DEFAULT_IGNORE) -> str:
    """sha256 (16 hex) of the config minus ignored keys (top-level names or dotted paths)."""
    flat = {k: v for k, v in _flatten(_jsonable(config)).items() if not _ignored(k, ignore)}
    return hashlib.sha256(json.dumps(flat, sort_keys=True).encode()).hexdigest()[:16]


def config_diff(old: dict, new: dict, ignore=DEFAULT_IGNORE) -> dict[str, tuple[Any, Any]]:
    a, b = _flatten(_jsonable(old)), _flatten(_jsonable(new))
    missing = "<absent>"
    return {k: (a.get(k, missing), b.get(k, missing)) for k in sorted(set(a) | set(b))
            if not _ignored(k, ignore) and a.get(k, missing) != b.get(k, missing)}
