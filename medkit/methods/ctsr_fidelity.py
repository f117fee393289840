"""CT super-resolution's fidelity ledger: ResShift's and DiffBIR's settings and the seed plan's design beside
medkit's (read from ``ctsr.config``)."""
from __future__ import annotations

from ..fidelity import ALL, Ledger, Row
from . import ctsr

CI = "CI scale: seconds, to test the wiring, not the results"


def _preset(cfg) -> str:
    p = ctsr.PRESETS[cfg["resshift"]]
    kappa = cfg["kappa"] if cfg["kappa"] is not None else p["kappa"]
    return f"T {p['num_train_timesteps']}, kappa {kappa:g}, p {p['power']:g}, min noise {p['min_noise_level']:g}"


def _factors(cfg):
    return tuple(cfg["vae_factors"]) if cfg["vae_factors"] else (ctsr.VAE_FACTOR,) * 3


ROWS = (
    Row("data", "data", "thick/thin CT pairs (e.g. RPLHR-CT, 5 mm / 1 mm) or thin CT with simulated thick slices",
        "plan", key="data",
        why={ALL: "no CT volume ships in any wheel: the MNI152 T1 MRI with simulated thick slices, labelled "
                  "'MRI, not CT' in every output; a NIfTI, a DICOM series or paired folders run the same code"}),
    Row("simulated thick slices", "data", "blur along z by a slice profile, then decimate", "plan",
        key="slice_profile", get=lambda cfg: f"{cfg['slice_profile']} slice profile along z, then decimation",
        same=lambda v, s: v.endswith("slice profile along z, then decimation")),
    Row("space the diffusion runs in", "network", "latent (3D VAE, 4x)", "plan", key="space",
        get=lambda cfg: "latent (3D VAE, 4x)" if cfg["space"] == "latent" else "pixel",
        why={"cpu-demo": "pixel space at CPU scale: a VAE trained for minutes would cap every result below cubic "
                         "interpolation (its round trip is the latent ceiling; docs/results/ctsr)"}),
    Row("VAE downsampling per axis", "network", (4, 4, 4), "plan", key="vae_factors", get=_factors),
    Row("ResShift schedule", "schedule", "T 15, kappa 2, p 0.3, min noise 0.04", "ResShift", key="resshift",
        get=_preset),
    Row("network target", "loss", "x0, MSE", "ResShift", key="residual",
        get=lambda cfg: "x0 = y + f (residual), MSE" if cfg["residual"] else "x0, MSE",
        why={ALL: "the residual form learns identity-plus-detail far sooner at CPU scale (VDSR's observation); "
                  "the loss is still on x0 (residual=False: the official form)"}),
    Row("skip term of the x0 estimate", "loss", "none", "ResShift", key="skip",
        get=lambda cfg: "c(t) (x_t - y), the best linear estimate's" if cfg["skip"] else "none",
        why={ALL: "the best linear estimate of x0 from x_t and y, so the network learns what it leaves; "
                  "declared departure (skip=False: the official form), docs/results/ctsr"}),
    Row("conditioning on y", "network", "concatenated at the input", "ResShift", key="conditioning",
        get=lambda cfg: "concatenated at the input" if cfg["conditioning"] == "concat" else "IRControlNet"),
    Row("whole volumes", "sampler", "Gaussian-blended windows at every step", "DiffBIR",
        medkit="Gaussian-blended windows at every step (MONAI sliding_window_inference, sigma 0.125 x window)"
        , same=lambda v, s: v.startswith(s)),
    Row("sampler", "sampler", "ResShift's posterior walk with its noise", "ResShift",
        medkit="both: the paper's sampler and the same walk without noise (deterministic rows), side by side",
        why={ALL: "at CPU scale the paper's stochastic sampler stays below cubic interpolation while the "
                  "deterministic walk beats it; both are reported (docs/results/ctsr)"}),
    Row("DDPM baseline", "sampler", "(none: the plan asks for a few-step claim)", "plan",
        medkit="DDIM-50, eps-prediction, same denoiser (trailing spacing)", same=lambda v, s: True),
    Row("VAE training steps", "training", "(not stated)", "plan", key="vae_steps", same=lambda v, s: True),
    Row("SR training steps", "training", "(not stated)", "plan", key="sr_steps", same=lambda v, s: True),
    Row("precision", "training", "fp16 mixed on a T4", "plan", key="precision",
        same=lambda v, s: v == "auto", why={"smoke": "fp32 (CI)"}),
    Row("evaluation window", "evaluation", "PSNR/SSIM on a fixed, stated HU window; boundary slices dropped",
        "plan", medkit="PSNR/SSIM on a fixed, stated window (CT [-1024, 3071] HU); boundary slices dropped",
        same=lambda v, s: True),
)

LEDGER = Ledger(
    method="ctsr", title="CT through-plane super-resolution with 3D latent ResShift",
    sources={"plan": "the seed plan's 3D latent CT super-resolution (REFERENCE section 4)",
             "ResShift": "Yue et al., NeurIPS 2023 / TPAMI 2024 (official configs v1-v3)",
             "DiffBIR": "Lin et al., ECCV 2024 (IRControlNet, tiled sampling)"},
    profiles=tuple(ctsr.PROFILES), config=lambda p: ctsr.config(p), rows=ROWS,
    notes={"smoke": "CI: seconds, latent space", "cpu-demo": "15 minutes on a 2-core CPU, pixel space, MNI152 MRI",
           "t4": "the plan's scale on one 16 GB T4 (not run on a GPU yet)"})
