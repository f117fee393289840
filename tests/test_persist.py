"""Runs carried across Kaggle and Colab sessions (medkit.persist), on faked platforms.

Kaggle: KAGGLE_KERNEL_RUN_TYPE set, /kaggle/working and /kaggle/input pointed at tmp_path.
Colab: google.colab in sys.modules, /content and /content/drive/MyDrive pointed at tmp_path.
"""
from __future__ import annotations

import json
import shutil
import sys
import types

import pytest
import torch
from torch import nn

from medkit import env, persist
from medkit.train import CheckpointError, Trainer, faults, load_weights

g = torch.Generator().manual_seed(7)
_x = torch.randn(64, 6, generator=g)
DATA = torch.utils.data.TensorDataset(_x, _x[:, :2].sum(1, keepdim=True).sin())


def make(run_dir, max_steps, logs=None, **kw):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    opts = dict(run_dir=run_dir, stage="toy", config={"w": 16}, max_steps=max_steps, ema_decay=0.9, ckpt_every=7,
                keep=3, log_every=5, budget_s=None, progress=False, plot=False, seed=1,
                log=(logs.append if logs is not None else lambda m: None))
    return Trainer(model, opt, **{**opts, **kw})


def mse(model, batch, step):
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def previous_run(path, steps=14):
    """A run as an earlier session leaves it: checkpoints, log, config, metrics."""
    make(path, steps).fit(DATA, 8, mse)
    (path / "config").mkdir(exist_ok=True)
    (path / "config" / "toy.json").write_text('{"w": 16}\n')
    (path / "metrics.json").write_text('{"toy": {"done": true}}\n')
    return path


@pytest.fixture
def kaggle(monkeypatch, tmp_path):
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(env, "KAGGLE_WORKING", tmp_path / "working")
    monkeypatch.setattr(persist, "KAGGLE_INPUT", tmp_path / "input")
    return tmp_path


