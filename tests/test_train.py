"""Tests for medkit.train: resumable Trainer and atomic checkpoints.

Tiny MLP with dropout (so the RNG matters), 64 samples, batch 8 -> 8 batches per epoch.
"""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time

import numpy as np
import pytest
import torch
from torch import nn

from medkit import env
from medkit.train import (CheckpointError, ConfigMismatchError, NonFiniteLossError, Trainer, find_resumable,
                          load_checkpoint, load_weights, save_checkpoint)
from medkit.train.data import ResumableBatchSampler, batch_stream

CONFIG = {"lr": 1e-2, "width": 16, "log_every": 5}


@pytest.fixture(scope="module")
def dataset():
    g = torch.Generator().manual_seed(123)
    x = torch.randn(64, 6, generator=g)
    y = (x[:, :2].sum(1, keepdim=True)).sin()
    return torch.utils.data.TensorDataset(x, y)


def make_trainer(run_dir, max_steps, *, config=CONFIG, grad_accum=1, **kw):
    torch.manual_seed(0)  # same init for every run
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=config["lr"], weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    opts = dict(run_dir=run_dir, stage="toy", config=config, max_steps=max_steps, lr_scheduler=sched,
                ema_decay=0.9, grad_accum=grad_accum, ckpt_every=7, keep=3, log_every=5, budget_s=None,
                progress=False, plot=False, log=lambda m: None, seed=1)
    opts.update(kw)
    return Trainer(model, opt, **opts)


def mse(model, batch, step):
    x, y = batch
    # consume python and numpy RNG too: their states must be restored on resume as well
    jitter = 1.0 + 0.01 * random.random() + 0.01 * float(np.random.rand())
    loss = nn.functional.mse_loss(model(x) * jitter, y)
    return loss, {"jitter": jitter}


def losses(run_dir, stage="toy"):
    return [(r["step"], r["loss"], r["jitter"])
            for r in map(json.loads, (run_dir / "logs" / f"{stage}.jsonl").read_text().splitlines())]


def assert_same_training(a: Trainer, b: Trainer):
    for (k, v), (k2, v2) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), f"model tensor {k} differs"
    for (k, v), (k2, v2) in zip(a.ema_model.state_dict().items(), b.ema_model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), f"EMA tensor {k} differs"
    assert a.ema_updates == b.ema_updates
    sa, sb = a.optimizer.state_dict(), b.optimizer.state_dict()
    assert sa["param_groups"] == sb["param_groups"]
    for pid, st in sa["state"].items():
        for name, t in st.items():
            assert torch.equal(t, sb["state"][pid][name]), f"optimizer state {pid}.{name} differs"
    assert a.lr_scheduler.state_dict() == b.lr_scheduler.state_dict()


# ------------------------------------------------------------------------------ resume is exact

@pytest.mark.parametrize("grad_accum,kill", [(1, False), (2, True)])
def test_resume_is_bit_identical(tmp_path, dataset, grad_accum, kill):
    a = make_trainer(tmp_path / "a", 30, grad_accum=grad_accum)
    ra = a.fit(dataset, 8, mse)
    rng_after_a = torch.get_rng_state()
    assert (ra.step, ra.finished, ra.reason, ra.resumed_from) == (30, True, "done", None)

    b1 = make_trainer(tmp_path / "b", 17, grad_accum=grad_accum)
    torch.manual_seed(999)  # the global RNG at fit() time must not matter when resuming
    b1.fit(dataset, 8, mse)
    ckpts = tmp_path / "b" / "checkpoints" / "toy"
    assert sorted(p.name for p in ckpts.glob("step_*")) == ["step_00000007", "step_00000014", "step_00000017"]
    if kill:  # killed after step 17's save but before `latest` was trusted: both gone
        shutil.rmtree(ckpts / "step_00000017")
        (ckpts / "latest").unlink()
    b2 = make_trainer(tmp_path / "b", 30, grad_accum=grad_accum)
    rb = b2.fit(dataset, 8, mse)
    assert rb.resumed_from == (14 if kill else 17)
    assert (rb.step, rb.finished, rb.steps_run) == (30, True, 30 - rb.resumed_from)
    assert_same_training(a, b2)
    assert torch.equal(rng_after_a, torch.get_rng_state())  # the RNG streams ended in the same state too
    la, lb = losses(tmp_path / "a"), losses(tmp_path / "b")
    assert [s for s, _, _ in la] == [5, 10, 15, 20, 25, 30]
    assert la == lb  # logged losses (means over windows that straddle the interruption) identical
    assert ra.last_loss == rb.last_loss == la[-1][1]


