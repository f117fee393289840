"""The run directory: what every stage of a method reads and writes.

```
runs/<name>/
  config/<stage>.json    resolved settings of each stage (also stored in every checkpoint)
  checkpoints/<stage>/   step_XXXXXXXX/ directories and a `latest` pointer (medkit.train)
  logs/<stage>.jsonl     training metrics, one JSON object per logged step
  metrics.json           the run's results, one section per stage (vae, ldm, sampling, ...)
  figures/  samples/  notebooks/  cache/
```
Stages can run in different sessions (or machines): a later stage finds everything it needs here.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

from . import env


def _json_default(o):
    if hasattr(o, "tolist"):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temp file in the same folder, fsync, then os.replace (never a half file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2, default=_json_default, sort_keys=False)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class RunDir:
    """A run directory; ``RunDir("")`` resolves to ``<default root>/<default_name>``."""

    def __init__(self, path: str | os.PathLike = "", default_name: str = "run"):
        self.path = (Path(path) if str(path) else env.default_run_root() / default_name).expanduser().resolve()
        self.path.mkdir(parents=True, exist_ok=True)
        for sub in ("figures", "samples", "logs", "config"):
            (self.path / sub).mkdir(exist_ok=True)
        # On Kaggle/Colab, bring back what an earlier session saved (attached output, Google Drive)
        # before any stage looks for it; a no-op elsewhere.
        from . import persist

        persist.restore(self.path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __truediv__(self, other) -> Path:
        return self.path / other

    @property
    def figures(self) -> Path:
        return self.path / "figures"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def save_config(self, stage: str, cfg: dict) -> Path:
        p = self.path / "config" / f"{stage}.json"
        write_json_atomic(p, cfg)
        return p

    def load_config(self, stage: str, needed_by: str = "this stage") -> dict:
        p = self.path / "config" / f"{stage}.json"
        if not p.exists():
            raise FileNotFoundError(f"{p} is missing: {needed_by} needs the '{stage}' stage of run "
                                    f"{self.path} - run that stage's notebook first with the same run_dir.")
        return json.loads(p.read_text())

    def metrics(self) -> dict:
        p = self.path / "metrics.json"
        return json.loads(p.read_text()) if p.exists() else {}

    def update_metrics(self, section: str | None = None, values: dict | None = None, **top) -> dict:
        """Merge ``values`` into ``metrics.json[section]`` (and ``top`` at the top level), atomically."""
        m = self.metrics()
        if section is not None:
            m.setdefault(section, {}).update(values or {})
        m.update(top)
        write_json_atomic(self.path / "metrics.json", m)
        return m
