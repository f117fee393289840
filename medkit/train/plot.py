"""Loss curve PNG from a trainer's jsonl log.

Drawn with a bare ``matplotlib.figure.Figure`` (Agg canvas) rather than pyplot: no global figure
state, no GUI backend, nothing shown in a notebook cell by accident, safe from a training loop.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path


def read_log(path) -> list[dict]:
    """The records of a jsonl log; lines cut by a kill are ignored."""
    out = []
    path = Path(path)
    if not path.exists():
        return out
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out


def smooth(values: list[float], window: int) -> list[float]:
    """Trailing moving average (window >= 1), the same length as ``values``."""
    out, acc = [], 0.0
    for i, v in enumerate(values):
        acc += v
        if i >= window:
            acc -= values[i - window]
        out.append(acc / min(i + 1, window))
    return out


def plot_loss_log(log_path, fig_path, title: str = "loss") -> Path | None:
    """Raw + smoothed loss over steps, log-scaled y when all losses are positive. None if nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    recs = [r for r in read_log(log_path) if isinstance(r.get("loss"), (int, float)) and math.isfinite(r["loss"])]
    if not recs:
        return None
    steps = [r["step"] for r in recs]
    loss = [float(r["loss"]) for r in recs]
    fig = Figure(figsize=(6, 3.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot(steps, loss, color="tab:blue", alpha=0.35, lw=1, label="loss")
    if len(loss) >= 5:
        ax.plot(steps, smooth(loss, max(2, len(loss) // 20)), color="tab:blue", lw=2, label="smoothed")
    if all(v > 0 for v in loss):
        ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="upper right")
    fig.tight_layout()
    fig_path = Path(fig_path)
    fig_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fig_path.with_name(f".{fig_path.name}.tmp-{os.getpid()}.png")
    fig.savefig(tmp)
    os.replace(tmp, fig_path)
    return fig_path