def test_finished_run_returns_immediately_with_final_weights(tmp_path, dataset):
    a = make_trainer(tmp_path, 10)
    a.fit(dataset, 8, mse)
    log_before = (tmp_path / "logs" / "toy.jsonl").read_text()
    again = make_trainer(tmp_path, 10)
    r = again.fit(dataset, 8, mse)
    assert (r.step, r.finished, r.resumed_from, r.steps_run) == (10, True, 10, 0)
    assert_same_training(a, again)
    assert (tmp_path / "logs" / "toy.jsonl").read_text() == log_before
    # extending a finished run: max_steps is not part of the config hash
    more = make_trainer(tmp_path, 12)
    assert more.fit(dataset, 8, mse).step == 12


# ------------------------------------------------------------------------------ checkpoint layout

def test_checkpoint_layout_and_pruning(tmp_path, dataset):
    t = make_trainer(tmp_path, 30, keep=2, plot=True)
    t.fit(dataset, 8, mse)
    ck = tmp_path / "checkpoints" / "toy"
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step_00000028", "step_00000030"]
    assert (ck / "latest").read_text() == "step_00000030\n"
    d = ck / "step_00000030"
    assert sorted(p.name for p in d.iterdir()) == ["ema.safetensors", "manifest.json", "model.safetensors",
                                                   "state.pt", "trainer.json"]
    manifest = json.loads((d / "manifest.json").read_text())
    assert sorted(manifest["files"]) == ["ema.safetensors", "model.safetensors", "state.pt", "trainer.json"]
    assert all(info["size"] == (d / fn).stat().st_size for fn, info in manifest["files"].items())
    meta = json.loads((d / "trainer.json").read_text())
    # 30 steps x 1 batch = 30 batches = 3 epochs of 8 + 6 batches into epoch 3
    assert (meta["step"], meta["epoch"], meta["position"]) == (30, 3, 6)
    assert meta["config"]["width"] == 16 and meta["config"]["_trainer"]["batch_size"] == 8
    assert len(meta["config_hash"]) == 16 and meta["versions"]["torch"] == torch.__version__
    tensors, state, meta2 = load_checkpoint(d)
    assert set(tensors) == {"model", "ema"} and meta2 == meta
    assert set(state) == {"optimizer", "lr_scheduler", "scaler", "rng", "ema_n_averaged"}
    assert int(state["ema_n_averaged"]) == 30
    assert torch.equal(tensors["model"]["0.weight"], t.model[0].weight.detach())
    assert (tmp_path / "figures" / "toy_loss.png").stat().st_size > 1000
    assert not list(tmp_path.rglob(".tmp-*"))


def test_grad_accum_counts_micro_batches(tmp_path, dataset):
    t = make_trainer(tmp_path, 30, grad_accum=2)
    t.fit(dataset, 8, mse)
    meta = json.loads((tmp_path / "checkpoints" / "toy" / "step_00000030" / "trainer.json").read_text())
    assert (meta["step"], meta["epoch"], meta["position"]) == (30, 7, 4)  # 60 batches = 7 x 8 + 4


