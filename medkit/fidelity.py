"""Fidelity ledgers: every setting that shapes a method's results, beside its source's value, and why medkit
departs from it where it does.

A ledger (one per method, next to its code: ``medkit/methods/<method>_fidelity.py``) is a list of
:class:`Row`: the setting, the source's value (paper, official code or seed plan, cited), and the reason for
each profile whose value differs. medkit's own value is never written in the ledger: it is read from the
method's ``config(profile)`` - the object the code takes its defaults from - so the two cannot drift apart.
Settings fixed in code rather than in a profile (a sampler's spacing, a loss form) carry medkit's value in the
row (``medkit=``) with the reason.

What users see: each method's first notebook prints the rows where the run departs from the source
(:func:`show`) and records them in metrics.json (section ``fidelity``); ``docs/fidelity.md`` is generated from
all ledgers (``python -m medkit fidelity --write``). tests/test_fidelity.py fails on a differing value
without a reason (naming the setting) and on a docs/fidelity.md that no longer matches the code.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

METHODS = ("sbldm", "slimdiff", "siamese", "ctsr")
DOC = Path(__file__).resolve().parent.parent / "docs" / "fidelity.md"
ALL = "*"  # a reason that holds for every profile


@dataclass(frozen=True)
class Row:
    """One setting. ``key``: the config key medkit's value is read from (a tuple: several keys shown
    together), or None for behaviour fixed in code, described by ``medkit``. ``why``: profile (or ``"*"``)
    -> why medkit's value differs from ``source`` there. ``same``: how to compare (default: equality after
    turning lists into tuples)."""

    setting: str
    group: str
    source: Any
    cite: str
    key: str | tuple[str, ...] | None = None
    medkit: Any = None
    why: dict[str, str] = field(default_factory=dict)
    same: Callable[[Any, Any], bool] | None = None
    get: Callable[[dict], Any] | None = None  # a value derived from the config (e.g. a downsampling factor)

    def value(self, cfg: dict) -> Any:
        if self.get is not None:
            return _norm(self.get(cfg))
        if self.key is None:
            return self.medkit
        if isinstance(self.key, tuple):
            return tuple(_norm(cfg.get(k)) for k in self.key)
        return _norm(cfg.get(self.key))

    def differs(self, cfg: dict) -> bool:
        v, s = self.value(cfg), _norm(self.source)
        return not (self.same(v, s) if self.same else v == s)

    def reason(self, profile: str) -> str | None:
        return self.why.get(profile) or self.why.get(ALL)


@dataclass(frozen=True)
class Ledger:
    method: str
    title: str
    sources: dict[str, str]          # short name used in ``cite`` -> full citation
    profiles: tuple[str, ...]        # the profiles (Siamese: "backend/profile")
    config: Callable[[str], dict]    # profile -> the resolved config
    rows: tuple[Row, ...]
    notes: dict[str, str] = field(default_factory=dict)  # profile -> what the profile is for

    def status(self, profile: str, cfg: dict | None = None) -> list[dict]:
        """Every row for ``profile`` (or an explicit ``cfg``, e.g. a run's with its overrides)."""
        cfg = self.config(profile) if cfg is None else cfg
        return [{"setting": r.setting, "group": r.group, "source": _show(r.source), "cite": r.cite,
                 "medkit": _show(r.value(cfg)), "differs": r.differs(cfg), "why": r.reason(profile),
                 "key": r.key} for r in self.rows]

    def deviations(self, profile: str, cfg: dict | None = None) -> list[dict]:
        return [s for s in self.status(profile, cfg) if s["differs"]]

    def problems(self) -> list[str]:
        """Differing values without a reason, and reasons for profiles the ledger does not know."""
        out = []
        for p in self.profiles:
            for s in self.deviations(p):
                if not s["why"]:
                    key = f" (config key {s['key']!r})" if s["key"] else ""
                    out.append(f"{self.method} [{p}]: {s['setting']}{key} is {s['medkit']} where the source has "
                               f"{s['source']} ({s['cite']}), and the ledger gives no reason")
        known = set(self.profiles) | {ALL}
        for r in self.rows:
            for p in r.why:
                if p not in known:
                    out.append(f"{self.method}: {r.setting}: a reason for unknown profile {p!r}")
            if r.cite.split(",")[0].split(" ")[0] not in self.sources:
                out.append(f"{self.method}: {r.setting}: cite {r.cite!r} names no source of the ledger "
                           f"({sorted(self.sources)})")
        return out

    def markdown(self) -> str:
        lines = [f"## {self.title}", ""]
        lines += [f"- **{k}**: {v}" for k, v in self.sources.items()]
        if self.notes:
            lines += [""] + [f"- profile `{k}`: {v}" for k, v in self.notes.items()]
        lines += ["", "| setting | source | " + " | ".join(f"`{p}`" for p in self.profiles) + " | why medkit differs |",
                  "|---|---|" + "---|" * len(self.profiles) + "---|"]
        stats = {p: self.status(p) for p in self.profiles}
        for i, r in enumerate(self.rows):
            cells = []
            reasons = []
            for p in self.profiles:
                s = stats[p][i]
                cells.append(("**" + s["medkit"] + "**") if s["differs"] else s["medkit"])
                if s["differs"] and s["why"] and s["why"] not in reasons:
                    reasons.append(s["why"])
            src = f"{_show(r.source)} ({r.cite})"
            lines.append(f"| {r.setting} | {src} | " + " | ".join(cells) + " | " + " / ".join(reasons) + " |")
        n = {p: sum(s["differs"] for s in stats[p]) for p in self.profiles}
        lines += ["", "Settings that differ from the source: " + ", ".join(f"`{p}` {n[p]}" for p in self.profiles)
                  + " (bold above).", ""]
        return "\n".join(lines)


def _norm(v):
    if isinstance(v, list):
        return tuple(_norm(x) for x in v)
    if isinstance(v, tuple):
        return tuple(_norm(x) for x in v)
    return v


def _show(v) -> str:
    if isinstance(v, tuple):
        return "(" + ", ".join(_show(x) for x in v) + ")"
    if isinstance(v, float):
        return f"{v:g}"
    return str(v).replace("|", "/")


def ledger(method: str) -> Ledger:
    if method not in METHODS:
        raise ValueError(f"method={method!r}: ledgers exist for {METHODS}")
    return importlib.import_module(f"medkit.methods.{method}_fidelity").LEDGER


def show(method: str, profile: str, cfg: dict | None = None, run=None, log: Callable[[str], None] = print) -> list[dict]:
    """Print where this run departs from the source (and why); with ``run``, record it in metrics.json."""
    led = ledger(method)
    dev = led.deviations(profile, cfg)
    log(f"{led.title}: {len(dev)} of {len(led.rows)} settings differ from the source for profile {profile!r} "
        f"(all settings: docs/fidelity.md)")
    for s in dev:
        log(f"  - {s['setting']}: {s['medkit']} (source: {s['source']}, {s['cite']})\n      why: {s['why'] or 'NOT DECLARED'}")
    if run is not None:
        run.update_metrics("fidelity", {"profile": profile, "n_settings": len(led.rows), "n_deviations": len(dev),
                                        "deviations": [{k: s[k] for k in ("setting", "source", "medkit", "why")}
                                                       for s in dev]})
    return dev


def render() -> str:
    """docs/fidelity.md: every ledger, generated."""
    head = ["# Fidelity: where medkit departs from the papers, and why", "",
            "Generated by `python -m medkit fidelity --write` from the ledgers next to each method's code",
            "(`medkit/methods/<method>_fidelity.py`); medkit's values are read from the methods' `config(profile)`.",
            "Bold: the value differs from the source's; the last column says why. tests/test_fidelity.py fails on a",
            "differing value without a reason and on this file being out of date. Each method's first notebook",
            "prints the rows that differ for its profile and records them in metrics.json (`fidelity`).", ""]
    return "\n".join(head + [ledger(m).markdown() for m in METHODS])


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m medkit fidelity", description=__doc__.split("\n\n")[0])
    p.add_argument("--write", action="store_true", help=f"write {DOC.name} (else print it)")
    p.add_argument("--method", choices=METHODS, help="only this method's deviations for --profile")
    p.add_argument("--profile", default="cpu-demo")
    a = p.parse_args(argv)
    if a.method:
        show(a.method, a.profile)
        return 0
    text = render()
    problems = [x for m in METHODS for x in ledger(m).problems()]
    if a.write:
        DOC.write_text(text)
        print(f"wrote {DOC}")
    else:
        print(text)
    for x in problems:
        print("UNDECLARED:", x)
    return 1 if problems else 0
