"""The fidelity ledgers stay true: every differing default has a reason, docs/fidelity.md matches the code, and
an undeclared change fails naming the setting."""
import json

import pytest

from medkit import fidelity
from medkit.methods import sbldm, siamese, slimdiff
from medkit.run import RunDir


@pytest.mark.parametrize("method", fidelity.METHODS)
def test_every_deviation_has_a_reason(method):
    led = fidelity.ledger(method)
    assert led.problems() == []
    assert len(led.rows) >= 15 and len(led.profiles) >= 3


@pytest.mark.parametrize("method", fidelity.METHODS)
def test_rows_read_keys_the_config_has(method):
    """A misspelt key would read None and hide a deviation: every key a row reads exists in every profile."""
    led = fidelity.ledger(method)
    for p in led.profiles:
        cfg = led.config(p)
        for r in led.rows:
            if r.key is None or r.get is not None:
                continue
            for k in (r.key if isinstance(r.key, tuple) else (r.key,)):
                assert k in cfg, f"{method} [{p}]: row {r.setting!r} reads config key {k!r}, which is not there"


def test_docs_fidelity_is_generated_from_the_code():
    assert fidelity.DOC.read_text() == fidelity.render(), (
        "docs/fidelity.md is out of date: a default or a ledger row changed. Run `python -m medkit fidelity --write`, "
        "read the diff (does each reason still hold for the new value?) and commit it.")


def test_an_undeclared_deviation_fails_naming_the_setting(monkeypatch):
    """The check itself: a t4 default moved away from the plan without a reason is caught, by setting and key,
    and the generated document no longer matches."""
    assert fidelity.ledger("sbldm").problems() == []
    monkeypatch.setitem(sbldm.PROFILES["t4"], "ldm_lr", 3e-4)           # the plan says 2e-4
    problems = fidelity.ledger("sbldm").problems()
    assert len(problems) == 1 and "sbldm [t4]: LDM learning rate (config key 'ldm_lr') is 0.0003" in problems[0]
    assert "2e-4" in problems[0] or "0.0002" in problems[0]
    assert fidelity.render() != fidelity.DOC.read_text()
    monkeypatch.setitem(sbldm.PROFILES["t4"], "ldm_lr", 2e-4)
    monkeypatch.setitem(slimdiff.COMMON, "ema_decay", 0.99)              # the paper says 0.999: every profile
    names = fidelity.ledger("slimdiff").problems()
    assert len(names) == 3 and all("EMA decay (config key 'ema_decay') is 0.99 " in n for n in names)


def test_a_run_records_the_deviations_in_force(tmp_path, capsys):
    run = RunDir(tmp_path / "run")
    cfg = siamese.config("cpu-demo", "scratch", w_c=0.5)   # a grid cell's override is a deviation of this run
    dev = fidelity.show("siamese", "scratch/cpu-demo", cfg, run=run)
    out = capsys.readouterr().out
    assert "noise consistency weight w_c: 0.5 (source: 1, paper)" in out and "NOT DECLARED" in out
    rec = json.loads((tmp_path / "run" / "metrics.json").read_text())["fidelity"]
    assert rec["n_deviations"] == len(dev) == len(fidelity.ledger("siamese").deviations("scratch/cpu-demo")) + 1
    assert {"setting": "noise consistency weight w_c", "source": "1", "medkit": "0.5", "why": None} in rec["deviations"]


def test_cli_writes_nothing_and_exits_0_when_all_is_declared(capsys):
    from medkit import cli

    assert cli.main(["fidelity", "--method", "slimdiff", "--profile", "t4"]) == 0
    assert "SLIM-Diff" in capsys.readouterr().out