def test_corrupt_checkpoint_falls_back_and_tmp_is_removed(tmp_path, dataset):
    a = make_trainer(tmp_path, 14)
    a.fit(dataset, 8, mse)
    ck = tmp_path / "checkpoints" / "toy"
    good_14 = {k: v.clone() for k, v in a.model.state_dict().items()}
    losses_14 = losses(tmp_path)
    leftover = ck / ".tmp-step_00000021-4242"
    leftover.mkdir()
    (leftover / "model.safetensors").write_bytes(b"half written")
    f = ck / "step_00000014" / "model.safetensors"
    raw = bytearray(f.read_bytes())
    raw[len(raw) // 2] ^= 0x01  # one flipped bit
    f.write_bytes(bytes(raw))

    msgs = []
    assert find_resumable(ck, log=msgs.append) == ck / "step_00000007"
    assert not leftover.exists()
    assert len(msgs) == 2 and ".tmp-step_00000021-4242" in msgs[0]
    assert "step_00000014" in msgs[1] and "model.safetensors" in msgs[1] and "sha256" in msgs[1]
    assert all("\n" not in m for m in msgs)
    with pytest.raises(CheckpointError, match="model.safetensors"):
        load_checkpoint(ck / "step_00000014")

    # the trainer resumes from step 7, redoes 8..14 identically and overwrites the damaged directory
    msgs.clear()
    b = make_trainer(tmp_path, 14, log=msgs.append)
    r = b.fit(dataset, 8, mse)
    assert r.resumed_from == 7 and any("skipping step_00000014" in m for m in msgs)
    assert all(torch.equal(v, good_14[k]) for k, v in b.model.state_dict().items())
    load_checkpoint(ck / "step_00000014")  # valid again
    assert [s for s, _, _ in losses_14] == [5, 10, 14]  # 14: end-of-call flush of steps 11-14
    assert losses(tmp_path) == losses_14


def test_missing_and_truncated_files_are_named(tmp_path):
    sd = {"w": torch.arange(6.0).reshape(2, 3).t()}  # non-contiguous: must be saved anyway
    tied = torch.ones(4)
    p = save_checkpoint(tmp_path, 3, tensors={"model": {**sd, "a": tied, "b": tied}}, state={"x": torch.ones(2)},
                        meta={"step": 3})
    tensors, state, meta = load_checkpoint(p)
    assert torch.equal(tensors["model"]["w"], sd["w"]) and torch.equal(tensors["model"]["b"], tied)
    (p / "trainer.json").write_text((p / "trainer.json").read_text() + " ")
    with pytest.raises(CheckpointError, match=r"trainer\.json: size"):
        load_checkpoint(p)
    (p / "state.pt").unlink()
    with pytest.raises(CheckpointError, match=r"state\.pt: listed in the manifest but missing"):
        load_checkpoint(p)
    (p / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="manifest.json missing"):
        load_checkpoint(p)
    assert find_resumable(tmp_path, log=lambda m: None) is None


class Payload:
    """Anything that is not a tensor/container: unpickling it could run code."""

    def __init__(self):
        self.x = 1


def test_state_pt_refuses_arbitrary_objects(tmp_path):
    p = save_checkpoint(tmp_path, 1, tensors={"model": {"w": torch.ones(2)}}, state={"evil": Payload()},
                        meta={"step": 1})
    with pytest.raises(CheckpointError, match="weights_only=True"):
        load_checkpoint(p)  # manifest is valid: the refusal comes from torch.load(weights_only=True)


def test_keep_prunes_but_never_latest(tmp_path):
    for s in (1, 2, 3, 4):
        save_checkpoint(tmp_path, s, tensors={"model": {"w": torch.full((2,), float(s))}}, state={}, meta={}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000003", "step_00000004"]
    # re-saving an earlier step (resumed from it): later, abandoned steps go, `latest` points at it
    save_checkpoint(tmp_path, 3, tensors={"model": {"w": torch.zeros(2)}}, state={}, meta={}, keep=2)
    assert sorted(p.name for p in tmp_path.glob("step_*")) == ["step_00000003"]
    assert (tmp_path / "latest").read_text() == "step_00000003\n"
    assert torch.equal(load_checkpoint(tmp_path / "step_00000003")[0]["model"]["w"], torch.zeros(2))


# ------------------------------------------------------------------------------ config

def test_config_mismatch_and_ignored_keys(tmp_path, dataset):
    make_trainer(tmp_path, 7).fit(dataset, 8, mse)
    changed = {**CONFIG, "width": 32}
    with pytest.raises(ConfigMismatchError, match="width: checkpoint=16 now=32") as exc:
        make_trainer(tmp_path, 14, config=changed).fit(dataset, 8, mse)
    assert "resume='force'" in str(exc.value) and "new run_dir" in str(exc.value)
    assert set(exc.value.differences) == {"width"}
    with pytest.raises(ConfigMismatchError, match="_trainer.grad_accum: checkpoint=1 now=2"):
        make_trainer(tmp_path, 14, grad_accum=2).fit(dataset, 8, mse)
    # log_every is an ignored key: resuming is fine
    r = make_trainer(tmp_path, 9, config={**CONFIG, "log_every": 3}).fit(dataset, 8, mse)
    assert r.resumed_from == 7 and r.step == 9
    r = make_trainer(tmp_path, 11, config=changed, resume="force").fit(dataset, 8, mse)
    assert r.resumed_from == 9 and r.step == 11
    with pytest.raises(FileExistsError, match="resume='never'"):
        make_trainer(tmp_path, 11, resume="never").fit(dataset, 8, mse)


# ------------------------------------------------------------------------------ budget

def test_budget_zero_saves_and_stops(tmp_path, dataset):
    r = make_trainer(tmp_path, 10, budget_s=0.0).fit(dataset, 8, mse)
    assert (r.step, r.finished, r.reason) == (0, False, "budget")
    assert (tmp_path / "checkpoints" / "toy" / "latest").read_text() == "step_00000000\n"
    r2 = make_trainer(tmp_path, 10, budget_s=None).fit(dataset, 8, mse)
    assert (r2.step, r2.finished, r2.reason, r2.resumed_from) == (10, True, "done", 0)


def test_budget_stop_mid_run_resumes_identically(tmp_path, dataset):
    slow = {"on": True}

    def slow_mse(model, batch, step):
        if slow["on"]:
            time.sleep(0.05)
        return mse(model, batch, step)

    r = make_trainer(tmp_path / "b", 20, budget_s=0.3).fit(dataset, 8, slow_mse)
    assert r.reason == "budget" and not r.finished and 1 <= r.step < 20
    assert (tmp_path / "b" / "checkpoints" / "toy" / "latest").read_text() == f"step_{r.step:08d}\n"
    slow["on"] = False
    b = make_trainer(tmp_path / "b", 20)
    assert b.fit(dataset, 8, slow_mse).resumed_from == r.step
    a = make_trainer(tmp_path / "a", 20)
    a.fit(dataset, 8, mse)
    assert_same_training(a, b)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


# ------------------------------------------------------------------------------ non-finite / fp16

def test_nonfinite_loss_raises_after_five(tmp_path, dataset):
    snap = {}

    def nan_after_3(model, batch, step):
        if step == 3 and not snap:
            snap.update({k: v.clone() for k, v in model.state_dict().items()})
        loss, _ = mse(model, batch, step)
        return loss * float("nan") if step >= 3 else loss

    t = make_trainer(tmp_path, 20)
    with pytest.raises(NonFiniteLossError) as exc:
        t.fit(dataset, 8, nan_after_3)
    msg = str(exc.value)
    assert "5 consecutive steps" in msg and "up to step 7" in msg and "last finite loss" in msg
    assert "at step 2" in msg and "lower learning rate" in msg and "fp32" in msg
    assert t.nonfinite_total == 5
    assert all(torch.equal(v, snap[k]) for k, v in t.model.state_dict().items())  # nan steps changed nothing
    ck = tmp_path / "checkpoints" / "toy"
    assert (ck / "latest").read_text() == "step_00000007\n"  # saved at 7 (params still the good ones)


def test_isolated_nonfinite_step_is_skipped(tmp_path, dataset):
    def one_nan(model, batch, step):
        loss, extra = mse(model, batch, step)
        return (loss * float("inf") if step == 4 else loss), extra

    r = make_trainer(tmp_path, 10).fit(dataset, 8, one_nan)
    assert (r.step, r.finished, r.skipped_steps) == (10, True, 1)
    recs = [json.loads(line) for line in (tmp_path / "logs" / "toy.jsonl").read_text().splitlines()]
    assert [r_.get("nonfinite_skipped") for r_ in recs] == [1, 1]
    assert all(isinstance(r_["loss"], float) for r_ in recs)  # the window mean excludes the skipped step


def test_fp16_overflow_steps_are_skipped_by_the_scaler(tmp_path, dataset):
    t = make_trainer(tmp_path, 6, precision="fp16", log_every=3)
    assert t.amp_dtype == torch.float16 and t.scaler is not None
    init = {k: v.clone() for k, v in t.model.state_dict().items()}

    def huge(model, batch, step):  # finite loss, but gradients overflow fp16 at any scale >= 1
        x, y = batch
        return nn.functional.mse_loss(model(x).float(), y) * 1e36

    r = t.fit(dataset, 8, huge)
    assert r.skipped_steps == 6 and t.scaler_skipped_total == 6
    recs = [json.loads(line) for line in (tmp_path / "logs" / "toy.jsonl").read_text().splitlines()]
    assert [(r_["scale"], r_["scaler_skipped"]) for r_ in recs] == [(65536.0 / 8, 3), (65536.0 / 64, 6)]
    assert all(torch.equal(v, init[k]) for k, v in t.model.state_dict().items())
    assert t.ema_updates == 0  # no EMA update on skipped steps


def test_precision_selection(monkeypatch):
    cuda = torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (7, 5))  # T4
    assert env.autocast_dtype(cuda, "auto") is torch.float16
    assert env.autocast_dtype(cuda, "fp32") is None
    with pytest.raises(ValueError, match="compute capability >= 8"):
        env.autocast_dtype(cuda, "bf16")
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a, **k: (8, 0))  # A100
    assert env.autocast_dtype(cuda, "auto") is torch.bfloat16
    assert env.autocast_dtype(cuda, "fp16") is torch.float16
    assert env.autocast_dtype(torch.device("cpu"), "auto") is None
    with pytest.raises(ValueError, match="precision='half'"):
        env.autocast_dtype(torch.device("cpu"), "half")