@pytest.fixture
def colab(monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.setattr(env, "COLAB_CONTENT", tmp_path / "content")
    monkeypatch.setattr(persist, "COLAB_DRIVE", tmp_path / "drive" / "MyDrive")
    (tmp_path / "drive" / "MyDrive").mkdir(parents=True)
    return tmp_path


# ------------------------------------------------------------------------------------------ Kaggle

@pytest.mark.parametrize("mount", ["notebooks/alice/sbldm-t4", "sbldm-t4", "datasets/alice/sbldm-runs"])
def test_kaggle_restores_the_previous_versions_output(kaggle, mount):
    assert env.platform() == "kaggle" and env.default_run_root() == kaggle / "working" / "runs"
    previous_run(kaggle / "input" / mount / "runs" / "demo")
    run_dir = env.default_run_root() / "demo"
    logs = []
    r = make(run_dir, 21, logs).fit(DATA, 8, mse)
    assert (r.resumed_from, r.step) == (14, 21)
    assert [m for m in logs if m.startswith("restore:")] == [
        f"restore: 'toy' step 14 copied from {kaggle / 'input' / mount / 'runs/demo/checkpoints/toy/step_00000014'} "
        f"(verified)"]
    assert json.loads((run_dir / "metrics.json").read_text()) == {"toy": {"done": True}}
    assert (run_dir / "config" / "toy.json").read_text() == '{"w": 16}\n'
    make(kaggle / "ref", 21).fit(DATA, 8, mse)
    assert faults.compare_runs(run_dir, kaggle / "ref", "toy") == []  # as if never interrupted


def test_kaggle_never_overwrites_newer_local_checkpoints(kaggle):
    previous_run(kaggle / "input" / "nb" / "runs" / "demo", steps=7)
    run_dir = kaggle / "working" / "runs" / "demo"
    make(run_dir, 14).fit(DATA, 8, mse)
    before = {p.name: p.read_bytes() for p in (run_dir / "checkpoints" / "toy" / "step_00000014").iterdir()}
    logs = []
    assert persist.restore(run_dir, log=logs.append) == []
    assert logs == ["restore: 'toy' is at step 14 locally, the Kaggle input has step 7; keeping the local one"]
    assert {p.name: p.read_bytes() for p in (run_dir / "checkpoints" / "toy" / "step_00000014").iterdir()} == before
    assert (run_dir / "checkpoints" / "toy" / "latest").read_text() == "step_00000014\n"


def test_kaggle_skips_a_corrupt_copy_and_takes_the_previous_one(kaggle):
    prev = previous_run(kaggle / "input" / "nb" / "runs" / "demo")
    f = prev / "checkpoints" / "toy" / "step_00000014" / "ema.safetensors"
    f.write_bytes(f.read_bytes()[:-1] + bytes([f.read_bytes()[-1] ^ 1]))
    run_dir = kaggle / "working" / "runs" / "demo"
    logs = []
    assert persist.restore(run_dir, ["toy"], log=logs.append) == ["toy"]
    assert "skipping" in logs[0] and "step_00000014/ema.safetensors: sha256 does not match" in logs[0]
    assert logs[1].startswith("restore: 'toy' step 7 copied from")
    assert make(run_dir, 14).fit(DATA, 8, mse).resumed_from == 7


def test_kaggle_input_without_any_valid_checkpoint(kaggle):
    prev = previous_run(kaggle / "input" / "nb" / "runs" / "demo", steps=7)
    (prev / "checkpoints" / "toy" / "step_00000007" / "manifest.json").unlink()
    run_dir = kaggle / "working" / "runs" / "demo"
    logs = []
    assert persist.restore(run_dir, log=logs.append) == []
    assert "manifest.json missing" in logs[0]
    assert logs[1] == (f"restore: {prev / 'checkpoints' / 'toy'} holds no valid 'toy' checkpoint (see above); "
                       f"'toy' is not restored")
    assert not (run_dir / "checkpoints").exists()


def test_a_copy_that_does_not_verify_is_removed_and_refused(kaggle, monkeypatch):
    previous_run(kaggle / "input" / "nb" / "runs" / "demo", steps=7)
    real = shutil.copyfile

    def short_copy(src, dst, **kw):  # a disk that fills up: the weights file comes out truncated
        real(src, dst, **kw)
        if str(dst).endswith("model.safetensors"):
            with open(dst, "r+b") as fh:
                fh.truncate(100)
    monkeypatch.setattr(shutil, "copyfile", short_copy)
    run_dir = kaggle / "working" / "runs" / "demo"
    with pytest.raises(CheckpointError, match=r"does not match its manifest.*model\.safetensors: size 100 bytes.*"
                                              r"free space"):
        make(run_dir, 14).fit(DATA, 8, mse)
    assert list((run_dir / "checkpoints" / "toy").iterdir()) == []  # nothing partial left behind


def test_load_weights_restores_an_earlier_stage(kaggle):
    """A later stage's notebook in a fresh session finds the earlier stage's weights in the input."""
    previous_run(kaggle / "input" / "notebooks" / "alice" / "nb" / "runs" / "demo")
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 1))
    meta = load_weights(kaggle / "working" / "runs" / "demo", "toy", model, log=lambda m: None)
    assert meta["step"] == 14


def test_nothing_happens_off_kaggle_and_colab(monkeypatch, tmp_path):
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    monkeypatch.delitem(sys.modules, "google.colab", raising=False)
    monkeypatch.setattr(persist, "KAGGLE_INPUT", tmp_path / "input")
    monkeypatch.setattr(persist, "COLAB_DRIVE", tmp_path / "MyDrive")
    previous_run(tmp_path / "input" / "nb" / "runs" / "demo")
    (tmp_path / "MyDrive").mkdir()
    r = make(tmp_path / "runs" / "demo", 7).fit(DATA, 8, mse)
    assert r.resumed_from is None
    assert list((tmp_path / "MyDrive").iterdir()) == []


