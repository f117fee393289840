"""``Trainer``: the one training loop every medkit method uses.

Built for sessions that die (Kaggle/Colab kill a notebook after ~12 h or on idle): ``fit`` resumes
by itself from the newest valid checkpoint of its run directory, and a resumed run is bit-identical
on the CPU to one that was never interrupted. That works because everything random is either
restored (torch/CUDA/python/numpy RNG, saved at a step boundary) or derived from ``(seed, epoch)``
(data order), and because the partial logging window is saved too, so even the logged losses match.

Layout under ``run_dir``::

    checkpoints/<stage>/step_00000500/ ...   (see ``checkpoint.py``)
    logs/<stage>.jsonl                       one JSON line per logged step
    figures/<stage>_loss.png                 loss curve, redrawn at each checkpoint and at the end

On Kaggle and Colab (``persist=True``) ``fit`` first restores the stage from a previous session's output
(``/kaggle/input/...``) or from Google Drive, and on Colab mirrors each checkpoint to Drive: see
``medkit.persist``. ``tests/test_faults.py`` kills training processes at random moments, including in the
middle of a checkpoint write, and checks that the resumed result is bit-identical.
"""
from __future__ import annotations

import contextlib
import copy
import importlib
import json
import math
import os
import random
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from accelerate.utils import send_to_device
from torch import nn

from medkit import env, session
from medkit.train.checkpoint import (CheckpointError, clean_temp_dirs, load_checkpoint, resume_candidates,
                                     save_checkpoint)
from medkit.train.config import ConfigMismatchError, _jsonable, config_diff, config_hash
from medkit.train import parallel
from medkit.train.data import batch_stream, derive_seed
from medkit.train.settings import TrainSettings, check_run


def ema_warmup_avg_fn(decay: float):
    """EMA with warm-up: the decay used after n updates is min(decay, (1 + n) / (10 + n)).

    A fixed 0.999 averages over ~1000 steps, so a run of a few hundred steps would keep mostly its
    early, untrained weights; the warm-up (as in diffusers' EMAModel and the original DDPM/LDM code)
    lets the average follow the model early and settle to ``decay`` later.
    """
    @torch.no_grad()
    def multi_avg_fn(ema_params, model_params, num_averaged):
        n = int(num_averaged)
        d = min(decay, (1 + n) / (10 + n))
        if torch.is_floating_point(ema_params[0]):
            torch._foreach_lerp_(ema_params, model_params, 1.0 - d)
        else:  # integer buffers (counters) follow the model
            for e, m in zip(ema_params, model_params):
                e.copy_(m)
    return multi_avg_fn


class NonFiniteLossError(FloatingPointError):
    """The loss was nan/inf for too many consecutive steps."""


@dataclass
class TrainResult:
    step: int                      # optimizer steps done in total (across resumes)
    finished: bool                 # reached max_steps, or stopped early (patience)
    reason: str                    # "done" | "budget" | "early_stop"
    last_loss: float | None        # mean loss of the last logging window
    resumed_from: int | None       # checkpoint step this call resumed from, None for a fresh start
    seconds: float                 # wall time of this fit() call
    skipped_steps: int             # steps skipped in this call (non-finite loss + fp16 overflow)
    overhead_seconds: float = 0.0  # of `seconds`: checkpointing, logging, plotting, EMA updates
    overhead: dict[str, float] = field(default_factory=dict)  # the same, per kind
    steps_run: int = 0             # optimizer steps done in this call
    checkpoints: int = 0           # checkpoints written in this call


# ------------------------------------------------------------------------------------------ utils

def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _versions() -> dict[str, str]:
    try:
        mk = getattr(importlib.import_module("medkit"), "__version__", None)
    except Exception:
        mk = None
    if mk is None:
        try:
            from importlib.metadata import version
            mk = version("medkit")
        except Exception:
            mk = "unknown"
    return {"medkit": str(mk), "torch": torch.__version__}


def _py_random_to_json(state) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _py_random_from_json(obj) -> tuple:
    version, internal, gauss = obj
    return (version, tuple(internal), gauss)


