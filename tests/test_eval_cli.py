"""The results format, `medkit report` and `medkit evaluate`."""
from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from medkit.cli import main
from medkit.eval import entry, flatten, read_metrics, update_metrics
from medkit.eval.results import format_value


def test_entry_and_flatten():
    e = entry(float("nan"), ci95=(1, 2), n=5, extractor="x", std=None)
    assert e == {"value": None, "ci95": [1.0, 2.0], "n": 5, "extractor": "x"}
    flat = flatten({"eval": {"fid": entry(3.0, ci95=(2, 4), n=10, extractor="inception-v3-fid")},
                    "vae": {"ssim": 0.9, "curve": [1, 2]}, "config": {"lr": 1}})
    assert flat == {"eval.fid": 3.0, "eval.fid.ci95_lo": 2.0, "eval.fid.ci95_hi": 4.0, "eval.fid.n": 10,
                    "eval.fid.extractor": "inception-v3-fid", "vae.ssim": 0.9}
    assert format_value(0.91331, (0.9, 0.92)) == "0.9133 (0.9-0.92)" and format_value(None) == "n/a"


def test_update_and_read_metrics(tmp_path):
    update_metrics(tmp_path, "eval", {"kid": entry(0.1, std=0.01, n=50)})
    update_metrics(tmp_path / "metrics.json", "eval", {"fid": entry(2.0)})
    m = read_metrics(tmp_path)
    assert set(m["eval"]) == {"kid", "fid"}
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "metrics.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_metrics(tmp_path / "bad")
    with pytest.raises(FileNotFoundError, match="run the evaluation"):
        read_metrics(tmp_path / "nowhere")


def _run(tmp_path, name, fid, lo, hi, kid, kid_std, ssim):
    d = tmp_path / name
    d.mkdir()
    (d / "metrics.json").write_text(json.dumps({
        "vae": {"ssim": entry(ssim, ci95=(ssim - 0.01, ssim + 0.01), n=24, dataset="mni152 val"), "steps": 1000},
        "eval": {"fid": entry(fid, ci95=(lo, hi), n=200, extractor="inception-v3-fid", dataset="val"),
                 "kid": entry(kid, std=kid_std, n=200, extractor="inception-v3-fid")},
        "config": {"lr": 1e-3}}))
    return d


def test_report_tables_and_plots(tmp_path, capsys):
    a = _run(tmp_path, "run-a", 31.2, 29.0, 33.5, 0.012, 0.002, 0.91)
    b = _run(tmp_path, "run-b", 25.0, 23.1, 27.2, 0.008, 0.001, 0.93)
    out = tmp_path / "rep"
    assert main(["report", str(a), str(b), "--out", str(out)]) == 0
    md = (out / "report.md").read_text()
    assert "| run-a | 0.91 (0.9-0.92) | 31.2 (29-33.5) | 0.012 +- 0.002 |" in md
    assert "`eval.fid` - extractor: inception-v3-fid; dataset: val; n: 200" in md
    df = pd.read_csv(out / "report.csv")
    assert list(df["run"]) == ["run-a", "run-b"] and df["eval.fid.ci95_hi"].tolist() == [33.5, 27.2]
    assert "config.lr" not in df.columns and df["vae.steps"].tolist() == [1000, 1000]
    for k in ("vae_ssim", "eval_fid", "eval_kid"):
        assert (out / "figures" / f"{k}.png").stat().st_size > 1000
    assert main(["report", str(a), str(b), "--out", str(out), "--metrics", "eval.fid", "vae.steps"]) == 0
    md = (out / "report.md").read_text()
    assert "| run | eval.fid | vae.steps |" in md and "| run-b | 25 (23.1-27.2) | 1000 |" in md
    capsys.readouterr()
    assert main(["report", str(a), "--out", str(out), "--metrics", "eval.lpips"]) == 2
    assert "no run has the metric(s) eval.lpips" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert "metrics.json" in capsys.readouterr().err


def test_report_same_names_use_paths(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "y").mkdir()
    a = _run(tmp_path / "x", "run", 1, 0.5, 1.5, 0.1, 0.01, 0.9)
    b = _run(tmp_path / "y", "run", 2, 1.5, 2.5, 0.2, 0.01, 0.8)
    from medkit.eval.report import write_report

    write_report([a, b], tmp_path / "rep", plots=False, log=lambda *_: None)
    assert pd.read_csv(tmp_path / "rep" / "report.csv")["run"].tolist() == [str(a), str(b)]