def test_bf16_on_cpu_has_no_scaler(tmp_path, dataset):
    t = make_trainer(tmp_path, 2, precision="bf16")
    assert t.amp_dtype is torch.bfloat16 and t.scaler is None
    assert t.fit(dataset, 8, mse).finished


# ------------------------------------------------------------------------------ data order

def test_sampler_is_deterministic_resumable_and_leaves_global_rng_alone(dataset):
    s = ResumableBatchSampler(64, 8, seed=1)
    full = list(s)
    assert len(full) == 8 and sorted(i for b in full for i in b) == list(range(64))
    s.set_epoch(0, 5)
    assert list(s) == full[5:] and len(s) == 3
    s.set_epoch(1)
    assert list(s) != full
    before = torch.get_rng_state()
    stream = batch_stream(dataset, 8, seed=1, epoch=0, position=6, num_workers=0)
    got = [next(stream)[:2] for _ in range(3)]
    stream.close()
    assert got == [(0, 7), (0, 8), (1, 1)]
    assert torch.equal(before, torch.get_rng_state())
    with pytest.raises(ValueError, match="fewer than batch_size"):
        ResumableBatchSampler(5, 8)


# ------------------------------------------------------------------------------ load_weights

def test_load_weights(tmp_path, dataset):
    t = make_trainer(tmp_path, 10)
    t.fit(dataset, 8, mse)
    fresh = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    meta = load_weights(tmp_path, "toy", fresh, log=lambda m: None)
    assert meta["step"] == 10 and meta["weights"] == "ema"
    assert all(torch.equal(v, t.ema_model.state_dict()[k]) for k, v in fresh.state_dict().items())
    assert not torch.equal(t.ema_model[0].weight, t.model[0].weight)
    load_weights(tmp_path, "toy", fresh, ema=False, log=lambda m: None)
    assert all(torch.equal(v, t.model.state_dict()[k]) for k, v in fresh.state_dict().items())
    with pytest.raises(CheckpointError, match=r"no trained 'vae' weights.*Run the notebook that trains"):
        load_weights(tmp_path, "vae", fresh)
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_weights(tmp_path, "toy", nn.Linear(6, 1), log=lambda m: None)


