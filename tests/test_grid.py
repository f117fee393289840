"""Experiment grids: grid files, the runner (skip, resume, failures) and the aggregation."""
import json
import time
from pathlib import Path

import pandas as pd
import pytest

from medkit import cli, grid

GRIDS = sorted(p.stem for p in grid.GRID_DIR.glob("*.yaml"))


def test_the_shipped_grids_cover_the_plan():
    assert {"E1", "E2.1", "E2.2", "E2.3", "E2.4", "E3"} <= set(GRIDS)
    for name in GRIDS:
        for profile in grid.PROFILES:
            spec = grid.load_grid(name, profile)
            assert spec["cells"] and spec["metrics"], name
    e21 = grid.load_grid("E2.1", "cpu-demo")["cells"]
    assert [(c["params"]["beta_schedule"], c["params"].get("schedule_gamma")) for c in e21.values()] == [
        ("linear", None), ("cosine", None), ("gamma", 0.5), ("gamma", 1.0), ("gamma", 2.0)]
    assert sorted(c["params"]["freq_lambda"] for c in grid.load_grid("E2.2")["cells"].values()) == [0, 0.01, 0.1, 0.5]
    assert sorted(c["params"]["cutmix_p"] for c in grid.load_grid("E2.3")["cells"].values()) == [0, 0.25, 0.5]
    assert sorted(c["params"]["early_stop"] for c in grid.load_grid("E2.4")["cells"].values()) == [0, 0.01, 0.05, 0.1]
    # per-profile values: E3.3 samples 1000 slices on a T4 only
    assert grid.load_grid("E3", "t4")["cells"]["E3.3-1000-samples"]["params"]["n_samples"] == 1000
    assert grid.load_grid("E3", "smoke")["cells"]["E3.3-1000-samples"]["params"]["n_samples"] == 16


@pytest.mark.parametrize("text, match", [
    ("method: sbldm\ncells: {a: {nonsense: 1}}\n", r"cell 'a': unknown notebook parameter\(s\) \['nonsense'\]"),
    ("method: nomethod\ncells: {a: {}}\n", r"method='nomethod'; available"),
    ("method: sbldm\nsteps: 3\ncells: {a: {}}\n", r"unknown top-level key\(s\) \['steps'\]"),
    ("method: sbldm\ncells: {a: {ldm_steps: {smok: 3}}}\n", r"per-profile keys \['smok'\] are not profiles"),
    ("method: sbldm\nshared_stages: [02_latent_diffusion]\ncells: {a: {}}\n", r"shared_stages must be the first"),
    ("method: sbldm\ncells: {}\n", r"'cells' must be a non-empty mapping"),
    ("method: sbldm\ncells: {'a/b': {}}\n", r"cell names are letters"),
    ("method: sbldm\ncells: [a, b\n", r"not valid YAML"),
])
def test_malformed_grid_files_are_refused_with_the_reason(tmp_path, text, match):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(grid.GridError, match=match):
        grid.load_grid(f, "smoke")


def test_unknown_grid_name_lists_the_known_ones(capsys):
    with pytest.raises(grid.GridError, match=r"known grids: \[.*'E2.1'"):
        grid.load_grid("E9")
    assert cli.main(["grid", "run", "E9", "--profile", "smoke", "--out", "unused"]) == 2
    assert "error: no grid named 'E9'" in capsys.readouterr().err


def _small_e24(tmp_path, cells: str) -> "Path":
    """E2.4's shared stages and parameters with ``cells`` and the VAE-feature evaluation only (the Inception FID
    of every cell is tested elsewhere; here it would only add minutes to CI)."""
    spec = (grid.GRID_DIR / "E2.4.yaml").read_text().split("cells:")[0]
    spec = spec.replace("params:\n", "params:\n  features: vae\n")
    path = tmp_path / f"e24-{abs(hash(cells)) % 10_000}.yaml"
    path.write_text(spec + "cells:\n" + cells)
    return path