def test_distribution_metrics_entries_are_labelled():
    from medkit.eval.evaluate import distribution_metrics

    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(80, 6)), rng.normal(size=(60, 6)) + 0.4
    r = distribution_metrics(a, b, "my-net", "toy", n_boot=50, kid_subset_size=30, kid_subsets=10)
    assert set(r) == {"fd", "fd_inf", "kd", "rbf_mmd"}  # not "fid": these are not InceptionV3 features
    assert all(e["extractor"] == "my-net" and e["dataset"] == "toy" for e in r.values())
    lo, hi = r["fd"]["ci95"]
    assert lo < r["fd"]["value"] < hi and r["kd"]["subset_size"] == 30 and not math.isnan(r["fd_inf"]["value"])
    r = distribution_metrics(a, b, "inception-v3-fid", n_boot=20, kid_subset_size=30, kid_subsets=5)
    assert {"fid", "fid_inf", "kid", "rbf_mmd"} == set(r)


@pytest.fixture
def seeded_inception(monkeypatch):
    """The FID network with seeded weights in place of the pretrained file (its lookup is tested in
    test_perceptual.py); same architecture and cost, so the evaluate command runs end to end. One torch
    thread: a 2-thread Inception pass is far slower on a shared 2-core machine."""
    from medkit.metrics import _testing, inception

    sd = _testing.seeded_state_dict(inception.InceptionV3FID.blank_state_dict())
    monkeypatch.setattr(inception, "load_pretrained", lambda spec, weights=None: (sd, "seeded test weights"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _png_folder(path, n, level, seed):
    from PIL import Image

    path.mkdir()
    rng = np.random.default_rng(seed)
    for i in range(n):
        im = np.clip(rng.normal(level, 30, size=(40, 40)), 0, 255).astype(np.uint8)
        Image.fromarray(im).save(path / f"{i:03d}.png")
    return path


def test_evaluate_command_end_to_end(tmp_path, seeded_inception, capsys):
    real = _png_folder(tmp_path / "real", 6, 100, 0)
    fake = _png_folder(tmp_path / "fake", 6, 140, 1)
    same = _png_folder(tmp_path / "same", 6, 100, 2)
    out = tmp_path / "m.json"
    args = ["evaluate", "--real", str(real), "--out", str(out), "--n-boot", "20", "--kid-subsets", "5",
            "--batch-size", "5", "--device", "cpu"]
    assert main(args + ["--fake", str(fake)]) == 0
    m = read_metrics(out)["eval"]
    assert set(m) == {"fid", "kid", "rbf_mmd"}  # 6 images: no FID_inf (needs >= 50)
    assert m["fid"]["extractor"] == "inception-v3-fid" and m["fid"]["n"] == 6
    assert "real: real (n=6) vs generated: fake (n=6)" == m["fid"]["dataset"]
    assert m["kid"]["subset_size"] == 6  # adapted from 1000, with a warning on stderr
    assert "subset_size=1000 is larger" in capsys.readouterr().err
    assert main(args + ["--fake", str(same), "--section", "same"]) == 0
    m2 = read_metrics(out)
    assert m2["same"]["fid"]["value"] < m2["eval"]["fid"]["value"]  # same distribution: closer
    assert m2["same"]["kid"]["value"] < m2["eval"]["kid"]["value"]


def test_evaluate_command_without_weights_says_which_file(tmp_path, monkeypatch, capsys):
    from medkit.metrics import _weights

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv("MEDKIT_INCEPTION_WEIGHTS", raising=False)
    monkeypatch.setattr(_weights, "KAGGLE_INPUT", tmp_path / "kaggle")
    monkeypatch.setattr(_weights, "find_packaged_file", lambda packaged: (None, f"{packaged.package} (hidden)"))

    def offline(spec):
        raise OSError("offline")

    monkeypatch.setattr(_weights, "download_state_dict", offline)
    real = _png_folder(tmp_path / "real", 3, 100, 0)
    assert main(["evaluate", "--real", str(real), "--fake", str(real), "--out", str(tmp_path / "m.json")]) == 2
    err = capsys.readouterr().err
    assert "weights-inception-2015-12-05-6726825d.pth" in err and "MEDKIT_INCEPTION_WEIGHTS" in err
    assert not (tmp_path / "m.json").exists()  # nothing half-written
