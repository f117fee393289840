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

BETA_SCHEDULES = {"linear": "linear", "cosine": "squaredcos_cap_v2", "scaled_linear": "scaled_linear",
                  "gamma": None}  # gamma: this kit's rebalanced schedule, passed as trained_betas
PREDICTION_TYPES = ("epsilon", "sample", "v_prediction")


def make_scheduler(kind: str = "ddim", *, num_train_timesteps: int = 1000, beta_schedule: str = "linear",
                   beta_start: float = 1e-4, beta_end: float = 0.02, prediction_type: str = "epsilon",
                   timestep_spacing: str = "trailing", clip_sample: bool = False, clip_sample_range: float = 1.0,
                   trained_betas=None, gamma: float = 1.0, steps_offset: int = 0):
    """A diffusers DDPMScheduler or DDIMScheduler.

    timestep_spacing / steps_offset: which T_s of the T timesteps an S-step sampler visits. "trailing"
    (default): T-1, T-1-T/S, ... - it starts from pure noise (Lin et al., arXiv 2305.08891). "leading":
    0, T/S, ..., + steps_offset, reversed - the original DDIM/LDM samplers' "uniform" spacing (LDM's
    ``make_ddim_timesteps`` adds 1: 981, 961, ..., 1 at 50 steps; MONAI's DDIM adds 0: 897, ..., 0 at 300).

    beta_schedule: 'linear' (DDPM's [1e-4, 0.02]), 'cosine' (Nichol & Dhariwal, arXiv 2102.09672;
    diffusers' 'squaredcos_cap_v2'), 'scaled_linear' (Stable Diffusion's) or 'gamma'
    (``gamma_betas(T, gamma, beta_start, beta_end)``, handed to diffusers as ``trained_betas``).
    ``trained_betas`` (an array of T betas) overrides it, for schedules diffusers does not name.

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
    if beta_schedule == "gamma" and trained_betas is None:
        trained_betas = gamma_betas(num_train_timesteps, gamma, beta_start, beta_end)
    common = dict(num_train_timesteps=num_train_timesteps, beta_start=beta_start, beta_end=beta_end,
                  beta_schedule=BETA_SCHEDULES[beta_schedule] or "linear", prediction_type=prediction_type,
                  clip_sample=clip_sample, clip_sample_range=clip_sample_range,
                  timestep_spacing=timestep_spacing, trained_betas=trained_betas)
    if kind == "ddpm":
        return DDPMScheduler(**common, steps_offset=int(steps_offset))
    # set_alpha_to_one: the last DDIM step returns x_0 itself (the "final alpha" is 1), as in DDIM's code.
    return DDIMScheduler(**common, set_alpha_to_one=True, steps_offset=int(steps_offset))


def gamma_betas(num_train_timesteps: int = 1000, gamma: float = 1.0, beta_min: float = 1e-4,
                beta_max: float = 0.02):
    """The gamma-rebalanced schedule of the seed plan (this kit's extension, not a published schedule):

        beta_t = beta_min + (beta_max - beta_min) * (t / (T - 1))^gamma,   t = 0..T-1

    gamma = 1 is DDPM's linear schedule exactly (diffusers' ``linspace(beta_start, beta_end, T)``);
    gamma < 1 raises the betas of early steps (more noise sooner, lower SNR at mid t), gamma > 1 lowers
    them (the image survives longer). Returned as a float64 numpy array for ``trained_betas``.
    """
    import numpy as np

    if not (isinstance(gamma, (int, float)) and gamma > 0):
        raise ValueError(f"schedule gamma={gamma!r}: must be a positive number (1 = linear)")
    if not 0 < beta_min < beta_max < 1:
        raise ValueError(f"need 0 < beta_min ({beta_min}) < beta_max ({beta_max}) < 1")
    if float(gamma) == 1.0:  # bit-identical to diffusers' linear betas (float32 linspace), so the two agree exactly
        return torch.linspace(beta_min, beta_max, num_train_timesteps, dtype=torch.float32).double().numpy()
    frac = np.arange(num_train_timesteps, dtype=np.float64) / max(1, num_train_timesteps - 1)
    return beta_min + (beta_max - beta_min) * frac ** float(gamma)


def schedule_curves(scheduler) -> dict:
    """beta_t, alpha-bar_t and log10 SNR_t = log10(abar / (1 - abar)) of a diffusers scheduler, as numpy arrays."""
    import numpy as np

    betas = scheduler.betas.double().numpy()
    abar = scheduler.alphas_cumprod.double().numpy()
    return {"t": np.arange(len(betas)), "beta": betas, "alpha_bar": abar,
            "log10_snr": np.log10(abar / np.clip(1 - abar, 1e-20, None))}


def plot_schedules(schedulers: dict, path=None):
    """One figure of beta_t, alpha-bar_t and log10 SNR_t for each named scheduler; saved to ``path``."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for name, sch in schedulers.items():
        c = schedule_curves(sch)
        for ax, key in zip(axes, ("beta", "alpha_bar", "log10_snr")):
            ax.plot(c["t"], c[key], label=name)
    for ax, title in zip(axes, (r"$\beta_t$", r"$\bar\alpha_t$", r"$\log_{10}\,\mathrm{SNR}_t$")):
        ax.set_title(title)
        ax.set_xlabel("t")
        ax.grid(alpha=0.3)
    axes[0].set_yscale("log")  # cosine's betas reach 0.999 at t = T-1; the others stay below 0.02
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
    return fig


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


