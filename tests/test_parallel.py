"""More than one process through accelerate: CPU processes over gloo (``accelerate.debug_launcher``).

Two processes with batch b per process train exactly like one process with batch 2b: each takes its slice of
the same global batch and the gradients are averaged (``medkit.train.parallel``). With a loss that draws no
random numbers the two are equal to float rounding; checkpoints move between process counts when the batch
per step stays the same, and are refused, naming the cause, when it does not.
(The SIGKILL-and-resume test of a 2-process run is in test_faults.py.)
"""
from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist
from torch import nn

from medkit.train import ConfigMismatchError, Trainer, parallel

N = 48
_g = torch.Generator().manual_seed(0)
_X = torch.randn(N, 6, generator=_g)
_Y = _X @ torch.randn(6, 3, generator=_g) + 0.1 * torch.randn(N, 3, generator=_g)
DATA = [{"x": _X[i], "y": _Y[i]} for i in range(N)]


def regression(model, batch, step):
    """A loss with no randomness in it, so that 2 x b and 1 x 2b can be compared number for number."""
    return nn.functional.mse_loss(model(batch["x"]), batch["y"])


def train(run_dir, max_steps: int, batch: int, grad_accum: int = 1):
    """Build and train the toy model; every process runs this whole (as a notebook's training function)."""
    torch.set_num_threads(1)
    rank = dist.get_rank() if dist.is_initialized() else 0
    torch.manual_seed(1000 + rank)  # each process builds other weights: the Trainer must start all from rank 0's
    model = nn.Sequential(nn.Linear(6, 16), nn.Tanh(), nn.Linear(16, 3))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    trainer = Trainer(model, opt, run_dir=run_dir, stage="toy", config={"task": "toy"}, max_steps=max_steps,
                      ema_decay=0.9, grad_accum=grad_accum, ckpt_every=3, log_every=1, budget_s=None, seed=0,
                      device="cpu", progress=False, plot=False, persist=False, log=lambda m: None)
    result = trainer.fit(DATA, batch, regression)
    return result, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()}, \
        {k: v.detach().clone() for k, v in trainer.ema.state_dict().items()}, trainer.world


def close(a: dict, b: dict, tol: float = 1e-6) -> float:
    assert a.keys() == b.keys()
    worst = max(float((a[k] - b[k]).abs().max()) for k in a)
    assert worst <= tol, f"largest difference {worst:.3g} > {tol}"
    return worst


def losses(run_dir) -> list[float]:
    return [json.loads(line)["loss"] for line in (run_dir / "logs" / "toy.jsonl").read_text().splitlines()]


def test_two_processes_with_batch_b_equal_one_process_with_batch_2b(tmp_path):
    r2, model2, ema2, world2 = parallel.launch(train, tmp_path / "two", 1, 4, processes=2)
    r1, model1, ema1, world1 = train(tmp_path / "one", 1, 8)
    assert (world2, world1) == (2, 1) and r2.step == r1.step == 1
    close(model2, model1)
    close(ema2, ema1)
    # and over several steps, with the logged (process-mean) losses equal to the one-process ones
    r2, model2, ema2, _ = parallel.launch(train, tmp_path / "two6", 7, 4, processes=2)
    r1, model1, ema1, _ = train(tmp_path / "one6", 7, 8)
    close(model2, model1)
    close(ema2, ema1)
    assert losses(tmp_path / "two6") == pytest.approx(losses(tmp_path / "one6"), abs=1e-6)
    # the comparison is not vacuous: one process with batch 4 trains something else
    _, model_b4, _, _ = train(tmp_path / "b4", 7, 4)
    with pytest.raises(AssertionError, match="largest difference"):
        close(model_b4, model1)


def test_gradient_accumulation_in_two_processes(tmp_path):
    """2 processes x batch 2 x 2 accumulation steps = 1 process x batch 8."""
    _, model2, _, _ = parallel.launch(train, tmp_path / "two", 4, 2, 2, processes=2)
    _, model1, _, _ = train(tmp_path / "one", 4, 4, 2)
    close(model2, model1)


def test_checkpoints_move_between_process_counts(tmp_path):
    ref = train(tmp_path / "ref", 12, 8)
    # written by 2 processes x 4, resumed by 1 process x 8: the same run
    parallel.launch(train, tmp_path / "2to1", 6, 4, processes=2)
    r, model, ema, _ = train(tmp_path / "2to1", 12, 8)
    assert r.resumed_from == 6
    close(model, ref[1])
    close(ema, ref[2])
    # written by 1 process x 8, resumed by 2 processes x 4
    train(tmp_path / "1to2", 6, 8)
    r, model, ema, world = parallel.launch(train, tmp_path / "1to2", 12, 4, processes=2)
    assert r.resumed_from == 6 and world == 2
    close(model, ref[1])
    close(ema, ref[2])
    # the same per-process batch in fewer processes is another batch per step: refused with the reason
    parallel.launch(train, tmp_path / "refuse", 3, 4, processes=2)
    with pytest.raises(ConfigMismatchError, match=r"(?s)batch_size.*8.*4.*written by 2 process\(es\), now 1"):
        train(tmp_path / "refuse", 6, 4)


def test_launch_checks_its_setting():
    with pytest.raises(ValueError, match="processes=0"):
        parallel.launch(train, processes=0)


def _session_start():
    from medkit import session
    return session.PROCESS_START, dist.get_world_size()


def test_launched_processes_count_the_budget_from_the_kernels_start():
    """The forked processes inherit the notebook kernel's start time: a Kaggle budget stop still counts from the
    session's start, not from the launch."""
    from medkit import session

    start, world = parallel.launch(_session_start, processes=2)
    assert world == 2 and start == session.PROCESS_START