def _np_random_to_json(state) -> list:
    name, keys, pos, has_gauss, cached = state
    return [name, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _np_random_from_json(obj) -> tuple:
    name, keys, pos, has_gauss, cached = obj
    return (name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached)


def _default_log(msg: str) -> None:
    from tqdm.auto import tqdm
    tqdm.write(msg)


# ---------------------------------------------------------------------------------------- trainer

class Trainer:
    """Train ``model`` with ``optimizer`` for ``max_steps`` optimizer steps, resumably.

    ``Trainer(model, optimizer, run_dir=..., stage=..., config=..., max_steps=..., **settings)``: the run's identity,
    what it trains, optional callables, and ``TrainSettings`` (``medkit.train.settings``: steps, precision,
    accumulation, clipping, EMA, seed, checkpoint cadence, budget, resume policy, early stopping) either as
    ``settings=`` or as keyword arguments of the same names. Devices, mixed precision and processes come from
    accelerate (``medkit.train.parallel``); what is the kit's own is here: resume, atomic checkpoints, the EMA, the
    budget stop, logging and plots.

    ``config`` is the run's resolved configuration; it is stored in every checkpoint, and resuming a checkpoint
    trained under a different one (ignoring ``ignore_config_keys`` and the where-found ``facts``) raises
    ``ConfigMismatchError`` unless ``resume="force"``. ``max_steps`` is not part of it, so a finished run can be
    extended by calling again with a larger ``max_steps``. ``budget_s="auto"``: on Kaggle, 11 h 15 min counted from
    the kernel's start (``medkit.session``); at the budget a checkpoint is saved and ``fit`` returns with reason
    "budget". ``on_checkpoint``: callables ``f(path)`` run after each checkpoint is written. ``persist``: on
    Kaggle/Colab, restore this stage from a previous session's output or Google Drive before resuming, and mirror
    checkpoints to Drive on Colab (``medkit.persist``).

    Several processes (``medkit.train.launch``): every process builds the same Trainer; the model starts from
    process 0's weights, each process trains on its slice of every batch, the gradients are averaged, and the
    main process alone writes checkpoints, logs and plots while the others wait.

    Early stopping: ``validate(model) -> float`` (a validation loss, lower is better) runs every
    ``validate_every`` steps under ``torch.no_grad`` with the model in eval mode and the RNGs forked and
    seeded from (seed, step), so it neither consumes nor depends on the training RNG; with ``patience``, training
    stops once that many validations in a row failed to improve the best by more than ``min_delta`` (the
    last weights are kept, not the best ones). Best value, its step and the count are part of every
    checkpoint, so a killed run resumes to the same stop; a run that stopped early stays stopped.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, *, run_dir, stage: str, config: dict,
                 settings: TrainSettings | None = None, lr_scheduler=None,
                 validate: Callable[[nn.Module], float] | None = None, log: Callable[[str], None] | None = None,
                 on_checkpoint: list[Callable[[Path], None]] | tuple = (), **overrides):
        self.settings = s = TrainSettings.make(settings, overrides)
        check_run(stage, config, validate, s)
        self.run_dir, self.stage, self.config = Path(run_dir), stage, config
        self.lr_scheduler, self.validate, self.on_checkpoint = lr_scheduler, validate, list(on_checkpoint)

        # devices, mixed precision and processes come from accelerate (medkit.train.parallel)
        self.accelerator = acc = parallel.make_accelerator(s.precision, s.device, s.grad_accum)
        self.device = acc.device
        self.log = (log or _default_log) if self.is_main else (lambda msg: None)  # one voice per run
        self.model = model.to(self.device)
        if self.world > 1:  # every process starts from process 0's weights, as DDP would
            from accelerate.utils import broadcast
            broadcast([t.data for t in (*self.model.parameters(), *self.model.buffers())], from_process=0)
        self.optimizer = optimizer
        self._stepper = acc.prepare_optimizer(optimizer)  # the same optimizer, stepped via the GradScaler under fp16

        self.amp_dtype = env.autocast_dtype(self.device, s.precision)
        self.scaler = acc.scaler  # a GradScaler under fp16, else None
        self._ema_avg = ema_warmup_avg_fn(s.ema_decay) if s.ema_decay is not None else None
        # the EMA weights: a copy of the model that ``_ema_update`` averages into; ``ema_updates`` counts the updates
        self.ema = copy.deepcopy(self.model).requires_grad_(False) if s.ema_decay is not None else None
        self._ema_lists, self.ema_updates = None, 0

        self.ckpt_dir = self.run_dir / "checkpoints" / stage
        self.log_path = self.run_dir / "logs" / f"{stage}.jsonl"
        self.fig_path = self.run_dir / "figures" / f"{stage}_loss.png"

        # progress state (all of it goes into trainer.json)
        self.step = 0
        self.epoch = 0
        self.position = 0
        self.seconds_trained = 0.0
        self.nonfinite_total = 0
        self.scaler_skipped_total = 0
        self._consecutive_nonfinite = 0
        self._last_loss: float | None = None
        self._val = {"best": None, "best_step": None, "bad": 0, "last": None, "stopped": False}
        self._reset_window()

    # ------------------------------------------------------------------ processes (from the accelerator)
    @property
    def rank(self) -> int:
        return self.accelerator.process_index

    @property
    def world(self) -> int:
        return self.accelerator.num_processes

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    # ------------------------------------------------------------------ public helpers
    @torch.no_grad()
    def _ema_update(self) -> None:
        """One EMA step (first call: copy) on tensor lists built once.

        Same arithmetic as ``AveragedModel.update_parameters`` with ``ema_warmup_avg_fn``, without its
        per-call regrouping of every tensor and its device syncs (about 5 ms per step for a 1M-parameter
        UNet on a CPU, 3% of a cpu-demo step).
        """
        if self._ema_lists is None:
            ema_t = [*self.ema.parameters(), *self.ema.buffers()]
            model_t = [t.detach() for t in (*self.model.parameters(), *self.model.buffers())]
            floats = [i for i, t in enumerate(ema_t) if t.is_floating_point()]
            others = [i for i, t in enumerate(ema_t) if not t.is_floating_point()]
            self._ema_lists = ([ema_t[i] for i in floats], [model_t[i] for i in floats],
                               [ema_t[i] for i in others], [model_t[i] for i in others])
        ema_f, model_f, ema_o, model_o = self._ema_lists
        if self.ema_updates == 0:
            torch._foreach_copy_(ema_f, model_f)
        else:
            self._ema_avg(ema_f, model_f, self.ema_updates)
        for e, m in zip(ema_o, model_o):
            e.copy_(m)
        self.ema_updates += 1

    @property
    def ema_model(self) -> nn.Module:
        """The EMA-averaged module, or the model itself when ``ema_decay`` is None."""
        return self.ema if self.ema is not None else self.model

    def _facts(self) -> dict:
        cfg = _jsonable(self.config)
        return {k: cfg[k] for k in self.settings.facts if k in cfg}

    def resolved_config(self, batch_size: int, dataset_len: int) -> dict:
        """The user config plus the trainer settings that change the result (not max_steps/precision).

        ``batch_size`` there is the batch of one optimizer step over all processes (per process x processes, before
        ``grad_accum``): a 2-process run with 4 per process resumes in 1 process with batch_size 8.
        """
        cfg = _jsonable(self.config)
        s = self.settings
        cfg["_trainer"] = {"stage": self.stage, "batch_size": batch_size * self.world, "grad_accum": s.grad_accum,
                           "seed": s.seed, "ema_decay": s.ema_decay, "clip_grad": s.clip_grad,
                           "dataset_len": dataset_len}
        return cfg

    # ------------------------------------------------------------------ internals
    def _reset_window(self):
        self._win_n = 0
        self._win_loss: Any = 0.0
        self._win_extras: dict[str, Any] = {}

    def _autocast(self):
        return self.accelerator.autocast() if self.amp_dtype is not None else contextlib.nullcontext()

    def _rng_state(self) -> dict:
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return rng

    def _seed_fresh(self, *extra) -> None:
        """Seed every global RNG of this process: ``seed`` on process 0 (a 1-process run is what it always was),
        ``seed + rank`` on the others (accelerate's ``device_specific`` rule), so their noise differs."""
        seed = self.settings.seed
        seed = seed + self.rank if not extra else derive_seed("medkit-rank", seed, self.rank, *extra)
        torch.manual_seed(seed)
        random.seed(seed)
        np.random.seed(seed % 2**32)

    def _restore_rng(self, state: dict, meta: dict) -> None:
        """This process's RNG streams from a checkpoint; a checkpoint of another process count keeps process 0's
        stream on process 0 and seeds the others afresh from (seed, rank, step)."""
        rng = state["rng"]
        ranks = rng.get("ranks") or [{**rng, "python": meta["python_random"], "numpy": meta["numpy_random"]}]
        if len(ranks) != self.world:
            self.log(f"the checkpoint was written by {len(ranks)} process(es), this run has {self.world}: the data "
                     f"order and the batch per step are kept, the random streams of processes >= {len(ranks)} start "
                     f"afresh (not bit-identical to an uninterrupted {len(ranks)}-process run)")
        if self.rank >= len(ranks):
            self._seed_fresh(meta["step"])
            return
        mine = ranks[self.rank]
        torch.set_rng_state(mine["torch"])
        if "cuda" in mine and torch.cuda.is_available():
            if len(mine["cuda"]) == torch.cuda.device_count():
                torch.cuda.set_rng_state_all(mine["cuda"])
            else:
                self.log(f"checkpoint has CUDA RNG states for {len(mine['cuda'])} GPUs, this machine has "
                         f"{torch.cuda.device_count()}; CUDA RNG not restored (results will differ slightly)")
        random.setstate(_py_random_from_json(mine["python"]))
        np.random.set_state(_np_random_from_json(mine["numpy"]))

    def _meta(self) -> dict:
        return {
            "stage": self.stage, "step": self.step, "epoch": self.epoch, "position": self.position,
            "max_steps": self.settings.max_steps,
            "finished": self.step >= self.settings.max_steps or self._val["stopped"],
            "validation": dict(self._val),
            "python_random": _py_random_to_json(random.getstate()),
            "numpy_random": _np_random_to_json(np.random.get_state()),
            "config": self._config, "config_hash": self._config_hash, "facts": self._facts(),
            "ignore_config_keys": list(self.settings.ignored_keys),
            "last_loss": self._last_loss, "seconds": self.seconds_trained,
            "window": {"n": self._win_n, "loss": float(self._win_loss),
                       "extras": {k: float(v) for k, v in self._win_extras.items()},
                       "lr": self._lr_now, "grad_norm": _finite_or_none(
                           None if self._grad_norm_now is None else float(self._grad_norm_now))},
            "nonfinite_total": self.nonfinite_total, "scaler_skipped_total": self.scaler_skipped_total,
            "consecutive_nonfinite": self._consecutive_nonfinite,
            "versions": _versions(), "device": str(self.device), "processes": self.world,
            "precision": str(self.amp_dtype or torch.float32),
        }

    def _save(self, t_fit: float) -> Path:
        """A checkpoint, written by the main process while the others wait (each process's RNG streams in it)."""
        t = time.perf_counter()
        self.seconds_trained = self._seconds_base + (t - t_fit)
        rng = self._rng_state()
        if self.world > 1:  # a collective: every process takes part
            from accelerate.utils import gather_object
            rng["ranks"] = gather_object([{**rng, "python": _py_random_to_json(random.getstate()),
                                           "numpy": _np_random_to_json(np.random.get_state())}])
        path = self.ckpt_dir / f"step_{self.step:08d}"
        if self.is_main:
            tensors = {"model": self.model.state_dict()}
            state: dict[str, Any] = {"optimizer": self.optimizer.state_dict(),
                                     "lr_scheduler": self.lr_scheduler.state_dict() if self.lr_scheduler else None,
                                     "scaler": self.scaler.state_dict() if self.scaler else None, "rng": rng}
            if self.ema is not None:
                tensors["ema"] = self.ema.state_dict()
                state["ema_n_averaged"] = torch.tensor(self.ema_updates, dtype=torch.long)
            path = save_checkpoint(self.ckpt_dir, self.step, tensors=tensors, state=state, meta=self._meta(),
                                   keep=self.settings.keep)
        self._last_ckpt_step = self.step
        self._n_saved += 1
        self._overhead["checkpoint"] += time.perf_counter() - t
        t = time.perf_counter()
        if self.is_main:
            if self.settings.persist:
                from medkit import persist
                persist.after_checkpoint(self.run_dir, self.stage, log=self.log)
            for callback in self.on_checkpoint:
                callback(path)
        if self.world > 1:
            self.accelerator.wait_for_everyone()
        self._overhead["sync"] += time.perf_counter() - t
        return path

    def _restore(self, tensors, state, meta) -> None:
        self.model.load_state_dict(tensors["model"])
        if self.ema is not None:
            if "ema" in tensors:
                self.ema.load_state_dict(tensors["ema"])
                self.ema_updates = int(state["ema_n_averaged"])
            else:
                self.log("checkpoint has no EMA weights; the EMA restarts from the current model")
                self.ema_updates = 0
        self.optimizer.load_state_dict(state["optimizer"])
        if self.lr_scheduler is not None:
            if state.get("lr_scheduler") is None:
                raise CheckpointError("the checkpoint has no LR scheduler state but an lr_scheduler was given; "
                                      "pass the same scheduler setup as the run that wrote it")
            saved, mine = set(state["lr_scheduler"]), set(self.lr_scheduler.state_dict())
            if saved != mine:  # e.g. a LambdaLR's state (medkit before lr_schedule) into a SequentialLR
                raise CheckpointError(
                    f"{self.stage}: the checkpoint's LR schedule state is of another kind than this "
                    f"{type(self.lr_scheduler).__name__} (keys {sorted(saved ^ mine)} differ): it was written by "
                    f"another schedule setup (medkit before 2026-12-02 used LambdaLR). Finish this run with the "
                    f"medkit version that started it, or start a new run_dir.")
            self.lr_scheduler.load_state_dict(state["lr_scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self._restore_rng(state, meta)
        self.step, self.epoch, self.position = meta["step"], meta["epoch"], meta["position"]
        self.seconds_trained = meta.get("seconds", 0.0)
        self._last_loss = meta.get("last_loss")
        self.nonfinite_total = meta.get("nonfinite_total", 0)
        self.scaler_skipped_total = meta.get("scaler_skipped_total", 0)
        self._consecutive_nonfinite = meta.get("consecutive_nonfinite", 0)
        self._val = {**self._val, **(meta.get("validation") or {})}
        win = meta.get("window") or {"n": 0, "loss": 0.0, "extras": {}}
        self._win_n, self._win_loss, self._win_extras = win["n"], win["loss"], dict(win["extras"])
        self._lr_now, self._grad_norm_now = win.get("lr"), win.get("grad_norm")

    def _truncate_log(self, step: int) -> None:
        """Keep only log lines of steps <= ``step`` that are not end-of-call flushes ("partial")."""
        if not self.is_main or not self.log_path.exists():
            return
        kept = []
        for line in self.log_path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue  # a line cut by a kill
            if rec.get("step", math.inf) <= step and not rec.get("partial"):
                kept.append(json.dumps(rec))
        tmp = self.log_path.with_name(self.log_path.name + f".tmp-{os.getpid()}")
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.log_path)

    def _find_and_load(self, resolved: dict) -> int | None:
        """Resume from the newest valid checkpoint; return its step, or None when starting fresh."""
        if self.is_main:
            clean_temp_dirs(self.ckpt_dir, self.log)
        if self.world > 1:
            self.accelerator.wait_for_everyone()
        candidates = resume_candidates(self.ckpt_dir)
        if self.settings.resume == "never":
            if candidates:
                raise FileExistsError(
                    f"resume='never' but {self.ckpt_dir} already holds checkpoints "
                    f"({', '.join(p.name for p in candidates[:3])}...). Use a new run_dir, delete that folder, "
                    f"or use resume='auto' to continue.")
            return None
        for path in candidates:
            try:
                tensors, state, meta = load_checkpoint(path)
            except CheckpointError as e:
                self.log(f"checkpoint: skipping {path.name}: {e}")
                continue
            diff = config_diff(meta.get("config", {}), resolved, self.settings.ignored_keys)
            if meta.get("config_hash") != self._config_hash and diff:
                lines = "\n".join(f"  {k}: checkpoint={a!r} now={b!r}" for k, (a, b) in diff.items())
                if meta.get("processes", 1) != self.world:
                    lines += (f"\n  (written by {meta.get('processes', 1)} process(es), now {self.world}: "
                              f"batch_size is per process, and a resume needs the same batch per step over all "
                              f"processes)")
                if self.settings.resume != "force":
                    raise ConfigMismatchError(
                        f"{path} was trained with a different config:\n{lines or '  (hash differs)'}\n"
                        f"Use a new run_dir to train with the new settings, or pass resume='force' to continue "
                        f"this run with them (or add the key to ignore_config_keys if it does not affect "
                        f"training).", diff)
                self.log(f"resume='force': continuing {path.name} despite config changes:\n{lines}")
            self._restore(tensors, state, meta)
            self.log(f"resumed {self.stage} from {path.name} (step {self.step}/{self.settings.max_steps})")
            now = self._facts()
            was = meta.get("facts") or {k: meta.get("config", {}).get(k) for k in now}
            moved = {k: (was.get(k), v) for k, v in now.items() if was.get(k) != v}
            if moved:
                self.log("found elsewhere on this machine (recorded, not a configuration change): " + "; ".join(
                    f"{k}: {a!r} -> {b!r}" for k, (a, b) in moved.items()))
            return self.step
        if candidates:
            self.log(f"no valid checkpoint in {self.ckpt_dir}; starting {self.stage} from scratch")
        return None

    def _write_log(self, t_fit: float, lr: float, grad_norm, partial: bool = False) -> None:
        t = time.perf_counter()
        n = self._win_n
        loss = float(self._win_loss) / n if n else None
        rec: dict[str, Any] = {"step": self.step, "epoch": self.epoch, "loss": _finite_or_none(loss), "lr": lr,
                               "seconds": round(self._seconds_base + (t - t_fit), 3)}
        for k, v in self._win_extras.items():
            rec[k] = _finite_or_none(float(v) / n) if n else None
        if grad_norm is not None:
            rec["grad_norm"] = _finite_or_none(float(grad_norm))
        if self.scaler is not None:
            rec["scale"] = self.scaler.get_scale()
            rec["scaler_skipped"] = self.scaler_skipped_total
        if self.nonfinite_total:
            rec["nonfinite_skipped"] = self.nonfinite_total
        if partial:
            rec["partial"] = True
        if self.is_main:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.log_path, "a") as f:
                f.write(json.dumps(rec) + "\n")
        if loss is not None:
            self._last_loss = loss
        self._reset_window()
        if self._pbar is not None and loss is not None:
            self._pbar.set_postfix(loss=f"{loss:.4g}", refresh=False)
        self._overhead["log"] += time.perf_counter() - t

    def _finish_log(self, t_fit: float) -> None:
        """Rewrite the end-of-call flush of a finished run if a kill took it.

        It is written just after the final checkpoint; a kill in between would leave the log one record
        short. The checkpoint holds that window (and its lr and grad norm), so the record is the same.
        """
        if not self._win_n or not self.is_main:
            return
        last = None
        if self.log_path.exists():
            for line in self.log_path.read_text().splitlines():
                try:
                    last = json.loads(line)
                except ValueError:
                    continue
        if last is not None and last.get("step") == self.step and last.get("partial"):
            return
        self._truncate_log(self.step)
        self._write_log(t_fit, self._lr_now, self._grad_norm_now, partial=True)

    def _plot(self) -> None:
        if not self.settings.plot or not self.is_main:
            return
        t = time.perf_counter()
        from medkit.train.plot import plot_loss_log
        plot_loss_log(self.log_path, self.fig_path, title=f"{self.stage} loss")
        self._overhead["plot"] += time.perf_counter() - t

    # ------------------------------------------------------------------ the loop
    def fit(self, dataset, batch_size: int, loss_fn: Callable, *, num_workers: int = 0) -> TrainResult:
        """Train until ``max_steps`` (or the budget runs out), resuming from a checkpoint if there is one.

        ``loss_fn(model, batch, step)`` returns a scalar loss tensor or ``(loss, {name: float})``;
        ``batch`` is the DataLoader batch already on the device.
        """
        t_fit = time.perf_counter()
        budget = session.budget_left_s(self.settings.budget_s)
        self._overhead = {"checkpoint": 0.0, "sync": 0.0, "log": 0.0, "plot": 0.0, "ema": 0.0}
        self._pbar = None
        self._last_ckpt_step = None
        self._n_saved = 0
        resolved = self.resolved_config(batch_size, len(dataset))
        self._config = resolved
        self._config_hash = config_hash(resolved, self.settings.ignored_keys)

        self._lr_now, self._grad_norm_now = float(self.optimizer.param_groups[0]["lr"]), None
        parallel.set_accumulation(self.settings.grad_accum)
        if self.settings.persist and self.settings.resume != "never" and self.is_main:
            from medkit import persist
            persist.restore(self.run_dir, stages=[self.stage], log=self.log)
        resumed_from = self._find_and_load(resolved)
        if resumed_from is None:
            # a fresh start seeds every global RNG, so a run does not depend on what ran before it in the
            # process (a resumed run restores them from the checkpoint instead)
            self._seed_fresh()
        self._last_ckpt_step = resumed_from
        self._seconds_base = self.seconds_trained
        skipped_before = self.nonfinite_total + self.scaler_skipped_total
        start_step = self.step

        def result(reason: str) -> TrainResult:
            secs = time.perf_counter() - t_fit
            return TrainResult(step=self.step, finished=self.step >= self.settings.max_steps or self._val["stopped"],
                               reason=reason,
                               last_loss=self._last_loss, resumed_from=resumed_from, seconds=secs,
                               skipped_steps=self.nonfinite_total + self.scaler_skipped_total - skipped_before,
                               overhead_seconds=sum(self._overhead.values()), overhead=dict(self._overhead),
                               steps_run=self.step - start_step, checkpoints=self._n_saved)

        if self._val["stopped"] and resumed_from is not None:
            self.log(f"{self.stage}: stopped early at step {self.step} (no validation improvement in "
                     f"{self.settings.patience} "
                     f"validations; best {self._val['best']:.6g} at step {self._val['best_step']}); weights loaded, "
                     f"nothing to do")
            return result("early_stop")
        if self.step >= self.settings.max_steps:
            if resumed_from is not None:
                self.log(f"{self.stage}: already trained to step {self.step} (max_steps={self.settings.max_steps}); "
                         f"weights loaded, nothing to do")
                self._finish_log(t_fit)
            return result("done")
        self._truncate_log(self.step)  # the log must not run ahead of the checkpoint we continue from

        from tqdm.auto import tqdm
        self._pbar = tqdm(initial=self.step, total=self.settings.max_steps, desc=self.stage, dynamic_ncols=True,
                          disable=not (self.settings.progress and self.is_main))
        stream = batch_stream(dataset, batch_size, seed=self.settings.seed, epoch=self.epoch, position=self.position,
                              num_workers=num_workers, pin_memory=self.device.type == "cuda", rank=self.rank,
                              world=self.world)
        non_blocking = self.device.type == "cuda"
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        reason = "done"
        lr, grad_norm = float(self.optimizer.param_groups[0]["lr"]), None
        last_finite: tuple[int, Any] | None = None
        self.model.train()
        try:
            while self.step < self.settings.max_steps:
                over = budget is not None and time.perf_counter() - t_fit > budget
                if self.world > 1:  # every process stops at the same step: when any of them is over
                    over = bool(self.accelerator.reduce(torch.tensor([float(over)], device=self.device), "max"))
                if over:
                    reason = "budget"
                    break
                step_loss, step_extras = self._forward_backward(stream, loss_fn, non_blocking)
                lr = self._lr_now = float(self.optimizer.param_groups[0]["lr"])
                log_step = (self.step + 1) % self.settings.log_every == 0
                grad_norm, last_finite = self._optimizer_step(step_loss, step_extras, params, log_step, lr, grad_norm,
                                                              last_finite)
                self.step += 1
                self._grad_norm_now = grad_norm
                self._pbar.update(1)
                if log_step:
                    self._write_log(t_fit, lr, grad_norm)
                if self.validate is not None and self.step % self.settings.validate_every == 0:
                    self._validation(t_fit)
                    if self._val["stopped"]:
                        reason = "early_stop"
                        break
                if self.step % self.settings.ckpt_every == 0:
                    self._save(t_fit)
                    self._plot()
            # end of this call: final checkpoint (also at a budget stop), then flush the partial window
            if self._last_ckpt_step != self.step:
                self._save(t_fit)
            if self._win_n:
                self._write_log(t_fit, lr, grad_norm, partial=True)
            self._plot()
        finally:
            self._pbar.close()
            stream.close()
        if reason == "early_stop":
            self.log(f"{self.stage}: early stop at step {self.step}: {self.settings.patience} validations without "
                     f"improvement; "
                     f"best validation loss {self._val['best']:.6g} at step {self._val['best_step']}.")
        if reason == "budget":
            clock = (f"the session's {env.default_budget_s():.0f} s, counted from the kernel's start"
                     if self.settings.budget_s == "auto" else f"{budget:.0f} s from the start of this call")
            self.log(f"{self.stage}: time budget ({clock}) used up at step {self.step}/{self.settings.max_steps}; "
                     f"checkpoint "
                     f"saved. Run again (a new session) to continue.")
        return result(reason)

    def _forward_backward(self, stream, loss_fn: Callable, non_blocking: bool):
        """``grad_accum`` micro-batches: forward under autocast, backward through accelerate (which divides by
        ``grad_accum`` and scales under fp16); their mean loss and extras.

        accelerate's accumulation counter restarts at every optimizer step, so a step cut short by an error
        cannot shift the next one's boundary."""
        acc = self.accelerator
        self.optimizer.zero_grad(set_to_none=True)
        acc.step = 0
        step_loss: Any = 0.0
        step_extras: dict[str, Any] = {}
        for _ in range(self.settings.grad_accum):
            self.epoch, self.position, batch = next(stream)
            batch = send_to_device(batch, self.device, non_blocking=non_blocking)
            with acc.accumulate(self.model), self._autocast():
                out = loss_fn(self.model, batch, self.step)
            loss, extras = out if isinstance(out, tuple) else (out, {})
            if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                raise TypeError(f"loss_fn must return a scalar tensor or (scalar tensor, dict); got "
                                f"{type(loss).__name__} {tuple(getattr(loss, 'shape', ()))}")
            acc.backward(loss)
            step_loss = step_loss + loss.detach().float() / self.settings.grad_accum
            for k, v in extras.items():
                v = v.detach().float() if isinstance(v, torch.Tensor) else float(v)
                step_extras[k] = step_extras.get(k, 0.0) + v / self.settings.grad_accum
        return step_loss, step_extras

    def _optimizer_step(self, step_loss, step_extras: dict, params: list, log_step: bool, lr: float, grad_norm,
                        last_finite):
        """Skip a non-finite step (raising after ``max_nonfinite`` in a row), else average the gradients over the
        processes, unscale, clip, step; then the window, the EMA and the LR schedule (which follows the step
        count, skipped steps included). With several processes the loss and logged terms are their means over
        the processes, so every process takes the same decisions."""
        stepped = False
        if self.world > 1:
            keys = sorted(step_extras)
            means = self.accelerator.reduce(torch.stack([torch.as_tensor(v, dtype=torch.float32, device=self.device)
                                                         for v in (step_loss, *(step_extras[k] for k in keys))]),
                                            "mean")
            step_loss, step_extras = means[0], {k: means[i + 1] for i, k in enumerate(keys)}
        if not bool(torch.isfinite(step_loss)):  # one host sync per optimizer step
            self.nonfinite_total += 1
            self._consecutive_nonfinite += 1
            if self._consecutive_nonfinite >= self.settings.max_nonfinite:
                self._raise_nonfinite(last_finite, lr)
        else:
            self._consecutive_nonfinite = 0
            last_finite = (self.step, step_loss)
            if self.world > 1:
                parallel.average_gradients(params, self.world)
            if self.settings.clip_grad is not None:  # unscales first under fp16
                grad_norm = self.accelerator.clip_grad_norm_(params, self.settings.clip_grad)
            elif log_step:
                grad_norm = self.accelerator.clip_grad_norm_(params, float("inf"))
            self._stepper.step()  # under fp16: GradScaler.step + update, skipped on inf/nan gradients
            stepped = not self._stepper.step_was_skipped
            if not stepped:
                self.scaler_skipped_total += 1
            self._win_n += 1
            self._win_loss = self._win_loss + step_loss
            for k, v in step_extras.items():
                self._win_extras[k] = self._win_extras.get(k, 0.0) + v
        if stepped and self.ema is not None:
            t = time.perf_counter()
            self._ema_update()
            self._overhead["ema"] += time.perf_counter() - t
        if self.lr_scheduler is not None:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)`")
                self.lr_scheduler.step()
        return grad_norm, last_finite

    def _validation(self, t_fit: float) -> None:
        """One validation: its value, the best so far and the patience count, logged and kept for checkpoints."""
        devices = [self.device] if self.device.type == "cuda" else []
        was_training = self.model.training
        self.model.eval()
        with torch.random.fork_rng(devices=devices), torch.no_grad(), self._autocast():
            torch.manual_seed(self.settings.seed * 1_000_003 + self.step)
            value = float(self.validate(self.model))
        self.model.train(was_training)
        v = self._val
        if not math.isfinite(value):
            raise NonFiniteLossError(f"{self.stage}: the validation loss is {value} at step {self.step}")
        if v["best"] is None or value < v["best"] - self.settings.min_delta:
            v.update(best=value, best_step=self.step, bad=0)
        else:
            v["bad"] += 1
        v["last"] = value
        if self.settings.patience is not None and v["bad"] >= self.settings.patience:
            v["stopped"] = True
        if not self.is_main:
            return
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "a") as f:
            f.write(json.dumps({"step": self.step, "val_loss": value, "val_best": v["best"],
                                "val_bad": v["bad"]}) + "\n")

    def _raise_nonfinite(self, last_finite, lr: float):
        if last_finite is not None:
            lf = f"{float(last_finite[1]):.6g} at step {last_finite[0]}"
        else:
            lf = f"{self._last_loss:.6g} (last logged)" if self._last_loss is not None else "none in this call"
        prec = {None: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16"}[self.amp_dtype]
        raise NonFiniteLossError(
            f"{self.stage}: the loss was nan/inf for {self._consecutive_nonfinite} consecutive steps (up to step "
            f"{self.step}); last finite loss: {lf}; lr {lr:.3g}; precision {prec}. Those steps were skipped and "
            f"the last good checkpoint in {self.ckpt_dir} is kept. Try a lower learning rate (or a longer "
            f"warm-up), gradient clipping (clip_grad), or precision='fp32' (fp16 overflows above 65504); "
            f"also check the data for nan/inf.")