def test_worker_processes_do_not_change_the_result(tmp_path, dataset):
    """num_workers only moves loading to other processes: same batches, same RNG, same weights."""
    a = make_trainer(tmp_path / "a", 20)
    a.fit(dataset, 8, mse)
    make_trainer(tmp_path / "b", 11).fit(dataset, 8, mse, num_workers=2)
    b = make_trainer(tmp_path / "b", 20)
    assert b.fit(dataset, 8, mse, num_workers=2).resumed_from == 11
    assert_same_training(a, b)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")


def test_ema_warmup_follows_the_model_early():
    """decay_n = min(decay, (1+n)/(10+n)): after the first copy, update n=1 uses 2/11, not 0.999."""
    from medkit.train.loop import ema_warmup_avg_fn

    fn = ema_warmup_avg_fn(0.999)
    ema, cur = [torch.zeros(3)], [torch.ones(3)]
    fn(ema, cur, torch.tensor(1))
    assert torch.allclose(ema[0], torch.full((3,), 1 - 2 / 11))
    fn(ema, cur, torch.tensor(100_000))  # late: the configured decay
    assert torch.allclose(ema[0], torch.full((3,), 1 - (2 / 11) * 0.999))
    counters = [torch.tensor([1])]
    fn(counters, [torch.tensor([7])], torch.tensor(5))
    assert counters[0].item() == 7


