"""Killed at any moment, resumed with nothing lost.

1. The real SBLDM loops (VAE, latent diffusion) run in a subprocess and are SIGKILLed at random
   moments, half of them aimed inside a checkpoint write, then relaunched until they finish; the result
   must be bit-identical to an uninterrupted run and no kill may cost more than one checkpoint
   interval of steps. ``MEDKIT_SOAK=N`` adds a soak test with N kills per loop.
2. In-process "kills" (an exception raised at each stage of ``save_checkpoint``) check deterministically
   that ``latest`` never names a missing or partial directory and that the resumed result is identical.
"""
from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch
from torch import nn

from medkit.train import Trainer, checkpoint, faults
from medkit.train.checkpoint import find_resumable, verify_checkpoint

SOAK = int(os.environ.get("MEDKIT_SOAK", "0") or 0)
CKPT_EVERY = 5


def spec(tmp_path, loop, name, max_steps):
    return {"loop": loop, "run_dir": str(tmp_path / name), "trace": str(tmp_path / f"{name}.trace"), "seed": 0,
            "max_steps": max_steps, "ckpt_every": CKPT_EVERY, "log_every": 3, "batch": 8, "keep": 2}


def check_kill_run(tmp_path, loop, kills, seed, cold_finish=True):
    steps = 8 * kills + 10  # a kill advances <= 1 (aimed) or < 2 (random) intervals: never runs out of steps
    if loop == "vae":  # build the slice cache once here, not in two racing workers (it is atomic anyway)
        from medkit import data as mdata
        mdata.build_slice_cache("mni152", 32, seed=0, log=lambda m: None)
    ref = faults.start_worker(spec(tmp_path, loop, "ref", steps))  # the uninterrupted run, alongside
    try:
        report = faults.kill_and_resume(spec(tmp_path, loop, "killed", steps), kills=kills, seed=seed,
                                        cold_finish=cold_finish)
    finally:
        rc = ref.wait(timeout=600)
    print("\n" + report.summary())
    (tmp_path / "report.json").write_text(json.dumps(report.to_json(), indent=1))
    assert rc == 0, (tmp_path / "ref.stderr").read_text()[-2000:]
    assert len(report.kills) == kills and report.launches[-1].mode == "finish"
    aimed = [k for k in report.kills if k.mode.startswith("save:")]
    assert len(aimed) == (kills + 1) // 2
    for k in aimed:  # each aimed kill landed where it was aimed (after "pruned" the save is over)
        stage = k.mode.split(":", 1)[1]
        assert (k.in_save or "").endswith(f"after {stage}") if stage != "pruned" else k.in_save is None, k
    assert all(x.latest_ok for x in report.launches), "`latest` named a missing or damaged checkpoint"
    for k in report.kills:
        if k.reached is not None:
            assert k.recomputed is not None and 0 <= k.recomputed <= CKPT_EVERY, k
    assert report.launches[-1].resumed_from > 0  # the last launch really resumed
    assert faults.compare_runs(tmp_path / "killed", tmp_path / "ref", loop) == []
    return report


@pytest.mark.parametrize("loop,seed,cold_finish", [("vae", 1, True), ("ldm", 2, False)])
def test_sigkill_at_random_moments_resumes_bit_identically(tmp_path, loop, seed, cold_finish):
    """5 kills per loop; the VAE run ends with a cold launch (imports included) to time a real re-run."""
    report = check_kill_run(tmp_path, loop, kills=5, seed=seed, cold_finish=cold_finish)
    assert report.launches[-1].first_step_s < 120


def test_sigkill_of_a_two_process_run_resumes_bit_identically(tmp_path):
    """A 2-process run (gloo on the CPU; each process its own data shard and RNG streams, gradients averaged)
    killed whole - both processes - twice, once inside a checkpoint write, ends equal to an uninterrupted one."""
    steps = 8 * 2 + 10
    ref = faults.start_worker(dict(spec(tmp_path, "ldm", "ref", steps), processes=2))
    assert ref.wait(timeout=600) == 0, (tmp_path / "ref.stderr").read_text()[-2000:]
    report = faults.kill_and_resume(dict(spec(tmp_path, "ldm", "killed", steps), processes=2), kills=2, seed=3)
    print("\n" + report.summary())
    assert len(report.kills) == 2 and report.launches[-1].mode == "finish"
    assert all(x.latest_ok for x in report.launches)
    assert report.launches[-1].resumed_from > 0
    meta = json.loads((find_resumable(tmp_path / "killed" / "checkpoints" / "ldm") / "trainer.json").read_text())
    assert meta["processes"] == 2
    assert faults.compare_runs(tmp_path / "killed", tmp_path / "ref", "ldm") == []


@pytest.mark.skipif(not SOAK, reason="soak test: set MEDKIT_SOAK=<kills per loop>")
@pytest.mark.parametrize("loop", ["vae", "ldm"])
def test_soak(tmp_path, loop):
    check_kill_run(tmp_path, loop, kills=SOAK, seed=SOAK)


def test_compare_runs_sees_a_one_bit_difference(tmp_path):
    """The comparison the tests above rely on is not vacuous."""
    for name in ("a", "b"):
        make(tmp_path / name, 7).fit(DATA, 8, mse)
    assert faults.compare_runs(tmp_path / "a", tmp_path / "b", "toy") == []
    p = tmp_path / "b" / "checkpoints" / "toy" / "step_00000007"
    tensors, state, meta = checkpoint.load_checkpoint(p)
    w = tensors["ema"]["0.weight"]
    w.view(torch.int32)[0, 0] ^= 1  # flip the lowest mantissa bit of one EMA weight
    checkpoint.save_checkpoint(p.parent, 7, tensors=tensors, state=state, meta=meta)
    assert faults.compare_runs(tmp_path / "a", tmp_path / "b", "toy") == ["tensors.ema.0.weight: tensors differ"]