def predicted_x0(scheduler, x_t: torch.Tensor, out: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """The network's estimate of x_0 from its output under the scheduler's ``prediction_type``:

        epsilon: x0 = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)
        sample:  x0 = out
        v:       x0 = sqrt(abar_t) x_t - sqrt(1 - abar_t) v       (Salimans & Ho, arXiv 2202.00512)

    ``t`` holds one timestep per sample. The same conversions diffusers' ``step`` applies internally.
    """
    kind = scheduler.config.prediction_type
    if kind == "sample":
        return out
    abar = scheduler.alphas_cumprod.to(x_t.device, torch.float32)[t.long()].view(-1, *([1] * (x_t.ndim - 1)))
    a, s = abar.sqrt().to(x_t.dtype), (1 - abar).sqrt().to(x_t.dtype)
    if kind == "epsilon":
        return (x_t - s * out) / a
    return a * x_t - s * out


def _step_kwargs(scheduler, eta: float, rederive_eps: bool) -> dict:
    """The keyword arguments of ``scheduler.step`` beyond (output, t, x): eta for DDIM, and the eps choice."""
    names = scheduler.step.__code__.co_varnames
    extra = {"eta": eta} if "eta" in names else {}
    if rederive_eps:
        if "use_clipped_model_output" not in names:
            raise ValueError(f"rederive_eps=True needs a DDIM scheduler; {type(scheduler).__name__} has no such choice")
        extra["use_clipped_model_output"] = True
    return extra


@torch.no_grad()
def sample(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler, shape, *,
           num_inference_steps: int = 50, eta: float = 0.0, generator: torch.Generator | None = None,
           device="cpu", progress: bool = True, desc: str = "sampling", rederive_eps: bool = False) -> torch.Tensor:
    """Ancestral/DDIM sampling, unrolled: x_T ~ N(0, I), then x_{t-1} = scheduler.step(model(x_t, t)).

    model_fn(x_t, t_batch) returns the network output in the scheduler's prediction_type.
    ``generator`` (a CPU torch.Generator) fixes the initial noise and, for eta > 0 / DDPM, the step noise.
    ``rederive_eps`` (DDIM with clip_sample only): each step takes eps from the clipped x0 estimate
    (diffusers' ``use_clipped_model_output``) instead of the network's own.
    """
    scheduler.set_timesteps(num_inference_steps, device=device)
    x = torch.randn(shape, generator=generator, device="cpu").to(device) * scheduler.init_noise_sigma
    extra = _step_kwargs(scheduler, eta, rederive_eps)
    for t in tqdm(scheduler.timesteps, desc=desc, disable=not progress, leave=False):
        out = model_fn(x, t.expand(shape[0]).to(device))
        # Step noise drawn on the CPU generator, so a seed gives the same samples on CPU and GPU.
        x = scheduler.step(out, t, x, generator=generator, **extra).prev_sample
    return x


@torch.no_grad()
def sample_early_stop(model_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], scheduler, shape, *,
                      threshold: float = 0.05, num_inference_steps: int = 50, min_steps: int = 2, eta: float = 0.0,
                      generator: torch.Generator | None = None, device="cpu", progress: bool = True,
                      desc: str = "sampling (early stop)", rederive_eps: bool = False):
    """DDIM with adaptive early stop (this kit's extension of the seed plan); returns (x0, steps_taken).

    After each step k the scheduler's own estimate of the clean sample, x0_hat_k (``pred_original_sample``),
    is compared with the previous one: r_k = || x0_hat_k - x0_hat_{k-1} || / || x0_hat_k || (RMS over the
    sample's elements). The update norm tested is r_k extrapolated over the steps still planned,

        u_k = r_k * (N - k)     (the relative change still to come if x0_hat kept moving at this rate)

    and a sample stops once u_k < threshold, returning x0_hat_k - never the half-noised x_t, which a
    sampler planned for N steps returns when cut short (a published negative result). Why not the plain
    x_t update or r_k: in the first steps x_t barely moves (sqrt(abar_t) ~ 0.006 at t = 999) and x0_hat
    sits near the data mean, so both start small; a per-step threshold then stops at step 2 with a
    blurred mean, or halfway (r_k peaks mid-trajectory and falls again) - this kit's tests showed both.
    A sample whose u never falls below the threshold runs every step. Stopped samples leave the batch,
    so the saved network calls are real. ``steps_taken`` (a long tensor, one entry a sample) counts the
    network calls each sample had; threshold = 0 runs every step, with the same result as ``sample`` on the same seed.
    """
    if threshold < 0:
        raise ValueError(f"early-stop threshold={threshold}: must be >= 0 (0 runs all steps)")
    scheduler.set_timesteps(num_inference_steps, device=device)
    x = torch.randn(shape, generator=generator, device="cpu").to(device) * scheduler.init_noise_sigma
    extra = _step_kwargs(scheduler, eta, rederive_eps)
    n = shape[0]
    out = torch.empty_like(x)
    steps = torch.zeros(n, dtype=torch.long)
    active = torch.arange(n)
    prev_x0 = None
    n_total = len(scheduler.timesteps)
    for k, t in enumerate(tqdm(scheduler.timesteps, desc=desc, disable=not progress, leave=False)):
        eps = model_fn(x, t.expand(len(active)).to(device))
        res = scheduler.step(eps, t, x, generator=generator, **extra)
        x, x0 = res.prev_sample, res.pred_original_sample
        steps[active] += 1
        last = k == len(scheduler.timesteps) - 1
        stop = torch.zeros(len(active), dtype=torch.bool)
        if prev_x0 is not None and k + 1 >= min_steps and threshold > 0:
            d = (x0 - prev_x0).flatten(1).pow(2).mean(1).sqrt()
            rel = d / x0.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-12)
            stop = (rel * (n_total - (k + 1)) < threshold).cpu()
        if last:
            out[active] = x  # the final DDIM step (set_alpha_to_one) returns x0 itself
            break
        if stop.any():
            out[active[stop]] = x0[stop.to(x0.device)]
            keep = ~stop
            active, x, prev_x0 = active[keep], x[keep.to(x.device)], x0[keep.to(x0.device)]
            if len(active) == 0:
                break
        else:
            prev_x0 = x0
    return out, steps
