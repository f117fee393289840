"""``TrainSettings``: how a ``Trainer`` trains, in one checked value.

The Trainer takes the run's identity (``run_dir``, ``stage``, ``config``), the model, optimizer and callables
(LR schedule, validation, log, checkpoint hooks) as arguments, and everything else - steps, precision,
checkpoint cadence, budget, EMA, early stopping - as these settings, either as ``settings=TrainSettings(...)``
or as keyword arguments of the same names. A bad value is refused when the settings are made, naming the
setting and what to use instead.
"""
from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from typing import Any

from medkit import session
from medkit.train.config import DEFAULT_FACTS, DEFAULT_IGNORE


@dataclass(frozen=True)
class TrainSettings:
    max_steps: int                       # optimizer steps in total (across resumes); raise it to extend a run
    precision: str = "auto"              # "auto" (fp32 CPU, fp16 T4-class, bf16 Ampere+) | "fp32" | "fp16" | "bf16"
    device: Any = None                   # None/"auto": accelerate's device for this process | "cpu" | "cuda"
    grad_accum: int = 1                  # micro-batches per optimizer step
    clip_grad: float | None = 1.0        # gradient-norm clipping; None: off
    ema_decay: float | None = 0.999      # EMA of the weights (with warm-up); None: no EMA
    seed: int = 0                        # RNGs at a fresh start and the data order
    ckpt_every: int = 500                # steps between checkpoints
    keep: int = 3                        # checkpoints kept
    log_every: int = 10                  # steps per line of logs/<stage>.jsonl
    budget_s: Any = "auto"               # "auto" (Kaggle's session clock) | seconds from the fit call | None
    resume: str = "auto"                 # "auto" | "force" (despite a config change) | "never"
    max_nonfinite: int = 5               # non-finite losses in a row before NonFiniteLossError
    validate_every: int = 0              # steps between validations (with validate=)
    patience: int | None = None          # validations without improvement before an early stop
    min_delta: float = 0.0               # improvement that counts
    facts: tuple = DEFAULT_FACTS         # config keys recording where things were found (not in the resume check)
    ignore_config_keys: tuple = DEFAULT_IGNORE  # config keys that do not change training
    progress: bool = True                # a tqdm bar
    plot: bool = True                    # figures/<stage>_loss.png at each checkpoint
    persist: bool = True                 # Kaggle/Colab: restore from earlier sessions, mirror to Drive

    def __post_init__(self):
        object.__setattr__(self, "facts", tuple(self.facts))
        object.__setattr__(self, "ignore_config_keys", tuple(self.ignore_config_keys))
        for name in ("max_steps", "grad_accum", "ckpt_every", "keep", "log_every", "max_nonfinite"):
            v, low = getattr(self, name), 0 if name == "max_steps" else 1
            if not isinstance(v, int) or isinstance(v, bool) or v < low:
                raise ValueError(f"{name}={v!r}: must be an integer >= {low}")
        if self.resume not in ("auto", "force", "never"):
            raise ValueError(f"resume={self.resume!r}: use 'auto', 'force' or 'never'")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay <= 1.0:
            raise ValueError(f"ema_decay={self.ema_decay}: must be in [0, 1] (typically 0.999-0.9999), or None for "
                             f"no EMA")
        if self.precision not in ("auto", "fp32", "fp16", "bf16"):
            raise ValueError(f"precision={self.precision!r}: use 'auto', 'fp32', 'fp16' or 'bf16'")
        if self.patience is not None and not (isinstance(self.patience, int) and self.patience >= 1):
            raise ValueError(f"patience={self.patience!r}: an integer >= 1 (validations without improvement)")
        session.budget_left_s(self.budget_s)  # a bad budget fails here, not after the data is cached

    @property
    def ignored_keys(self) -> tuple:
        """Config keys left out of the resume check: ``ignore_config_keys`` and the ``facts``."""
        return tuple(dict.fromkeys((*self.ignore_config_keys, *self.facts)))

    @classmethod
    def make(cls, settings: "TrainSettings | None", overrides: dict) -> "TrainSettings":
        """``settings`` with ``overrides`` (keyword arguments of a Trainer) applied; unknown names refused."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - names)
        if unknown:
            raise TypeError(f"Trainer got unknown setting(s) {unknown}; the settings are: {', '.join(sorted(names))}")
        if settings is None:
            if "max_steps" not in overrides:
                raise TypeError("Trainer needs max_steps (optimizer steps in total), or settings=TrainSettings(...)")
            return cls(**overrides)
        return dataclasses.replace(settings, **overrides)


def check_run(stage: str, config, validate, settings: TrainSettings) -> None:
    """What the Trainer's other arguments must be, given its settings."""
    if not re.fullmatch(r"[A-Za-z0-9_.-]+", str(stage)):
        raise ValueError(f"stage={stage!r}: use letters, digits, '_', '-', '.' (it names files and folders)")
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict (got {type(config).__name__})")
    if validate is not None and not (isinstance(settings.validate_every, int) and settings.validate_every >= 1):
        raise ValueError(f"validate_every={settings.validate_every!r}: an integer >= 1 (steps between validations) "
                         f"when validate is given")
    if settings.patience is not None and validate is None:
        raise ValueError(f"patience={settings.patience!r} needs validate= (a function returning a validation loss)")
