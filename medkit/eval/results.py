"""One results format for every run: ``metrics.json``, nested by section, each metric an *entry*.

An entry is a dict with ``value`` and whatever of these applies::

    {"value": 31.2, "ci95": [28.9, 33.8], "std": 1.2, "n": 2000,
     "extractor": "inception-v3-fid", "dataset": "mni152 val (24 slices)", "unit": "dB"}

so a reader never has to guess how a number was obtained: ``n`` is the sample count it rests on,
``extractor`` the feature network of a distribution metric, ``dataset`` what it was computed on.
Sections are free-form (``vae``, ``sampling``, ``eval``, ``downstream``...); plain numbers are allowed
next to entries (run bookkeeping such as ``train_seconds``).

``flatten`` turns a file into ``{"eval.fid": 31.2, "eval.fid.ci95_lo": 28.9, ...}`` - the one view
used by ``medkit report`` and the grid runner's tables.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

def entry(value, *, ci95=None, std=None, n=None, extractor=None, dataset=None, unit=None, **extra) -> dict:
    """A metric entry; ``None`` fields are left out. ``value`` may be NaN (written as JSON null)."""
    out: dict[str, Any] = {"value": _num(value)}
    if ci95 is not None:
        lo, hi = ci95
        out["ci95"] = [_num(lo), _num(hi)]
    for k, v in (("std", std), ("n", n), ("extractor", extractor), ("dataset", dataset), ("unit", unit)):
        if v is not None:
            out[k] = _num(v) if k == "std" else v
    out.update({k: v for k, v in extra.items() if v is not None})
    return out


def is_entry(obj) -> bool:
    return isinstance(obj, dict) and "value" in obj and not isinstance(obj["value"], dict)


def _num(x):
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) else x


def read_metrics(path) -> dict:
    """A run's metrics.json (a run directory or the file itself); a clear error if missing or broken."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: a run writes metrics.json when its evaluation "
                                f"finishes; run the evaluation notebook (or `python -m medkit evaluate`) first.")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); re-run the evaluation that writes it.") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path} holds a {type(data).__name__}, not a JSON object of sections.")
    return data


def update_metrics(path, section: str, values: dict) -> dict:
    """Merge ``values`` into ``section`` of metrics.json (created if absent), written atomically."""
    from medkit.run import write_json_atomic

    path = Path(path)
    if path.is_dir():
        path = path / "metrics.json"
    data = read_metrics(path) if path.is_file() else {}
    data.setdefault(section, {}).update(values)
    write_json_atomic(path, data)
    return data


def flatten(metrics: dict, prefix: str = "", skip=("config",)) -> dict:
    """Nested metrics -> one level of dotted keys with scalar values.

    An entry ``eval.fid`` gives ``eval.fid`` (its value), ``eval.fid.ci95_lo/hi``, ``eval.fid.std`` and
    ``eval.fid.n``; its text fields (extractor, dataset, unit) are kept as ``eval.fid.extractor`` etc.
    Lists of numbers are left out (they are curves, not results).
    """
    out: dict[str, Any] = {}
    for k, v in metrics.items():
        key = f"{prefix}{k}"
        if is_entry(v):
            out[key] = v["value"]
            if isinstance(v.get("ci95"), (list, tuple)) and len(v["ci95"]) == 2:
                out[key + ".ci95_lo"], out[key + ".ci95_hi"] = v["ci95"]
            for f, fv in v.items():
                if f not in ("value", "ci95") and (isinstance(fv, (int, float, str, bool)) or fv is None):
                    out[f"{key}.{f}"] = fv
        elif isinstance(v, dict):
            if k not in skip:
                out.update(flatten(v, key + ".", skip))
        elif isinstance(v, (bool, int, float, str)) or v is None:
            out[key] = v
    return out


def format_value(v, ci=None, digits: int = 4) -> str:
    """``0.9133 (0.9031-0.9235)`` for tables; NaN/None as ``n/a``."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    s = f"{v:.{digits}g}"
    if ci and all(isinstance(c, (int, float)) for c in ci):
        s += f" ({ci[0]:.{digits}g}-{ci[1]:.{digits}g})"
    return s