def test_fast_ema_update_equals_averaged_model(tmp_path):
    """Trainer._ema_update gives bit-for-bit what torch's AveragedModel.update_parameters gives."""
    from torch.optim.swa_utils import AveragedModel

    from medkit.train.loop import ema_warmup_avg_fn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.Linear(8, 2))  # float + integer buffers
    t = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), run_dir=tmp_path, stage="ema", config={},
                max_steps=1, ema_decay=0.9, progress=False, log=lambda m: None)
    ref = AveragedModel(model, multi_avg_fn=ema_warmup_avg_fn(0.9), use_buffers=True)
    for _ in range(25):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn_like(p))
            model[1].num_batches_tracked += 1
        t._ema_update()
        ref.update_parameters(model)
    for (k, a), b in zip(t.ema_model.state_dict().items(), ref.module.state_dict().values()):
        assert torch.equal(a, b), k
    assert t.ema_updates == int(ref.n_averaged) == 25


# ------------------------------------------------------------------------------ early stopping

def _val_loss(dataset):
    """A validation loss that also draws from the RNG (like a diffusion loss's t and noise)."""
    x, y = dataset.tensors

    def validate(model):
        noise = 0.01 * torch.randn(())
        return float(nn.functional.mse_loss(model(x), y) + noise)
    return validate


def test_validation_does_not_touch_the_training_rng(tmp_path, dataset):
    a = make_trainer(tmp_path / "a", 20)
    a.fit(dataset, 8, mse)
    b = make_trainer(tmp_path / "b", 20, validate=_val_loss(dataset), validate_every=3)
    b.fit(dataset, 8, mse)
    assert_same_training(a, b)
    vals = [r for r in map(json.loads, (tmp_path / "b" / "logs" / "toy.jsonl").read_text().splitlines())
            if "val_loss" in r]
    assert [r["step"] for r in vals] == [3, 6, 9, 12, 15, 18]


