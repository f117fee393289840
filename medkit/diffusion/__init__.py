"""Noise schedules and samplers, wired from diffusers' schedulers (no scheduler fork).

Notation (Ho et al., DDPM, arXiv 2006.11239; Song et al., DDIM, arXiv 2010.02502):

| code           | paper                | meaning                                         |
|----------------|----------------------|-------------------------------------------------|
| ``betas``      | beta_t               | per-step noise variance, t = 0..T-1             |
| ``alphas_cumprod`` | alpha-bar_t      | prod_{s<=t} (1 - beta_s)                        |
| ``x_t``        | x_t                  | sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps         |
| ``eps``        | epsilon              | the Gaussian noise the network predicts         |

Timestep spacing defaults to "trailing" (Lin et al., arXiv 2305.08891, Table 2): a 50-step DDIM
then starts at t = T-1, i.e. from pure noise, as the training schedule ends. diffusers' "leading"
spacing (and MONAI's DDIM) starts at t = T - T/N (e.g. 981 of 1000), a small train/test mismatch.
"""
from __future__ import annotations

from typing import Callable

import torch
from tqdm.auto import tqdm

BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "scaled_linear": "scaled_linear"}
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def make_scheduler(kind: str = "ddim", *, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                   beta_start: float = 1e-4, beta_end: float = 0.02, prediction_type: str = "epsilon",
                   timestep_spacing: str = "trailing", clip_sample: bool = False, clip_sample_range: float = 1.0,
                   trained_betas=None):
    """A diffusers DDPMScheduler or DDIMScheduler.

    beta_schedule: 'linear' (DDPM's [1e-4, 0.02]), 'cosine' (Nichol & Dhariwal, arXiv 2102.09672;
    diffusers' 'squaredcos_cap_v2') or 'scaled_linear' (Stable Diffusion's). ``trained_betas`` (an
    array of T betas) overrides it, for schedules diffusers does not name.

    clip_sample: clip each step's x0 estimate to [-clip_sample_range, clip_sample_range] (DDPM clips
    to the pixel range [-1, 1]; for latents use the range of the training latents). With eps-prediction
    the estimate x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t) multiplies the network's error by
    1/sqrt(abar_t) - about 160 at t = 999 of the linear schedule and 20,000 for the cosine one - and
    trailing spacing starts exactly there. Without clipping, a cosine-schedule DDIM from t = 999 returns
    noise (measured in this kit); with it, the first steps behave.
    """
    from diffusers import DDIMScheduler, DDPMScheduler

    if kind not in ("ddim", "ddpm"):
        raise ValueError(f"scheduler kind={kind!r}: use 'ddim' or 'ddpm'")
    if beta_schedule not in BETA_SCHEDULES:
        raise ValueError(f"beta_schedule={beta_schedule!r}: use one of {sorted(BETA_SCHEDULES)}")
    if prediction_type not in PREDICTION_TYPES:
        raise ValueError(f"prediction_type={prediction_type!r}: use one of {PREDICTION_TYPES}")
    if timestep_spacing not in ("trailing", "leading", "linspace"):
        raise ValueError(f"timestep_spacing={timestep_spacing!r}: use 'trailing', 'leading' or 'linspace'")
    common = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                  beta_schedule=BETA_SCHEDULES[beta_schedule], prediction_type=prediction_type,
                  clip_sample=clip_sample, clip_sample_range=clip_sample_range,
                  timestep_spacing=timestep_spacing, trained_betas=trained_betas)
    if kind == "ddpm":
        return DDPMScheduler(**common)
    # set_alpha_to_one: the last DDIM step returns x_0 itself (the "final alpha" is 1), as in DDIM's code.
    return DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=0)


def add_noise(scheduler, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """q(x_t | x_0): x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps (DDPM eq. 4)."""
    return scheduler.add_noise(x0, eps, t)


def training_target(scheduler, x0: torch.Tensor, eps: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the network is trained to output under the scheduler's ``prediction_type``."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return eps
    if kind == "sample":
        return x0
    return scheduler.get_velocity(x0, eps, t)  # v = sqrt(abar) eps - sqrt(1-abar) x0 (Salimans & Ho, 2022)


@torch.no_grad()
def sample(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler, shape, *,
           num_inference_steps: int = 50, eta: float = 0.0, generator: torch.Generator | None = None,
           device="cpu", progress: bool = True, desc: str = "sampling") -> torch.Tensor:
    """Ancestral/DDIM sampling, unrolled: x_T ~ N(0, I), then x_{t-1} = scheduler.step(model(x_t, t)).

    model_fn(x_t, t_batch) returns the network output in the scheduler's prediction_type.
    ``generator`` (a CPU torch.Generator) fixes the initial noise and, for eta > 0 / DDPM, the step noise.
    """
    scheduler.set_timesteps(num_inference_steps, device=device)
    x = torch.randn(shape, generator=generator, device="cpu").to(device) * scheduler.init_noise_sigma
    extra = {"eta": eta} if "eta" in scheduler.step.__code__.co_varnames else {}
    for t in tqdm(scheduler.timesteps, desc=desc, disable=not progress, leave=False):
        out = model_fn(x, t.expand(shape[0]).to(device))
        # Step noise drawn on the CPU generator, so a seed gives the same samples on CPU and GPU.
        x = scheduler.step(out, t, x, generator=generator, **extra).prev_sample
    return x
