"""ResShift: residual shifting between the high- and low-resolution image (Yue, Wang, Loy,
"ResShift: Efficient Diffusion Model for Image Super-resolution by Residual Shifting", NeurIPS 2023,
arXiv 2307.12348; TPAMI 2024 extension, arXiv 2403.07319). Written from the paper's equations; the
official code (zsyOAOA/ResShift, non-commercial licence) was read for conventions only, none is copied.

Instead of diffusing an image into pure noise over ~1000 steps, ResShift moves the high-resolution x0
towards the (upsampled) low-resolution y0 by shifting their residual e0 = y0 - x0, adding a little noise on
the way, so the chain is short (T = 15, or 4 in v3) and starts from y0 plus noise, not from noise alone.

Notation (code -> paper):

| code               | paper               | meaning                                                        |
|--------------------|---------------------|----------------------------------------------------------------|
| ``x0``             | x_0                 | the high-resolution image (or its latent)                      |
| ``y``              | y_0                 | the low-resolution image upsampled to x0's grid (or its latent) |
| ``etas[t]``        | eta_t               | shift of the residual at step t, 0 < eta_0 < ... < eta_{T-1} -> 1 |
| ``sqrt_etas[t]``   | sqrt(eta_t)         | the schedule as the paper writes it (eq. 10)                   |
| ``kappa``          | kappa               | noise variance multiplier                                      |
| ``alphas[t]``      | alpha_t             | eta_t - eta_{t-1} (alpha_0 = eta_0)                            |
| ``t``              | t                   | 0-based step index 0 .. T-1 (the paper counts 1 .. T)          |

Equations (numbered as used below):

    (1) forward marginal   q(x_t | x0, y) = N(x_t; x0 + eta_t (y - x0), kappa^2 eta_t I)
    (2) posterior          q(x_{t-1} | x_t, x0) = N(eta_{t-1}/eta_t x_t + alpha_t/eta_t x0,
                                                  kappa^2 (eta_{t-1}/eta_t) alpha_t I)
    (3) prior              x_{T-1} = y + kappa sqrt(eta_{T-1}) eps,   eps ~ N(0, I)
    (4) schedule           sqrt(eta_t) = sqrt(eta_0) * b0 ** ((t / (T-1))^p * (T-1)),
                           sqrt(eta_0) = min(min_noise_level / kappa, min_noise_level),
                           b0 = exp(log(etas_end / sqrt(eta_0)) / (T-1)),  etas_end = sqrt(eta_{T-1})
    (5) network input      x_t / sqrt(kappa^2 eta_t + 1)  (latent space: the marginal's std when x0 is
                           unit-scaled), x_t / (3 kappa sqrt(eta_t) + 1) (pixel space)
    (6) training           f_theta(x_t, y, t) predicts x0; loss || f_theta - x0 ||^2

Sampling runs all T steps t = T-1 .. 0 through (2) with x0 replaced by the network's estimate; at t = 0
the posterior has eta_{-1} = 0, so x_{-1} = x0_hat and no noise is added. With an oracle x0_hat = x0 the
chain therefore ends exactly at x0, whatever the noise (``tests/test_resshift.py``).
Presets: ``PRESETS["v1"]`` (T = 15, kappa 2, p 0.3, min_noise_level 0.04) and ``PRESETS["v3"]`` (T = 4,
min_noise_level 0.2), as the official configs.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

PRESETS = {
    "v1": dict(num_train_timesteps=15, kappa=2.0, power=0.3, min_noise_level=0.04, etas_end=0.99),
    "v2": dict(num_train_timesteps=15, kappa=2.0, power=0.3, min_noise_level=0.04, etas_end=0.99),
    "v3": dict(num_train_timesteps=4, kappa=2.0, power=0.3, min_noise_level=0.2, etas_end=0.99),
}


@dataclass
class ResShiftSchedulerOutput:
    prev_sample: torch.Tensor            # x_{t-1}
    pred_original_sample: torch.Tensor   # x0_hat, the estimate the step used


def sqrt_eta_schedule(T: int, kappa: float, power: float, min_noise_level: float, etas_end: float) -> torch.Tensor:
    """sqrt(eta_t), t = 0..T-1, by eq. (4), in float64."""
    if T < 2:
        raise ValueError(f"num_train_timesteps={T}: ResShift needs at least 2 steps")
    sqrt_eta_0 = min(min_noise_level / kappa, min_noise_level)
    b0 = math.exp(math.log(etas_end / sqrt_eta_0) / (T - 1))
    t = torch.arange(T, dtype=torch.float64)
    return sqrt_eta_0 * b0 ** (((t / (T - 1)) ** power) * (T - 1))


class ResShiftScheduler:
    """The ResShift Markov chain: ``add_noise`` (training), ``prior_sample`` + ``step`` (sampling).

    ``latent=True`` scales the network input by eq. (5)'s latent form, ``False`` by its pixel form.
    """

    order = 1

    def __init__(self, num_train_timesteps: int = 15, kappa: float = 2.0, power: float = 0.3,
                 min_noise_level: float = 0.04, etas_end: float = 0.99, latent: bool = True):
        for name, v in (("kappa", kappa), ("power", power), ("min_noise_level", min_noise_level)):
            if not v > 0:
                raise ValueError(f"ResShift {name}={v}: must be > 0")
        if not 0 < etas_end <= 1:
            raise ValueError(f"ResShift etas_end={etas_end}: must be in (0, 1] (sqrt(eta_(T-1)), 0.99 in the paper)")
        self.config = dict(num_train_timesteps=num_train_timesteps, kappa=kappa, power=power,
                           min_noise_level=min_noise_level, etas_end=etas_end, latent=latent)
        self.num_train_timesteps, self.kappa, self.latent = num_train_timesteps, float(kappa), latent
        self.sqrt_etas = sqrt_eta_schedule(num_train_timesteps, kappa, power, min_noise_level, etas_end)
        self.etas = self.sqrt_etas ** 2
        etas_prev = torch.cat([torch.zeros(1, dtype=torch.float64), self.etas[:-1]])
        self.alphas = self.etas - etas_prev
        # posterior (2): mean = coef1 x_t + coef2 x0, variance kappa^2 eta_{t-1}/eta_t alpha_t (0 at t = 0)
        self.posterior_mean_coef1 = etas_prev / self.etas
        self.posterior_mean_coef2 = self.alphas / self.etas
        self.posterior_variance = self.kappa ** 2 * etas_prev / self.etas * self.alphas
        self.timesteps = torch.arange(num_train_timesteps - 1, -1, -1)  # sampling visits every step

    def set_timesteps(self, num_inference_steps: int | None = None) -> None:
        """Visit ``num_inference_steps`` of the T steps (evenly spaced, always T-1 and 0); None: all T.

        Between visited steps t > s the same posterior holds with eta_{t-1} replaced by eta_s (the chain's
        marginals depend on eta alone): mean = eta_s/eta_t x_t + (eta_t - eta_s)/eta_t x0_hat, variance
        kappa^2 eta_s/eta_t (eta_t - eta_s) - the respacing the official code also offers
        (``timestep_respacing``). The network still receives the original step index t.
        """
        T = self.num_train_timesteps
        n = T if num_inference_steps is None else int(num_inference_steps)
        if not 2 <= n <= T:
            raise ValueError(f"num_inference_steps={n}: ResShift with T = {T} takes 2..{T} steps")
        self.timesteps = torch.unique(torch.linspace(T - 1, 0, n).round().long()).flip(0)

    @classmethod
    def from_preset(cls, name: str, latent: bool = True) -> "ResShiftScheduler":
        if name not in PRESETS:
            raise ValueError(f"ResShift preset {name!r}: use one of {sorted(PRESETS)}")
        return cls(**PRESETS[name], latent=latent)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _at(values: torch.Tensor, t, like: torch.Tensor) -> torch.Tensor:
        """values[t] as a tensor broadcastable to ``like`` (t: int or a (B,) tensor of steps)."""
        t = torch.as_tensor(t, device=values.device).long()
        v = values[t].to(device=like.device, dtype=torch.float32 if like.dtype in (torch.float16, torch.bfloat16)
                         else like.dtype)
        return v.reshape(v.shape + (1,) * (like.dim() - v.dim())) if v.dim() else v

    # ------------------------------------------------------------------ training
    def add_noise(self, x0: torch.Tensor, y: torch.Tensor, noise: torch.Tensor, t) -> torch.Tensor:
        """x_t = x0 + eta_t (y - x0) + kappa sqrt(eta_t) noise  (eq. 1)."""
        eta, sqrt_eta = self._at(self.etas, t, x0), self._at(self.sqrt_etas, t, x0)
        return (x0 + eta * (y - x0) + self.kappa * sqrt_eta * noise).to(x0.dtype)

    def scale_model_input(self, x_t: torch.Tensor, t) -> torch.Tensor:
        """The network's view of x_t (eq. 5): roughly unit-scaled at every step."""
        if self.latent:
            return (x_t / torch.sqrt(self.kappa ** 2 * self._at(self.etas, t, x_t) + 1)).to(x_t.dtype)
        return (x_t / (3 * self.kappa * self._at(self.sqrt_etas, t, x_t) + 1)).to(x_t.dtype)

    def skip_coefficient(self, t, residual_var: float, like: torch.Tensor) -> torch.Tensor:
        """c(t) of the best linear estimate x0 ~ y + c(t) (x_t - y), for a residual e = y - x0 of variance
        ``residual_var``: from eq. (1), x_t - y = -(1 - eta_t) e + kappa sqrt(eta_t) eps, so
        c(t) = (1 - eta_t) var_e / ((1 - eta_t)^2 var_e + kappa^2 eta_t). Not in the paper: this kit's
        skip connection, in the spirit of EDM's c_skip (Karras et al., NeurIPS 2022), see ``medkit.methods.ctsr``.
        """
        eta = self._at(self.etas, t, like)
        return (1 - eta) * residual_var / ((1 - eta) ** 2 * residual_var + self.kappa ** 2 * eta)

    # ------------------------------------------------------------------ sampling
    def prior_sample(self, y: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_{T-1} = y + kappa sqrt(eta_{T-1}) noise  (eq. 3)."""
        return y + self.kappa * float(self.sqrt_etas[-1]) * noise

    def step(self, model_output: torch.Tensor, timestep: int, sample: torch.Tensor, noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None, clip: float | None = None) -> ResShiftSchedulerOutput:
        """One reverse step x_t -> x_{t-1} with x0_hat = ``model_output`` (eq. 2).

        ``noise`` (or a draw from ``generator`` on the CPU, so a seed gives the same samples on any device)
        is added for t > 0; ``clip`` clamps x0_hat to [-clip, clip] first (the official sampler clamps in
        pixel space only).
        """
        t = int(timestep)
        if not 0 <= t < self.num_train_timesteps:
            raise ValueError(f"timestep={t}: must be in 0..{self.num_train_timesteps - 1}")
        x0_hat = model_output.clamp(-clip, clip) if clip is not None else model_output
        visited = self.timesteps.tolist()
        if t not in visited:
            raise ValueError(f"timestep={t} is not among this sampler's steps {visited} (see set_timesteps)")
        i = visited.index(t)
        if i + 1 == len(visited) and t != 0:
            raise ValueError(f"timestep={t} is the last visited step but not 0: the chain must end at t = 0")
        if t == 0:
            return ResShiftSchedulerOutput(prev_sample=x0_hat.clone(), pred_original_sample=x0_hat)
        s = visited[i + 1]
        if s == t - 1:  # the posterior of eq. (2), from its tables
            c1, c2, var = (float(v[t]) for v in (self.posterior_mean_coef1, self.posterior_mean_coef2,
                                                 self.posterior_variance))
        else:  # respaced: eta_s in place of eta_{t-1}
            eta_t, eta_s = float(self.etas[t]), float(self.etas[s])
            c1, c2, var = eta_s / eta_t, (eta_t - eta_s) / eta_t, self.kappa ** 2 * eta_s / eta_t * (eta_t - eta_s)
        mean = c1 * sample + c2 * x0_hat
        if noise is None:
            noise = torch.randn(sample.shape, generator=generator, dtype=torch.float32).to(sample)
        prev = mean + math.sqrt(var) * noise
        return ResShiftSchedulerOutput(prev_sample=prev, pred_original_sample=x0_hat)

    def __repr__(self) -> str:
        return f"ResShiftScheduler({', '.join(f'{k}={v}' for k, v in self.config.items())})"