def test_early_stop_after_patience_and_a_killed_run_stops_at_the_same_step(tmp_path, dataset):
    # lr 0.3 makes the toy diverge after a while, so validation stops improving
    cfg = {**CONFIG, "lr": 0.3}
    kw = dict(config=cfg, validate=_val_loss(dataset), validate_every=2, patience=3)
    a = make_trainer(tmp_path / "a", 200, **kw)
    ra = a.fit(dataset, 8, mse)
    assert ra.reason == "early_stop" and ra.finished and ra.step < 200
    val = a._val
    assert val["stopped"] and val["bad"] == 3 and val["best_step"] == ra.step - 3 * 2
    # the same run killed part-way (a budget stop between checkpoints) and re-run: same stop, same weights
    b1 = make_trainer(tmp_path / "b", 200, **kw)
    b1.settings = dataclasses.replace(b1.settings, max_steps=ra.step - 3)  # stop before the early stop, then resume
    b1.fit(dataset, 8, mse)
    b2 = make_trainer(tmp_path / "b", 200, **kw)
    rb = b2.fit(dataset, 8, mse)
    assert (rb.reason, rb.step) == ("early_stop", ra.step) and rb.resumed_from is not None
    assert b2._val == a._val
    assert_same_training(a, b2)
    # once stopped it stays stopped: a re-run loads the weights and trains nothing
    c = make_trainer(tmp_path / "b", 200, **kw)
    rc = c.fit(dataset, 8, mse)
    assert (rc.reason, rc.step, rc.steps_run, rc.finished) == ("early_stop", ra.step, 0, True)


def test_early_stop_settings_are_checked(tmp_path):
    with pytest.raises(ValueError, match="validate_every"):
        make_trainer(tmp_path, 5, validate=lambda m: 0.0)
    with pytest.raises(ValueError, match="patience"):
        make_trainer(tmp_path, 5, patience=3)


def test_a_run_moved_to_another_machine_resumes_on_what_was_chosen(tmp_path, dataset, monkeypatch):
    """Where-found facts (the cache folder, the optimizer the installed packages allowed) are recorded beside the
    config, not hashed: a run directory copied to another path, where bitsandbytes and a GPU now seem available,
    resumes with the optimizer it started with and ends equal to a run that was never moved."""
    import sys
    import types

    from medkit.nets import sd as sdnets
    from medkit.train import recorded_facts

    def trainer(run_dir, steps, cache, like=None):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
        opt, name = sdnets.make_optimizer(model.parameters(), lr=1e-2, eight_bit="auto", like=like)
        cfg = {**CONFIG, "cache": str(cache), "optimizer": name}
        return Trainer(model, opt, run_dir=run_dir, stage="toy", config=cfg, max_steps=steps, ema_decay=0.9,
                       ckpt_every=7, log_every=5, budget_s=None, progress=False, plot=False, log=lambda m: None, seed=1,
                       device="cpu")

    assert recorded_facts(tmp_path / "a", "toy") == {}
    trainer(tmp_path / "a", 7, tmp_path / "a-cache").fit(dataset, 8, mse)
    assert recorded_facts(tmp_path / "a", "toy") == {"cache": str(tmp_path / "a-cache"), "optimizer": "AdamW (torch)"}
    shutil.copytree(tmp_path / "a", tmp_path / "b")

    class FakeAdamW8bit(torch.optim.AdamW):  # what "auto" would now pick, were it not resuming
        pass

    monkeypatch.setitem(sys.modules, "bitsandbytes", types.SimpleNamespace(optim=types.SimpleNamespace(
        AdamW8bit=FakeAdamW8bit)))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    _, fresh_choice = sdnets.make_optimizer([nn.Parameter(torch.zeros(1))], lr=1e-2, eight_bit="auto")
    assert fresh_choice == "AdamW8bit (bitsandbytes)"
    logs = []
    moved = trainer(tmp_path / "b", 14, tmp_path / "b-cache", like=recorded_facts(tmp_path / "b", "toy")["optimizer"])
    assert type(moved.optimizer) is torch.optim.AdamW
    moved.log = logs.append
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the toy trains on the CPU
    r = moved.fit(dataset, 8, mse)
    assert (r.resumed_from, r.step) == (7, 14)
    assert any(f"cache: '{tmp_path / 'a-cache'}' -> '{tmp_path / 'b-cache'}'" in m for m in logs), logs
    straight = trainer(tmp_path / "c", 14, tmp_path / "b-cache")
    straight.fit(dataset, 8, mse)
    for (k, v), (k2, v2) in zip(moved.model.state_dict().items(), straight.model.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), f"model tensor {k} differs"
    # a setting that shapes the result still refuses the resume
    with pytest.raises(ConfigMismatchError, match="width: checkpoint=16 now=32"):
        make_trainer(tmp_path / "b", 21, config={**CONFIG, "width": 32, "cache": "x"}).fit(dataset, 8, mse)
    with pytest.raises(ValueError, match="started with bitsandbytes' AdamW8bit but eight_bit=False"):
        sdnets.make_optimizer([nn.Parameter(torch.zeros(1))], lr=1e-2, eight_bit=False, like="AdamW8bit (bitsandbytes)")