# ------------------------------------------------------------------ deterministic in-process kills

g = torch.Generator().manual_seed(5)
_x = torch.randn(64, 6, generator=g)
DATA = torch.utils.data.TensorDataset(_x, _x[:, :2].sum(1, keepdim=True).sin())


def make(run_dir, max_steps, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opts = dict(run_dir=run_dir, stage="toy", config={"w": 16}, max_steps=max_steps, ema_decay=0.9, ckpt_every=7,
                keep=2, log_every=5, budget_s=None, progress=False, plot=False, log=lambda m: None, seed=1)
    return Trainer(model, opt, **{**opts, **kw})


def mse(model, batch, step):
    x, y = batch
    jitter = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
    return nn.functional.mse_loss(model(x) * jitter, y), {"jitter": jitter}


class Killed(BaseException):
    """Stands for SIGKILL: nothing in the trainer catches it, no cleanup runs."""


def kill_at(monkeypatch, step, what):
    real = checkpoint._fault_point

    def point(s, w):
        real(s, w)
        if (s, w) == (step, what):
            raise Killed(f"{w} of step {s}")
    monkeypatch.setattr(checkpoint, "_fault_point", point)


@pytest.mark.parametrize("stage", faults.SAVE_STAGES)
def test_kill_at_each_stage_of_a_save(tmp_path, monkeypatch, stage):
    make(tmp_path / "ref", 21).fit(DATA, 8, mse)
    ck = tmp_path / "run" / "checkpoints" / "toy"
    kill_at(monkeypatch, 14, stage)
    with pytest.raises(Killed):
        make(tmp_path / "run", 21).fit(DATA, 8, mse)
    monkeypatch.undo()
    latest = (ck / "latest").read_text().strip()
    complete = stage in ("latest", "pruned")
    assert latest == ("step_00000014" if complete else "step_00000007")
    verify_checkpoint(ck / latest)
    r = make(tmp_path / "run", 21).fit(DATA, 8, mse)
    assert r.resumed_from == (14 if complete else 7)
    assert faults.compare_runs(tmp_path / "run", tmp_path / "ref", "toy") == []
    assert not list(ck.glob(".tmp-*"))


def test_kill_while_replacing_a_damaged_latest(tmp_path, monkeypatch):
    """Re-saving the step `latest` names (it was damaged): the pointer is dropped, never left dangling."""
    make(tmp_path / "ref", 21).fit(DATA, 8, mse)
    make(tmp_path / "run", 14).fit(DATA, 8, mse)
    ck = tmp_path / "run" / "checkpoints" / "toy"
    f = ck / "step_00000014" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))
    kill_at(monkeypatch, 14, "moved-aside")
    with pytest.raises(Killed):
        make(tmp_path / "run", 21).fit(DATA, 8, mse)  # resumes from 7, re-saves 14, killed mid-swap
    monkeypatch.undo()
    assert not (ck / "latest").exists() and not (ck / "step_00000014").exists()
    assert find_resumable(ck, log=lambda m: None) == ck / "step_00000007"
    assert make(tmp_path / "run", 21).fit(DATA, 8, mse).resumed_from == 7
    assert faults.compare_runs(tmp_path / "run", tmp_path / "ref", "toy") == []


def test_kill_between_final_save_and_last_log_line(tmp_path, monkeypatch):
    """12 steps, log every 5: the last record (steps 11-12) is flushed after the final checkpoint."""
    make(tmp_path / "ref", 12).fit(DATA, 8, mse)
    real = Trainer._write_log

    def write_log(self, *a, partial=False, **k):
        if partial:
            raise Killed("before the final flush")
        return real(self, *a, partial=partial, **k)
    monkeypatch.setattr(Trainer, "_write_log", write_log)
    with pytest.raises(Killed):
        make(tmp_path / "run", 12).fit(DATA, 8, mse)
    monkeypatch.undo()
    log = tmp_path / "run" / "logs" / "toy.jsonl"
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [5, 10]
    r = make(tmp_path / "run", 12).fit(DATA, 8, mse)
    assert (r.resumed_from, r.steps_run) == (12, 0)
    assert faults.compare_runs(tmp_path / "run", tmp_path / "ref", "toy") == []
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [5, 10, 12]
    make(tmp_path / "run", 12).fit(DATA, 8, mse)  # and a third call adds nothing
    assert [json.loads(x)["step"] for x in log.read_text().splitlines()] == [5, 10, 12]


def test_fp16_skips_survive_a_resume(tmp_path):
    """GradScaler skips are counted in the log and carried across a resume (trainer.json)."""
    def huge(model, batch, step):
        x, y = batch
        return nn.functional.mse_loss(model(x).float(), y) * 1e36

    make(tmp_path, 7, precision="fp16", log_every=7).fit(DATA, 8, huge)
    t = make(tmp_path, 10, precision="fp16", log_every=5)
    r = t.fit(DATA, 8, huge)
    assert (r.resumed_from, r.skipped_steps, t.scaler_skipped_total) == (7, 3, 10)
    recs = [json.loads(x) for x in (tmp_path / "logs" / "toy.jsonl").read_text().splitlines()]
    assert [(x["step"], x["scaler_skipped"]) for x in recs] == [(7, 7), (10, 10)]