# ------------------------------------------------------------------------------------------- Colab

def test_colab_mirrors_to_drive_and_a_new_vm_resumes_from_it(colab):
    drive = colab / "drive" / "MyDrive" / "medkit" / "runs" / "demo"
    run_dir = env.default_run_root() / "demo"
    assert env.platform() == "colab" and run_dir == colab / "content" / "runs" / "demo"
    (run_dir / "config").mkdir(parents=True)
    (run_dir / "config" / "toy.json").write_text('{"w": 16}\n')
    logs = []
    make(run_dir, 14, logs).fit(DATA, 8, mse)
    assert [m for m in logs if m.startswith("drive:")] == [
        f"drive: mirrored 'toy' step_{s:08d} to {drive / 'checkpoints' / 'toy'}" for s in (7, 14)]
    ck = drive / "checkpoints" / "toy"
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step_00000007", "step_00000014"]
    assert (ck / "latest").read_text() == "step_00000014\n"
    persist.verify_checkpoint(ck / "step_00000014")
    # the log as it was at the checkpoint: all but the end-of-call flush (steps 11-14) written after it
    local_log = (run_dir / "logs" / "toy.jsonl").read_text().splitlines()
    assert (drive / "logs" / "toy.jsonl").read_text().splitlines() == local_log[:-1]
    assert json.loads(local_log[-1])["partial"] is True
    assert (drive / "config" / "toy.json").read_text() == '{"w": 16}\n'
    assert persist.sync_to_drive(run_dir, log=logs.append) == []  # already there: nothing copied

    # the VM is recycled: local disk gone; a half-renamed newer copy sits on Drive (`latest` never named it)
    shutil.rmtree(colab / "content")
    (ck / "step_00000021").mkdir()
    (ck / "step_00000021" / "model.safetensors").write_bytes(b"partial")
    logs.clear()
    r = make(run_dir, 28, logs).fit(DATA, 8, mse)
    assert r.resumed_from == 14
    assert logs[0] == f"restore: 'toy' step 14 copied from {ck / 'step_00000014'} (verified)"
    assert (run_dir / "config" / "toy.json").exists()
    make(colab / "ref", 28).fit(DATA, 8, mse)
    assert faults.compare_runs(run_dir, colab / "ref", "toy") == []
    # Drive keeps the newest two
    assert sorted(p.name for p in ck.iterdir()) == ["latest", "step_00000021", "step_00000028"]
    persist.verify_checkpoint(ck / "step_00000021")


def test_drive_failure_does_not_stop_training(colab, monkeypatch):
    def full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(persist, "copy_checkpoint", full)
    logs = []
    r = make(colab / "content" / "runs" / "demo", 7, logs).fit(DATA, 8, mse)
    assert r.finished
    assert [m for m in logs if m.startswith("drive:")] == [
        f"drive: could not mirror 'toy' to {colab / 'drive/MyDrive/medkit/runs/demo'} ([Errno 28] No space left on "
        f"device); training goes on with the local checkpoint, the next checkpoint will try again"]


def test_drive_not_mounted_or_run_on_drive(colab):
    shutil.rmtree(colab / "drive")
    run_dir = colab / "content" / "runs" / "demo"
    assert make(run_dir, 7).fit(DATA, 8, mse).finished
    assert persist.sync_to_drive(run_dir) == [] and persist.restore_from_drive(run_dir) == []
    assert not (colab / "drive").exists()
    # a run directory already on Drive is not mirrored onto itself
    on_drive = colab / "drive" / "MyDrive" / "medkit" / "runs" / "x"
    make(on_drive, 7).fit(DATA, 8, mse)
    assert sorted(p.name for p in (colab / "drive" / "MyDrive" / "medkit" / "runs").iterdir()) == ["x"]