@pytest.mark.parametrize("warmup,total,floor", [(0, 50, 0.1), (1, 50, 0.1), (5, 40, 0.01), (3, 4, 0.0)])
def test_lr_schedule_is_warmup_then_cosine_to_the_floor(warmup, total, floor):
    """torch's LinearLR + CosineAnnealingLR + SequentialLR give the closed form: (s + 1) / w during the warm-up,
    then floor + (1 - floor) (1 + cos(pi (s - w) / (n - w))) / 2."""
    import math

    from medkit.train import lr_schedule

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=2e-3)
    sched = lr_schedule(opt, warmup_steps=warmup, total_steps=total, floor=floor)
    for s in range(total):
        want = (s + 1) / warmup if s < warmup else floor + (1 - floor) * 0.5 * (
            1 + math.cos(math.pi * (s - warmup) / (total - warmup)))
        assert opt.param_groups[0]["lr"] == pytest.approx(2e-3 * want, rel=1e-12, abs=1e-18), s
        opt.step()
        sched.step()


def test_lr_schedule_constant_with_warmup_and_bad_settings():
    from medkit.train import lr_schedule

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    assert lr_schedule(opt, decay="constant") is None
    sched = lr_schedule(opt, warmup_steps=4, decay="constant")
    lrs = []
    for _ in range(7):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="total_steps=None: cosine decay needs the number of training steps"):
        lr_schedule(opt, warmup_steps=2)
    with pytest.raises(ValueError, match="decay='step'"):
        lr_schedule(opt, decay="step")


def test_a_checkpoint_of_another_lr_schedule_kind_is_refused_with_the_reason(tmp_path, dataset):
    """A run written with a LambdaLR (medkit's schedules before lr_schedule) does not silently load into a
    SequentialLR: the error names the schedule and what to do."""
    from medkit.train import lr_schedule

    make_trainer(tmp_path, 7).fit(dataset, 8, mse)  # LambdaLR
    t = make_trainer(tmp_path, 14)
    t.lr_scheduler = lr_schedule(t.optimizer, warmup_steps=3, total_steps=14, floor=0.1)
    with pytest.raises(CheckpointError, match="LR schedule state is of another kind than this SequentialLR"):
        t.fit(dataset, 8, mse)


def test_settings_as_one_value_or_keywords(tmp_path):
    """The Trainer's settings: a TrainSettings, keyword arguments of the same names over it, unknown names and a
    missing max_steps refused naming them; the settings are one frozen value, not copied onto the Trainer."""
    from medkit.train import TrainSettings

    base = TrainSettings(max_steps=5, seed=3, ckpt_every=2)
    model = nn.Linear(2, 1)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    t = Trainer(model, opt, run_dir=tmp_path, stage="s", config={}, settings=base, seed=4, progress=False)
    assert (t.settings.max_steps, t.settings.seed, t.settings.ckpt_every, t.settings.progress) == (5, 4, 2, False)
    assert base.seed == 3 and "seed" not in vars(t)
    with pytest.raises(dataclasses.FrozenInstanceError):
        t.settings.seed = 5
    with pytest.raises(TypeError, match=r"unknown setting\(s\) \['ckpt_evry'\]; the settings are: budget_s"):
        Trainer(model, opt, run_dir=tmp_path, stage="s", config={}, max_steps=5, ckpt_evry=2)
    with pytest.raises(TypeError, match="Trainer needs max_steps"):
        Trainer(model, opt, run_dir=tmp_path, stage="s", config={})
    with pytest.raises(ValueError, match="ckpt_every=0: must be an integer >= 1"):
        TrainSettings(max_steps=5, ckpt_every=0)
