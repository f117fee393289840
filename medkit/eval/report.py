"""Aggregate runs into one results table: ``python -m medkit report RUN_DIR [RUN_DIR ...] --out DIR``.

Reads each run's ``metrics.json`` and writes

- ``report.csv``: one row per run, every scalar of every metrics.json (flattened, see
  :func:`medkit.eval.results.flatten`), CI bounds and labels included;
- ``report.md``: a table of the metric *entries* (value with 95% CI, or +- std), with a legend listing
  each metric's extractor, dataset and n - the table a results section needs;
- ``figures/<metric>.png``: one bar chart per entry across runs, with CI (or std) error bars.

``--metrics eval.fid downstream.mdice_real`` restricts the table and plots to those columns (dotted
names as in report.csv); by default every entry is shown.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from medkit.eval.results import flatten, format_value, is_entry, read_metrics


def _entries(m: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in m.items():
        if k == "config":
            continue
        key = f"{prefix}{k}"
        if is_entry(v):
            out[key] = v
        elif isinstance(v, dict):
            out.update(_entries(v, key + "."))
    return out


def _run_names(run_dirs: list[Path]) -> list[str]:
    names = [p.name for p in run_dirs]
    if len(set(names)) == len(names):
        return names
    return [str(p) for p in run_dirs]


def collect(run_dirs) -> tuple[list[str], list[dict], list[dict]]:
    """(names, flattened rows, entry dicts) for the given run directories (or metrics.json files)."""
    paths = [Path(p) for p in run_dirs]
    if not paths:
        raise ValueError("report: give at least one run directory.")
    names = _run_names([p if p.is_dir() else p.parent for p in paths])
    rows, entries = [], []
    for name, p in zip(names, paths):
        m = read_metrics(p)
        rows.append({"run": name, **flatten(m)})
        entries.append(_entries(m))
    return names, rows, entries


def _cell(e: dict | None) -> str:
    if e is None:
        return ""
    v = e.get("value")
    if "ci95" in e:
        return format_value(v, e["ci95"])
    s = format_value(v)
    if isinstance(e.get("std"), (int, float)) and v is not None:
        s += f" +- {e['std']:.3g}"
    return s


def write_report(run_dirs, out, metrics: list[str] | None = None, title: str = "medkit report",
                 plots: bool = True, log=print) -> Path:
    import pandas as pd

    names, rows, entries = collect(run_dirs)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    df = pd.DataFrame(rows)
    df.to_csv(out / "report.csv", index=False)

    keys: list[str] = []
    for e in entries:
        keys += [k for k in e if k not in keys]
    if not keys and not metrics:  # runs written before metric entries existed: show their numeric scalars
        keys = [c for c in df.columns if c != "run" and pd.api.types.is_numeric_dtype(df[c])]
    if metrics:
        missing = [m for m in metrics if m not in df.columns]
        if missing:
            raise ValueError(f"report: no run has the metric(s) {', '.join(missing)}; available: "
                             f"{', '.join(keys) or 'none'} (entries) - all scalars are in {out / 'report.csv'}.")
        keys = list(metrics)
    md = [f"# {title}", "", f"{len(names)} run(s): " + ", ".join(f"`{n}`" for n in names), ""]
    if keys:
        md += ["| run | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for name, e, row in zip(names, entries, rows):
            cells = [_cell(e.get(k)) if k in e else format_value(row.get(k)) for k in keys]
            md.append(f"| {name} | " + " | ".join(cells) + " |")
        md += ["", "Values with a 95% CI in brackets, or +- one std over subsets/seeds where that is what the "
               "metric defines. What each metric rests on:", ""]
        for k in keys:
            info = next((e[k] for e in entries if k in e), None)
            if info is None:
                continue
            bits = [f"{f}: {info[f]}" for f in ("extractor", "dataset", "n", "unit") if f in info]
            md.append(f"- `{k}`" + (" - " + "; ".join(str(b) for b in bits) if bits else ""))
    else:
        md += ["No metric entries in these runs; every scalar is in report.csv."]
    md += ["", "Written by `python -m medkit report`; all scalars of every run are in report.csv."]
    (out / "report.md").write_text("\n".join(md) + "\n")
    if plots and keys:
        _plots(names, entries, rows, keys, out / "figures")
    log(f"[report] {len(names)} run(s), {len(keys)} metric(s): {out / 'report.md'}, {out / 'report.csv'}")
    return out


def _plots(names, entries, rows, keys, fig_dir: Path) -> None:
    from medkit.viz import _plt

    plt = _plt()
    fig_dir.mkdir(parents=True, exist_ok=True)
    for k in keys:
        vals, lo, hi = [], [], []
        for e, row in zip(entries, rows):
            ent = e.get(k)
            v = ent.get("value") if ent else row.get(k)
            v = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
            vals.append(v)
            if ent and "ci95" in ent and None not in ent["ci95"]:
                lo.append(max(v - ent["ci95"][0], 0))
                hi.append(max(ent["ci95"][1] - v, 0))
            elif ent and isinstance(ent.get("std"), (int, float)):
                lo.append(ent["std"])
                hi.append(ent["std"])
            else:
                lo.append(0)
                hi.append(0)
        if all(math.isnan(v) for v in vals):
            continue
        fig, ax = plt.subplots(figsize=(max(3.5, 1.0 + 0.8 * len(names)), 3.4))
        ax.bar(range(len(names)), vals, yerr=[lo, hi], capsize=3, color="tab:blue", alpha=0.8)
        ax.set_xticks(range(len(names)), names, rotation=30, ha="right", fontsize=8)
        ext = next((e[k].get("extractor") for e in entries if k in e and e[k].get("extractor")), None)
        ax.set_title(k + (f" [{ext}]" if ext else ""), fontsize=9)
        ax.grid(alpha=0.3, axis="y")
        fig.tight_layout()
        fig.savefig(fig_dir / f"{k.replace('.', '_')}.png", dpi=110)
        plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("runs", nargs="+", help="run directories (or metrics.json files)")
    p.add_argument("--out", default="report", help="output folder (default: ./report)")
    p.add_argument("--metrics", nargs="*", help="dotted metric names to tabulate and plot (default: every entry)")
    p.add_argument("--title", default="medkit report")
    p.add_argument("--no-plots", action="store_true")


def run_cli(args) -> int:
    write_report(args.runs, args.out, metrics=args.metrics or None, title=args.title, plots=not args.no_plots)
    print((Path(args.out) / "report.md").read_text())
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m medkit report", description=__doc__.split("\n\n")[0])
    add_arguments(p)
    return run_cli(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