def test_smoke_grid_end_to_end_skip_and_failure(tmp_path, capsys):
    """E2.4 at the smoke profile (two of its cells): shared VAE + LDM, sampling cells, then tables and plots."""
    out = tmp_path / "E2.4"
    two = _small_e24(tmp_path, "  threshold-0: {early_stop: 0.0}\n  threshold-0.1: {early_stop: 0.1}\n")
    assert cli.main(["grid", "run", str(two), "--profile", "smoke", "--out", str(out)]) == 0
    state = json.loads((out / "grid_state.json").read_text())
    assert [state["cells"][c]["status"] for c in ("_shared", "threshold-0", "threshold-0.1")] == ["done"] * 3
    df = pd.read_csv(out / "results.csv")
    assert list(df["cell"]) == ["threshold-0", "threshold-0.1"]
    assert (df["status"] == "done").all()
    assert list(df["early_stop"]) == [0, 0.1]
    assert df.loc[0, "sampling.mean_steps_taken"] == 10  # threshold 0 runs every planned step
    assert (df["sampling.mean_steps_taken"] <= 10).all() and (df["sampling.mean_steps_taken"] >= 2).all()
    # every cell sampled with the one shared model (same checkpoint step), but wrote its own samples
    assert df["ldm.steps"].nunique() == 1 and df["eval.mmd_vae_latent"].notna().all()
    md = (out / "results.md").read_text()
    assert "| cell | status | early_stop | sampling.mean_steps_taken" in md
    for f in ("sampling_mean_steps_taken.png", "eval_mmd_vae_latent.png", "galleries.png"):
        assert (out / "figures" / f).stat().st_size > 5000
    # grid overhead per cell: wall time outside the notebooks' cells (kernel start-up, papermill)
    for c in ("threshold-0", "threshold-0.1"):
        e = state["cells"][c]
        assert 0 < e["seconds"] - e["notebook_cell_seconds"] < 30, e

    # Running it again skips every finished cell (nothing is executed) and re-aggregates.
    capsys.readouterr()
    t = time.perf_counter()
    assert cli.main(["grid", "run", str(two), "--profile", "smoke", "--out", str(out)]) == 0
    assert time.perf_counter() - t < 20
    assert capsys.readouterr().out.count("done earlier, skipped") == 3

    # A failing cell is recorded with its error and the grid goes on to the next one.
    bad = _small_e24(tmp_path, "  broken: {early_stop: -1.0}\n  fine: {early_stop: 0.2}\n")
    assert cli.main(["grid", "run", str(bad), "--profile", "smoke", "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "1 cell(s) failed: ['broken']" in err
    state = json.loads((out / "grid_state.json").read_text())
    assert state["cells"]["broken"]["status"] == "failed" and "early_stop=-1.0" in state["cells"]["broken"]["error"]
    assert state["cells"]["fine"]["status"] == "done"
    assert "early_stop=-1.0: must be >= 0" in (out / "broken" / "error.txt").read_text()
    md = (out / "results.md").read_text()
    assert "Failed cells:" in md and "- broken:" in md


def test_grid_on_kaggle_attaches_the_shared_kernel_to_every_cell(tmp_path, monkeypatch):
    """--backend kaggle: the shared stages run as one kernel, each cell as a kernel with it attached."""
    from test_kaggle import FakeApi

    for k in [k for k in __import__("os").environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    api = FakeApi(["complete"] * 5)
    state = grid.run_grid("E2.4", "smoke", tmp_path / "E2.4", backend="kaggle", parallel=3, log=lambda m: None,
                          api=api, owner="me", poll_s=0, sleep=lambda s: None)
    assert all(e["status"] == "done" for e in state["cells"].values()), state["cells"]
    metas = [m for m, _ in api.pushed]
    assert len(metas) == 5 and metas[0]["kernel_sources"] == []
    shared_ref = state["cells"]["_shared"]["ref"]
    assert shared_ref == metas[0]["id"]
    assert all(m["kernel_sources"] == [shared_ref] for m in metas[1:])
    # each cell kernel runs only its own stages, with its own parameters
    injected = [nb.metadata.papermill.parameters for _, nb in api.pushed]
    assert injected[0]["stages"] == ["01_vae", "02_latent_diffusion"], injected[0]
    assert "n_samples" not in injected[0]["params"]  # only what the shared notebooks take
    assert sorted(p["params"]["early_stop"] for p in injected[1:]) == [0.0, 0.01, 0.05, 0.1]  # pushed concurrently
    assert all(p["profile"] == "smoke" for p in injected)
    df = pd.read_csv(tmp_path / "E2.4" / "results.csv")
    assert (df["status"] == "done").all() and len(df) == 4


def test_a_cell_rerun_with_changed_parameters_is_refused_not_mixed(tmp_path):
    """Results of other parameters in a cell's directory are never resumed or overwritten silently."""
    g = tmp_path / "g.yaml"
    g.write_text("method: sbldm\ncells:\n  a: {n_samples: 8, stages: [04_evaluation]}\n")
    out = tmp_path / "out"
    (out / "a").mkdir(parents=True)
    (out / "grid_state.json").write_text(json.dumps({"cells": {"a": {
        "status": "done", "key": "0123456789abcdef", "params": {"n_samples": 4}}}}))
    logs = []
    state = grid.run_grid(g, "smoke", out, log=logs.append)
    e = state["cells"]["a"]
    assert e["status"] == "failed"
    assert "cell 'a' was run with other parameters ({'n_samples': 4} -> {'n_samples': 8})" in e["error"]
    assert f"delete {out / 'a'}" in e["error"]
    assert not (out / "a" / "notebooks").exists()  # nothing was run
    assert "Failed cells:" in (out / "results.md").read_text()


def test_grid_on_kaggle_runs_cell_kernels_concurrently(tmp_path, monkeypatch):
    """--parallel N: N cell kernels are in flight at once (pushed, not yet finished)."""
    import threading

    from test_kaggle import FakeApi

    class SlowApi(FakeApi):
        def __init__(self):
            super().__init__(["complete"] * 5)
            self.lock, self.in_flight, self.most = threading.Lock(), 0, 0

        def kernels_push(self, folder):
            with self.lock:
                self.in_flight += 1
                self.most = max(self.most, self.in_flight)
            return super().kernels_push(folder)

        def kernels_status(self, ref):
            time.sleep(0.3)  # a kernel that takes a while
            with self.lock:
                return super().kernels_status(ref)

        def kernels_output(self, ref, path, force=False, quiet=True):
            with self.lock:
                self.in_flight -= 1
                return super().kernels_output(ref, path, force, quiet)

    for k in [k for k in __import__("os").environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    api = SlowApi()
    state = grid.run_grid("E2.4", "smoke", tmp_path / "E2.4", backend="kaggle", parallel=3, log=lambda m: None,
                          api=api, owner="me", poll_s=0, sleep=lambda s: None)
    assert all(e["status"] == "done" for e in state["cells"].values())
    assert api.most == 3  # the shared kernel alone first, then three cells at a time
    with pytest.raises(grid.GridError, match="parallel=0"):
        grid.run_grid("E2.4", "smoke", tmp_path / "x", backend="kaggle", parallel=0, api=api)


def test_a_grid_directory_of_another_profile_is_refused(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "grid_state.json").write_text(json.dumps({"profile": "cpu-demo", "cells": {}}))
    with pytest.raises(grid.GridError, match=r"holds grid results of profile 'cpu-demo', not 'smoke'"):
        grid.run_grid("E2.4", "smoke", out, log=lambda m: None)
    assert sorted(p.name for p in out.iterdir()) == ["grid_state.json"]  # nothing was run or written


def test_results_table_writes_the_home_folder_as_tilde(tmp_path, monkeypatch):
    """A skipped metric's reason names the folders searched; results.csv must not carry the user's home."""
    home = tmp_path / "home" / "someone"
    monkeypatch.setenv("HOME", str(home))
    out = tmp_path / "g"
    (out / "a").mkdir(parents=True)
    reason = f"needs weights.pth; searched {home}/.cache/torch/hub/checkpoints/weights.pth (missing)"
    (out / "a" / "metrics.json").write_text(json.dumps({"eval": {"kid": {"value": None, "skipped": reason},
                                                                 "mmd": {"value": 1.5}}}))
    (out / "grid_state.json").write_text(json.dumps({"cells": {"a": {"status": "done", "seconds": 1.0}}}))
    spec = {"name": "g", "method": "sbldm", "profile": "smoke", "vary": ["x"], "metrics": ["eval.mmd"],
            "cells": {"a": {"params": {"x": 1}}}}
    df = grid.aggregate(spec, out, "smoke", log=lambda *a: None)
    text = (out / "results.csv").read_text()
    assert str(home) not in text and "~/.cache/torch/hub/checkpoints/weights.pth" in text
    assert df.loc[0, "eval.mmd"] == 1.5


def test_a_cell_stopped_by_its_session_budget_is_stopped_not_failed_and_continues(tmp_path, monkeypatch):
    """A Kaggle cell kernel that ran out of session time completes (its notebook ends successfully) with
    stopped.json in its output: the grid records 'stopped', says so in results.md, and runs it again next time."""
    from test_kaggle import FakeApi

    class BudgetApi(FakeApi):
        def kernels_output(self, ref, path, force=False, quiet=True, **kwargs):
            got = super().kernels_output(ref, path, force, quiet)
            if "threshold-0-1" in ref and self.first:  # one cell's first version ran out of time
                self.first = False
                (Path(path) / "stopped.json").write_text(json.dumps(
                    {"stage": "ldm", "step": 20, "reason": "budget", "message": "ldm stopped by the wall-clock budget"}))
            return got

    for k in [k for k in __import__("os").environ if k.startswith("KAGGLE_")]:
        monkeypatch.delenv(k)
    monkeypatch.setenv("HOME", str(tmp_path))
    api = BudgetApi(["complete"] * 7)
    api.first = True
    opts = dict(backend="kaggle", log=lambda m: None, api=api, owner="me", poll_s=0, sleep=lambda s: None)
    state = grid.run_grid("E2.4", "smoke", tmp_path / "E2.4", **opts)
    status = {k: e["status"] for k, e in state["cells"].items()}
    assert status.pop("threshold-0.1") == "stopped" and set(status.values()) == {"done"}, state["cells"]
    assert "Stopped at the wall-clock budget (run the grid again to continue them): threshold-0.1." in (
        tmp_path / "E2.4" / "results.md").read_text()
    state = grid.run_grid("E2.4", "smoke", tmp_path / "E2.4", **opts)  # only the stopped cell runs again
    assert len(api.pushed) == 6 and all(e["status"] == "done" for e in state["cells"].values())


def test_processes_reach_every_cell_as_a_parameter(tmp_path, monkeypatch):
    """`grid run --processes 2`: the shared stages and every cell get `processes` as one of their parameters (so it
    is part of each cell's identity, like any parameter); a bad count is refused."""
    import medkit.notebooks as nbs

    seen = []

    def fake_pipeline(method, profile, run_dir, params, stages, log=print, **kw):
        seen.append((tuple(stages or ()), dict(params)))
        return {}

    monkeypatch.setattr(nbs, "run_pipeline", fake_pipeline)
    state = grid.run_grid("E2.1", "smoke", tmp_path / "g", processes=2, log=lambda m: None)
    assert seen and all(p.get("processes") == 2 for _, p in seen)
    assert all(e["params"]["processes"] == 2 for k, e in state["cells"].items() if "params" in e)
    with pytest.raises(grid.GridError, match="processes=0"):
        grid.run_grid("E2.1", "smoke", tmp_path / "g", processes=0, log=lambda m: None)
