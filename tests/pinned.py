"""Pinned numbers of the seeded smoke pipelines.

Each method's smoke pipeline is seeded and deterministic on the CPU, so its metrics.json is a fixed set of
numbers. ``check_pinned(name, metrics)`` compares every numeric result in it (losses, metrics, counts; not
timings or memory, which depend on the machine's load) with ``fixtures/pinned_smoke.json`` and fails,
naming each number that moved. Tolerance: relative 1e-3 (plus 1e-9 absolute for numbers near 0). Run to run
on one machine the pipelines agree exactly; across machines of the same kind (another CPU model, so other
SIMD kernels in oneDNN/LAPACK) a few ill-conditioned numbers moved by 2e-4 relative (the 3D SSIM of
near-blank volumes, a bootstrap std of FID), so 1e-4 failed a fresh machine. Paired differences of Dice/IoU
(keys with ``minus_real``) are near 0 by cancellation (mean - real, and their CI bounds mean +- t se): on another
machine the Siamese protocol's bound -0.002902 came out -0.002891 (1.1e-5 absolute, 3.8e-3 relative, with
every term it is computed from within 1e-3), so they get an absolute tolerance of 1e-4 (0.01 Dice points)
as well. A real numerical change (another init, loss, schedule, metric definition) moves them by far more.

A deliberate change is re-pinned with

    MEDKIT_REPIN=1 .venv/bin/python -m pytest tests/test_notebooks.py tests/test_slimdiff.py \
        tests/test_siamese.py tests/test_ctsr.py -k smoke

which rewrites the entries of the pipelines that ran; commit the fixture with the change that moved it.
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from medkit.eval.results import flatten

FIXTURE = Path(__file__).parent / "fixtures" / "pinned_smoke.json"
REL, ABS = 1e-3, 1e-9
ABS_DIFFERENCES = 1e-4  # paired Dice/IoU differences and their CI bounds (keys with "minus_real"): see above
# machine-dependent fields: wall and CPU time, speeds, memory, and bookkeeping that is not a result
VOLATILE = re.compile(r"(second|seconds|_s$|\.s$|wall|time|per_s|speed|throughput|rss|memory|mib|gib|bytes|"
                      r"_mb$|elapsed|started|finished|date|version|pid|host|workers|threads|budget|overhead)", re.I)


def numbers(metrics: dict) -> dict[str, float]:
    """The pinned view: every numeric leaf of ``flatten(metrics)`` whose key is not machine-dependent."""
    out = {}
    for k, v in flatten(metrics).items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or VOLATILE.search(k) or k.startswith("fidelity."):
            continue  # fidelity.*: counts of ledger rows (docs, not results; tests/test_fidelity.py keeps them true)
        out[k] = float(v)
    return out


def _same(a: float, b: float, key: str = "") -> bool:
    if math.isnan(a) or math.isnan(b):
        return math.isnan(a) and math.isnan(b)
    floor = ABS_DIFFERENCES if "minus_real" in key else ABS
    return abs(a - b) <= floor + REL * max(abs(a), abs(b))


def check_pinned(name: str, metrics: dict) -> None:
    got = numbers(metrics)
    pins = json.loads(FIXTURE.read_text()) if FIXTURE.is_file() else {}
    if os.environ.get("MEDKIT_REPIN") == "1":
        pins[name] = got
        FIXTURE.write_text(json.dumps(pins, indent=1, sort_keys=True) + "\n")
        return
    assert name in pins, (f"no pinned numbers for {name!r} in {FIXTURE}; create them with MEDKIT_REPIN=1 "
                          f"(see tests/pinned.py)")
    want = pins[name]
    moved = [f"{k}: pinned {want[k]!r}, now {got[k]!r}" for k in sorted(set(want) & set(got))
             if not _same(want[k], got[k], k)]
    missing = sorted(set(want) - set(got))
    new = sorted(set(got) - set(want))
    problems = moved + [f"{k}: pinned but no longer reported" for k in missing] + \
        [f"{k}: reported ({got[k]!r}) but not pinned" for k in new]
    assert not problems, (f"the seeded {name} pipeline's numbers changed ({len(problems)}):\n  "
                          + "\n  ".join(problems[:40])
                          + "\nIf the change is deliberate, re-pin: MEDKIT_REPIN=1 pytest ... (see tests/pinned.py) "
                            "and commit tests/fixtures/pinned_smoke.json with it.")
